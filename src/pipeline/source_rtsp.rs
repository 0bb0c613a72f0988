//! What an RTSP camera needs beyond any URI source (`source_uri`): its streams come each on
//! its own RTP session, with presentation times only (`decode_times` derives the rest), its
//! `rtspsrc` is told how to keep the camera's time, and its video waits for the RTCP reports
//! that line its streams up (`LineUp`).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

/// How far an RTSP source's streams may be moved per buffer (an RTP packet) to line them up
/// (`setup`): 10 ms, so a 250-ms correction takes 25 packets, and frames still go forward.
const TS_OFFSET_STEP_NS: u64 = 10_000_000;

/// How long a camera's video waits for the RTCP reports that line its streams up (`LineUp`),
/// from its media's first buffer, before it is recorded without them. A report came 1-5.5 s
/// after a session started here, then every ~5 s.
const LINE_UP_WAIT: Duration = Duration::from_secs(5);

/// How long after the reports the video waits on, for the jitterbuffers to take them.
const LINE_UP_SETTLE: Duration = Duration::from_millis(500);

/// Whether the streams of a camera that keeps its own time (`keep_camera_time`) are lined up.
/// Until the camera's RTCP reports say where its streams stand against each other, each is
/// placed by when its first packet came, and a video stream sent in decode order (B-frames)
/// came a frame or two before its pictures are shown: the picture led the sound by up to a
/// frame (67 ms at 15 fps) until the report. Its video starts recording once every audio and
/// video stream has had its report (or `LINE_UP_WAIT` passed); a lone stream has nothing to
/// line up with.
#[derive(Debug, Default)]
pub struct LineUp {
    /// A stream keeps the camera's time: recording waits for the reports.
    waits: AtomicBool,
    /// The audio and video streams selected (a bit per stream id, which is its RTP session's).
    streams: AtomicU32,
    /// RTP sessions whose RTCP sender report came (a bit per session).
    reported: AtomicU32,
    /// When every stream had its report.
    lined_up: Mutex<Option<Instant>>,
    /// When the media's first buffer asked whether the video may start.
    since: Mutex<Option<Instant>>,
    /// The camera's jitterbuffers: they take the reports' correction at once until recording
    /// may start, then 10 ms a packet (`TS_OFFSET_STEP_NS`). Taken a little at a time from
    /// the start, a correction of a few hundred ms (a live encoder's) was still under way a
    /// second later, and the first picture came a frame early.
    jitterbuffers: Mutex<Vec<gst::glib::WeakRef<gst::Element>>>,
    /// The jitterbuffers take corrections a little at a time.
    stepped: AtomicBool,
}

impl LineUp {
    /// Whether the camera's video may start recording.
    pub fn ready(&self) -> bool {
        if self.stepped.load(Ordering::Relaxed)
            || !self.waits.load(Ordering::Relaxed)
            || self.streams.load(Ordering::Relaxed).count_ones() < 2
        {
            return true;
        }
        let lined_up = *self.lined_up.lock().unwrap_or_else(|p| p.into_inner());
        let waited = || {
            let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
            since.get_or_insert_with(Instant::now).elapsed() >= LINE_UP_WAIT
        };
        if lined_up.is_none_or(|t| t.elapsed() < LINE_UP_SETTLE) && !waited() {
            return false;
        }
        if !self.stepped.swap(true, Ordering::Relaxed) {
            let jbs = self.jitterbuffers.lock().unwrap_or_else(|p| p.into_inner());
            for jb in jbs.iter().filter_map(|w| w.upgrade()) {
                jb.set_property("max-ts-offset-adjustment", TS_OFFSET_STEP_NS);
            }
        }
        true
    }

    fn selected(&self, stream: u32) {
        self.streams.fetch_or(bit(stream), Ordering::Relaxed);
    }

    fn reported(&self, session: u32) {
        let reported = self.reported.fetch_or(bit(session), Ordering::Relaxed) | bit(session);
        let streams = self.streams.load(Ordering::Relaxed);
        if reported & streams == streams {
            self.lined_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(Instant::now);
        }
    }
}

/// The bit of stream (or session) `id` in a `LineUp` set.
fn bit(id: u32) -> u32 {
    1 << (id % 32)
}

