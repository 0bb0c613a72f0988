//! One connection of a URI source as the handler and its pads' streaming threads share it:
//! when it last delivered, where its first keyframe is, the offset that places it on the
//! pipeline's timeline, the stop's cut; and `pace`, which holds a buffer ahead of the clock
//! until its time. Its pads' gate is `source_uri::gate`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

/// What the handler knows of one connection, shared with its pads' streaming threads.
#[derive(Debug)]
pub struct Connection {
    /// When this connection last delivered a buffer (ms since `epoch`).
    pub(super) last_buffer_ms: AtomicU64,
    /// Whether a buffer went through the gate.
    pub delivered: AtomicBool,
    /// Whether a video buffer went through the gate (the first keyframe came).
    pub video_started: AtomicBool,
    /// A keyframe came but waited for an RTSP camera's streams to line up
    /// (`source_rtsp::LineUp`): the source does send keyframes.
    pub keyframe_offered: AtomicBool,
    /// When the first audio buffer waited for the keyframe: audio holds at most `AUDIO_HOLD`.
    pub(super) audio_hold_since: Mutex<Option<Instant>>,
    /// Whether video gates audio (the source's video is recorded).
    pub(super) video_gates: bool,
    /// Running time (connection's own) of the first video keyframe, once seen.
    pub(super) keyframe_rt: Mutex<Option<i64>>,
    /// Signalled when `keyframe_rt` is set (or the connection closes).
    pub(super) keyframe_seen: Condvar,
    /// Set when the connection is dropped: nothing waits on it any more.
    pub(super) closed: AtomicBool,
    /// The sender ended its stream after sending media (an EOS the gate kept from the graph).
    pub ended: AtomicBool,
    /// Offset applied to every pad of this connection, set at its first buffer.
    pub(super) offset: Mutex<Option<i64>>,
    /// The latest running time (offset applied) a buffer of this connection went out at.
    pub(super) out_max: AtomicI64,
    /// Where the previous connection of the source ended: this one starts after it (a sender
    /// whose stream ran ahead of the clock would otherwise come back earlier than it left,
    /// and a muxer refuses time going backwards).
    pub(super) floor: AtomicI64,
    /// Pipeline running time past which nothing of this connection is recorded (the instant a
    /// stop was asked; `i64::MAX` until then).
    pub(super) cut: AtomicI64,
    /// How many pads of this connection are gated, and how many of them reached `cut`.
    pub(super) gated: AtomicU32,
    pub(super) past_cut: AtomicU32,
    pub(super) epoch: Instant,
}

impl Connection {
    pub fn new(video_gates: bool, epoch: Instant) -> Arc<Connection> {
        Arc::new(Connection {
            last_buffer_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
            delivered: AtomicBool::new(false),
            video_started: AtomicBool::new(false),
            keyframe_offered: AtomicBool::new(false),
            audio_hold_since: Mutex::new(None),
            video_gates,
            keyframe_rt: Mutex::new(None),
            keyframe_seen: Condvar::new(),
            closed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            offset: Mutex::new(None),
            out_max: AtomicI64::new(i64::MIN),
            floor: AtomicI64::new(i64::MIN),
            cut: AtomicI64::new(i64::MAX),
            gated: AtomicU32::new(0),
            past_cut: AtomicU32::new(0),
            epoch,
        })
    }

    /// This connection replaces `prev`: its media starts after what `prev` delivered.
    pub fn follow(&self, prev: &Connection) {
        let end = prev
            .out_max
            .load(Ordering::Relaxed)
            .max(prev.floor.load(Ordering::Relaxed));
        self.floor.store(end, Ordering::Relaxed);
    }

    /// Milliseconds since this connection's last buffer (or since it was made).
    pub fn idle_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64)
            .saturating_sub(self.last_buffer_ms.load(Ordering::Relaxed))
    }

    /// Records nothing this connection sends past running time `rt` (a stop asked then).
    pub fn cut_at(&self, rt: i64) {
        self.cut.store(rt, Ordering::Relaxed);
    }

    /// Whether every gated pad of this connection has sent media past the cut: all it sent
    /// up to the cut is in the graph.
    pub fn past_cut(&self) -> bool {
        let gated = self.gated.load(Ordering::Relaxed);
        gated > 0 && self.past_cut.load(Ordering::Relaxed) >= gated
    }

    /// The connection is being dropped: release any pad waiting for the keyframe.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.keyframe_seen.notify_all();
    }

    pub(super) fn touch(&self) {
        self.last_buffer_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The longest a buffer waits at the gate for its time (`pace`).
const PACE_MAX: Duration = Duration::from_secs(2);

/// Holds a buffer placed ahead of the pipeline's clock (at `out`) until its time comes. A
/// connection whose first buffer came late (a burst as it connected, a loaded machine) places
/// the rest ahead of the clock by that much, and a segmented source (HLS) hands over seconds
/// at once: let through, they would reach the outputs before their time, and a stop could not
/// end the recording where it was asked. The sender's backlog waits in its socket instead.
pub(super) fn pace(conn: &Connection, pipeline: &gst::glib::WeakRef<gst::Pipeline>, out: i64) {
    let Some(p) = pipeline.upgrade() else {
        return;
    };
    let since = Instant::now();
    while !conn.closed.load(Ordering::Relaxed) && since.elapsed() < PACE_MAX {
        let Some(now) = p.current_running_time() else {
            return;
        };
        let ahead = out - now.nseconds() as i64;
        if ahead <= PACE_SLACK_NS {
            return;
        }
        // The keyframe's condvar: `close` signals it, so a dropped connection stops waiting.
        let guard = conn.keyframe_rt.lock().unwrap_or_else(|p| p.into_inner());
        let wait = Duration::from_nanos(ahead as u64).min(Duration::from_millis(50));
        let _ = conn.keyframe_seen.wait_timeout(guard, wait);
    }
}

/// How far ahead of the clock a buffer may go through (a frame's worth of jitter).
const PACE_SLACK_NS: i64 = 20_000_000;
