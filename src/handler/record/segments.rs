//! The HLS output's bookkeeping on the handler's main thread: names each segment (creating the
//! file first, exclusively), and on every `splitmuxsink-fragment-closed` adds the segment to the
//! playlist and rewrites the playlists atomically.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use slog::{Logger, warn};

use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::hls::{Playlist, Segment, relative_uri};
use crate::model::SegmentsOutput;
use crate::pipeline::output_segments::segment_name;

pub struct Segments {
    out: SegmentsOutput,
    playlist: Playlist,
    /// Segments open now (location -> running time of their start): with asynchronous
    /// finalizing the next one opens before the previous one has closed.
    open: Vec<(String, u64)>,
    /// EOS reached the splitmuxsink; the next close is the last.
    pub eos: bool,
    /// A fragment closed after EOS reached the input (the last one, unless `settled` says not).
    closed_after_eos: bool,
    pub done: bool,
    bytes: u64,
    /// Fragments named through `format-location` (from the muxer's thread).
    started: Arc<AtomicU32>,
    /// Fragments closed, empty ones included.
    closes: u32,
    /// The file of the fragment named last (from the muxer's thread).
    newest: Arc<Mutex<Option<PathBuf>>>,
    /// When EOS reached the input, and the newest fragment's size when last seen and since when.
    eos_at: Option<Instant>,
    seen: (u64, Instant),
    /// The running time (ns) up to which media went into splitmuxsink (from its threads).
    fed_until: Arc<AtomicU64>,
    /// The running time (ns) up to which closed fragments hold media.
    closed_until: u64,
}

/// Closed fragments that end this close to what went in hold all of it (while waiting for a
/// fragment to be named or written).
const COVER_SLACK_NS: u64 = 500_000_000;

/// ... and when the fragment closed after EOS is taken as the last: the last frame's length.
/// EOS reaching splitmuxsink does not mean the last GOP is in a fragment: a close reported
/// after EOS may be the one before it, and ending then cut the last fragment off (a 4-s GOP
/// camera's last 0.3 s missing from the playlist, its file torn).
const END_SLACK_NS: u64 = 100_000_000;

/// After EOS, the last fragment is waited for at least this long, and while it grows.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// ... but no longer than this: a fragment that stopped growing this long is whole.
const QUIET: Duration = Duration::from_millis(700);
/// ... and never longer than this.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(20);

/// Creates `dir/name` (or takes the service's empty placeholder) without following a symlink;
/// when something else is there, a unique name beside it.
fn create_segment(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if crate::outputs::open_new(&path).is_ok() {
        return path;
    }
    // Never overwritten: the playlist names whatever file each segment really went to.
    let alt = dir.join(format!(
        "{}.{}.ts",
        name.trim_end_matches(".ts"),
        std::process::id()
    ));
    let _ = crate::outputs::open_new(&alt);
    alt
}

impl Segments {
    pub fn new(out: &SegmentsOutput) -> Segments {
        Segments {
            playlist: Playlist::new(out.segment_duration_s),
            out: out.clone(),
            open: Vec::new(),
            eos: false,
            closed_after_eos: false,
            done: false,
            bytes: 0,
            started: Arc::new(AtomicU32::new(0)),
            closes: 0,
            newest: Arc::default(),
            eos_at: None,
            seen: (0, Instant::now()),
            fed_until: Arc::default(),
            closed_until: 0,
        }
    }

    /// Names segments through `format-location` and writes the empty playlist (so a player
    /// polling it finds a valid one from the start).
    pub fn attach(&self, sink: &gst::Element, log: &Logger) {
        let out = self.out.clone();
        let started = self.started.clone();
        let newest = self.newest.clone();
        for pad in sink.sink_pads() {
            let fed = self.fed_until.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                let end = info.buffer().and_then(|b| {
                    let seg = pad.sticky_event::<gst::event::Segment>(0)?;
                    let seg = seg.segment().downcast_ref::<gst::ClockTime>()?.clone();
                    let t = b.pts().or(b.dts())? + b.duration().unwrap_or_default();
                    seg.to_running_time(t)
                });
                if let Some(end) = end {
                    fed.fetch_max(end.nseconds(), Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            });
        }
        sink.connect("format-location", false, move |args| {
            started.fetch_add(1, Ordering::SeqCst);
            let id = args.get(1).and_then(|v| v.get::<u32>().ok()).unwrap_or(0);
            let path = create_segment(&out.dir, &segment_name(&out, id));
            if let Ok(mut n) = newest.lock() {
                *n = Some(path.clone());
            }
            Some(path.to_string_lossy().into_owned().to_value())
        });
        if let Err(e) = crate::repair::write_playlists(&self.out, &self.playlist) {
            warn!(log, "cannot write the playlist"; "error" => %e);
        }
    }

