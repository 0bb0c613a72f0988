//! Decode times for video that comes with presentation times only.
//!
//! An RTP depayloader (an RTSP camera's) stamps each frame with its presentation time alone,
//! and the parser gives it that as its decode time. With B-frames that time goes back in decode
//! order (I0 P3 B1 B2), and everything downstream that keeps time moving forward (the gate, the
//! copy chain's guard, the muxers) pushed each B-frame after its P frame: the file showed them
//! out of order. Plain GStreamer does the same (`rtph264depay ! h264parse ! mp4mux`).
//!
//! Here decode times are derived as an encoder sets them, without holding a frame back: the
//! first frame's is `DELAY_FRAMES` frames before its presentation, each next one a frame later,
//! never after the frame's own presentation (a stream whose frames come late or go missing
//! falls behind, so every keyframe, after which nothing refers back, catches up). Two frames
//! cover B-frames as encoders send them: two in a row, or x264's pyramid of three. A stream
//! that reorders deeper gets its frames moved after the last as before, never muxed backwards.
//! `h264timestamper` does this from the SPS but holds frames and shifts the timeline; in this
//! graph it lost a camera's first keyframe now and then, and it read this test camera's
//! reordering as none.

use gstreamer as gst;
use gstreamer::prelude::*;
use std::collections::VecDeque;
use std::sync::Mutex;

/// How many frames a stream's decode times run ahead of its presentation.
const DELAY_FRAMES: i64 = 2;

/// The frame step assumed until the stream shows its own (30 fps).
const DEFAULT_STEP_NS: i64 = 33_333_333;

/// How many recent presentation times the frame step is learned from.
const RECENT: usize = 16;

/// How many presentation times the frame step is learned from at least.
const LEARNED_AFTER: usize = 8;

/// Whether video with these caps may carry B-frames: H.264 or H.265 other than the H.264
/// profiles without them (baseline, constrained-baseline).
pub fn may_reorder(caps: &gst::CapsRef) -> bool {
    let Some(s) = caps.structure(0) else {
        return false;
    };
    match s.name().as_str() {
        "video/x-h265" => true,
        "video/x-h264" => !matches!(
            s.get::<&str>("profile"),
            Ok("baseline" | "constrained-baseline")
        ),
        _ => false,
    }
}

/// How far an RTSP connection's media is moved forward in its own time: a first connection's
/// timestamps start near zero, and a decode time `DELAY_FRAMES` frames before the first
/// presentation must not be before zero. Every pad of the connection moves alike, so their
/// sync, and the running time the gate maps to the pipeline's, keep their relation.
const SHIFT_NS: u64 = 10_000_000_000;

/// Installed first on every pad of a source whose video carries presentation times only:
/// moves its buffers by `SHIFT_NS` and, on encoded video that may reorder, derives decode
/// times, before the pad is held and gated (which then see time go forward).
pub fn install(pad: &gst::Pad) {
    // On the pad inside the ghost pad where there is one (decodebin3's): installed on the
    // ghost pad itself, the hold's probe still read the times unmoved (seen: the connection
    // then placed 10 s ahead of the clock).
    let target = pad
        .downcast_ref::<gst::GhostPad>()
        .and_then(|g| g.target())
        .unwrap_or_else(|| pad.clone());
    let pad = &target;
    // Events that carry times move alike: a gap (a lost packet's), and the end of a segment
    // with one (a server playing a file gives its length: the last 10 s would be clipped).
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, |_, info| {
        let moved = match info.event().map(|e| e.view()) {
            Some(gst::EventView::Gap(gap)) => {
                let (ts, duration) = gap.get();
                Some(
                    gst::event::Gap::builder(ts + gst::ClockTime::from_nseconds(SHIFT_NS))
                        .duration(duration)
                        .seqnum(gap.seqnum())
                        .build(),
                )
            }
            Some(gst::EventView::Segment(seg)) => seg
                .segment()
                .downcast_ref::<gst::ClockTime>()
                .filter(|s| s.stop().is_some())
                .map(|s| {
                    let mut s = s.clone();
                    s.set_stop(
                        s.stop()
                            .map(|t| t + gst::ClockTime::from_nseconds(SHIFT_NS)),
                    );
                    gst::event::Segment::builder(&s)
                        .seqnum(seg.seqnum())
                        .build()
                }),
            _ => None,
        };
        if let Some(ev) = moved {
            info.data = Some(gst::PadProbeData::Event(ev));
        }
        gst::PadProbeReturn::Ok
    });
    // Decided at the first buffer: the pad's caps are known by then.
    let state = Mutex::new(None::<Option<DecodeTimes>>);
    let t = gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
    pad.add_probe(t, move |pad, info| {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let derive = state.get_or_insert_with(|| {
            pad.current_caps()
                .is_some_and(|c| may_reorder(&c))
                .then(DecodeTimes::default)
        });
        match &mut info.data {
            Some(gst::PadProbeData::Buffer(buffer)) => retime(buffer.make_mut(), derive),
            Some(gst::PadProbeData::BufferList(list)) => {
                list.make_mut().foreach_mut(|mut b, _| {
                    retime(b.make_mut(), derive);
                    std::ops::ControlFlow::Continue(Some(b))
                });
            }
            _ => {}
        }
        gst::PadProbeReturn::Ok
    });
}

