//! The live part of a recording: stall detection, reconnection, and what a bus error or
//! warning means for a source (a failed start before media, a stall after).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use slog::{info, warn};

use super::{RETRY_PAUSE, Recording, SrcState, UriSource};
use crate::error::PipelineError;
use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::pipeline::errors::{self, Failure};
use crate::pipeline::source_uri::Connection;

impl Recording<'_> {
    /// Stall detection and reconnection, once per loop.
    pub(super) fn watch_sources(&mut self) -> Result<(), PipelineError> {
        let stall_ms = (self.opts.source_stall_s * 1000.0) as u64;
        let window = Duration::from_secs_f64(self.opts.source_reconnect_s);
        for k in 0..self.sources.len() {
            let src = &self.sources[k];
            match src.state {
                SrcState::Live if src.conn.ended.load(Ordering::Relaxed) => {
                    self.stall(k, "the sender ended its stream")
                }
                SrcState::Live if src.conn.idle_ms() > stall_ms => self.stall(k, "no media"),
                SrcState::Reconnecting { since, ended } => {
                    // A keyframe waiting for an RTSP camera's streams to line up: it is back.
                    if src.conn.delivered.load(Ordering::Relaxed)
                        || src.conn.keyframe_offered.load(Ordering::Relaxed)
                    {
                        info!(self.log, "source back"; "source" => src.index,
                              "gap_ms" => since.elapsed().as_millis() as u64);
                        emit(&HandlerEvent::SourceRecovered { source: src.index });
                        self.sources[k].state = SrcState::Live;
                    } else if since.elapsed() > window && self.room_goes_on(k) {
                        // One person of a room left; the others are still recorded.
                        self.source_gone(
                            k,
                            if ended {
                                "ended its stream"
                            } else {
                                "did not come back"
                            },
                        );
                    } else if since.elapsed() > window && ended {
                        info!(self.log, "source ended"; "source" => src.index);
                        emit(&HandlerEvent::SourceEnded);
                        self.end("source_eos");
                        return Ok(());
                    } else if since.elapsed() > window {
                        warn!(self.log, "source lost"; "source" => src.index);
                        emit(&HandlerEvent::SourceLost { source: src.index });
                        self.end("source_lost");
                        return Ok(());
                    } else if !src.whip
                        && (src.bin.is_none() || src.conn.idle_ms() > stall_ms)
                        && src.started.elapsed() >= RETRY_PAUSE
                    {
                        self.with_source(k, |r, src| {
                            disconnect(&r.pipeline, src);
                            src.attempt += 1;
                            info!(r.log, "reconnecting"; "source" => src.index, "attempt" => src.attempt);
                            r.connect(src)
                        })?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Source `k` stopped sending (or failed): drop its connection, start reconnecting.
    pub(super) fn stall(&mut self, k: usize, why: &str) {
        self.with_source(k, |r, src| {
            warn!(r.log, "source stalled: reconnecting"; "source" => src.index, "why" => why,
                  "window_s" => r.opts.source_reconnect_s);
            emit(&HandlerEvent::SourceStalled { source: src.index });
            let ended = src.conn.ended.load(Ordering::Relaxed);
            disconnect(&r.pipeline, src);
            // A fresh record: "delivered" now means the next connection delivered.
            let prev = std::mem::replace(
                &mut src.conn,
                Connection::new(r.video_gates(src.index), r.epoch),
            );
            src.conn.follow(&prev);
            let now = Instant::now();
            src.state = SrcState::Reconnecting { since: now, ended };
            // The first attempt comes at once.
            src.started = now - RETRY_PAUSE;
        });
    }

    /// An error or warning on the bus: a source failure is a failed start before media, a
    /// stall after; anything else is fatal (errors) or logged (warnings).
    pub(super) fn on_failure(
        &mut self,
        msg: &gst::Message,
        err: &gst::glib::Error,
        debug: &str,
        fatal: bool,
    ) -> Result<(), PipelineError> {
        let element = msg
            .src()
            .map(|s| s.path_string().to_string())
            .unwrap_or_default();
        let factory = msg
            .src()
            .and_then(|s| s.downcast_ref::<gst::Element>())
            .and_then(|e| e.factory())
            .map(|f| f.name().to_string())
            .unwrap_or_default();
        let k = self.source_of(msg);
        if k.is_none() && self.is_of_dropped_connection(msg) {
            return Ok(());
        }
        let uri = k.map(|k| self.sources[k].uri.clone());
        let had_media = k.is_some_and(|k| self.sources[k].state != SrcState::Discovering);
        let domain = err.domain().as_str().to_string();
        let message = err.message().to_string();
        let tcp_refused = (fatal && factory == "souphttpsrc")
            .then(|| uri.as_deref().and_then(tcp_refused))
            .flatten();
        let failure = Failure {
            factory: &factory,
            domain: &domain,
            code: err_code(err),
            message: &message,
            debug,
            uri: uri.as_deref(),
            had_media,
            tcp_refused,
        };
        let kind = errors::classify(&failure);
        warn!(self.log, "pipeline {}", if fatal { "error" } else { "warning" };
              "element" => &element, "message" => &message, "debug" => debug,
              "kind" => kind.text());
        if self.stopping.is_some() && k.is_some() {
            return Ok(());
        }
        let Some(k) = k else {
            if fatal {
                return Err(PipelineError::Bus {
                    element,
                    message: errors::user_text(&failure),
                    debug: format!("{message}: {debug}"),
                });
            }
            return Ok(());
        };
        // Warnings matter for sources only when they say the connection failed (srtsrc only
        // warns while it retries on its own).
        if !fatal && kind == errors::Kind::Other {
            return Ok(());
        }
        match self.sources[k].state {
            // A WHIP publisher whose session failed before its media came (ICE, DTLS): the
            // source waits for the next one, as after a DELETE.
            SrcState::Discovering if self.sources[k].whip => {
                let index = self.sources[k].index;
                warn!(self.log, "whip publisher failed; waiting for another"; "source" => index,
                      "why" => errors::user_text(&failure));
                self.with_source(k, |r, src| disconnect(&r.pipeline, src));
                emit(&HandlerEvent::PublisherGone { source: index });
                Ok(())
            }
            // A source joining a room that is already recording: it does not join.
            SrcState::Discovering if self.entries.is_some() => {
                let why = errors::user_text(&failure);
                self.source_gone(k, &why);
                Ok(())
            }
            SrcState::Discovering => Err(PipelineError::Bus {
                element,
                message: errors::user_text(&failure),
                debug: format!("{message}: {debug}"),
            }),
            SrcState::Live => {
                self.stall(k, kind.text());
                Ok(())
            }
            SrcState::Reconnecting { .. } => {
                // This attempt failed: drop it; the next one comes after the pause.
                self.with_source(k, |r, src| disconnect(&r.pipeline, src));
                Ok(())
            }
            SrcState::Gone => Ok(()),
        }
    }
}

/// Drops `src`'s current connection (its pads unlink as it leaves the pipeline).
pub(super) fn disconnect(pipeline: &gst::Pipeline, src: &mut UriSource) {
    src.conn.close();
    if let Some(whep) = &src.whep {
        whep.end();
    }
    if let Some(bin) = src.bin.take() {
        let _ = pipeline.remove(&bin);
        // Off this thread: a source going to Null may wait on its network I/O.
        std::thread::spawn(move || {
            let _ = bin.set_state(gst::State::Null);
        });
    }
    src.pads.clear();
    src.linked = 0;
}

fn err_code(err: &gst::glib::Error) -> i32 {
    use gst::glib::translate::IntoGlib;
    if let Some(e) = err.kind::<gst::ResourceError>() {
        return e.into_glib();
    }
    if let Some(e) = err.kind::<gst::StreamError>() {
        return e.into_glib();
    }
    if let Some(e) = err.kind::<gst::CoreError>() {
        return e.into_glib();
    }
    0
}

/// Whether a TCP connect to the URI's host and port is refused: an HTTP source that cannot
/// connect only says "Internal data stream error".
fn tcp_refused(uri: &str) -> Option<bool> {
    use std::net::ToSocketAddrs;
    let hp = errors::host_port(uri)?;
    let addr = hp.to_socket_addrs().ok()?.next()?;
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(_) => Some(false),
        Err(e) => Some(e.kind() == std::io::ErrorKind::ConnectionRefused),
    }
}

/// What reaches each muxer stays muxable whatever the source does (a resolution change, a
/// sender restart, scene-cut I frames): the file's and the segments' video keep their first
/// caps (SPS/PPS stay in the stream, `config-interval=-1`: fragmented `mp4mux` wrote a broken
/// file on new caps, `matroskamux` failed, `splitmuxsink` cut inside a GOP); segments are cut
/// at IDR frames only; and the copy chain's parsers and the audio parsers before the muxers
/// never go back in time (`monotonic`).
pub(super) fn guard_muxer_inputs(pipeline: &gst::Pipeline) {
    let src = |name: &str| pipeline.by_name(name).and_then(|e| e.static_pad("src"));
    for parser in ["file_video_parse", "seg_video_parse"] {
        if let Some(pad) = src(parser) {
            crate::pipeline::keep_first_caps(&pad);
        }
    }
    crate::pipeline::output_segments::cut_at_idr_only(pipeline);
    let parsers = [
        ("video_parse", true),
        ("audio_parse", false),
        ("file_audio_parse", false),
        ("seg_audio_parse", false),
    ];
    for (parser, video) in parsers {
        if let Some(pad) = src(parser) {
            monotonic(&pad, video);
        }
    }
    if let Some(rate) = pipeline.by_name("video_rate")
        && let (Some(sink), Some(src)) = (rate.static_pad("sink"), rate.static_pad("src"))
    {
        shown_from_the_nearest_slot(&sink, src);
    }
}

/// Makes `videorate` show each frame from the output slot nearest its own time. It picks,
/// for every slot, the frame nearest in time, so a frame was shown from halfway between it and
/// the one before: a sender slower than the output had each picture shown early, by half the
/// time between its frames (a 5-fps second of a variable-rate sender: flashes 66 ms before
/// their beeps; a 15-fps camera at 30: every picture a slot early, where nanoseconds of
/// rounding decided the tie). A frame that comes more than an output frame after the one
/// before is therefore preceded by that one again, an output frame earlier: the change is
/// then at half an output frame before the frame's time, as for a source at the output's rate.
/// Starts again at each segment (a reconnection), as `videorate`'s slots do.
fn shown_from_the_nearest_slot(pad: &gst::Pad, out: gst::Pad) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let last = std::sync::Arc::new(std::sync::Mutex::new(None::<gst::Buffer>));
    let again = last.clone();
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(ev) = info.event()
            && matches!(
                ev.type_(),
                gst::EventType::Segment | gst::EventType::FlushStop
            )
        {
            *again.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        gst::PadProbeReturn::Ok
    });
    // The repeated frame goes through this probe too, pushed from inside it.
    let repeating = AtomicBool::new(false);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if repeating.load(Ordering::Relaxed) {
            return gst::PadProbeReturn::Ok;
        }
        let Some(buffer) = info.buffer().cloned() else {
            return gst::PadProbeReturn::Ok;
        };
        let prev = last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(buffer.clone());
        let frame = out
            .current_caps()
            .and_then(|c| c.structure(0)?.get::<gst::Fraction>("framerate").ok())
            .filter(|f| f.numer() > 0 && f.denom() > 0)
            .and_then(|f| gst::ClockTime::SECOND.mul_div_floor(f.denom() as u64, f.numer() as u64));
        let (Some(prev), Some(frame)) = (prev, frame) else {
            return gst::PadProbeReturn::Ok;
        };
        let (Some(t0), Some(t1)) = (prev.pts(), buffer.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        if t1 <= t0 + frame {
            return gst::PadProbeReturn::Ok;
        }
        let mut repeat = prev.copy();
        {
            let b = repeat.make_mut();
            b.set_pts(t1 - frame);
            b.set_dts(gst::ClockTime::NONE);
            b.set_duration(frame);
        }
        repeating.store(true, Ordering::Relaxed);
        // Flushing or ended: the frame itself meets the same and says so.
        let _ = pad.chain(repeat);
        repeating.store(false, Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
}

/// Keeps the decode times of a copied stream strictly increasing: a sender that resumes after a
/// pause bursts its backlog with arrival timestamps, equal ones included, which muxers write as
/// is and decoders then refuse ("non monotonically increasing dts"), and mp4mux fails on audio
/// going back in time (seen at a sender's restart). Compared in running time: a reconnection's
/// timestamps start again from zero in a segment of their own. Video is moved 1 ms after the
/// last frame; audio (`video` false) that is not after the last, or outside its segment, is
/// dropped (a frame or two at a restart), since moved audio would overlap.
fn monotonic(pad: &gst::Pad, video: bool) {
    let last = std::sync::Mutex::new(None::<gst::ClockTime>);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(seg) = pad
            .sticky_event::<gst::event::Segment>(0)
            .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned())
        else {
            return gst::PadProbeReturn::Ok;
        };
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            let rt = buffer
                .dts()
                .or(buffer.pts())
                .and_then(|t| seg.to_running_time(t));
            if !video {
                return match (*last, rt) {
                    (_, None) => crate::pipeline::DROP_BUFFER,
                    (Some(prev), Some(rt)) if rt <= prev => crate::pipeline::DROP_BUFFER,
                    (_, rt) => {
                        *last = rt;
                        gst::PadProbeReturn::Ok
                    }
                };
            }
            if let (Some(prev), Some(rt)) = (*last, rt)
                && rt <= prev
            {
                let fixed_rt = prev + gst::ClockTime::from_mseconds(1);
                let Some(fixed) = seg.position_from_running_time(fixed_rt) else {
                    return gst::PadProbeReturn::Ok;
                };
                let b = buffer.make_mut();
                b.set_dts(fixed);
                if b.pts().is_some_and(|p| p < fixed) {
                    b.set_pts(fixed);
                }
                *last = Some(fixed_rt);
            } else if rt.is_some() {
                *last = rt;
            }
        }
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use gstreamer_app as gst_app;

    /// Frames at `times_ms` (each a 2x2 picture of its index) through `videorate` at 30 fps
    /// with `shown_from_the_nearest_slot`: for each frame, the first output slot showing it.
    fn first_slots(times_ms: &[u64]) -> Vec<Option<usize>> {
        gst::init().unwrap();
        let pipeline = gst::parse::launch(
            "appsrc name=src format=time \
             caps=video/x-raw,format=GRAY8,width=2,height=2,framerate=0/1 \
             ! videorate name=video_rate skip-to-first=true ! video/x-raw,framerate=30/1 \
             ! appsink name=sink sync=false",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let rate = pipeline.by_name("video_rate").unwrap();
        shown_from_the_nearest_slot(
            &rate.static_pad("sink").unwrap(),
            rate.static_pad("src").unwrap(),
        );
        let src = pipeline
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        let sink = pipeline
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        for (i, t) in times_ms.iter().enumerate() {
            let mut b = gst::Buffer::from_mut_slice(vec![i as u8; 4]);
            b.get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(*t));
            src.push_buffer(b).unwrap();
        }
        src.end_of_stream().unwrap();
        let mut shown = Vec::new();
        while let Ok(s) = sink.pull_sample() {
            let map = s.buffer().unwrap().map_readable().unwrap();
            shown.push(map[0] as usize);
        }
        pipeline.set_state(gst::State::Null).unwrap();
        (0..times_ms.len())
            .map(|i| shown.iter().position(|&f| f == i))
            .collect()
    }

    #[test]
    fn a_slower_senders_frames_show_from_the_slot_nearest_their_time() {
        // 5 fps, then 30, then 5 again: the nearest slot of t is t / 33.3 ms rounded.
        let times = [0, 200, 400, 433, 467, 500, 700, 900];
        let want = [0, 6, 12, 13, 14, 15, 21, 27];
        assert_eq!(first_slots(&times), want.map(Some).to_vec());
    }

    #[test]
    fn a_camera_at_half_the_rate_shows_each_frame_on_its_own_slot() {
        // 15 fps: every frame on a slot, the one between them tied.
        let times: Vec<u64> = (0..8).map(|k| k * 200 / 3).collect();
        let want: Vec<Option<usize>> = (0..8).map(|k| Some(2 * k)).collect();
        assert_eq!(first_slots(&times), want);
    }

    #[test]
    fn a_sender_at_the_output_rate_is_not_repeated() {
        // Frames off the grid by 10 ms: each on its nearest slot, none shown twice.
        let times: Vec<u64> = (0..8).map(|k| 10 + k * 100 / 3).collect();
        let want: Vec<Option<usize>> = (0..8).map(Some).collect();
        assert_eq!(first_slots(&times), want);
    }
}
