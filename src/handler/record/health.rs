//! The handler's measurements for `rules::health`: the mean luma of every encoded frame and its
//! difference from the last one that differed (on a grid at most 160 samples wide, at any size),
//! and the RMS level of the raw audio over half a second. Copied video (`track`) is judged
//! black from the keyframes its thumbnail decodes, never frozen (see `attach`), and its audio,
//! not decoded, not at all. A change is reported to the service as it happens
//! (`HandlerEvent::Health`).

use std::sync::Mutex;
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_audio as gst_audio;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::pipeline::encode::{AUDIO_RAW_TEE, VIDEO_RAW_TEE};
use crate::rules::health::{self, Condition, Watch};

/// Most columns of the luma grid a picture is judged on, whatever its size (rows in proportion:
/// 14,400 samples at 16:9), so a large picture costs no more than a small one.
const COLS: usize = 160;
/// Audio is judged over this much sound at a time.
const AUDIO_SPAN_S: f64 = 0.5;

fn report(condition: Condition, change: Option<bool>) {
    if let Some(raised) = change {
        emit(&HandlerEvent::Health { condition, raised });
    }
}

/// Watches the picture (black, frozen) and the raw audio (silent), if the graph has them.
pub fn attach(pipeline: &gst::Pipeline, window_s: f64) {
    let start = Instant::now();
    // Encoded video is judged on every frame, as it enters its encoders. Why not the thumbnail's
    // frames, one every `pipeline.thumbnail_s`: a picture that changes at the same period is
    // seen at the same phase every time, so a page playing a video that flashes once a second
    // was warned "frozen" (or black, on the other phase). Copied video is seen at its
    // keyframes only, through the thumbnail's decoder, each coded on its own: two of a still
    // picture differ by more than a moving one's frames may, so it is judged black, never frozen.
    let copied = pipeline.by_name("thumb_dec").is_some();
    let frames = if copied {
        pipeline.by_name("thumb_caps")
    } else {
        pipeline.by_name(VIDEO_RAW_TEE)
    };
    if let Some(pad) = frames.and_then(|e| e.static_pad(if copied { "src" } else { "sink" })) {
        watch_picture(&pad, window_s, start, !copied);
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

/// Judges each frame through `pad` (see `Picture`).
fn watch_picture(pad: &gst::Pad, window_s: f64, start: Instant, judge_frozen: bool) {
    // The picture, and the caps' frame layout, read again when they change.
    let state = Mutex::new((
        Picture::new(window_s, judge_frozen),
        None::<(gst::Caps, gst_video::VideoInfo)>,
    ));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buf) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let (picture, layout) = &mut *st;
        let caps = pad.current_caps();
        if layout.as_ref().map(|(c, _)| c) != caps.as_ref() {
            *layout = caps.and_then(|c| {
                let vi = gst_video::VideoInfo::from_caps(&c).ok()?;
                Some((c, vi))
            });
        }
        let Some((grid, cols)) = layout.as_ref().and_then(|(_, vi)| luma_grid(buf, vi)) else {
            return gst::PadProbeReturn::Ok;
        };
        let (b, f) = picture.observe(start.elapsed().as_secs_f64(), grid, cols);
        drop(st);
        report(Condition::Black, b);
        report(Condition::Frozen, f);
        gst::PadProbeReturn::Ok
    });
}

/// A picture followed frame by frame: black, and frozen (when judged) while it stays the same
/// as the last frame that differed, for the window. Against that frame rather than the one
/// before, so a slow change (a fade, a pan) adds up until it counts.
struct Picture {
    black: Watch,
    frozen: Option<Watch>,
    /// When the picture last changed, and its grid.
    changed: Option<(f64, Vec<u8>)>,
}

impl Picture {
    fn new(window_s: f64, judge_frozen: bool) -> Picture {
        Picture {
            black: Watch::new(window_s),
            frozen: judge_frozen.then(|| Watch::new(window_s)),
            changed: None,
        }
    }

    /// A frame at `t` (s) whose luma grid is `grid`, `cols` a row: the changes of the black and
    /// frozen warnings (`Watch::observe`).
    fn observe(&mut self, t: f64, grid: Vec<u8>, cols: usize) -> (Option<bool>, Option<bool>) {
        let mean = grid.iter().map(|&y| f64::from(y)).sum::<f64>() / grid.len().max(1) as f64;
        let black = health::is_black(mean);
        let frozen_since = match &self.changed {
            Some((since, prev)) if !black && prev.len() == grid.len() => {
                health::is_frozen(difference(prev, &grid, cols)).then_some(*since)
            }
            _ => None,
        };
        if frozen_since.is_none() {
            self.changed = Some((t, grid));
        }
        let b = self.black.observe(t, black.then_some(t));
        let f = self
            .frozen
            .as_mut()
            .and_then(|w| w.observe(t, frozen_since));
        (b, f)
    }
}