    /// A `splitmuxsink-fragment-opened`/`-closed` element message.
    pub fn on_message(&mut self, s: &gst::StructureRef, log: &Logger) {
        let rt = s.get::<u64>("running-time").unwrap_or(0);
        let location = s.get::<String>("location").unwrap_or_default();
        match s.name().as_str() {
            "splitmuxsink-fragment-opened" => self.open.push((location, rt)),
            "splitmuxsink-fragment-closed" => {
                let start = match self.open.iter().position(|(l, _)| *l == location) {
                    Some(k) => self.open.remove(k).1,
                    None => return,
                };
                let secs = rt.saturating_sub(start) as f64 / 1e9;
                self.closes += 1;
                self.closed_until = self.closed_until.max(rt);
                self.closed(Path::new(&location), secs, log);
                self.closed_after_eos |= self.eos;
                self.done = self.closed_after_eos && self.settled() && self.covers(END_SLACK_NS);
            }
            _ => {}
        }
    }

    fn closed(&mut self, path: &Path, secs: f64, log: &Logger) {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            // A fragment cut at EOS with nothing in it.
            crate::outputs::remove_if_empty(path);
            return;
        }
        let pdir = self.out.playlist_path.parent().unwrap_or(Path::new("/"));
        self.playlist.segments.push(Segment {
            uri: relative_uri(pdir, path),
            duration_s: secs,
        });
        self.bytes += size;
        if let Err(e) = crate::repair::write_playlists(&self.out, &self.playlist) {
            warn!(log, "cannot write the playlist"; "error" => %e);
        }
        emit(&HandlerEvent::SegmentClosed {
            count: self.playlist.segments.len() as u32,
            duration_s: (self.playlist.duration_s() * 1000.0).round() / 1000.0,
            size_bytes: self.bytes,
        });
    }

    /// EOS reached the output: done now if no segment is open, else at its close.
    /// EOS reached splitmuxsink's input. It still holds the last GOP then, which it writes and
    /// closes after: the end waits for that close (or `waited_enough`).
    pub fn on_eos(&mut self) {
        self.eos = true;
        self.eos_at = Some(Instant::now());
    }

    /// Whether to stop waiting for splitmuxsink to report its last fragment closed: EOS
    /// reached it at least `CLOSE_WAIT` ago and its newest fragment has not grown for `QUIET`
    /// (a loaded machine can take seconds to mux the last GOP; ending the pipeline then would
    /// cut that segment short), or `CLOSE_WAIT_MAX` passed.
    pub fn waited_enough(&mut self) -> bool {
        let Some(eos_at) = self.eos_at else {
            return false;
        };
        let size = self
            .newest
            .lock()
            .ok()
            .and_then(|n| n.clone())
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        if size != self.seen.0 {
            self.seen = (size, Instant::now());
        }
        let waited = eos_at.elapsed();
        if waited > CLOSE_WAIT_MAX {
            return true;
        }
        // Media went in after the last closed fragment and no fragment holds it yet: a loaded
        // splitmuxsink has not named the last GOP's fragment, or has named it and not written
        // to it; ending now would lose it.
        let covered = self.covers(COVER_SLACK_NS);
        let named = self.started.load(Ordering::SeqCst) > self.closes;
        if !covered && (!named || size == 0) {
            return false;
        }
        waited > CLOSE_WAIT && self.seen.1.elapsed() > QUIET
    }

    /// Whether the closed fragments hold all that went into splitmuxsink, but for `slack_ns`.
    fn covers(&self, slack_ns: u64) -> bool {
        self.closed_until + slack_ns >= self.fed_until.load(Ordering::Relaxed)
    }

    /// Whether every fragment was closed: none open, and as many closed as were named (at EOS
    /// splitmuxsink names and writes the last fragment before it says it opened it, so the
    /// file alone, still empty then, cannot tell).
    fn settled(&self) -> bool {
        self.open.is_empty() && self.closes >= self.started.load(Ordering::SeqCst)
    }

    /// Whether fragment `n` is on disk with data.
    fn unlisted(&self, n: u32) -> bool {
        std::fs::metadata(self.out.dir.join(segment_name(&self.out, n))).is_ok_and(|m| m.len() > 0)
    }

    /// Ends the playlist (`#EXT-X-ENDLIST`). `measure_unlisted`: fragments on disk that
    /// splitmuxsink never said it closed are measured and listed (after `waited_enough`,
    /// when they are whole); otherwise a fragment it may still be writing is left out.
    pub fn finish(&mut self, log: &Logger, measure_unlisted: bool) {
        // A fragment splitmuxsink has not reported closed is complete by now (its muxer saw
        // EOS): it is measured from its packets, as after a kill.
        self.open.clear();
        while measure_unlisted && self.unlisted(self.playlist.segments.len() as u32) {
            let n = self.playlist.segments.len() as u32;
            let path = self.out.dir.join(segment_name(&self.out, n));
            match crate::repair::ts_span(&path, std::time::Duration::from_secs(10)) {
                Some(secs) => self.closed(&path, secs, log),
                None => break,
            }
        }
        self.playlist.ended = true;
        if let Err(e) = crate::repair::write_playlists(&self.out, &self.playlist) {
            warn!(log, "cannot end the playlist"; "error" => %e);
        }
    }
}
