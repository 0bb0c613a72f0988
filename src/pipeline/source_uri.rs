//! URI sources: one `uridecodebin3` per connection. Its pads are held (blocked) as they appear,
//! so the handler can decide the rest of the graph from what this one connection carries
//! (`plan::SourceStreams::from_pads`) and link them; nothing is opened twice.
//!
//! ```text
//!   src0 (uridecodebin3 uri=..., caps=raw|H.264|AAC)
//!     ├─ video_0 ─[gate: from the first video keyframe; offset: wall-clock timeline]─► Entry(0, video)
//!     ├─ audio_0 ─[gate: nothing before that keyframe;  same offset]─────────────────► Entry(0, audio)
//!     └─ text_0  ─► src0_discard_text_0 (fakesink)
//! ```
//!
//! An RTSP camera's pads first pass `decode_times` (its times moved forward, its video's decode
//! times derived), and its `rtspsrc` is set up by `source_rtsp`. What a connection's pads
//! share with the handler (its keyframe, offset, cut) is its `Connection` (`connection`).
//!
//! A reconnection is a new `uridecodebin3` (`src0_r1`, `src0_r2`, ...) linked to the same
//! entries: the outputs keep one timeline, and the pad offset makes the gap a gap (timestamps
//! continue with the wall clock, not where the last connection stopped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::error::PipelineError;

pub use super::connection::Connection;
use super::connection::pace;

/// How long the first audio of a connection waits for the first video keyframe (a sender may
/// interleave audio ahead of the video of the same instant); after that, audio before the
/// keyframe is dropped at once, so the demuxer never stalls on a full audio queue while the
/// keyframe is seconds away.
const AUDIO_HOLD: Duration = Duration::from_millis(500);

/// How long an RTSP camera's first audio waits for its first video keyframe (its streams come
/// each on their own, so waiting stops nothing else): the `LineUp` wait and a GOP.
const RTSP_AUDIO_HOLD: Duration = Duration::from_secs(15);

/// Application message a `uridecodebin3` posts (from its streaming thread) for each new pad.
pub const PAD_MESSAGE: &str = "egress-pad-added";

/// The pads of a connection held since they appeared, until `release`; and its source element.
#[derive(Debug, Default)]
pub struct Held {
    /// Each held pad with its probes, removed in order on release (a drop probe before the
    /// block probe added after it, so the buffer the block holds is not dropped).
    pads: Mutex<Vec<(gst::Pad, Vec<gst::PadProbeId>)>>,
    /// The element `uridecodebin3` made for the URI: a failing one may be out of the bin
    /// already when its error is read, so errors are matched against it too.
    source: Mutex<Option<gst::Element>>,
    /// Arrival running time minus the stream's own running time, from the first buffer that
    /// reached a held pad: what places the stream on the pipeline's timeline where it arrived,
    /// not where it was released (it may wait there for the graph, seconds for a late video).
    offset: Mutex<Option<i64>>,
    /// The sender may come back after its stream ends (`rejoins`): its EOS is not the end.
    rejoins: bool,
    /// An RTSP camera (`source_rtsp::is_rtsp`): its streams come each on its own, and its video
    /// with presentation times only.
    rtsp: bool,
    /// Whether an RTSP camera's streams are lined up by its RTCP reports yet: its video
    /// starts recording then (`gate`).
    line_up: Arc<super::source_rtsp::LineUp>,
}

/// Whether a source's sender may end its stream and start it again on the same URI (OBS
/// stopping and restarting, an encoder rebooting): RTMP, RTSP and SRT. Its EOS is waited out
/// like a stall (`pipeline.source_reconnect_s`) instead of ending the recording at once.
pub fn rejoins(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    ["rtmp://", "rtmps://", "rtsp://", "rtsps://", "srt://"]
        .iter()
        .any(|s| lower.starts_with(s))
}