/// How much two pictures differ (grids of `cols` luma samples a row): the largest difference
/// between the means of the same block (a sixteenth of the width square: 80x80 pixels of a
/// 1280-px picture), once each picture's own mean is taken off. Block means average out coding
/// noise (a lossy encoder re-codes a still picture a level or two differently at every
/// keyframe) and brightness drift; the largest block keeps a small moving part (a clock, a
/// speaker's face) from being averaged away.
fn difference(a: &[u8], b: &[u8], cols: usize) -> f64 {
    let n = a.len().min(b.len());
    let block = (cols / 16).max(1);
    if n == 0 || cols == 0 {
        return 0.0;
    }
    let rows = n / cols;
    let mean = |g: &[u8]| g[..n].iter().map(|&y| y as f64).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let mut worst = 0.0f64;
    for by in (0..rows).step_by(block) {
        for bx in (0..cols).step_by(block) {
            let (mut d, mut k) = (0.0, 0.0);
            for y in by..(by + block).min(rows) {
                for x in bx..(bx + block).min(cols) {
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

/// The luma samples of a raw YUV frame on a grid at most `COLS` wide (square steps), read with
/// the frame's own strides, and its width; None for a frame that is not YUV or cannot be read.
fn luma_grid(buf: &gst::BufferRef, info: &gst_video::VideoInfo) -> Option<(Vec<u8>, usize)> {
    if !info.is_yuv() {
        return None;
    }
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buf, info).ok()?;
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = usize::try_from(*frame.plane_stride().first()?).ok()?;
    let data = frame.plane_data(0).ok()?;
    if w == 0 || h == 0 || data.len() < stride * (h - 1) + w {
        return None;
    }
    // Rounded up, so the columns span the whole width (rounded down, up to half of it was
    // never looked at).
    let step = w.div_ceil(COLS).max(1);
    let cols = w.div_ceil(step);
    let grid = (0..h)
        .step_by(step)
        .flat_map(|y| (0..cols).map(move |x| data[y * stride + x * step]))
        .collect();
    Some((grid, cols))
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

    /// An I420 frame of `w` x `h` whose luma is `y`.
    fn frame(w: u32, h: u32, y: u8) -> (gst::Buffer, gst_video::VideoInfo) {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, w, h)
            .build()
            .unwrap();
        let mut buf = gst::Buffer::with_size(info.size()).unwrap();
        {
            let mut map = buf.get_mut().unwrap().map_writable().unwrap();
            map.as_mut_slice().fill(128);
            map.as_mut_slice()[..(info.stride()[0] as usize * h as usize)].fill(y);
        }
        (buf, info)
    }

    #[test]
    fn a_picture_is_sampled_on_a_grid_of_its_luma() {
        let (buf, info) = frame(8, 4, 16);
        let (g, cols) = luma_grid(&buf, &info).unwrap();
        assert_eq!((g, cols), (vec![16; 32], 8));
        // 1280 wide: 160 columns, every 8th pixel of every 8th row.
        let (buf, info) = frame(1280, 720, 200);
        let (g, cols) = luma_grid(&buf, &info).unwrap();
        assert_eq!((g.len(), cols), (160 * 90, 160));
        // Widths that are not a multiple of 160: the last column is within a step of the right
        // edge.
        for w in [300u32, 854, 1000, 1366, 720] {
            let (buf, info) = frame(w, 64, 16);
            let (g, cols) = luma_grid(&buf, &info).unwrap();
            let step = (w as usize).div_ceil(COLS);
            assert!(
                cols <= COLS && (cols - 1) * step < w as usize,
                "{w}: {cols}"
            );
            assert!(
                w as usize - (cols - 1) * step <= step,
                "{w}: {cols} x {step}"
            );
            assert_eq!(g.len() % cols, 0);
        }
    }

    /// A grid (160 x 90) that is `y` but for a square of `sq` in its top left corner.
    fn grid(y: u8, sq: u8) -> Vec<u8> {
        (0..90)
            .flat_map(|r| (0..160).map(move |c| if r < 10 && c < 10 { sq } else { y }))
            .collect()
    }

    #[test]
    fn a_picture_that_flashes_once_a_second_is_neither_black_nor_frozen() {
        // 30 fps for 30 s: black, white for 3 frames each second (as the sync video); then a
        // grey picture whose corner blinks once a second. Sampled once a second at one phase,
        // the first was black (or frozen, at the other phase) and the second frozen.
        let mut p = Picture::new(3.0, true);
        for n in 0..900u32 {
            let t = f64::from(n) / 30.0;
            let g = if n < 450 {
                if n % 30 < 3 {
                    grid(235, 235)
                } else {
                    grid(16, 16)
                }
            } else if n % 30 < 15 {
                grid(128, 235)
            } else {
                grid(128, 128)
            };
            assert_eq!(p.observe(t, g, 160), (None, None), "frame {n}");
        }
    }

    #[test]
    fn a_still_picture_is_frozen_and_a_slow_fade_is_not() {
        let mut p = Picture::new(3.0, true);
        let raised: Vec<u32> = (0..150u32)
            .filter(|&n| p.observe(f64::from(n) / 30.0, grid(128, 200), 160).1 == Some(true))
            .collect();
        assert_eq!(raised, vec![90]);
        // A third of the corner's block brightens by a level every 10 frames: its block's mean
        // moves 0.3 a step, under the half level that counts against the frame before, but it
        // adds up against the last change.
        let mut p = Picture::new(3.0, true);
        for n in 0..300u32 {
            let mut g = grid(128, 128);
            let v = 100 + (n / 10) as u8;
            for r in 0..3 {
                g[r * 160..r * 160 + 10].fill(v);
            }
            assert_eq!(p.observe(f64::from(n) / 30.0, g, 160).1, None, "frame {n}");
        }
        // Copied video is judged black, never frozen.
        let mut p = Picture::new(3.0, false);
        let changes: Vec<(u32, (Option<bool>, Option<bool>))> = (0..150u32)
            .map(|n| (n, p.observe(f64::from(n) / 30.0, grid(16, 16), 160)))
            .filter(|(_, c)| *c != (None, None))
            .collect();
        assert_eq!(changes, vec![(90, (Some(true), None))]);
    }

    #[test]
    fn a_tone_is_not_silence() {
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
