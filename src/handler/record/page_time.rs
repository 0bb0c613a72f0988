//! When a page's picture and sound happened. wpesrc 1.22 stamps neither with it: a frame two
//! frames after its content was drawn, a sound buffer with the time it reached this process.
//! Both are restamped here, so that a page's picture and sound keep the sync they had in the
//! page.

use gstreamer as gst;
use gstreamer::prelude::*;

/// Stamps each page frame with the time its content was drawn, less half a frame. Why: a
/// frame's stamp was two frames after its content:
/// - wpesrc takes the view's latest frame and then waits for that copy's timestamp, the next
///   slot of its rate (one frame);
/// - taking a frame is what lets WebKit draw the next (`frame_complete`), so the frame taken
///   was drawn from the page as it was when the one before was taken (another frame).
///
/// A frame's content is therefore stamped with the time the frame two before was pushed, which
/// is its slot, or later when wpesrc runs late. What it shows changed somewhere in the frame
/// before (a `<video>` frame, a timer), so it is put half a frame earlier, the middle of where
/// the change can be. Measured with a page playing a flash/beep video at 30 fps, the MP4's
/// tracks at their true distance, the sound stamped by its arrival: before, the sound 48-84 ms
/// before its flash; with the two frames, 8-14 ms before; with the half frame, -10 to +7 ms.
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
/// delay (a page that paused says so, and starts again from its arrival anyway). Below the page
/// mixer's latency (`source_web::MIX_LATENCY`), which has to wait for sound this late.
const GAP: gst::ClockTime = gst::ClockTime::from_mseconds(200);

/// The times of one page sound stream: its samples counted from its first arrival, as the page
/// plays them at the rate of the clock. Why: wpesrc stamps a buffer with the time it reached
/// this process, and on a busy node the page's sound then came later than its picture by as
/// long as the node stayed busy (seen: +61 ms from 10 s on, with one core kept busy): the
/// mixer takes a shift over 40 ms that lasts a second as the new position. The mixer places
/// sound by its own count of samples otherwise, so the count here starts again only where the
/// mixer is to follow (the buffer is marked a discontinuity): after a pause, or a gap over
/// `GAP`. Sound that WebKit lost without a pause (not seen: its sink plays late sound rather
/// than drop it) would put the rest early by what was lost, up to `GAP`.
#[derive(Default)]
pub struct SoundClock {
    /// The running time of sample 0 of the current run of sound.
    origin: Option<gst::ClockTime>,
    /// Samples since `origin`.
    samples: u64,
}

impl SoundClock {
    /// The time of a buffer of `frames` samples at `rate` that arrived at `arrival`; `discont`
    /// when the page paused before it. True with it when the count started again there.
    pub fn stamp(
        &mut self,
        arrival: gst::ClockTime,
        frames: u64,
        rate: u32,
        discont: bool,
    ) -> (gst::ClockTime, bool) {
        let at = |samples: u64| {
            gst::ClockTime::from_nseconds(
                samples.saturating_mul(1_000_000_000) / u64::from(rate.max(1)),
            )
        };
        let again = match self.origin {
            None => true,
            Some(o) => discont || arrival > o + at(self.samples) + GAP,
        };
        if again {
            self.origin = Some(arrival);
            self.samples = 0;
        }
        let t = self.origin.unwrap_or(arrival) + at(self.samples);
        self.samples += frames;
        (t, again)
    }
}

/// How long before its arrival a page's sound was played: what remained after the frames were
/// stamped with their drawing, the sound 6-9 ms late on average (a page's `<video>`, 10 runs
/// at 30 fps and 7 at 60), taken for its trip from WebKit's process to this one (wpesrc's web
/// extension writes each buffer into shared memory and sends a message for it).
const SOUND_TRIP: gst::ClockTime = gst::ClockTime::from_mseconds(7);

/// Stamps the buffers of page sound pad `pad` with a `SoundClock`, less `SOUND_TRIP`.
pub fn stamp_sound(pad: &gst::Pad) {
    // The clock, and the pad's rate and bytes per sample, read from its caps once: wpesrc
    // makes a pad of its own for each sound stream and never changes its caps.
    let state = std::sync::Mutex::new((SoundClock::default(), None::<(u32, usize)>));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let (clock, format) = &mut *state;
        if format.is_none() {
            *format = pad
                .current_caps()
                .and_then(|c| gstreamer_audio::AudioInfo::from_caps(&c).ok())
                .map(|i| (i.rate(), i.bpf() as usize))
                .filter(|f| f.1 > 0);
        }
        let Some(gst::PadProbeData::Buffer(buf)) = &mut info.data else {
            return gst::PadProbeReturn::Ok;
        };
        if let (Some(arrival), Some((rate, bpf))) = (buf.pts(), *format) {
            let frames = (buf.size() / bpf) as u64;
            let discont = buf.flags().contains(gst::BufferFlags::DISCONT);
            let (t, again) = clock.stamp(arrival, frames, rate, discont);
            let b = buf.make_mut();
            b.set_pts(t.saturating_sub(SOUND_TRIP));
            b.set_dts(t.saturating_sub(SOUND_TRIP));
            if again {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
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

    /// 10-ms buffers at 48 kHz arriving at `arrivals` (ms, paused before); their stamps in ms
    /// and whether the count started again there.
    fn stamps(arrivals: &[(u64, bool)]) -> Vec<(u64, bool)> {
        let mut c = SoundClock::default();
        arrivals
            .iter()
            .map(|&(a, d)| {
                let (t, again) = c.stamp(ms(a), 480, 48_000, d);
                (t.mseconds(), again)
            })
            .collect()
    }

    #[test]
    fn sound_that_arrives_late_keeps_the_time_it_was_played() {
        // From the third buffer on, each arrives 50 ms late (then 150), then the backlog comes
        // at once; one came early.
        let arrivals = [
            (100, false),
            (110, false),
            (170, false),
            (180, false),
            (290, false),
            (291, false),
            (292, false),
            (165, false),
        ];
        let got = stamps(&arrivals);
        let want: Vec<(u64, bool)> = (0..8).map(|k| (100 + 10 * k, k == 0)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_pause_or_a_gap_starts_the_count_again() {
        assert_eq!(
            stamps(&[(100, false), (110, false), (400, true)]),
            vec![(100, true), (110, false), (400, true)]
        );
        // Sound that stopped for longer than GAP without a pause.
        assert_eq!(
            stamps(&[(100, false), (110, false), (500, false), (510, false)]),
            vec![(100, true), (110, false), (500, true), (510, false)]
        );
    }

    #[test]
    fn the_page_mixer_waits_for_sound_as_late_as_a_gap() {
        // The mixer drops what comes after its latency: sound up to GAP late, less its trip,
        // and a block of the mixer's, must still be in time.
        let latency = gst::ClockTime::from_nseconds(
            crate::pipeline::source_web::MIX_LATENCY.as_nanos() as u64,
        );
        assert!(GAP + gst::ClockTime::from_mseconds(10) < latency);
    }
}