/// Whether a source is an RTSP camera: its streams come each on its own (one RTP session per
/// stream, so holding one never stops another), and its video frames carry presentation times
/// only (the depayloader stamps each frame's decode time with its presentation time, so a
/// B-frame's goes back; `decode_times`).
pub fn is_rtsp(uri: &str) -> bool {
    uri.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("rtsp"))
}

/// Configures the `rtspsrc` a source made (other elements are left alone); `line_up` follows
/// its streams' RTCP reports.
pub fn setup(element: &gst::Element, line_up: &Arc<LineUp>) {
    if element.factory().map(|f| f.name()) != Some("rtspsrc".into()) {
        return;
    }
    keep_camera_time(element, line_up);
    watch_reports(element, line_up);
    // The camera's RTCP report tells how its streams line up, seconds in; taken at once, a
    // stream's times jump back by up to a few frames, and a GOP before the jump would show
    // after the keyframe that follows it (its HLS segment would start mid-GOP). Taken a little
    // per packet, time goes on. (A camera whose video waits for its reports takes them at once
    // until then: `LineUp`.)
    element.set_property("max-ts-offset-adjustment", TS_OFFSET_STEP_NS);
}

/// Has `rtspsrc` keep the camera's own timestamps (from its first packet's arrival on) when
/// its SDP offers video that may carry B-frames (`sdp_may_reorder`). The default ("slave")
/// estimates the camera's clock skew from arrival times, which B-frames (RTP times going back)
/// throw off: up to 270 ms of A/V offset in the first seconds, until the camera's first RTCP
/// report. Not for the rest: kept as sent, the camera's clock is not corrected for its drift
/// against ours (20-100 ppm, up to 0.4 s an hour).
fn keep_camera_time(rtspsrc: &gst::Element, line_up: &Arc<LineUp>) {
    let line_up = line_up.clone();
    rtspsrc.connect("select-stream", false, move |args| {
        let src = args.first().and_then(|v| v.get::<gst::Element>().ok())?;
        let id = args.get(1).and_then(|v| v.get::<u32>().ok())?;
        let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok())?;
        let s = caps.structure(0)?;
        // Audio and video are lined up; a metadata stream may send no report.
        if matches!(s.get::<&str>("media"), Ok("audio" | "video")) {
            line_up.selected(id);
        }
        if sdp_may_reorder(
            s.get::<&str>("encoding-name").unwrap_or_default(),
            s.get::<&str>("profile-level-id").unwrap_or_default(),
        ) {
            src.set_property_from_str("buffer-mode", "synced");
            line_up.waits.store(true, Ordering::Relaxed);
        }
        Some(true.to_value())
    });
}

/// Tells `line_up` of each RTCP sender report a session's jitterbuffer takes (the report
/// `rtpbin` lines the streams up by).
fn watch_reports(rtspsrc: &gst::Element, line_up: &Arc<LineUp>) {
    let line_up = line_up.clone();
    rtspsrc.connect("new-manager", false, move |args| {
        let manager = args.get(1).and_then(|v| v.get::<gst::Element>().ok())?;
        let line_up = line_up.clone();
        manager.connect("new-jitterbuffer", false, move |args| {
            let jb = args.get(1).and_then(|v| v.get::<gst::Element>().ok())?;
            let session = args.get(2).and_then(|v| v.get::<u32>().ok())?;
            if line_up.waits.load(Ordering::Relaxed) && !line_up.stepped.load(Ordering::Relaxed) {
                jb.set_property("max-ts-offset-adjustment", 0u64);
                let mut jbs = line_up
                    .jitterbuffers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                jbs.push(jb.downgrade());
            }
            let line_up = line_up.clone();
            jb.connect("handle-sync", false, move |_| {
                line_up.reported(session);
                None
            });
            None
        });
        None
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
    fn streams_are_lined_up_once_each_audio_and_video_stream_reported() {
        let l = LineUp::default();
        assert!(
            l.ready(),
            "a camera keeping no time of its own does not wait"
        );
        l.waits.store(true, Ordering::Relaxed);
        l.selected(0);
        assert!(l.ready(), "a lone stream has nothing to line up with");
        l.selected(1);
        assert!(!l.ready());
        l.reported(1);
        assert!(l.lined_up.lock().unwrap().is_none());
        l.reported(1);
        assert!(
            l.lined_up.lock().unwrap().is_none(),
            "one stream's reports are not both"
        );
        l.reported(0);
        assert!(l.lined_up.lock().unwrap().is_some());
        // The jitterbuffers take the correction first.
        assert!(!l.ready());
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
