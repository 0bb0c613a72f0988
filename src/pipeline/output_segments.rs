//! HLS: `splitmuxsink` cuts MPEG-TS segments at keyframes near `segment_duration_s`; the
//! handler writes the playlists itself (`crate::hls`), atomically, each time a segment closes.
//!
//! ```text
//!   video_h264_tee ─► seg_video_queue ─► seg_video_parse ─► seg_sink.video
//!   audio_aac_tee  ─► seg_audio_queue ─► seg_audio_parse ─► seg_sink.audio_%u
//!   seg_sink (splitmuxsink, mpegtsmux per segment) ─► {prefix}_00000.ts, {prefix}_00001.ts, ...
//! ```
//!
//! The handler names each segment through `format-location`, creating the file itself first
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`), so no segment is ever written through a planted symlink.

use super::encode::{AudioCodecKind, VideoCodec, branch};
use super::graph::{Desc, el, link_pad};
use crate::model::SegmentsOutput;

pub const SINK: &str = "seg_sink";

/// The path of segment `n`.
pub fn segment_name(s: &SegmentsOutput, n: u32) -> String {
    format!("{}_{n:05}.ts", s.stem)
}

pub fn add(d: &mut Desc, s: &SegmentsOutput, video: bool, audio: bool) {
    let ns = (s.segment_duration_s * 1e9).round() as u64;
    let pattern = s.dir.join(format!("{}_%05d.ts", s.stem));
    d.push(vec![
        // The handler gives it the muxer and an unbuffered filesink (what a killed handler
        // wrote is on disk); a launch line names their factories instead.
        el("splitmuxsink", SINK)
            .p("!muxer", "mpegtsmux")
            .p("!sink", "filesink buffer-mode=unbuffered")
            .p("@async-finalize", true)
            .p("@muxer-factory", "mpegtsmux")
            .p("@sink-factory", "filesink")
            .p("max-size-time", ns)
            .p("send-keyframe-requests", video)
            .p("location", pattern.display()),
    ]);
    if video {
        let c = VideoCodec::H264;
        let mut chain = branch("seg", true, &c.tee(), c.as_str());
        chain.push(link_pad(SINK, "video"));
        d.push(chain);
    }
    if audio {
        let c = AudioCodecKind::Aac;
        let mut chain = branch("seg", false, &c.tee(), c.as_str());
        chain.push(link_pad(SINK, "audio_%u"));
        d.push(chain);
    }
    d.media.push(SINK.into());
    d.sinks.push(SINK.into());
}