impl Held {
    /// The held pads of a connection whose media comes from inside `source` (a sender that may
    /// come back if `rejoins`).
    pub fn of(source: &gst::Element, rejoins: bool) -> Arc<Held> {
        Arc::new(Held {
            source: Mutex::new(Some(source.clone())),
            rejoins,
            ..Held::default()
        })
    }

    /// Whether `obj` is (inside) this connection's source element.
    pub fn owns(&self, obj: &gst::Object) -> bool {
        let source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        source
            .as_ref()
            .is_some_and(|s| obj == s.upcast_ref::<gst::Object>() || obj.has_as_ancestor(s))
    }

    /// Lets a held pad go.
    pub fn release(&self, pad: &gst::Pad) {
        let mut held = self.pads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = held.iter().position(|(p, _)| p == pad) {
            let (p, ids) = held.swap_remove(i);
            for id in ids {
                p.remove_probe(id);
            }
        }
    }
}

/// The `uridecodebin3` of one connection to source `index`, named `name`; posts a `PAD_MESSAGE`
/// on the bus for every pad, which stays held (blocked) until the handler links it.
pub fn connect(
    index: usize,
    name: &str,
    uri: &str,
    caps: Option<&str>,
) -> Result<(gst::Element, Arc<Held>), PipelineError> {
    let mut b = gst::ElementFactory::make("uridecodebin3")
        .name(name)
        .property("uri", uri);
    if let Some(c) = caps {
        let caps: gst::Caps = c
            .parse()
            .map_err(|_| PipelineError::Build(format!("bad caps {c}")))?;
        b = b.property("caps", caps);
    }
    let bin = b
        .build()
        .map_err(|_| PipelineError::MissingElement("uridecodebin3".into()))?;
    let held = Arc::new(Held {
        rejoins: rejoins(uri),
        rtsp: super::source_rtsp::is_rtsp(uri),
        ..Held::default()
    });
    let h = held.clone();
    let flv = super::announce::is_flv(uri);
    bin.connect("source-setup", false, move |args| {
        if let Some(Ok(e)) = args.get(1).map(|v| v.get::<gst::Element>()) {
            if let Some(Ok(bin)) = args.first().map(|v| v.get::<gst::Element>()) {
                if flv {
                    super::announce::watch_flv(&e, &bin, index);
                }
                super::announce::watch_sdp(&e, &bin, index);
                super::source_rtsp::setup(&e, &h.line_up);
            }
            *h.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
        None
    });
    let h = held.clone();
    bin.connect_pad_added(move |bin, pad| hold(bin, pad, index, &h));
    Ok((bin, held))
}

/// Holds a new pad of a connection's element `bin` until the handler links it, and tells the
/// handler of it (`PAD_MESSAGE`, from `bin`).
pub fn hold(bin: &gst::Element, pad: &gst::Pad, index: usize, h: &Arc<Held>) {
    if h.rtsp {
        super::decode_times::install(pad);
    }
    // Held until linked: data must not reach an unlinked pad (not-linked would stop the
    // source) nor run ahead of the graph decision. Video is blocked, so its first keyframe
    // is kept; audio (and the rest) is dropped meanwhile: blocked, it would fill the
    // demuxer's queue and stop the source before a late video stream ever showed up (an
    // RTMP server sends video from the next keyframe, seconds after the audio). Audio
    // before the first keyframe is not recorded anyway.
    let arrived = |pad: &gst::Pad, info: &gst::PadProbeInfo, held: &Held| {
        let mut off = held.offset.lock().unwrap_or_else(|p| p.into_inner());
        if off.is_none()
            && let Some(rt) = info.buffer().and_then(|b| running_time(pad, b))
            && let Some(now) = pad.parent_element().and_then(|e| e.current_running_time())
        {
            *off = Some(now.nseconds() as i64 - rt);
        }
    };
    // Buffers only: events (caps above all) go on, so a pad whose caps come after it
    // (HLS) says what it carries while it is held.
    let block = |pad: &gst::Pad| {
        let h = h.clone();
        let t =
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
        pad.add_probe(t, move |pad, info| {
            arrived(pad, info, &h);
            gst::PadProbeReturn::Ok
        })
    };
    let mut pads = h.pads.lock().unwrap_or_else(|p| p.into_inner());
    // A pad that does not say yet what it carries is held like video (its keyframe kept).
    let name = caps_name(pad);
    let video = name.starts_with("video/") || name.is_empty();
    let video_held = pads.iter().any(|(p, _)| caps_name(p).starts_with("video/"));
    let probe = if video {
        // From now on the graph can be decided: the rest waits with the video.
        for (p, ids) in pads.iter_mut() {
            ids.extend(block(p));
        }
        block(pad)
    } else if video_held || h.rtsp {
        // An RTSP camera's streams each come on their own (one RTP session each), so holding
        // its audio never stops its video; dropped instead, the audio after the keyframe went
        // too while a decoded video pad waited for its first picture (2 s of it).
        block(pad)
    } else {
        let h = h.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            arrived(pad, info, &h);
            crate::pipeline::DROP_BUFFER
        })
    };
    pads.push((pad.clone(), probe.into_iter().collect()));
    drop(pads);
    let s = gst::Structure::builder(PAD_MESSAGE)
        .field("source", index as u32)
        .field("pad", pad)
        .build();
    let _ = bin.post_message(gst::message::Application::builder(s).src(bin).build());
}

