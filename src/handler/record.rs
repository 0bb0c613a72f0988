//! One recording, from the first connection to the finalized file, on the handler's main thread:
//! it reads the bus, the stop channel and the clock, and is the only one that changes the graph.
//!
//! 1. Each URI source connects once (`source_uri::connect`); its pads are held as they appear.
//!    When every source showed all its streams (as many pads as `decodebin3` selected streams),
//!    the graph is decided from those pads (`plan::describe`), built, and the pads linked.
//!    Test sources need no discovery. A source that fails or shows nothing before
//!    `start_timeout_s` fails the egress with a text from `pipeline::errors`.
//! 2. A source silent for `source_stall_s` (or failing) after it delivered media is stalled:
//!    its connection is dropped and new ones are tried for `source_reconnect_s`, linked to the
//!    same entries; if none delivers, the recording ends ("source lost").
//! 3. A stop ends the recording downstream of the sources: EOS is sent into the graph's entries
//!    (and into test sources), so a source that ignores EOS (HLS) cannot hold the stop up.
//!    The end is when EOS reaches `out_file_sink`.
//!
//! Here: the recording's state, its connections and the loop. The graph's building and its
//! outputs' hooks are in `graph`, what each bus message means and the end in `bus`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod bus;
mod cut;
mod graph;
mod health;
mod images;
mod live;
mod page_time;
mod room;
mod segments;
mod streams;
mod thumb;
mod timing;
mod uri_source;
mod web;
mod whip;

use live::disconnect;
use segments::Segments;
use streams::Streams;
use uri_source::{SrcState, UriSource};

use crossbeam_channel::Receiver;
use gstreamer as gst;
use gstreamer::prelude::*;
use slog::{Logger, info, warn};

use super::protocol::HandlerEvent;
use super::{Control, emit};
use crate::error::PipelineError;
use crate::model::{EgressSpec, PipelineOptions, Source};
use crate::pipeline::announce::Announced;
use crate::pipeline::errors;
use crate::pipeline::graph::StreamKind;
use crate::pipeline::source_uri::{self, Connection};
use crate::pipeline::{SourceStreams, plan};

/// How one wait on the bus lasts at most: stops and stalls are looked at this often.
const BUS_POLL: gst::ClockTime = gst::ClockTime::from_mseconds(50);
/// Without a parent to enforce `eos_timeout_s`, the handler gives EOS this long on its own.
const ORPHAN_EOS_TIMEOUT: Duration = Duration::from_secs(60);
/// A source that shows only audio or only video is taken as complete this long after its last
/// pad.
const PAD_SETTLE: Duration = Duration::from_millis(1000);
/// Reconnection attempts are at least this far apart.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

const MEDIA_MESSAGE: &str = "egress-media";
const OUT_EOS_MESSAGE: &str = "egress-out-eos";

/// How a recording ended, when it did not fail.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// "stop", "parent_gone", "signal", "source_eos", "source_lost".
    pub cause: String,
    /// Whether any media reached the output.
    pub media: bool,
}

/// Stream URLs to add (index, URL) and indices to remove.
type StreamChange = (Vec<(usize, String)>, Vec<usize>);

pub struct Recording<'a> {
    spec: &'a EgressSpec,
    opts: &'a PipelineOptions,
    log: &'a Logger,
    pipeline: gst::Pipeline,
    fd: i32,
    epoch: Instant,
    sources: Vec<UriSource>,
    streams: Vec<SourceStreams>,
    entries: Option<HashMap<(usize, StreamKind), gst::Pad>>,
    media: Arc<AtomicBool>,
    stopping: Option<(String, Instant)>,
    /// A stop waiting for the sources to deliver up to the instant it was asked (`cut`): why,
    /// and since when.
    cutting: Option<(super::Cause, Instant)>,
    /// The running time of the stop's instant once cut (`i64::MAX` before): the outputs take
    /// nothing after it.
    cut_rt: Arc<std::sync::atomic::AtomicI64>,
    /// Sinks EOS has not reached yet (the end is when none is left and HLS is done).
    pending_sinks: Vec<String>,
    segments: Option<Segments>,
    outs: Option<Streams>,
    /// Stream changes asked for before the graph existed.
    stream_changes: Vec<StreamChange>,
    /// A web source's page has loaded (its frames flow from then on); None without one.
    web_loaded: Option<Arc<AtomicBool>>,
    /// How far each page's picture and sound have gone, for a stop to wait on (`cut`).
    web_reached: Vec<web::Reached>,
    /// The filter every request of the page goes through (`web_filter`); None without a page.
    web_filter: Option<Arc<super::web_filter::Filter>>,
    /// What the file output received of each stream (written at the end for the record).
    mux_spans: timing::MuxSpans,
    /// No frame has gone into a room's compositor yet (`room::nearest_slot`).
    room_first: Arc<AtomicBool>,
}

