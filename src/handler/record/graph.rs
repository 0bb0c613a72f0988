//! The graph, once every source showed its streams: decided (`plan::describe`), built, its
//! outputs hooked (HLS, images, health, thumbnails, stream URLs), probes on its outputs, and
//! each source's pads linked to its entries.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use slog::info;

use super::segments::Segments;
use super::streams::Streams;
use super::uri_source::SrcState;
use super::{
    MEDIA_MESSAGE, OUT_EOS_MESSAGE, Recording, cut, health, images, live, thumb, timing, web,
};
use crate::error::PipelineError;
use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::model::{EgressType, Source};
use crate::pipeline::errors;
use crate::pipeline::graph::{self, Desc, StreamKind};
use crate::pipeline::source_uri::{self, Connection};
use crate::pipeline::{SourceStreams, output_images, output_segments, plan};

impl Recording<'_> {
    /// Decides the graph from the pads every source showed, builds it and links them.
    pub(super) fn build_graph(&mut self) -> Result<(), PipelineError> {
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
        if self.spec.egress_type == EgressType::RoomComposite {
            for i in 0..self.spec.sources.len() {
                self.tile_nearest(i);
            }
        }
        if let Some(loaded) = &self.web_loaded {
            for (i, s) in self.spec.sources.iter().enumerate() {
                if matches!(s, Source::Web { .. }) {
                    let reached = web::attach(&self.pipeline, i, loaded.clone())?;
                    self.web_reached.push(reached);
                }
            }
        }
        // First on the outputs' inputs, so no other probe there counts what a stop cuts off.
        self.cut_outputs(&desc);
        self.attach_outputs();
        self.watch_output(&desc)?;
        timing::compensate_priming(&self.pipeline);
        self.mux_spans = timing::MuxSpans::watch(&self.pipeline);
        // Every track keeps its distance to the other: live URI sources start theirs where the
        // keyframe and the audio after it came; a page's sound where the mixer's output passes
        // the first frame's time, tens of ms from that time (the page's sync was off by that,
        // differently in each run); a test source's sound 9.3 ms after its picture, where the
        // AAC encoder's priming ends.
        timing::watch_mux_starts(
            &self.pipeline,
            crate::timeline::path_for(&self.spec.result_path),
        );
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

    /// The stop's cut on every output's inputs (`cut::at_output`).
    fn cut_outputs(&self, desc: &Desc) {
        for e in desc.media.iter().filter_map(|n| self.pipeline.by_name(n)) {
            for pad in e.sink_pads() {
                cut::at_output(&pad, &self.cut_rt);
            }
        }
    }

    /// Probes on the outputs' inputs (the first buffer is "media") and on every output sink
    /// (EOS at all of them is the end).
    fn watch_output(&mut self, desc: &Desc) -> Result<(), PipelineError> {
        let earliest: Arc<Mutex<Option<u64>>> = Arc::default();
        for name in &desc.media {
            let Some(e) = self.pipeline.by_name(name) else {
                continue;
            };
            for pad in e.sink_pads() {
                let media = self.media.clone();
                let earliest = earliest.clone();
                let m = e.downgrade();
                // Each input's first buffer: the recording starts at the earliest of them,
                // which need not come first (a camera's audio stream shows before its video's
                // keyframe reaches the muxer, though the keyframe is older).
                pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                    media.store(true, Ordering::Relaxed);
                    let rt = info.buffer().and_then(|b| {
                        let ev = pad.sticky_event::<gst::event::Segment>(0)?;
                        let seg = ev.segment().downcast_ref::<gst::ClockTime>()?;
                        seg.to_running_time(b.dts_or_pts()?)
                    });
                    let mut first = earliest.lock().unwrap_or_else(|p| p.into_inner());
                    let news = match (*first, rt) {
                        (None, _) => true,
                        (Some(f), Some(rt)) => rt.nseconds() < f,
                        (Some(_), None) => false,
                    };
                    if news && let Some(m) = m.upgrade() {
                        *first = Some(rt.map_or(u64::MAX, |t| t.nseconds()));
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
    pub(super) fn link_source(&mut self, k: usize) -> Result<(), PipelineError> {
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
}
