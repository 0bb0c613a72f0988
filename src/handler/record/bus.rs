//! What the bus says, message by message: source pads and announcements, media and EOS at
//! the outputs, segments, images, a page loaded, errors; and the end of the recording (EOS
//! sent into the graph's entries, the end once it reached every output).

use std::sync::atomic::Ordering;
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;
use slog::info;

use super::live::disconnect;
use super::{Ended, MEDIA_MESSAGE, OUT_EOS_MESSAGE, Recording, SrcState, images, web};
use crate::error::PipelineError;
use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::model::Source;
use crate::pipeline::announce::{self, Announced};
use crate::pipeline::output_segments;
use crate::pipeline::source_uri;

impl Recording<'_> {
    /// What one bus message means for the recording: a pad, an announcement, media, an
    /// output's EOS, an image, a page loaded, a segment, a stream collection, an error.
    /// Some(end) when the recording is over.
    pub(super) fn on_message(
        &mut self,
        msg: &gst::Message,
    ) -> Result<Option<Ended>, PipelineError> {
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
                        // Again when another output input's first buffer is older.
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

    /// The end: EOS reached every output (or the whole pipeline).
    pub(super) fn finished(&mut self) -> Ended {
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
    pub(super) fn source_of(&self, msg: &gst::Message) -> Option<usize> {
        let src = msg.src()?;
        self.sources.iter().position(|s| {
            s.bin
                .as_ref()
                .is_some_and(|b| src == b.upcast_ref::<gst::Object>() || src.has_as_ancestor(b))
                || (s.bin.is_some() && s.held.owns(src))
        })
    }

    /// Whether `msg` comes from a connection that was dropped (its messages may still be queued).
    pub(super) fn is_of_dropped_connection(&self, msg: &gst::Message) -> bool {
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

    /// Ends the recording: EOS into every entry of the graph (the sources' own EOS handling,
    /// which an HLS source does not honour, is not needed) and into test sources.
    pub(super) fn end(&mut self, cause: &str) {
        self.stopping = Some((cause.to_string(), Instant::now()));
        info!(self.log, "ending: EOS into the graph"; "cause" => cause,
              "running_time_ms" => self.pipeline.current_running_time().map(|t| t.mseconds()));
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
                // A page never ends: EOS goes in right after it, into the raw chains; for the
                // sound, into its hold, so what it holds is let out first.
                Source::Web { .. } => {
                    let hold = crate::pipeline::source_web::hold_name(i);
                    let audio = if self.pipeline.by_name(&hold).is_some() {
                        hold.as_str()
                    } else {
                        "audio_queue"
                    };
                    for head in ["video_queue", audio] {
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