/// Moves `b` by `SHIFT_NS`, and gives it a decode time from `derive` where there is one.
fn retime(b: &mut gst::BufferRef, derive: &mut Option<DecodeTimes>) {
    let shift = gst::ClockTime::from_nseconds(SHIFT_NS);
    b.set_dts(b.dts().map(|d| d + shift));
    let Some(pts) = b.pts().map(|p| p + shift) else {
        return;
    };
    b.set_pts(pts);
    let Some(d) = derive else {
        return;
    };
    let key = !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
    let dur = b.duration().map(|d| d.nseconds() as i64);
    let (pts, dts) = d.next(pts.nseconds() as i64, dur, key);
    b.set_pts(gst::ClockTime::from_nseconds(pts as u64));
    b.set_dts(gst::ClockTime::from_nseconds(dts as u64));
}

/// The decode-time state of one stream.
#[derive(Default)]
struct DecodeTimes {
    /// Recent presentation times, for the frame step.
    recent: VecDeque<i64>,
    /// The decode time given to the last frame.
    last_dts: Option<i64>,
}

impl DecodeTimes {
    /// The presentation and decode times of the next frame in decode order, given its
    /// presentation time, its duration where the parser knows it, and whether it is a keyframe.
    /// The step learned from the stream wins over the parser's duration, which comes from the
    /// SPS timing a camera may state wrong (doubled, or its highest rate).
    fn next(&mut self, pts: i64, dur: Option<i64>, key: bool) -> (i64, i64) {
        let step = self
            .learned_step()
            .or(dur.filter(|d| *d > 0))
            .unwrap_or(DEFAULT_STEP_NS);
        self.recent.push_back(pts);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        let ahead = pts.saturating_sub(DELAY_FRAMES.saturating_mul(step));
        let Some(last) = self.last_dts else {
            // A buffer's time cannot be before zero: a stream that starts there starts its
            // decode times there, and its first B-frames are moved (the next keyframe catches up).
            let first = ahead.max(0);
            self.last_dts = Some(first);
            return (pts.max(first), first);
        };
        let mut dts = last.saturating_add(step).min(pts);
        if key {
            dts = dts.max(ahead);
        }
        // Never back, never the same: a frame that cannot be decoded after the last in time
        // (deeper reordering, a burst) is moved after it, its presentation with it.
        let dts = dts.max(last + 1);
        self.last_dts = Some(dts);
        (pts.max(dts), dts)
    }

    /// The frame step: the least gap between the recent presentation times, once there are
    /// enough of them (`LEARNED_AFTER`; an I and a P frame alone are several frames apart).
    fn learned_step(&self) -> Option<i64> {
        if self.recent.len() < LEARNED_AFTER {
            return None;
        }
        let mut sorted: Vec<i64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        sorted
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|d| *d >= 1_000_000)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: i64 = 66_666_667;

    /// Feeds presentation times (in frames, from `BASE` on) in decode order; keyframes marked
    /// by `k`. Gives them back from zero.
    fn run(frames: &[(i64, bool)], dur: Option<i64>) -> Vec<(i64, i64)> {
        run_from(BASE, frames, dur)
    }

    const BASE: i64 = 100;

    fn run_from(base: i64, frames: &[(i64, bool)], dur: Option<i64>) -> Vec<(i64, i64)> {
        let mut d = DecodeTimes::default();
        frames
            .iter()
            .map(|(p, k)| d.next((p + base) * F, dur, *k))
            .map(|(p, dt)| (p - base * F, dt - base * F))
            .collect()
    }

    fn check_decodable(out: &[(i64, i64)]) {
        for w in out.windows(2) {
            assert!(w[1].1 > w[0].1, "decode times go forward: {out:?}");
        }
        for (p, d) in out {
            assert!(d <= p, "decoded before shown: {out:?}");
        }
    }

    #[test]
    fn b_frames_keep_their_presentation_times() {
        // I P B B P B B, twice, as x264 with two B-frames sends it.
        let gop = [
            (0, true),
            (3, false),
            (1, false),
            (2, false),
            (6, false),
            (4, false),
            (5, false),
            (7, true),
            (10, false),
            (8, false),
            (9, false),
        ];
        for dur in [Some(F), None] {
            let out = run(&gop, dur);
            check_decodable(&out);
            let pts: Vec<i64> = out.iter().map(|(p, _)| p / F).collect();
            assert_eq!(pts, gop.iter().map(|g| g.0).collect::<Vec<_>>(), "{dur:?}");
        }
    }

