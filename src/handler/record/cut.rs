//! A stop ends the recording at the instant it was asked, not when the handler gets to it: a
//! loaded machine may read the stop hundreds of milliseconds late, and a sender's audio may
//! lag its video (MPEG-TS interleaving). The sources are cut at the stop's running time, and
//! EOS goes in once every stream has sent up to it (or `CUT_WAIT` passed), so each stream of
//! each output ends at the stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use slog::info;

use super::{Recording, SrcState};
use crate::model::now_ms;

/// How long a stop waits for every stream to reach the stop's instant (a sender's audio
/// lagging its video by a fraction of a second); a stream that does not is ended where it is.
pub(super) const CUT_WAIT: Duration = Duration::from_millis(600);

/// The longest a stop waits for a page to reach the cut (its frames come two and a half frames
/// after their content: a page below 3 fps can end a frame short of it).
const PAGE_CUT_WAIT: Duration = Duration::from_millis(1500);

/// A stop asked longer ago than this is cut here: the clock does not say more.
const MAX_AGO_MS: u64 = 3_000;

impl Recording<'_> {
    /// Cuts every live source at the running time of wall-clock `at_ms`. Whether a source is
    /// cut or a page recorded, so the stop waits for it (`past_cut`).
    pub(super) fn cut(&mut self, at_ms: u64) -> bool {
        let Some(now) = self.pipeline.current_running_time() else {
            return false;
        };
        let ago = now_ms().saturating_sub(at_ms).min(MAX_AGO_MS) * 1_000_000;
        let rt = now.nseconds().saturating_sub(ago) as i64;
        info!(self.log, "cutting the sources at the stop"; "running_time_ms" => rt / 1_000_000,
                    "asked_ms_ago" => ago / 1_000_000);
        self.cut_rt.store(rt, Ordering::Relaxed);
        let mut cut = false;
        for src in self.sources.iter().filter(|s| s.state == SrcState::Live) {
            src.conn.cut_at(rt);
            cut = true;
        }
        cut || !self.web_reached.is_empty()
    }

    /// How long this recording's stop waits for its streams to reach the cut: `CUT_WAIT`, or
    /// for a page, as late as its frames come (`source_web::frame_lag`), up to `PAGE_CUT_WAIT`.
    pub(super) fn cut_wait(&self) -> Duration {
        if self.web_reached.is_empty() {
            return CUT_WAIT;
        }
        crate::pipeline::source_web::frame_lag(self.spec.video.fps).clamp(CUT_WAIT, PAGE_CUT_WAIT)
    }

    /// Whether every live source has sent up to the cut, and every page's picture and sound
    /// reached it.
    pub(super) fn past_cut(&self) -> bool {
        let rt = self.cut_rt.load(Ordering::Relaxed);
        self.sources
            .iter()
            .filter(|s| s.state == SrcState::Live)
            .all(|s| s.conn.past_cut())
            && self.web_reached.iter().all(|r| r.past(rt))
    }
}

/// Drops what reaches output input `pad` past the cut `rt`: media that went through a source's
/// gate after the stop's instant but before the handler read the stop. From the first buffer
/// shown after the cut on, everything goes: a tail in decode order, so every frame kept still
/// has its references, and none is shown after the cut.
pub(super) fn at_output(pad: &gst::Pad, rt: &Arc<AtomicI64>) {
    let rt = rt.clone();
    let past = AtomicBool::new(false);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let cut = rt.load(Ordering::Relaxed);
        if cut == i64::MAX {
            return gst::PadProbeReturn::Ok;
        }
        if past.load(Ordering::Relaxed) {
            return crate::pipeline::DROP_BUFFER;
        }
        let shown = info.buffer().and_then(|b| {
            let ev = pad.sticky_event::<gst::event::Segment>(0)?;
            let seg = ev.segment().downcast_ref::<gst::ClockTime>()?;
            seg.to_running_time(b.pts()?)
        });
        match shown {
            Some(t) if t.nseconds() as i64 > cut => {
                past.store(true, Ordering::Relaxed);
                crate::pipeline::DROP_BUFFER
            }
            _ => gst::PadProbeReturn::Ok,
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Frames (decode ms, presentation ms) pushed in decode order through `at_output`, the cut
    /// at `cut_ms` (None: no stop); the presentation times that went through.
    fn through(cut_ms: Option<i64>, frames: &[(u64, u64)]) -> Vec<u64> {
        gst::init().unwrap();
        crate::pipeline::quiet_dropped_buffer_criticals();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink = gst::Pad::builder(gst::PadDirection::Sink)
            .chain_function(move |_, _, buf| {
                g.lock().unwrap().push(buf.pts().unwrap().mseconds());
                Ok(gst::FlowSuccess::Ok)
            })
            .build();
        let src = gst::Pad::builder(gst::PadDirection::Src).build();
        src.set_active(true).unwrap();
        sink.set_active(true).unwrap();
        src.link(&sink).unwrap();
        let rt = Arc::new(AtomicI64::new(i64::MAX));
        at_output(&sink, &rt);
        src.push_event(gst::event::StreamStart::new("s"));
        let seg = gst::FormattedSegment::<gst::ClockTime>::new();
        src.push_event(gst::event::Segment::new(&seg));
        if let Some(c) = cut_ms {
            rt.store(c * 1_000_000, Ordering::Relaxed);
        }
        for &(dts, pts) in frames {
            let mut b = gst::Buffer::new();
            let m = b.get_mut().unwrap();
            m.set_dts(gst::ClockTime::from_mseconds(dts));
            m.set_pts(gst::ClockTime::from_mseconds(pts));
            let _ = src.push(b);
        }
        got.lock().unwrap().clone()
    }

    /// H.264 with two B-frames, in decode order: I P B B P B B.
    const GOP: [(u64, u64); 7] = [
        (0, 67),
        (33, 167),
        (67, 100),
        (100, 133),
        (133, 267),
        (167, 200),
        (200, 233),
    ];

    #[test]
    fn before_a_stop_everything_goes_through() {
        assert_eq!(through(None, &GOP).len(), 7);
    }

    #[test]
    fn a_cut_keeps_a_decodable_head_and_shows_nothing_after_it() {
        // The P frame shown at 167 ms comes second: it and all after it go, so the B frames
        // that need it go too.
        assert_eq!(through(Some(150), &GOP), vec![67]);
        // Cut after the second P frame's B frames: the head up to it stays whole.
        assert_eq!(through(Some(250), &GOP), vec![67, 167, 100, 133]);
        assert_eq!(through(Some(300), &GOP).len(), 7);
    }

    #[test]
    fn audio_ends_at_the_cut() {
        let frames: Vec<(u64, u64)> = (0..10).map(|i| (i * 21, i * 21)).collect();
        assert_eq!(through(Some(50), &frames), vec![0, 21, 42]);
    }
}