/// The caps name of a pad of a connection (current caps, else what it can do); empty while it
/// does not say (ANY, or several kinds).
pub fn caps_name(pad: &gst::Pad) -> String {
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    if caps.is_any() || caps.size() != 1 && !caps.is_fixed() {
        let names: Vec<String> = caps.iter().map(|s| s.name().to_string()).collect();
        if names.is_empty() || names.iter().any(|n| n != &names[0]) {
            return String::new();
        }
    }
    caps.structure(0)
        .map(|s| s.name().to_string())
        .unwrap_or_default()
}

/// Installs the gate and timeline probe on a pad of `conn` that carries video (`video`) or
/// audio into the graph of `pipeline`.
pub fn gate(
    pad: &gst::Pad,
    conn: &Arc<Connection>,
    held: &Arc<Held>,
    video: bool,
    pipeline: &gst::Pipeline,
) {
    let conn = conn.clone();
    let held = held.clone();
    let weak = pipeline.downgrade();
    let offset_set = AtomicBool::new(false);
    let last_rt: Mutex<Option<i64>> = Mutex::new(None);
    conn.gated.fetch_add(1, Ordering::Relaxed);
    let past_cut = AtomicBool::new(false);
    // Decode times derived from the stream (`decode_times`) go forward a frame at a time, a
    // keyframe's jumping ahead; moved here as a burst, a GOP would be shown after the next.
    let derived = video
        && held.rtsp
        && pad
            .current_caps()
            .is_some_and(|c| super::decode_times::may_reorder(&c));
    if held.rejoins {
        // A sender that may come back: its EOS would end every output; the handler waits for
        // it as for a stall, and ends the recording itself if it does not come back.
        let c = conn.clone();
        pad.add_probe(
            gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| match info.event() {
                Some(ev)
                    if ev.type_() == gst::EventType::Eos && c.delivered.load(Ordering::Relaxed) =>
                {
                    c.ended.store(true, Ordering::Relaxed);
                    gst::PadProbeReturn::Drop
                }
                _ => gst::PadProbeReturn::Ok,
            },
        );
    }
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        conn.touch();
        let Some(buf) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let mut rt = running_time(pad, buf);
        // Where the buffer starts for the spacing of the next (`last_rt`), if not at `rt`.
        let mut spaced_from = None;
        // The least step between two buffers of this pad: a frame, where known.
        let step = buf
            .duration()
            .map(|d| d.nseconds() as i64)
            .filter(|d| *d > 0)
            .unwrap_or(if video { 10_000_000 } else { 1_000_000 });
        // Video starts at its first keyframe (a sender is mid-GOP when the egress starts).
        if video {
            let mut kf = conn.keyframe_rt.lock().unwrap_or_else(|p| p.into_inner());
            if kf.is_none() {
                if buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                    return crate::pipeline::DROP_BUFFER;
                }
                if conn.video_gates && !held.line_up.ready() {
                    conn.keyframe_offered.store(true, Ordering::Relaxed);
                    return crate::pipeline::DROP_BUFFER;
                }
                // Audio starts with the keyframe's decode time, as its sender set it; a derived
                // one is two frames early (133 ms of sound before a 15-fps camera's picture),
                // so there the picture's time.
                let shown = buf
                    .pts()
                    .filter(|_| derived)
                    .and_then(|p| running_time_of(pad, p))
                    .or(rt);
                *kf = Some(shown.unwrap_or(0));
                conn.keyframe_seen.notify_all();
            }
        } else if conn.video_gates {
            let mut kf = conn.keyframe_rt.lock().unwrap_or_else(|p| p.into_inner());
            if kf.is_none() && !held.line_up.ready() {
                // The picture waits for an RTSP camera's streams to line up; the sound flows
                // meanwhile (dropped), so that its jitterbuffer keeps moving it to its place
                // (held, the first beeps were a frame late). Its wait for the keyframe starts
                // after.
                *conn
                    .audio_hold_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                return crate::pipeline::DROP_BUFFER;
            }
            {
                // Audio starts with the picture: nothing before the first keyframe. A sender
                // may interleave audio ahead of the video of the same instant, so the first
                // audio waits here (this pad's thread only) a moment for the keyframe's time.
                // An RTSP camera's audio waits for it (its streams come each on their own):
                // its video may wait seconds for the camera's reports (`LineUp`), and the sound
                // of the keyframe's instant, there first, would have gone.
                let since = *conn
                    .audio_hold_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Instant::now);
                let hold = if held.rtsp {
                    RTSP_AUDIO_HOLD
                } else {
                    AUDIO_HOLD
                };
                // A stop (its cut) ends the wait: EOS must get by.
                while kf.is_none()
                    && !conn.closed.load(Ordering::Relaxed)
                    && conn.cut.load(Ordering::Relaxed) == i64::MAX
                    && since.elapsed() < hold
                {
                    kf = conn
                        .keyframe_seen
                        .wait_timeout(kf, Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                match (*kf, rt) {
                    (None, _) => return crate::pipeline::DROP_BUFFER,
                    (Some(k), Some(t)) if t < k => {
                        // Raw sound the picture starts in is cut at its first instant: dropped
                        // whole, a sound starting with the picture lost up to 21 ms of its
                        // onset. An encoded frame cannot be cut, and goes.
                        let clipped = pad
                            .current_caps()
                            .and_then(|c| crate::pipeline::clip_front(&c, buf, (k - t) as u64));
                        let Some(clipped) = clipped else {
                            return crate::pipeline::DROP_BUFFER;
                        };
                        info.data = Some(gst::PadProbeData::Buffer(clipped));
                        rt = Some(k);
                        // The next buffer follows the uncut one (else it was moved by the cut).
                        spaced_from = Some(t);
                    }
                    _ => {}
                }
            }
        }
        if !offset_set.swap(true, Ordering::Relaxed) {
            let mut off = conn.offset.lock().unwrap_or_else(|p| p.into_inner());
            let arrived = *held.offset.lock().unwrap_or_else(|p| p.into_inner());
            let o = *off.get_or_insert_with(|| {
                // The first buffer of the connection lands where it arrived (at a held pad, or
                // now: the pipeline's running time): sources share one timeline, and a
                // reconnection continues after the gap, never before where the previous
                // connection ended.
                let now = weak
                    .upgrade()
                    .and_then(|p| p.current_running_time())
                    .map(|t| t.nseconds() as i64)
                    .unwrap_or(0);
                let first = rt.unwrap_or(now);
                let o = arrived.unwrap_or(now - first);
                match conn.floor.load(Ordering::Relaxed) {
                    i64::MIN => o,
                    floor => o.max(floor + step - first),
                }
            });
            pad.set_offset(o);
            // The offset reaches downstream with the segment, which the pad resends only
            // before its next buffer: sent now, so this first buffer is placed with it too
            // (else it goes out on the old timeline, before what the last connection sent).
            if let Some(seg) = pad.sticky_event::<gst::event::Segment>(0) {
                pad.push_event(seg);
            }
        }
        // Never backwards, never squeezed: a sender that pauses and then sends its backlog in a
        // burst gets arrival-based timestamps (srtsrc, rtpjitterbuffer) squeezed, even
        // decreasing, while they catch up; such a buffer is placed one step (its duration)
        // after the last, which keeps the stream's own cadence.
        let mut last_rt = last_rt.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(t), Some(last)) = (rt, *last_rt)
            && t < last + step * 9 / 10
            && !derived
        {
            let shift = gst::ClockTime::from_nseconds((last + step - t) as u64);
            if let Some(gst::PadProbeData::Buffer(b)) = &mut info.data {
                super::delay(b.make_mut(), shift);
            }
            rt = Some(last + step);
        }
        if let Some(t) = rt {
            let o = conn
                .offset
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(0);
            // Decode time against the cut.
            // From the first buffer past it on, everything goes: a tail in decode order.
            if past_cut.load(Ordering::Relaxed) || t + o > conn.cut.load(Ordering::Relaxed) {
                if !past_cut.swap(true, Ordering::Relaxed) {
                    conn.past_cut.fetch_add(1, Ordering::Relaxed);
                }
                return crate::pipeline::DROP_BUFFER;
            }
            let from = spaced_from.unwrap_or(t);
            *last_rt = Some(last_rt.map_or(from, |l| l.max(from)));
            drop(last_rt);
            conn.out_max.fetch_max(t + o, Ordering::Relaxed);
            pace(&conn, &weak, t + o);
        }
        conn.delivered.store(true, Ordering::Relaxed);
        if video {
            conn.video_started.store(true, Ordering::Relaxed);
        }
        gst::PadProbeReturn::Ok
    });
}