    #[test]
    fn a_pyramid_of_three_b_frames_keeps_its_order() {
        let gop = [
            (0, true),
            (4, false),
            (2, false),
            (1, false),
            (3, false),
            (8, false),
            (6, false),
            (5, false),
            (7, false),
        ];
        let out = run(&gop, Some(F));
        check_decodable(&out);
        assert!(out.iter().zip(gop).all(|((p, _), (g, _))| *p == g * F));
    }

    #[test]
    fn a_stream_without_b_frames_is_unchanged_in_presentation() {
        let frames: Vec<(i64, bool)> = (0..30).map(|i| (i, i % 10 == 0)).collect();
        let out = run(&frames, None);
        check_decodable(&out);
        assert!(out.iter().zip(&frames).all(|((p, _), (g, _))| *p == g * F));
        // Two frames ahead, not more, once a keyframe came after the step was learned (before,
        // the step assumed is 30 fps).
        assert!(out[10..].iter().all(|(p, d)| p - d <= 2 * F + 1), "{out:?}");
    }

    #[test]
    fn lost_frames_fall_behind_and_a_keyframe_catches_up() {
        // Frames 3..=12 lost: decode times lag, the keyframe at 20 brings them back.
        let mut frames: Vec<(i64, bool)> = vec![(0, true), (1, false), (2, false)];
        frames.extend((13..20).map(|i| (i, false)));
        frames.push((20, true));
        let out = run(&frames, Some(F));
        check_decodable(&out);
        let (p, d) = out[out.len() - 1];
        assert_eq!(p - d, 2 * F);
    }

    #[test]
    fn deeper_reordering_moves_frames_forward_never_back() {
        // Four B-frames displayed before their P frame, no pyramid: deeper than two.
        let gop = [
            (0, true),
            (5, false),
            (1, false),
            (2, false),
            (3, false),
            (4, false),
        ];
        let out = run(&gop, Some(F));
        check_decodable(&out);
    }

    #[test]
    fn a_wrong_duration_from_the_parser_does_not_break_the_order() {
        // I P B B P B B P B B, twice: the step is learned within the first GOP, and from the
        // second keyframe on the order is the sender's.
        let gop = |base: i64| {
            let mut g = vec![(base, true)];
            for p in [3, 6, 9] {
                g.extend([
                    (base + p, false),
                    (base + p - 2, false),
                    (base + p - 1, false),
                ]);
            }
            g
        };
        let mut frames = gop(0);
        frames.extend(gop(10));
        for dur in [F / 2, 10 * F] {
            let out = run(&frames, Some(dur));
            check_decodable(&out);
            let pts: Vec<i64> = out.iter().map(|(p, _)| p / F).collect();
            let want: Vec<i64> = frames.iter().map(|f| f.0).collect();
            assert_eq!(pts[10..], want[10..], "{dur}: {out:?}");
        }
    }

    #[test]
    fn a_stream_starting_at_zero_decodes_from_zero() {
        let out = run_from(0, &[(0, true), (3, false), (1, false), (2, false)], Some(F));
        check_decodable(&out);
        assert_eq!(out[0], (0, 0));
    }

    #[test]
    fn retime_moves_every_time_a_buffer_has() {
        gst::init().unwrap();
        let s = |t: u64| gst::ClockTime::from_seconds(t);
        let shift = gst::ClockTime::from_nseconds(SHIFT_NS);
        // Audio (nothing derived): both times moved alike; a decode time alone moved too.
        let mut b = gst::Buffer::new();
        b.get_mut().unwrap().set_pts(s(1));
        b.get_mut().unwrap().set_dts(s(1));
        retime(b.get_mut().unwrap(), &mut None);
        assert_eq!((b.pts(), b.dts()), (Some(s(1) + shift), Some(s(1) + shift)));
        let mut b = gst::Buffer::new();
        b.get_mut().unwrap().set_dts(s(2));
        retime(b.get_mut().unwrap(), &mut None);
        assert_eq!((b.pts(), b.dts()), (None, Some(s(2) + shift)));
        // Video that may reorder: its decode time derived, two frames before its presentation.
        let mut derive = Some(DecodeTimes::default());
        let mut b = gst::Buffer::new();
        b.get_mut().unwrap().set_pts(s(0));
        b.get_mut()
            .unwrap()
            .set_duration(gst::ClockTime::from_nseconds(F as u64));
        retime(b.get_mut().unwrap(), &mut derive);
        assert_eq!(b.pts(), Some(shift));
        assert_eq!(
            b.dts(),
            Some(shift - gst::ClockTime::from_nseconds(2 * F as u64))
        );
    }

    #[test]
    fn which_caps_may_reorder() {
        let caps = |s: &str| s.parse::<gst::Caps>().unwrap();
        gst::init().unwrap();
        assert!(may_reorder(&caps("video/x-h264,profile=high")));
        assert!(may_reorder(&caps("video/x-h264")));
        assert!(may_reorder(&caps("video/x-h265,profile=main")));
        assert!(!may_reorder(&caps(
            "video/x-h264,profile=constrained-baseline"
        )));
        assert!(!may_reorder(&caps("video/x-vp8")));
        assert!(!may_reorder(&caps("video/x-raw")));
    }
}
