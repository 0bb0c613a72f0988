//! Reading finished output files back with gstreamer-pbutils' Discoverer.
//! (Lead's minimal version so the tree builds; the pipeline helper owns and extends this file.)

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer_pbutils as pbutils;
use gstreamer_pbutils::prelude::*;

/// What Discoverer says about a file.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    pub duration_s: Option<f64>,
    pub has_video: bool,
    pub has_audio: bool,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Runs Discoverer on a local file.
pub fn discover(path: &Path, timeout: Duration) -> Result<MediaInfo, String> {
    gst::init().map_err(|e| e.to_string())?;
    let abs = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
    let uri = gst::glib::filename_to_uri(&abs, None).map_err(|e| e.to_string())?;
    let d = pbutils::Discoverer::new(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))
        .map_err(|e| e.to_string())?;
    let info = d.discover_uri(&uri).map_err(|e| e.to_string())?;
    let video = info.video_streams();
    Ok(MediaInfo {
        duration_s: info.duration().map(|d| d.nseconds() as f64 / 1e9),
        has_video: !video.is_empty(),
        has_audio: !info.audio_streams().is_empty(),
        width: video.first().map(|v| v.width()),
        height: video.first().map(|v| v.height()),
    })
}
