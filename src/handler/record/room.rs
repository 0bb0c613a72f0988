//! A `room_composite` whose people come and go while it records: a source that joins gets a
//! connection like the request's own, and once it shows its streams, a tile in the
//! compositor and an input of the audio mixer; one that leaves takes them out. Either way the
//! grid is laid out again for the video sources present (1, 2, 4, 9, 16 tiles), in one file.
//! A source lost while others still send keeps its tile (its last frame) until removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;
use slog::{info, warn};

use super::{Recording, SrcState, UriSource};
use crate::error::PipelineError;
use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::model::{EgressType, LostTile, Source};
use crate::pipeline::graph::{self, Desc, Node, StreamKind};
use crate::pipeline::source_uri::{self, Connection};
use crate::pipeline::{SourceStreams, compose, plan};

/// The elements from source `i`'s video to its tile, in order: its decoder where it is
/// decoded in the graph (an RTSP camera's), then the tile's own.
fn video_chain(i: usize) -> Vec<String> {
    let mut chain = plan::decode_elements(i).to_vec();
    chain.extend(compose::video_elements(i));
    chain
}

impl Recording<'_> {
    /// Sources join (`add`: id and source) and leave (`remove`: ids).
    pub(super) fn change_sources(&mut self, add: Vec<(usize, Source)>, remove: Vec<usize>) {
        if self.spec.egress_type != EgressType::RoomComposite || self.stopping.is_some() {
            return;
        }
        for id in remove {
            self.remove_source(id);
        }
        for (id, source) in add {
            if self.sources.iter().any(|s| s.index == id) || id < self.spec.sources.len() {
                continue;
            }
            let Some(mut src) = UriSource::of(id, &source, self.epoch) else {
                continue;
            };
            let whip = src.whip;
            // It has until its streams show (or its publisher's offer) like a first start.
            src.started = std::time::Instant::now();
            info!(self.log, "source joins"; "source" => id, "whip" => whip);
            match self.connect(&mut src) {
                Ok(()) => self.sources.push(src),
                Err(e) => {
                    warn!(self.log, "source cannot join"; "source" => id, "error" => e.to_string());
                    emit(&HandlerEvent::SourceLeft { source: id });
                }
            }
        }
        self.relayout();
    }

    /// Sources that joined after the graph was built and showed their streams get their
    /// tiles; those that never do within the start timeout are given up.
    pub(super) fn attach_joined(&mut self) -> Result<(), PipelineError> {
        if self.entries.is_none() || self.stopping.is_some() {
            return Ok(());
        }
        let first_keyframe = std::time::Duration::from_secs_f64(self.opts.first_keyframe_s);
        let start_timeout = std::time::Duration::from_secs_f64(self.opts.start_timeout_s);
        for k in 0..self.sources.len() {
            let src = &self.sources[k];
            if src.state != SrcState::Discovering {
                continue;
            }
            if src.complete(first_keyframe) {
                // A joiner whose tile cannot be built does not join; the room goes on.
                if let Err(e) = self.attach(k) {
                    let i = self.sources[k].index;
                    self.take_out(&video_chain(i));
                    self.take_out(&compose::audio_elements(i));
                    if let Some(entries) = &mut self.entries {
                        entries.retain(|(s, _), _| *s != i);
                    }
                    self.source_gone(k, &e.to_string());
                }
            } else if src.started.elapsed() > start_timeout {
                self.source_gone(k, "showed no stream in time");
            }
        }
        Ok(())
    }

    /// Builds source `k`'s tile and mixer input, lays the grid out again and links it.
    fn attach(&mut self, k: usize) -> Result<(), PipelineError> {
        let i = self.sources[k].index;
        let names: Vec<String> = self.sources[k]
            .pads
            .iter()
            .map(source_uri::caps_name)
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (st, _) = SourceStreams::from_pads(&names);
        let mut d = Desc::default();
        let (cw, ch) = (self.spec.video.width / 2, self.spec.video.height / 2);
        let entry = |kind| vec![Node::Entry { source: i, kind }];
        if self.pipeline.by_name("comp").is_some() && st.video.is_some() {
            let kind = st.video.unwrap_or(StreamKind::RawVideo);
            let mut head = entry(kind);
            head.extend(plan::decoded_here(i, kind));
            d.push(compose::video_tile(i, head, cw & !1, ch & !1));
        }
        if self.pipeline.by_name("amix").is_some() && st.audio.is_some() {
            let kind = st.audio.unwrap_or(StreamKind::RawAudio);
            d.push(compose::audio_input(i, entry(kind)));
        }
        if self.streams.len() <= i {
            self.streams.resize(i + 1, SourceStreams::default());
        }
        self.streams[i] = st;
        let built = graph::instantiate(&d, &self.pipeline, self.fd)?;
        let mut names: Vec<&str> = d.names();
        names.reverse();
        for n in names {
            if let Some(e) = self.pipeline.by_name(n) {
                e.sync_state_with_parent()?;
            }
        }
        if let Some(entries) = &mut self.entries {
            entries.extend(built.entries);
        }
        self.tile_nearest(i);
        info!(self.log, "source joined the room"; "source" => i,
              "video" => st.video.is_some(), "audio" => st.audio.is_some());
        self.relayout();
        let conn = Connection::new(self.video_gates(i), self.epoch);
        conn.follow(&self.sources[k].conn);
        self.sources[k].conn = conn;
        self.sources[k].state = SrcState::Live;
        self.link_source(k)
    }

    /// Source `id` leaves: its connection (or its test source's generators), tile and mixer
    /// input go.
    fn remove_source(&mut self, id: usize) {
        let test = matches!(self.spec.sources.get(id), Some(Source::Test { .. }));
        let (mut video, mut audio) = (Vec::new(), Vec::new());
        if test {
            video.extend([format!("src{id}_video"), format!("src{id}_video_caps")]);
            audio.extend([format!("src{id}_audio"), format!("src{id}_audio_caps")]);
        } else if let Some(k) = self.sources.iter().position(|s| s.index == id) {
            self.with_source(k, |r, src| super::disconnect(&r.pipeline, src));
            self.sources.remove(k);
        } else {
            return;
        }
        video.extend(video_chain(id));
        audio.extend(compose::audio_elements(id));
        self.take_out(&video);
        self.take_out(&audio);
        if let Some(entries) = &mut self.entries {
            entries.retain(|(s, _), _| *s != id);
        }
        info!(self.log, "source left the room"; "source" => id);
        self.end_if_nobody_sends();
    }

    /// Stops and removes the elements `chain` (in order) and releases the mixer pad its last
    /// one fed.
    fn take_out(&self, chain: &[String]) {
        let elements: Vec<gst::Element> = chain
            .iter()
            .filter_map(|n| self.pipeline.by_name(n))
            .collect();
        let fed = elements
            .last()
            .and_then(|e| e.static_pad("src"))
            .and_then(|p| p.peer());
        for e in &elements {
            let _ = e.set_state(gst::State::Null);
            let _ = self.pipeline.remove(e);
        }
        if let Some(pad) = fed
            && let Some(mixer) = pad.parent_element()
        {
            mixer.release_request_pad(&pad);
        }
    }

    /// Tile `i`'s frames go to the compositor's output slot nearest their time.
    pub(super) fn tile_nearest(&self, i: usize) {
        if let Some(pad) = self
            .pipeline
            .by_name(&compose::video_elements(i)[3])
            .and_then(|e| e.static_pad("src"))
        {
            nearest_slot(
                &pad,
                self.room_first.clone(),
                compose::half_frame(self.spec),
            );
        }
    }

    /// Places every video tile present on the grid for their count.
    fn relayout(&self) {
        let Some(comp) = self.pipeline.by_name("comp") else {
            return;
        };
        let mut tiles: Vec<usize> = comp
            .sink_pads()
            .iter()
            .filter_map(|p| p.name().strip_prefix("sink_")?.parse().ok())
            .collect();
        tiles.sort_unstable();
        let v = &self.spec.video;
        for (i, x, y, cw, ch) in compose::layout(&tiles, v.width, v.height) {
            if let Some(pad) = comp.static_pad(&compose::tile_pad(i)) {
                pad.set_property("xpos", x as i32);
                pad.set_property("ypos", y as i32);
            }
            if let (Some(cell), Ok(caps)) = (
                self.pipeline.by_name(&compose::video_elements(i)[3]),
                compose::cell_caps(cw, ch).parse::<gst::Caps>(),
            ) {
                cell.set_property("caps", caps);
            }
        }
    }

    /// Whether the room records on without source `k` (another source is still in it).
    pub(super) fn room_goes_on(&self, k: usize) -> bool {
        let others = self
            .sources
            .iter()
            .enumerate()
            .any(|(j, s)| j != k && s.state != SrcState::Gone);
        // Test sources of the request never leave.
        let tests = self
            .spec
            .sources
            .iter()
            .any(|s| matches!(s, Source::Test { .. }));
        self.spec.egress_type == EgressType::RoomComposite
            && self.stopping.is_none()
            && (others || tests)
    }

    /// Source `k` is given up: its tile keeps its last frame (or, `pipeline.lost_tile` black,
    /// shows the background) until it is removed.
    pub(super) fn source_gone(&mut self, k: usize, why: &str) {
        self.with_source(k, |r, src| {
            warn!(r.log, "room source lost; the room goes on"; "source" => src.index, "why" => why);
            super::disconnect(&r.pipeline, src);
            src.state = SrcState::Gone;
            if r.opts.lost_tile == LostTile::Black
                && let Some(pad) = r
                    .pipeline
                    .by_name("comp")
                    .and_then(|c| c.static_pad(&compose::tile_pad(src.index)))
            {
                pad.set_property("alpha", 0.0f64);
            }
        });
        emit(&HandlerEvent::SourceLeft {
            source: self.sources[k].index,
        });
        self.end_if_nobody_sends();
    }

    /// A room in which no source sends any more (all lost, or removed) ends "Source lost"
    /// rather than record frozen tiles.
    pub(super) fn end_if_nobody_sends(&mut self) {
        if self.spec.egress_type != EgressType::RoomComposite
            || self.stopping.is_some()
            || self.room_goes_on(usize::MAX)
        {
            return;
        }
        warn!(self.log, "no source of the room sends any more");
        if let Some(src) = self.sources.first() {
            emit(&HandlerEvent::SourceLost { source: src.index });
        }
        self.end("source_lost");
    }
}

/// Moves a tile's frames half an output frame later, so the compositor shows each in the slot
/// nearest its time. It takes, for a slot, the newest frame that starts before the slot ends:
/// a frame was shown up to a whole output frame early against the sound (0-33 ms at 30 fps, a
/// different figure each run, as a source's frames fall anywhere between the slots of a grid
/// that starts at the room's first frame). The room's first frame (`first`) is not moved: the
/// grid starts where it is, and a source whose frames fall on the grid keeps its times exactly.
fn nearest_slot(pad: &gst::Pad, first: Arc<AtomicBool>, half: gst::ClockTime) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if first.swap(false, Ordering::Relaxed) {
            return gst::PadProbeReturn::Ok;
        }
        if let Some(gst::PadProbeData::Buffer(b)) = &mut info.data {
            crate::pipeline::delay(b.make_mut(), half);
        }
        gst::PadProbeReturn::Ok
    });
}
