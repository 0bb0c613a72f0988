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

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod health;
mod images;
mod live;
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
use crate::pipeline::announce::{self, Announced};
use crate::pipeline::errors;
use crate::pipeline::graph::{self, Desc, StreamKind};
use crate::pipeline::source_uri::{self, Connection};
use crate::pipeline::{SourceStreams, plan};
use crate::pipeline::{output_images, output_segments};

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
    /// Sinks EOS has not reached yet (the end is when none is left and HLS is done).
    pending_sinks: Vec<String>,
    segments: Option<Segments>,
    outs: Option<Streams>,
    /// Stream changes asked for before the graph existed.
    stream_changes: Vec<StreamChange>,
    /// A web source's page has loaded (its frames flow from then on); None without one.
    web_loaded: Option<Arc<AtomicBool>>,
    /// The filter every request of the page goes through (`web_filter`); None without a page.
    web_filter: Option<Arc<super::web_filter::Filter>>,
    /// What the file output received of each stream (written at the end for the record).
    mux_spans: timing::MuxSpans,
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
            web_filter: None,
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
        let caps = plan::copy_caps(self.spec);
        if let Some(whep) = src.whep.clone() {
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
                Ok(Control::Stop(cause)) if self.stopping.is_none() => {
                    info!(self.log, "stopping"; "cause" => cause.as_str());
                    if self.entries.is_none() {
                        // Nothing recorded yet: nothing to finalize.
                        return Ok(self.ended(cause.as_str()));
                    }
                    self.end(cause.as_str());
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
            } else if self.stopping.is_none() {
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
        src.attempt == 0
            && src.state == SrcState::Live
            && src.has("video/")
            && self.records(src.index, true)
            && !src.conn.video_started.load(Ordering::Relaxed)
            && src.started.elapsed().as_secs_f64() > self.opts.first_keyframe_s
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

    fn on_message(&mut self, msg: &gst::Message) -> Result<Option<Ended>, PipelineError> {
        use gst::MessageView as V;
        match msg.view() {
            V::Application(a) => {
                let Some(s) = a.structure() else {
                    return Ok(None);
                };
                match s.name().as_str() {
                    source_uri::PAD_MESSAGE => {
                        let (Ok(i), Ok(pad)) = (s.get::<u32>("source"), s.get::<gst::Pad>("pad"))
                        else {
                            return Ok(None);
                        };
                        self.on_pad(i as usize, pad, msg.src())?;
                    }
                    announce::ANNOUNCED_MESSAGE => {
                        if let Ok(i) = s.get::<u32>("source")
                            && let Some(k) = self.source_of(msg)
                            && self.sources[k].index == i as usize
                        {
                            let a = Announced {
                                video: s.get("video").unwrap_or(false),
                                audio: s.get("audio").unwrap_or(false),
                            };
                            info!(self.log, "source announced"; "source" => i,
                                  "video" => a.video, "audio" => a.audio);
                            self.sources[k].announced = Some(a);
                        }
                    }
                    MEDIA_MESSAGE => {
                        // The output's timeline places its first buffer where it arrived
                        // (`source_uri::gate`): the recording began that long ago.
                        let since_ms =
                            match (s.get::<u64>("rt"), self.pipeline.current_running_time()) {
                                (Ok(rt), Some(now)) => {
                                    now.mseconds().saturating_sub(rt / 1_000_000)
                                }
                                _ => 0,
                            };
                        info!(self.log, "recording"; "after_ms" => self.epoch.elapsed().as_millis() as u64,
                              "media_since_ms" => since_ms);
                        emit(&HandlerEvent::Playing { since_ms });
                    }
                    OUT_EOS_MESSAGE => {
                        let sink = s.get::<String>("sink").unwrap_or_default();
                        self.pending_sinks.retain(|n| *n != sink);
                        if sink == output_segments::SINK
                            && let Some(seg) = &mut self.segments
                        {
                            seg.on_eos();
                        }
                        return Ok(self.end_if_done());
                    }
                    images::IMAGE_MESSAGE => {
                        if let Ok(count) = s.get::<u32>("count") {
                            emit(&HandlerEvent::ImageWritten { count });
                        }
                    }
                    _ => {}
                }
            }
            V::Element(_) if web::is_loaded(msg) => {
                if let Some(loaded) = &self.web_loaded
                    && !loaded.swap(true, Ordering::Relaxed)
                {
                    info!(self.log, "page loaded"; "after_ms" => self.epoch.elapsed().as_millis() as u64);
                    // Nothing reached the filter: WebKit went around it; nothing is recorded
                    // of a page whose requests were not checked.
                    if self.web_filter.as_ref().is_some_and(|f| f.admitted() == 0) {
                        return Err(PipelineError::Build(
                            "the page's requests did not go through its filter: not recorded"
                                .into(),
                        ));
                    }
                }
            }
            V::Element(e) => {
                if let (Some(st), Some(seg)) = (e.structure(), &mut self.segments)
                    && st.name().starts_with("splitmuxsink-fragment-")
                {
                    seg.on_message(st, self.log);
                    return Ok(self.end_if_done());
                }
            }
            V::Eos(_) => return Ok(Some(self.finished())),
            V::StreamCollection(c) => {
                if let Some(k) = self.source_of(msg) {
                    for st in c.stream_collection().iter() {
                        let t = st.stream_type();
                        let col = &mut self.sources[k].collection;
                        col.video |= t.contains(gst::StreamType::VIDEO);
                        col.audio |= t.contains(gst::StreamType::AUDIO);
                    }
                }
            }
            V::StreamsSelected(s) => {
                if let Some(k) = self.source_of(msg) {
                    let n = s
                        .streams()
                        .filter(|st| {
                            st.stream_type().intersects(
                                gst::StreamType::AUDIO
                                    | gst::StreamType::VIDEO
                                    | gst::StreamType::TEXT,
                            )
                        })
                        .count();
                    self.sources[k].expected = Some(n);
                }
            }
            V::Error(e) => {
                let err = e.error();
                let debug = e.debug().map(|d| d.to_string()).unwrap_or_default();
                self.on_failure(msg, &err, &debug, true)?;
            }
            V::Warning(w) => {
                let err = w.error();
                let debug = w.debug().map(|d| d.to_string()).unwrap_or_default();
                self.on_failure(msg, &err, &debug, false)?;
            }
            _ => {}
        }
        Ok(None)
    }

    /// The end, once EOS reached every output sink and the last segment closed.
    fn end_if_done(&mut self) -> Option<Ended> {
        let seg_done = self.segments.as_ref().is_none_or(|s| s.done);
        (self.pending_sinks.is_empty() && seg_done).then(|| self.finished())
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

    /// The end: EOS reached every output (or the whole pipeline).
    fn finished(&mut self) -> Ended {
        let _ = self
            .mux_spans
            .write(&crate::timeline::spans_path_for(&self.spec.result_path));
        if let Some(seg) = &mut self.segments {
            seg.finish(self.log, false);
        }
        self.shutdown();
        match &self.stopping {
            Some((cause, _)) => self.ended(cause),
            None => {
                emit(&HandlerEvent::SourceEnded);
                self.ended("source_eos")
            }
        }
    }

    /// Which URI source (index into `sources`) a message comes from; None for the rest of the
    /// graph, and for connections already dropped.
    fn source_of(&self, msg: &gst::Message) -> Option<usize> {
        let src = msg.src()?;
        self.sources.iter().position(|s| {
            s.bin
                .as_ref()
                .is_some_and(|b| src == b.upcast_ref::<gst::Object>() || src.has_as_ancestor(b))
                || (s.bin.is_some() && s.held.owns(src))
        })
    }

    /// Whether `msg` comes from a connection that was dropped (its messages may still be queued).
    fn is_of_dropped_connection(&self, msg: &gst::Message) -> bool {
        let Some(src) = msg.src() else { return false };
        let path = src.path_string();
        let root = format!("/GstPipeline:{}/GstURIDecodeBin3:", self.pipeline.name());
        path.starts_with(&root) && self.source_of(msg).is_none()
    }

    fn on_pad(
        &mut self,
        i: usize,
        pad: gst::Pad,
        from: Option<&gst::Object>,
    ) -> Result<(), PipelineError> {
        let Some(k) = self.sources.iter().position(|s| s.index == i) else {
            return Ok(());
        };
        // A pad of a connection already dropped.
        if self.sources[k]
            .bin
            .as_ref()
            .map(|b| b.upcast_ref::<gst::Object>())
            != from
        {
            return Ok(());
        }
        info!(self.log, "source pad"; "source" => i, "pad" => pad.name().as_str(),
              "caps" => source_uri::caps_name(&pad), "after_ms" => self.epoch.elapsed().as_millis() as u64);
        let src = &mut self.sources[k];
        src.pads.push(pad);
        src.last_pad = Some(Instant::now());
        // Once the graph exists every pad is linked as it comes (a reconnection's, or a stream
        // that showed after the graph was decided): none stays held, which would stop the
        // source.
        // A source joining a room is linked once its tile exists (`attach_joined`).
        if self.entries.is_some() && self.sources[k].state != SrcState::Discovering {
            self.link_source(k)?;
        }
        Ok(())
    }

    /// Decides the graph from the pads every source showed, builds it and links them.
    /// Every URL of the spec that may carry a secret.
    fn secret_urls(&self) -> impl Iterator<Item = &str> {
        let sources = self.spec.sources.iter().filter_map(|s| match s {
            Source::Uri { uri } => Some(uri.as_str()),
            Source::Web { url, .. } => Some(url.as_str()),
            Source::Whep { url, .. } => Some(url.as_str()),
            Source::Test { .. } | Source::Whip => None,
        });
        sources.chain(self.spec.outputs.stream_urls.iter().map(String::as_str))
    }

    fn build_graph(&mut self) -> Result<(), PipelineError> {
        let mut streams = Vec::new();
        for (i, s) in self.spec.sources.iter().enumerate() {
            streams.push(match s {
                Source::Test { media, .. } => SourceStreams::of_test(*media),
                Source::Web { audio, .. } => {
                    SourceStreams::of_web(*audio && self.spec.audio.enabled)
                }
                Source::Uri { .. } | Source::Whip | Source::Whep { .. } => {
                    let src = self.sources.iter().find(|s| s.index == i);
                    let uri = src.map(|s| s.uri.as_str()).unwrap_or_default();
                    let names: Vec<String> = src
                        .map(|s| s.pads.iter().map(source_uri::caps_name).collect())
                        .unwrap_or_default();
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let (st, _) = SourceStreams::from_pads(&names);
                    if st.is_empty() {
                        return Err(PipelineError::Build(format!(
                            "source {} carries neither audio nor video ({})",
                            errors::redact(uri),
                            names.join(", ")
                        )));
                    }
                    st
                }
            });
        }
        self.streams = streams;
        let n = self.spec.sources.len();
        let records = |video| (0..n).any(|i| plan::records(self.spec, &self.streams, i, video));
        emit(&HandlerEvent::Recording {
            video: records(true),
            audio: records(false),
        });
        let desc = plan::describe(self.spec, self.opts, &self.streams);
        // No URL's secrets reach a log: source credentials and tokens, stream keys.
        let launch = crate::model::redact::in_text(&desc.launch(), self.secret_urls());
        info!(self.log, "graph decided"; "launch" => launch);
        let built = graph::instantiate(&desc, &self.pipeline, self.fd)?;
        if let Some(loaded) = &self.web_loaded {
            for (i, s) in self.spec.sources.iter().enumerate() {
                if matches!(s, Source::Web { .. }) {
                    web::attach(&self.pipeline, i, loaded.clone())?;
                }
            }
        }
        self.attach_outputs();
        self.watch_output(&desc)?;
        timing::compensate_priming(&self.pipeline);
        self.mux_spans = timing::MuxSpans::watch(&self.pipeline);
        // Live URI sources start their tracks where the keyframe and the audio after it came;
        // test sources and pages start both together (a page's audio waits for its first frame).
        if !self.sources.is_empty() {
            timing::watch_mux_starts(
                &self.pipeline,
                crate::timeline::path_for(&self.spec.result_path),
            );
        }
        live::guard_muxer_inputs(&self.pipeline);
        // Downstream first, so nothing pushes into an element that is not playing yet.
        let mut names: Vec<&str> = desc.names();
        names.reverse();
        for n in names {
            if let Some(e) = self.pipeline.by_name(n) {
                e.sync_state_with_parent()?;
            }
        }
        self.entries = Some(built.entries);
        for k in 0..self.sources.len() {
            // The first connection was made before anyone knew whether video gates audio.
            let gates = self.video_gates(self.sources[k].index);
            let conn = Connection::new(gates, self.epoch);
            conn.follow(&self.sources[k].conn);
            self.sources[k].conn = conn;
            self.sources[k].state = SrcState::Live;
            self.link_source(k)?;
        }
        Ok(())
    }

    /// Hooks the outputs the handler drives itself: HLS naming and playlists, image files,
    /// stream URL pipelines.
    fn attach_outputs(&mut self) {
        let o = &self.spec.outputs;
        if let (Some(s), Some(sink)) = (&o.segments, self.pipeline.by_name(output_segments::SINK)) {
            let seg = Segments::new(s);
            seg.attach(&sink, self.log);
            self.segments = Some(seg);
        }
        if let (Some(im), Some(sink)) = (&o.images, self.pipeline.by_name(output_images::SINK)) {
            images::attach(&sink, im);
        }
        health::attach(&self.pipeline, self.opts.health_window_s);
        if self.opts.thumbnail_s > 0.0 {
            thumb::attach(
                &self.pipeline,
                crate::timeline::thumbnail_path_for(&self.spec.result_path),
                Duration::from_secs_f64(self.opts.thumbnail_s),
            );
        }
        self.outs = Streams::attach(
            &self.pipeline,
            &o.stream_urls,
            self.opts.stream_retry_s,
            &self.spec.egress_id,
        );
    }

    /// Probes on the outputs' inputs (the first buffer is "media") and on every output sink
    /// (EOS at all of them is the end).
    fn watch_output(&mut self, desc: &Desc) -> Result<(), PipelineError> {
        for name in &desc.media {
            let Some(e) = self.pipeline.by_name(name) else {
                continue;
            };
            for pad in e.sink_pads() {
                let media = self.media.clone();
                let m = e.downgrade();
                pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                    if !media.swap(true, Ordering::Relaxed)
                        && let Some(m) = m.upgrade()
                    {
                        let rt = info.buffer().and_then(|b| {
                            let ev = pad.sticky_event::<gst::event::Segment>(0)?;
                            let seg = ev.segment().downcast_ref::<gst::ClockTime>()?;
                            seg.to_running_time(b.dts_or_pts()?)
                        });
                        let mut s = gst::Structure::new_empty(MEDIA_MESSAGE);
                        if let Some(rt) = rt {
                            s.set("rt", rt.nseconds());
                        }
                        let _ =
                            m.post_message(gst::message::Application::builder(s).src(&m).build());
                    }
                    gst::PadProbeReturn::Remove
                });
            }
        }
        self.pending_sinks = desc.sinks.clone();
        for name in self.pending_sinks.clone() {
            let e = self
                .pipeline
                .by_name(&name)
                .ok_or_else(|| PipelineError::Build(format!("no {name}")))?;
            for pad in e.sink_pads() {
                let sink = name.clone();
                pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |pad, info| {
                    if let Some(ev) = info.event()
                        && ev.type_() == gst::EventType::Eos
                        && let Some(e) = pad.parent_element()
                    {
                        // Everything before EOS is through: a muxer has rewritten its headers.
                        let s = gst::Structure::builder(OUT_EOS_MESSAGE)
                            .field("sink", sink.as_str())
                            .build();
                        let _ =
                            e.post_message(gst::message::Application::builder(s).src(&e).build());
                    }
                    gst::PadProbeReturn::Ok
                });
            }
        }
        Ok(())
    }

    /// Links the pads of source `k`'s current connection to the graph's entries.
    fn link_source(&mut self, k: usize) -> Result<(), PipelineError> {
        let Some(entries) = &self.entries else {
            return Ok(());
        };
        let src = &self.sources[k];
        let i = src.index;
        let names: Vec<String> = src.pads.iter().map(source_uri::caps_name).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (_, kinds) = SourceStreams::from_pads(&names);
        // Pads keep their kinds as later ones come (the first video and audio win), so only
        // the new ones are linked.
        for (n, (pad, kind)) in src.pads.iter().zip(kinds).enumerate().skip(src.linked) {
            let video = kind.is_video();
            let entry = (kind != StreamKind::Unused && self.records(i, video))
                .then(|| entries.get(&(i, kind)))
                .flatten();
            match entry {
                Some(entry) => {
                    source_uri::gate(pad, &src.conn, &src.held, video, &self.pipeline);
                    pad.link(entry).map_err(|e| {
                        PipelineError::Build(format!("cannot link {}: {e:?}", pad.name()))
                    })?;
                }
                None => {
                    let name = format!("src{i}_a{}_discard{n}", src.attempt);
                    source_uri::discard(&self.pipeline, pad, &name)?;
                }
            }
            src.held.release(pad);
        }
        self.sources[k].linked = self.sources[k].pads.len();
        Ok(())
    }

    /// Ends the recording: EOS into every entry of the graph (the sources' own EOS handling,
    /// which an HLS source does not honour, is not needed) and into test sources.
    fn end(&mut self, cause: &str) {
        self.stopping = Some((cause.to_string(), Instant::now()));
        for src in &mut self.sources {
            disconnect(&self.pipeline, src);
        }
        if let Some(entries) = &self.entries {
            for pad in entries.values() {
                pad.send_event(gst::event::Eos::new());
            }
        }
        for (i, s) in self.spec.sources.iter().enumerate() {
            match s {
                Source::Test { .. } => {
                    for kind in ["video", "audio"] {
                        if let Some(e) = self.pipeline.by_name(&format!("src{i}_{kind}")) {
                            e.send_event(gst::event::Eos::new());
                        }
                    }
                }
                // A page never ends: EOS goes in right after it, into the raw chains.
                Source::Web { .. } => {
                    for head in ["video_queue", "audio_queue"] {
                        if let Some(p) = self
                            .pipeline
                            .by_name(head)
                            .and_then(|e| e.static_pad("sink"))
                        {
                            p.send_event(gst::event::Eos::new());
                        }
                    }
                }
                Source::Uri { .. } | Source::Whip | Source::Whep { .. } => {}
            }
        }
    }
}
