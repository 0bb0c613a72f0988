//! Reading finished output files back with gstreamer-pbutils' Discoverer.
//! `discover` reads a file's header and index; `decode` decodes every frame, which is what
//! proves a killed recording is still usable. (Sources are not probed: the handler decides its
//! graph from the pads of its one connection, see `pipeline::source_uri`.)

use std::path::Path;
use std::time::Duration;

use gstreamer as gst;
use gstreamer_pbutils as pbutils;
use std::sync::{Arc, Mutex};

use gstreamer::prelude::*;

/// What Discoverer says about a file.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    pub duration_s: Option<f64>,
    pub has_video: bool,
    pub has_audio: bool,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// `file://` URI of a local file (GStreamer initialized).
fn file_uri(path: &Path) -> Result<String, String> {
    gst::init().map_err(|e| e.to_string())?;
    let abs = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    gst::glib::filename_to_uri(&abs, None)
        .map(|u| u.to_string())
        .map_err(|e| e.to_string())
}

/// Runs Discoverer on a local file.
pub fn discover(path: &Path, timeout: Duration) -> Result<MediaInfo, String> {
    let uri = file_uri(path)?;
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

/// What decoding a whole file yielded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodeReport {
    /// Decoded video frames.
    pub video_frames: u64,
    /// Decoded audio buffers.
    pub audio_buffers: u64,
    /// Decoded audio samples (per channel).
    pub audio_samples: u64,
    /// End time (pts + duration) of the last decoded buffer, in seconds.
    pub last_pts_s: Option<f64>,
    /// Start time of the first decoded buffer, in seconds.
    pub first_pts_s: Option<f64>,
}

/// Decodes every stream of a local file as fast as possible; fails on a decode error.
pub fn decode(path: &Path, timeout: Duration) -> Result<DecodeReport, String> {
    let uri = file_uri(path)?;
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("uridecodebin")
        .property("uri", uri.as_str())
        .build()
        .map_err(|e| e.to_string())?;
    pipeline.add(&src).map_err(|e| e.to_string())?;
    let report = Arc::new(Mutex::new(DecodeReport::default()));
    let weak = pipeline.downgrade();
    let r = report.clone();
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let Ok(sink) = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .build()
        else {
            return;
        };
        if pipeline.add(&sink).is_err() {
            return;
        }
        let _ = sink.sync_state_with_parent();
        if let Some(sinkpad) = sink.static_pad("sink") {
            let _ = pad.link(&sinkpad);
        }
        let r = r.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(buf) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let caps = pad.current_caps();
            let s = caps
                .as_ref()
                .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
                .unwrap_or_default();
            let mut rep = r.lock().unwrap_or_else(|p| p.into_inner());
            if s.starts_with("video/") {
                rep.video_frames += 1;
            } else if s.starts_with("audio/") {
                rep.audio_buffers += 1;
                let bpf = caps
                    .as_ref()
                    .and_then(|c| gstreamer_audio::AudioInfo::from_caps(c).ok())
                    .map(|i| i.bpf());
                if let Some(bpf) = bpf.filter(|b| *b > 0) {
                    rep.audio_samples += buf.size() as u64 / u64::from(bpf);
                }
            }
            if let Some(pts) = buf.pts() {
                let end =
                    (pts + buf.duration().unwrap_or(gst::ClockTime::ZERO)).nseconds() as f64 / 1e9;
                rep.last_pts_s = Some(rep.last_pts_s.map_or(end, |l: f64| l.max(end)));
                let start = pts.nseconds() as f64 / 1e9;
                rep.first_pts_s = Some(rep.first_pts_s.map_or(start, |f: f64| f.min(start)));
            }
            gst::PadProbeReturn::Ok
        });
    });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot play {}: {e}", path.display()))?;
    let bus = pipeline.bus().ok_or("pipeline without a bus")?;
    let deadline = std::time::Instant::now() + timeout;
    let outcome = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break Err(format!(
                "decoding {} took longer than {timeout:?}",
                path.display()
            ));
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(
            left.as_millis().min(200) as u64
        )) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => break Err(format!("{}: {}", path.display(), e.error())),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    outcome?;
    let rep = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(rep)
}
