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

use gstreamer as gst;
use gstreamer::prelude::*;

use super::encode::{AudioCodecKind, VideoCodec, branch};
use super::graph::{Desc, el, link_pad};
use crate::model::SegmentsOutput;

pub const SINK: &str = "seg_sink";

/// The path of segment `n`.
pub fn segment_name(s: &SegmentsOutput, n: u32) -> String {
    crate::model::numbered::NumberedName::new(&s.stem, "ts").name(n)
}

pub fn add(d: &mut Desc, s: &SegmentsOutput, video: bool, audio: bool) {
    let ns = (s.segment_duration_s * 1e9).round() as u64;
    let pattern = s
        .dir
        .join(crate::model::numbered::NumberedName::new(&s.stem, "ts").pattern());
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

/// Makes `splitmuxsink` cut segments at IDR frames only. `h264parse` marks every I frame as a
/// keyframe, and senders put non-IDR I frames at scene cuts (x264's `scenecut`, OBS's
/// default): a segment cut there starts without SPS/PPS and with frames that refer to the
/// previous one, so players cannot decode its start ("non-existing PPS"). Such frames are
/// marked delta units on the way into the segmenter. Byte-stream H.264 (what `mpegtsmux`
/// takes) is what flows there.
pub fn cut_at_idr_only(pipeline: &gst::Pipeline) {
    let Some(pad) = pipeline
        .by_name("seg_video_parse")
        .and_then(|e| e.static_pad("src"))
    else {
        return;
    };
    pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        if let Some(gst::PadProbeData::Buffer(buf)) = &mut info.data
            && !buf.flags().contains(gst::BufferFlags::DELTA_UNIT)
        {
            let idr = buf.map_readable().map(|m| has_idr(&m)).unwrap_or(true);
            if !idr {
                buf.make_mut().set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Whether an H.264 access unit in byte-stream form (start codes) holds an IDR slice.
pub fn has_idr(au: &[u8]) -> bool {
    au.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 5)
}

#[cfg(test)]
mod tests {
    use super::has_idr;

    #[test]
    fn only_idr_slices_start_a_segment() {
        // SPS, PPS, IDR slice (type 5): an IDR access unit.
        let idr = [0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 1, 0x65, 3];
        assert!(has_idr(&idr));
        // A non-IDR slice (type 1), as x264 writes an I frame at a scene cut.
        let i_frame = [0, 0, 0, 1, 0x09, 0x10, 0, 0, 1, 0x41, 3];
        assert!(!has_idr(&i_frame));
    }
}
