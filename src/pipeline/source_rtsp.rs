//! What an RTSP camera needs beyond any URI source (`source_uri`): its streams come each on
//! its own RTP session, with presentation times only (`decode_times` derives the rest), and
//! its `rtspsrc` is told how to keep the camera's time.

use gstreamer as gst;
use gstreamer::prelude::*;

/// How far an RTSP source's streams may be moved per frame to line them up (`setup`): 10 ms,
/// so a 250-ms correction takes 25 frames, and frames still go forward.
const TS_OFFSET_STEP_NS: u64 = 10_000_000;

/// Whether a source is an RTSP camera: its streams come each on its own (one RTP session per
/// stream, so holding one never stops another), and its video frames carry presentation times
/// only (the depayloader stamps each frame's decode time with its presentation time, so a
/// B-frame's goes back; `decode_times`).
pub fn is_rtsp(uri: &str) -> bool {
    uri.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("rtsp"))
}

/// Configures the `rtspsrc` a source made (other elements are left alone).
pub fn setup(element: &gst::Element) {
    if element.factory().map(|f| f.name()) != Some("rtspsrc".into()) {
        return;
    }
    keep_camera_time(element);
    // The camera's RTCP report tells how its streams line up, seconds in; taken at once, a
    // stream's times jump back by up to a few frames, and a GOP before the jump would show
    // after the keyframe that follows it (its HLS segment would start mid-GOP). Taken a little
    // per frame, time goes on.
    element.set_property("max-ts-offset-adjustment", TS_OFFSET_STEP_NS);
}

/// Has `rtspsrc` keep the camera's own timestamps (from its first packet's arrival on) when
/// its SDP offers video that may carry B-frames (`sdp_may_reorder`). The default ("slave")
/// estimates the camera's clock skew from arrival times, which B-frames (RTP times going back)
/// throw off: up to 270 ms of A/V offset in the first seconds, until the camera's first RTCP
/// report. Not for the rest: kept as sent, the camera's clock is not corrected for its drift
/// against ours (20-100 ppm, up to 0.4 s an hour).
fn keep_camera_time(rtspsrc: &gst::Element) {
    rtspsrc.connect("select-stream", false, |args| {
        let src = args.first().and_then(|v| v.get::<gst::Element>().ok())?;
        let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok())?;
        let s = caps.structure(0)?;
        if sdp_may_reorder(
            s.get::<&str>("encoding-name").unwrap_or_default(),
            s.get::<&str>("profile-level-id").unwrap_or_default(),
        ) {
            src.set_property_from_str("buffer-mode", "synced");
        }
        Some(true.to_value())
    });
}

/// Whether an SDP stream (its encoding name and H.264 `profile-level-id`) may carry B-frames:
/// H.265, and H.264 above baseline (profile_idc 66, `42...`) or not saying.
fn sdp_may_reorder(encoding: &str, profile_level_id: &str) -> bool {
    encoding.eq_ignore_ascii_case("H265")
        || encoding.eq_ignore_ascii_case("H264")
            && !profile_level_id.to_ascii_lowercase().starts_with("42")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtsp_is_told_by_its_scheme() {
        assert!(is_rtsp("rtsp://cam/1") && is_rtsp("RTSP://cam/1") && is_rtsp("rtsps://cam"));
        assert!(!is_rtsp("srt://cam:9000") && !is_rtsp("rtmp://cam/live") && !is_rtsp("rt"));
    }

    #[test]
    fn which_sdp_streams_may_carry_b_frames() {
        assert!(sdp_may_reorder("H264", "640028")); // high
        assert!(sdp_may_reorder("H264", "4d401f")); // main
        assert!(sdp_may_reorder("H264", "")); // not saying
        assert!(sdp_may_reorder("H265", ""));
        assert!(!sdp_may_reorder("H264", "42e01f")); // constrained baseline
        assert!(!sdp_may_reorder("H264", "42C015")); // baseline, upper case
        assert!(!sdp_may_reorder("MPEG4-GENERIC", ""));
        assert!(!sdp_may_reorder("VP8", ""));
    }
}