/// The running time of `buf` in the segment of `pad` (without the pad's offset).
fn running_time(pad: &gst::Pad, buf: &gst::BufferRef) -> Option<i64> {
    running_time_of(pad, buf.dts_or_pts()?)
}

/// The running time of `ts` in the segment of `pad` (without the pad's offset).
fn running_time_of(pad: &gst::Pad, ts: gst::ClockTime) -> Option<i64> {
    let ev = pad.sticky_event::<gst::event::Segment>(0)?;
    let seg = ev.segment().downcast_ref::<gst::ClockTime>()?;
    seg.to_running_time_full(ts).map(|s| match s {
        gst::Signed::Positive(t) => t.nseconds() as i64,
        gst::Signed::Negative(t) => -(t.nseconds() as i64),
    })
}

/// A sink for a pad the graph does not record (a second audio track, subtitles): without one
/// the source would stop on "not linked".
pub fn discard(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    name: &str,
) -> Result<gst::Element, PipelineError> {
    let sink = gst::ElementFactory::make("fakesink")
        .name(name)
        .property("sync", false)
        .property("async", false)
        .build()
        .map_err(|_| PipelineError::MissingElement("fakesink".into()))?;
    pipeline.add(&sink)?;
    sink.sync_state_with_parent()?;
    let sinkpad = sink
        .static_pad("sink")
        .ok_or_else(|| PipelineError::Build("fakesink without a sink pad".into()))?;
    pad.link(&sinkpad)
        .map_err(|e| PipelineError::Build(format!("cannot link {}: {e:?}", pad.name())))?;
    Ok(sink)
}
