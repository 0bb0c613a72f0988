//! The handler's measurements for `rules::health`: the mean luma of each thumbnail frame and
//! its difference from the previous one (a few thousand pixels on a grid: the thumbnail is
//! 320 px wide, one frame every `pipeline.thumbnail_s`), and the RMS level of the raw audio
//! over half a second. Copied video (`track`) is judged black from its keyframes, never frozen
//! (see `attach`), and its audio, not decoded, not at all. A change is reported to the
//! service as it happens (`HandlerEvent::Health`).

use std::sync::Mutex;
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_audio as gst_audio;

use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::pipeline::encode::AUDIO_RAW_TEE;
use crate::rules::health::{self, Condition, Watch};

/// Grid step, in pixels, of the luma samples.
const STEP: usize = 4;
/// Audio is judged over this much sound at a time.
const AUDIO_SPAN_S: f64 = 0.5;

fn report(condition: Condition, change: Option<bool>) {
    if let Some(raised) = change {
        emit(&HandlerEvent::Health { condition, raised });
    }
}

/// Watches the thumbnail frames (black, frozen) and the raw audio (silent), if the graph has
/// them.
pub fn attach(pipeline: &gst::Pipeline, window_s: f64) {
    let start = Instant::now();
    if let Some(pad) = pipeline
        .by_name("thumb_caps")
        .and_then(|e| e.static_pad("src"))
    {
        // Copied video is seen at its keyframes only, each coded on its own: two of a still
        // picture differ by more than a moving one's frames may. Frozen is judged on decoded
        // frames (every other type) only.
        let judge_frozen = pipeline.by_name("thumb_dec").is_none();
        struct Video {
            black: Watch,
            frozen: Watch,
            last: Option<(f64, Vec<u8>)>,
        }
        let state = Mutex::new(Video {
            black: Watch::new(window_s),
            frozen: Watch::new(window_s),
            last: None,
        });
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(buf) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let Some((w, h)) = pad.current_caps().and_then(|c| {
                let s = c.structure(0)?;
                Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?))
            }) else {
                return gst::PadProbeReturn::Ok;
            };
            let Ok(map) = buf.map_readable() else {
                return gst::PadProbeReturn::Ok;
            };
            let grid = luma_grid(&map, w as usize, h as usize);
            let cols = (w as usize).div_ceil(STEP);
            if grid.is_empty() {
                return gst::PadProbeReturn::Ok;
            }
            let t = start.elapsed().as_secs_f64();
            let mean = grid.iter().map(|&y| y as f64).sum::<f64>() / grid.len() as f64;
            let black = health::is_black(mean);
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let frozen_since = match &st.last {
                Some((lt, prev)) if judge_frozen && prev.len() == grid.len() && !black => {
                    health::is_frozen(difference(prev, &grid, cols)).then_some(*lt)
                }
                _ => None,
            };
            let b = st.black.observe(t, black.then_some(t));
            let f = st.frozen.observe(t, frozen_since);
            st.last = Some((t, grid));
            drop(st);
            report(Condition::Black, b);
            report(Condition::Frozen, f);
            gst::PadProbeReturn::Ok
        });
    }
    if let Some(pad) = pipeline
        .by_name(AUDIO_RAW_TEE)
        .and_then(|e| e.static_pad("sink"))
    {
        // (watch, sum of squares, samples) over the current span.
        let state = Mutex::new((Watch::new(window_s), 0.0f64, 0u64));
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(buf) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let Some(ai) = pad
                .current_caps()
                .and_then(|c| gst_audio::AudioInfo::from_caps(&c).ok())
            else {
                return gst::PadProbeReturn::Ok;
            };
            let Ok(map) = buf.map_readable() else {
                return gst::PadProbeReturn::Ok;
            };
            let Some((sq, n)) = squares(&map, ai.format()) else {
                return gst::PadProbeReturn::Ok;
            };
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.1 += sq;
            st.2 += n;
            let span = (AUDIO_SPAN_S * ai.rate() as f64 * ai.channels() as f64) as u64;
            if st.2 >= span.max(1) {
                let rms = (st.1 / st.2 as f64).sqrt();
                let db = if rms > 0.0 {
                    20.0 * rms.log10()
                } else {
                    -200.0
                };
                let t = start.elapsed().as_secs_f64();
                let silent = health::is_silent(db);
                let change = st.0.observe(t, silent.then_some(t));
                st.1 = 0.0;
                st.2 = 0;
                drop(st);
                report(Condition::Silent, change);
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// How much two pictures differ (grids of `cols` luma samples a row): the largest difference
/// between the means of the same block of 5x5 samples (20x20 pixels), once each picture's own
/// mean is taken off. Block means average out coding noise (a lossy encoder re-codes a still
/// picture a level or two differently at every keyframe) and brightness drift; the largest
/// block keeps a small moving part (a clock, a speaker's face) from being averaged away.
fn difference(a: &[u8], b: &[u8], cols: usize) -> f64 {
    const B: usize = 5;
    let n = a.len().min(b.len());
    if n == 0 || cols == 0 {
        return 0.0;
    }
    let rows = n / cols;
    let mean = |g: &[u8]| g[..n].iter().map(|&y| y as f64).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let mut worst = 0.0f64;
    for by in (0..rows).step_by(B) {
        for bx in (0..cols).step_by(B) {
            let (mut d, mut k) = (0.0, 0.0);
            for y in by..(by + B).min(rows) {
                for x in bx..(bx + B).min(cols) {
                    let i = y * cols + x;
                    d += (a[i] as f64 - ma) - (b[i] as f64 - mb);
                    k += 1.0;
                }
            }
            worst = worst.max((d / k).abs());
        }
    }
    worst
}

/// Luma samples of an I420 frame (`w` x `h`, default strides) on a `STEP` grid.
fn luma_grid(frame: &[u8], w: usize, h: usize) -> Vec<u8> {
    let stride = w.div_ceil(4) * 4;
    if frame.len() < stride * h {
        return Vec::new();
    }
    (0..h)
        .step_by(STEP)
        .flat_map(|y| (0..w).step_by(STEP).map(move |x| frame[y * stride + x]))
        .collect()
}

/// The sum of squared samples (full scale 1.0) and their count, for S16LE and F32LE.
fn squares(data: &[u8], format: gst_audio::AudioFormat) -> Option<(f64, u64)> {
    use gst_audio::AudioFormat as F;
    match format {
        F::S16le => {
            let s = data.chunks_exact(2).map(|c| {
                let v = i16::from_le_bytes([c[0], c[1]]) as f64 / 32768.0;
                v * v
            });
            Some((s.sum(), (data.len() / 2) as u64))
        }
        F::F32le => {
            let s = data.chunks_exact(4).map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
                v * v
            });
            Some((s.sum(), (data.len() / 4) as u64))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_black_frame_samples_dark_and_a_tone_is_not_silence() {
        let (w, h) = (8, 4);
        let frame = vec![16u8; w * h * 3 / 2];
        let g = luma_grid(&frame, w, h);
        assert_eq!(g, vec![16, 16]);
        let tone: Vec<u8> = (0..480)
            .flat_map(|i| ((((i as f64) / 10.0).sin() * 16000.0) as i16).to_le_bytes())
            .collect();
        let (sq, n) = squares(&tone, gst_audio::AudioFormat::S16le).unwrap();
        let db = 10.0 * (sq / n as f64).log10();
        assert!(!health::is_silent(db), "{db}");
        let quiet = vec![0u8; 960];
        let (sq, _) = squares(&quiet, gst_audio::AudioFormat::S16le).unwrap();
        assert_eq!(sq, 0.0);
    }
}
