//! Timing the outputs keep true to the source:
//! - an AAC encoder's priming (the silence it puts before the first input sample) is taken off
//!   its timestamps, as FFmpeg's encoders do, so the decoded sound is not late by it;
//! - each track's first running time at the MP4 muxer is written down (`timeline`), so the remux
//!   can undo the fragmented muxer's habit of starting every track at zero.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::timeline::{Spans, Timeline};

/// `voaacenc` delays its output by 1600 samples (measured: a tone from the first sample decodes
/// from sample 1600 on; FFmpeg's `aac` delays by 1024). The graph's audio is always 48 kHz.
const VOAACENC_PRIMING: gst::ClockTime =
    gst::ClockTime::from_nseconds(1600 * 1_000_000_000 / 48_000);

/// Takes the encoder's priming off the timestamps of `audio_aac_enc`'s output, and drops the
/// frames that hold nothing but it (they end before the first sound went in): kept, the
/// sound track started 33 ms before the picture with silence, and ffmpeg's timing of a
/// 15-fps file then put two frames in one tick.
pub fn compensate_priming(pipeline: &gst::Pipeline) {
    let Some(enc) = pipeline.by_name("audio_aac_enc") else {
        return;
    };
    if enc.factory().map(|f| f.name()) != Some("voaacenc".into()) {
        return;
    }
    let (Some(pad), Some(sink)) = (enc.static_pad("src"), enc.static_pad("sink")) else {
        return;
    };
    let first_in = std::sync::Arc::new(std::sync::Mutex::new(None::<gst::ClockTime>));
    let first = first_in.clone();
    sink.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let mut first = first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = info.buffer().and_then(|b| b.pts());
        }
        gst::PadProbeReturn::Ok
    });
    let by = VOAACENC_PRIMING;
    // Only the first frames can be priming alone: once one is kept, none is dropped (a
    // reconnection's times start again from zero, below the first input's).
    let kept = std::sync::atomic::AtomicBool::new(false);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let first_in = if kept.load(std::sync::atomic::Ordering::Relaxed) {
            None
        } else {
            *first_in.lock().unwrap_or_else(|p| p.into_inner())
        };
        if let Some(gst::PadProbeData::Buffer(b)) = &mut info.data {
            match b.pts() {
                // Only a source that starts at zero (a test source) has frames this early:
                // they hold the priming itself.
                Some(p) if p < by => return crate::pipeline::DROP_BUFFER,
                Some(p)
                    if first_in
                        .zip(b.duration())
                        .is_some_and(|(k, d)| p - by + d <= k) =>
                {
                    return crate::pipeline::DROP_BUFFER;
                }
                Some(p) => {
                    kept.store(true, std::sync::atomic::Ordering::Relaxed);
                    let b = b.make_mut();
                    b.set_pts(p - by);
                    if let Some(d) = b.dts() {
                        b.set_dts(d.saturating_sub(by));
                    }
                }
                None => {}
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Writes the first running time of `file_mux`'s video and audio to `path` once both are known
/// (MP4 only: other containers keep each track's own timestamps).
pub fn watch_mux_starts(pipeline: &gst::Pipeline, path: PathBuf) {
    let Some(mux) = pipeline.by_name("file_mux") else {
        return;
    };
    if mux.factory().map(|f| f.name()) != Some("mp4mux".into()) {
        return;
    }
    let starts: Arc<Mutex<[Option<i64>; 2]>> = Arc::default();
    for pad in mux.sink_pads() {
        let slot = if pad.name().starts_with("video") {
            0
        } else {
            1
        };
        let starts = starts.clone();
        let path = path.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(rt) = info.buffer().and_then(|b| running_time(pad, b)) else {
                return gst::PadProbeReturn::Ok;
            };
            let mut s = starts.lock().unwrap_or_else(|p| p.into_inner());
            s[slot] = Some(rt);
            if let [Some(v), Some(a)] = *s {
                let t = Timeline {
                    video_start_ns: v,
                    audio_start_ns: a,
                };
                let _ = t.write(&path);
            }
            gst::PadProbeReturn::Remove
        });
    }
}

/// The running time of `buf` (its decode time, else its presentation time) on `pad`.
fn running_time(pad: &gst::Pad, buf: &gst::BufferRef) -> Option<i64> {
    let ev = pad.sticky_event::<gst::event::Segment>(0)?;
    let seg = ev.segment().downcast_ref::<gst::ClockTime>()?;
    seg.to_running_time_full(buf.dts_or_pts()?)
        .map(|s| match s {
            gst::Signed::Positive(t) => t.nseconds() as i64,
            gst::Signed::Negative(t) => -(t.nseconds() as i64),
        })
}

/// Where each stream entering `file_mux` starts and ends (running time, s): what the file holds,
/// written by `write` when the recording ends.
#[derive(Clone, Default)]
pub struct MuxSpans(Arc<Mutex<Spans>>);

impl MuxSpans {
    /// Probes `file_mux`'s inputs; a graph without a file output gives an empty one.
    pub fn watch(pipeline: &gst::Pipeline) -> MuxSpans {
        let spans = MuxSpans::default();
        let Some(mux) = pipeline.by_name("file_mux") else {
            return spans;
        };
        for pad in mux.sink_pads() {
            let video = pad.name().starts_with("video");
            let inner = spans.0.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                let Some(buf) = info.buffer() else {
                    return gst::PadProbeReturn::Ok;
                };
                let Some(start) = pts_running_time(pad, buf) else {
                    return gst::PadProbeReturn::Ok;
                };
                let end = start + buf.duration().map_or(0.0, |d| d.nseconds() as f64 / 1e9);
                let mut s = inner.lock().unwrap_or_else(|p| p.into_inner());
                let slot = if video { &mut s.video } else { &mut s.audio };
                let cur = slot.get_or_insert((start, end));
                cur.0 = cur.0.min(start);
                cur.1 = cur.1.max(end);
                gst::PadProbeReturn::Ok
            });
        }
        spans
    }

    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let s = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        crate::timeline::write_spans(&s, path)
    }
}

/// The running time of `buf`'s presentation, in seconds.
fn pts_running_time(pad: &gst::Pad, buf: &gst::BufferRef) -> Option<f64> {
    let ev = pad.sticky_event::<gst::event::Segment>(0)?;
    let seg = ev.segment().downcast_ref::<gst::ClockTime>()?;
    seg.to_running_time(buf.pts()?)
        .map(|t| t.nseconds() as f64 / 1e9)
}