impl<'a> Recording<'a> {
    pub fn new(
        spec: &'a EgressSpec,
        opts: &'a PipelineOptions,
        fd: i32,
        log: &'a Logger,
    ) -> Result<Recording<'a>, PipelineError> {
        let pipeline = gst::Pipeline::with_name(&spec.egress_id);
        let epoch = Instant::now();
        let mut r = Recording {
            spec,
            opts,
            log,
            pipeline,
            fd,
            epoch,
            sources: Vec::new(),
            streams: Vec::new(),
            entries: None,
            media: Arc::new(AtomicBool::new(false)),
            stopping: None,
            cutting: None,
            cut_rt: Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX)),
            pending_sinks: Vec::new(),
            segments: None,
            outs: None,
            stream_changes: Vec::new(),
            web_loaded: spec
                .sources
                .iter()
                .any(|s| matches!(s, Source::Web { .. }))
                .then(Arc::default),
            mux_spans: timing::MuxSpans::default(),
            room_first: Arc::new(AtomicBool::new(true)),
            web_filter: None,
            web_reached: Vec::new(),
        };
        if r.web_loaded.is_some() {
            r.web_filter = super::web_filter::inherited()
                .map(|l| super::web_filter::start(l, opts.allowed_web_hosts.clone(), log));
        }
        for (i, s) in spec.sources.iter().enumerate() {
            let Some(mut src) = UriSource::of(i, s, epoch) else {
                continue;
            };
            r.connect(&mut src)?;
            r.sources.push(src);
        }
        Ok(r)
    }

    pub fn pipeline(&self) -> &gst::Pipeline {
        &self.pipeline
    }

    /// Whether media reached the output.
    pub fn media(&self) -> bool {
        self.media.load(Ordering::Relaxed)
    }

    /// Opens a new connection for `src` (the first, or a reconnection). A WHIP source has
    /// none until its publisher's offer (`whip_offer`).
    fn connect(&self, src: &mut UriSource) -> Result<(), PipelineError> {
        if src.whip {
            return Ok(());
        }
        let caps = plan::source_caps(self.spec, &src.uri);
        if let Some(whep) = src.whep.as_mut() {
            // A session of its own for this connection (the last one's is ended).
            whep.begin();
            let whep = whep.clone();
            let (bin, held) = crate::pipeline::source_whip::connect(
                src.index,
                &src.name(),
                caps.as_deref(),
                &self.opts.webrtc,
            )?;
            self.adopt(src, bin.clone(), held)?;
            let copied = crate::pipeline::source_whip::copied_video(caps.as_deref());
            crate::pipeline::source_whep::play(bin, src.index, whep, copied);
            return Ok(());
        }
        let (bin, held) = source_uri::connect(src.index, &src.name(), &src.uri, caps.as_deref())?;
        self.adopt(src, bin, held)
    }

    /// Makes `bin` (with its held pads) `src`'s current connection, in the pipeline.
    fn adopt(
        &self,
        src: &mut UriSource,
        bin: gst::Element,
        held: Arc<source_uri::Held>,
    ) -> Result<(), PipelineError> {
        self.pipeline.add(&bin)?;
        let prev = std::mem::replace(
            &mut src.conn,
            Connection::new(self.video_gates(src.index), self.epoch),
        );
        src.conn.follow(&prev);
        src.held = held;
        src.bin = Some(bin.clone());
        src.started = Instant::now();
        src.pads.clear();
        src.last_pad = None;
        src.expected = None;
        src.announced = None;
        src.collection = Announced::default();
        src.linked = 0;
        if self.pipeline.current_state() == gst::State::Playing {
            bin.sync_state_with_parent()?;
        }
        Ok(())
    }

    /// Whether the graph records source `i`'s video (or audio): as planned for the request's
    /// sources, as its tile and mixer input were built for one that joined a room.
    fn records(&self, i: usize, video: bool) -> bool {
        if i >= self.spec.sources.len() {
            return self
                .entries
                .as_ref()
                .is_some_and(|e| e.keys().any(|(s, k)| *s == i && k.is_video() == video));
        }
        plan::records(self.spec, &self.streams, i, video)
    }

    /// Whether source `i`'s video gates its audio: both recorded (known once the graph is).
    fn video_gates(&self, i: usize) -> bool {
        self.streams.get(i).is_some_and(|s| {
            s.video.is_some()
                && s.audio.is_some()
                && self.records(i, true)
                && self.records(i, false)
        })
    }

    /// Runs `f` on source `k` with the rest of the recording at hand.
    fn with_source<R>(&mut self, k: usize, f: impl FnOnce(&mut Self, &mut UriSource) -> R) -> R {
        let mut src = self.sources.remove(k);
        let r = f(self, &mut src);
        self.sources.insert(k, src);
        r
    }

    /// Runs until the output is finalized (or no graph was ever built and a stop came).
    pub fn run(&mut self, ctl: &Receiver<Control>) -> Result<Ended, PipelineError> {
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| PipelineError::Build("pipeline without a bus".into()))?;
        for s in &self.spec.sources {
            if let Source::Web { url, .. } = s {
                let filter = self.web_filter.clone().ok_or_else(|| {
                    PipelineError::Build(
                        "a web egress without its request filter (the service passes it)".into(),
                    )
                })?;
                let proxy = format!("http://{}", filter.addr);
                let checked =
                    crate::pipeline::source_web::preflight(url, &proxy, Duration::from_secs(5));
                if let (Err(_), Some(why)) = (&checked, filter.last_refusal()) {
                    return Err(PipelineError::Bus {
                        element: String::new(),
                        message: format!("the page cannot be loaded: {why}"),
                        debug: String::new(),
                    });
                }
                checked?;
                filter.reset_count();
                web::serve_default_context();
                let state_dir = self.spec.result_path.parent().and_then(Path::parent);
                match state_dir.map(web::load_plugin) {
                    Some(Ok(true)) => info!(self.log, "wpe plugin loaded beside its web extension"),
                    Some(Err(e)) => {
                        warn!(self.log, "no page audio: the wpe plugin cannot find its web extension"; "error" => e)
                    }
                    _ => {}
                }
                if !web::has_gl_video_sink() {
                    warn!(
                        self.log,
                        "a page playing video may end the recording: WebKit's GL video sink (gstreamer1.0-gl) is not installed"
                    );
                }
            }
        }
        // The page's load time counts from here, after its answer.
        let load_since = Instant::now();
        if self.sources.is_empty() {
            self.build_graph()?;
        }
        if let Err(e) = self.pipeline.set_state(gst::State::Playing) {
            // The element that refused said why on the bus (e.g. a missing file).
            while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                self.on_message(&msg)?;
            }
            return Err(PipelineError::State(e.to_string()));
        }
        emit(&HandlerEvent::Started);
        let start_timeout = Duration::from_secs_f64(self.opts.start_timeout_s.max(0.1));
        loop {
            match ctl.try_recv() {
                Ok(Control::Stop(cause, at_ms)) if self.stopping.is_none() => {
                    info!(self.log, "stopping"; "cause" => cause.as_str(),
                          "asked_ms_ago" => at_ms.map(|a| crate::model::now_ms().saturating_sub(a)));
                    if self.entries.is_none() {
                        // Nothing recorded yet: nothing to finalize.
                        return Ok(self.ended(cause.as_str()));
                    }
                    // A second stop (a signal) while the first waits for the cut ends at once.
                    match at_ms {
                        Some(at) if self.cutting.is_none() && self.cut(at) => {
                            self.cutting = Some((cause, Instant::now()));
                        }
                        _ => self.end(cause.as_str()),
                    }
                }
                Ok(Control::Streams { add, remove }) => {
                    self.stream_changes.push((add, remove));
                }
                Ok(Control::WhipOffer {
                    source,
                    session,
                    sdp,
                }) => self.whip_offer(source, session, &sdp),
                Ok(Control::WhipEnd { source }) => self.whip_end(source),
                Ok(Control::Sources { add, remove }) => self.change_sources(add, remove),
                _ => {}
            }
            if self.stopping.is_none()
                && let Some((cause, since)) = self.cutting
                && (self.past_cut() || since.elapsed() >= self.cut_wait())
            {
                self.end(cause.as_str());
            }
            self.poll_streams();
            // Every sink saw EOS but splitmuxsink has not reported its last fragment: it is
            // measured on disk instead (`Segments::finish`).
            if self.stopping.is_some()
                && self.pending_sinks.is_empty()
                && let Some(seg) = &mut self.segments
                && seg.waited_enough()
            {
                seg.finish(self.log, true);
                return Ok(self.finished());
            }
            if let Some((_, since)) = &self.stopping
                && since.elapsed() > ORPHAN_EOS_TIMEOUT
            {
                return Err(PipelineError::Build(
                    "no EOS within 60 s of the stop".into(),
                ));
            }
            if let Some(loaded) = &self.web_loaded
                && !loaded.load(Ordering::Relaxed)
                && self.stopping.is_none()
                && load_since.elapsed() > start_timeout
            {
                return Err(PipelineError::Bus {
                    element: String::new(),
                    message: format!(
                        "the page did not finish loading within {} s",
                        self.opts.start_timeout_s
                    ),
                    debug: String::new(),
                });
            }
            let first_keyframe = Duration::from_secs_f64(self.opts.first_keyframe_s);
            if self.entries.is_none() {
                if let Some(src) = self
                    .sources
                    .iter()
                    .find(|s| s.missing_video(first_keyframe))
                {
                    return Err(self.no_keyframe(src));
                }
                if self.sources.iter().all(|s| s.complete(first_keyframe)) {
                    self.build_graph()?;
                } else if self.epoch.elapsed() > start_timeout {
                    let src = self.sources.iter().find(|s| !s.complete(first_keyframe));
                    let uri = src.map(|s| s.uri.as_str()).unwrap_or("");
                    return Err(PipelineError::Bus {
                        element: src
                            .and_then(|s| s.bin.as_ref())
                            .map(|b| b.path_string().to_string())
                            .unwrap_or_default(),
                        message: errors::no_streams(uri, self.opts.start_timeout_s),
                        debug: String::new(),
                    });
                }
            } else if self.stopping.is_none() && self.cutting.is_none() {
                if let Some(src) = self.sources.iter().find(|s| self.keyframe_late(s)) {
                    return Err(self.no_keyframe(src));
                }
                self.watch_sources()?;
                self.attach_joined()?;
            }
            let Some(msg) = bus.timed_pop(BUS_POLL) else {
                continue;
            };
            if let Some(ended) = self.on_message(&msg)? {
                return Ok(ended);
            }
        }
    }

    /// Whether `src`'s first connection gave the graph its video pad but no keyframe within
    /// `first_keyframe_s` (a sender whose keyframes never come, or come too seldom).
    fn keyframe_late(&self, src: &UriSource) -> bool {
        // A room's joiner that sends no keyframe is given up alone (`attach_joined`).
        src.index < self.spec.sources.len()
            && src.attempt == 0
            && src.state == SrcState::Live
            && src.has("video/")
            && self.records(src.index, true)
            && !src.conn.video_started.load(Ordering::Relaxed)
            // A keyframe that waited for an RTSP camera's streams to line up: the next one
            // has as long again.
            && src.started.elapsed().as_secs_f64()
                > self.opts.first_keyframe_s
                    * if src.conn.keyframe_offered.load(Ordering::Relaxed) { 2.0 } else { 1.0 }
    }

    fn no_keyframe(&self, src: &UriSource) -> PipelineError {
        PipelineError::Bus {
            element: src
                .bin
                .as_ref()
                .map(|b| b.path_string().to_string())
                .unwrap_or_default(),
            message: errors::no_keyframe(&src.uri, self.opts.first_keyframe_s),
            debug: String::new(),
        }
    }

    fn ended(&self, cause: &str) -> Ended {
        Ended {
            cause: cause.to_string(),
            media: self.media(),
        }
    }

    /// Applies stream changes and drives the stream URLs (retries, failures).
    fn poll_streams(&mut self) {
        let Some(streams) = &mut self.outs else {
            return;
        };
        for (add, remove) in self.stream_changes.drain(..) {
            for i in remove {
                streams.remove(i, self.log);
            }
            for (i, url) in add {
                streams.add(i, &url);
            }
        }
        if self.stopping.is_none() {
            let playing = self.pipeline.current_state() == gst::State::Playing;
            let clock = if playing { self.pipeline.clock() } else { None };
            let base = self.pipeline.base_time();
            streams.poll(clock, base, self.log);
        }
    }

    /// Ends what outlives the graph: the stream URL pipelines.
    pub fn shutdown(&mut self) {
        if let Some(s) = &mut self.outs {
            s.end_all();
        }
        // Every WHEP session ends with a DELETE the endpoint has answered (or timed out on).
        for src in &self.sources {
            if let Some(w) = &src.whep {
                w.end_and_wait();
            }
        }
    }

    /// Takes the page renderers out of the pipeline before it goes to Null: they never stop
    /// (see `web::detach`).
    pub fn detach_renderers(&self) {
        for (i, s) in self.spec.sources.iter().enumerate() {
            if matches!(s, Source::Web { .. }) {
                web::detach(&self.pipeline, i);
            }
        }
    }
}
