//! When a page's picture and sound happened. wpesrc 1.22 stamps neither with it: a frame with
//! a slot of its rate after its content was drawn, a sound buffer with the time it reached this
//! process. Both are restamped here, so that a page's picture and sound keep the sync they had
//! in the page.

use gstreamer as gst;
use gstreamer::prelude::*;

/// Stamps each page frame with the time its content was drawn, less half a frame. Why: the
/// page's sound is stamped as it arrives, but a frame's stamp was two frames after its content:
/// - wpesrc takes the view's latest frame and then waits for that copy's timestamp, the next
///   slot of its rate (one frame);
/// - taking a frame is what lets WebKit draw the next (`frame_complete`), so the frame taken
///   was drawn from the page as it was when the one before was taken (another frame).
///
/// A frame's content is therefore stamped with the time the frame two before was pushed, which
/// is its slot, or later when wpesrc runs late. What it shows changed somewhere in the frame
/// before (a `<video>` frame, a timer), so it is put half a frame earlier, the middle of where
/// the change can be. Measured with a page playing a flash/beep video at 30 fps: the sound was
/// 48-84 ms before its flash; with the two frames -8 to -14, with the half frame -10 to +7.
pub fn stamp_at_drawing(web: &gst::Element, caps: &gst::Pad) {
    let web = web.downgrade();
    // The running times at which the last two frames were pushed, the older first. Written
    // and read on the source's streaming thread only.
    let pushed = std::sync::Mutex::new([None::<gst::ClockTime>; 2]);
    caps.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let now = web.upgrade().and_then(|w| w.current_running_time());
        let Some(gst::PadProbeData::Buffer(buf)) = &mut info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let mut pushed = pushed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pts) = buf.pts() {
            let frame = buf.duration().unwrap_or_default();
            let slot = pts.saturating_sub(frame * 2);
            let drawn = pushed[0].map_or(slot, |t| t.clamp(slot, pts));
            let b = buf.make_mut();
            b.set_pts(drawn.saturating_sub(frame / 2));
            b.set_dts(drawn.saturating_sub(frame / 2));
        }
        if now.is_some() {
            *pushed = [pushed[1], now];
        }
        gst::PadProbeReturn::Ok
    });
}

/// How late a page's sound may arrive before it is taken for a gap in the sound rather than a
/// delay (a page that paused says so, and starts again from its arrival anyway).
const GAP: gst::ClockTime = gst::ClockTime::from_mseconds(200);

/// The times of one page sound stream: its samples counted from the earliest arrival, as the
/// page plays them at the rate of the clock. Why: wpesrc stamps a buffer with the time it
/// reached this process, and on a busy node the page's sound then came later than its
/// picture by as long as the node stayed busy (seen: +61 ms from 10 s on, with one core kept
/// busy); the mixer takes a shift over 40 ms that lasts a second as the new position.
#[derive(Default)]
pub struct SoundClock {
    /// The running time of sample 0 of the current run of sound.
    origin: Option<gst::ClockTime>,
    /// Samples since `origin`.
    samples: u64,
}

impl SoundClock {
    /// The time of a buffer of `frames` samples at `rate` that arrived at `arrival`; `discont`
    /// when the page paused before it. The count starts again at a pause, from an earlier
    /// arrival than the count says (the first ones came late), and after a gap of over `GAP`.
    pub fn stamp(
        &mut self,
        arrival: gst::ClockTime,
        frames: u64,
        rate: u32,
        discont: bool,
    ) -> gst::ClockTime {
        let at = |samples: u64| {
            gst::ClockTime::from_nseconds(
                samples.saturating_mul(1_000_000_000) / u64::from(rate.max(1)),
            )
        };
        let counted = self.origin.map(|o| o + at(self.samples));
        let start_again = match counted {
            None => true,
            Some(c) => discont || arrival < c || arrival > c + GAP,
        };
        if start_again {
            self.origin = Some(arrival);
            self.samples = 0;
        }
        let t = self.origin.unwrap_or(arrival) + at(self.samples);
        self.samples += frames;
        t
    }
}

/// How long before its arrival a page's sound was played: what remained after the frames were
/// stamped with their drawing, the sound 6-9 ms late on average (a page's `<video>`, 10 runs
/// at 30 fps and 7 at 60), taken for its trip from WebKit's process to this one (wpesrc's web
/// extension writes each buffer into shared memory and sends a message for it).
const SOUND_TRIP: gst::ClockTime = gst::ClockTime::from_mseconds(7);

/// Stamps the buffers of page sound pad `pad` with a `SoundClock`, less `SOUND_TRIP`.
pub fn stamp_sound(pad: &gst::Pad) {
    let clock = std::sync::Mutex::new(SoundClock::default());
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let rate_bpf = pad
            .current_caps()
            .and_then(|c| gstreamer_audio::AudioInfo::from_caps(&c).ok())
            .map(|i| (i.rate(), i.bpf() as usize));
        let Some(gst::PadProbeData::Buffer(buf)) = &mut info.data else {
            return gst::PadProbeReturn::Ok;
        };
        if let (Some(arrival), Some((rate, bpf))) = (buf.pts(), rate_bpf.filter(|r| r.1 > 0)) {
            let frames = (buf.size() / bpf) as u64;
            let discont = buf.flags().contains(gst::BufferFlags::DISCONT);
            let t = clock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stamp(arrival, frames, rate, discont);
            let b = buf.make_mut();
            b.set_pts(t.saturating_sub(SOUND_TRIP));
            b.set_dts(t.saturating_sub(SOUND_TRIP));
        }
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> gst::ClockTime {
        gst::ClockTime::from_mseconds(v)
    }

    /// 10-ms buffers at 48 kHz arriving at `arrivals` (ms); their stamps in ms.
    fn stamps(arrivals: &[(u64, bool)]) -> Vec<u64> {
        let mut c = SoundClock::default();
        arrivals
            .iter()
            .map(|&(a, d)| c.stamp(ms(a), 480, 48_000, d).mseconds())
            .collect()
    }

    #[test]
    fn sound_that_arrives_late_keeps_the_time_it_was_played() {
        // From the third buffer on, each arrives 50 ms late, then the backlog comes at once.
        let got = stamps(&[
            (100, false),
            (110, false),
            (170, false),
            (180, false),
            (190, false),
            (191, false),
            (192, false),
            (170, false),
        ]);
        assert_eq!(got, vec![100, 110, 120, 130, 140, 150, 160, 170]);
    }

    #[test]
    fn an_earlier_arrival_a_pause_or_a_gap_starts_the_count_again() {
        // The first came 5 ms late: the second, on time, moves the count.
        assert_eq!(stamps(&[(105, false), (110, false)]), vec![105, 110]);
        // A pause: from its arrival.
        assert_eq!(
            stamps(&[(100, false), (110, false), (400, true)]),
            vec![100, 110, 400]
        );
        // Sound that stopped for longer than GAP without a pause.
        assert_eq!(
            stamps(&[(100, false), (110, false), (500, false), (510, false)]),
            vec![100, 110, 500, 510]
        );
    }
}
