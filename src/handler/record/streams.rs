//! Stream URLs on the handler's main thread: one pipeline per URL (`pipeline::output_stream`)
//! fed from the recording's taps. A URL whose pipeline fails is torn down (off this thread:
//! a network sink going to Null may block) and retried with backoff (1, 2, 4, ... 10 s) until
//! it has failed for `stream_retry_s` without 10 s of success in between; then it is `failed`.
//! None of it can hold up the recording: the taps only ever push into leaky appsrcs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use slog::{Logger, info, warn};

use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::model::{StreamStatus, redact};
use crate::pipeline::output_stream::{self, AUDIO_TAP, StreamPipe, VIDEO_TAP};

/// After this long without an error a stream counts as healthy again.
const HEALTHY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where the taps push: the appsrcs of every running URL pipeline.
#[derive(Clone)]
struct Target {
    index: usize,
    video: Option<gst_app::AppSrc>,
    audio: Option<gst_app::AppSrc>,
    /// Video waits for a keyframe; audio waits for the video.
    keyed: Arc<std::sync::atomic::AtomicBool>,
}

type Targets = Arc<Mutex<Vec<Target>>>;

struct Url {
    index: usize,
    url: String,
    pipe: Option<StreamPipe>,
    attempt: u32,
    /// Running since (the current pipeline).
    up_since: Option<Instant>,
    failing_since: Option<Instant>,
    next_try: Instant,
    backoff: Duration,
    last_error: Option<String>,
    status: StreamStatus,
    /// Whether the host was looked up after a failure that did not say why (once: a lookup
    /// can take seconds, on the handler's main loop), and what it found.
    dns: Option<Option<String>>,
}

pub struct Streams {
    urls: Vec<Url>,
    targets: Targets,
    video: bool,
    audio: bool,
    retry: Duration,
    egress_id: String,
    encoder: Option<gst::Element>,
}

impl Streams {
    /// Hooks the taps of `pipeline` (when the graph has them) and queues the first URLs.
    pub fn attach(
        pipeline: &gst::Pipeline,
        urls: &[String],
        retry_s: f64,
        egress_id: &str,
    ) -> Option<Streams> {
        let vtap = pipeline.by_name(VIDEO_TAP);
        let atap = pipeline.by_name(AUDIO_TAP);
        if vtap.is_none() && atap.is_none() {
            return None;
        }
        let targets: Targets = Arc::default();
        let has_video = vtap.is_some();
        if let Some(t) = &vtap {
            hook(t, targets.clone(), true, has_video);
        }
        if let Some(t) = &atap {
            hook(t, targets.clone(), false, has_video);
        }
        let mut s = Streams {
            urls: Vec::new(),
            targets,
            video: has_video,
            audio: atap.is_some(),
            retry: Duration::from_secs_f64(retry_s),
            egress_id: egress_id.to_string(),
            encoder: pipeline.by_name("video_h264_enc"),
        };
        for (i, u) in urls.iter().enumerate() {
            s.add(i, u);
        }
        Some(s)
    }

    pub fn add(&mut self, index: usize, url: &str) {
        if self.urls.iter().any(|u| u.index == index) {
            return;
        }
        self.urls.push(Url {
            index,
            url: url.to_string(),
            pipe: None,
            attempt: 0,
            up_since: None,
            failing_since: None,
            next_try: Instant::now(),
            backoff: Duration::from_secs(1),
            last_error: None,
            status: StreamStatus::Active,
            dns: None,
        });
    }

    pub fn remove(&mut self, index: usize, log: &Logger) {
        if let Some(k) = self.urls.iter().position(|u| u.index == index) {
            let mut u = self.urls.remove(k);
            self.teardown(&mut u);
            info!(log, "stream removed"; "index" => index, "url" => redact::url(&u.url));
            emit(&HandlerEvent::Stream {
                index,
                status: StreamStatus::Ended,
                error: None,
            });
        }
    }

    fn teardown(&self, u: &mut Url) {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| t.index != u.index);
        if let Some(p) = u.pipe.take() {
            // Off this thread: a network sink going to Null may wait on its socket.
            std::thread::spawn(move || {
                let _ = p.pipeline.set_state(gst::State::Null);
            });
        }
        u.up_since = None;
    }

    /// Starts due URLs, notices failures, gives up on those failing too long. `clock` and
    /// `base_time` are the recording's (None until it plays).
    pub fn poll(
        &mut self,
        clock: Option<gst::Clock>,
        base_time: Option<gst::ClockTime>,
        log: &Logger,
    ) {
        let now = Instant::now();
        let mut urls = std::mem::take(&mut self.urls);
        for u in &mut urls {
            if !u.status.is_live() {
                continue;
            }
            // Errors of the running pipeline.
            let error = u.pipe.as_ref().and_then(|p| {
                let bus = p.pipeline.bus()?;
                while let Some(m) =
                    bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos])
                {
                    if let gst::MessageView::Error(e) = m.view() {
                        return Some(e.error().to_string());
                    }
                }
                None
            });
            if let Some(up) = u.up_since
                && now.duration_since(up) >= HEALTHY
            {
                u.failing_since = None;
                u.backoff = Duration::from_secs(1);
                if u.status == StreamStatus::Retrying {
                    u.status = StreamStatus::Active;
                    emit(&HandlerEvent::Stream {
                        index: u.index,
                        status: StreamStatus::Active,
                        error: None,
                    });
                }
            }
            if let Some(e) = error {
                let e = redact_errors(&e, &u.url);
                warn!(log, "stream failed"; "index" => u.index, "url" => redact::url(&u.url), "error" => &e);
                self.teardown(u);
                u.failing_since.get_or_insert(now);
                u.next_try = now + u.backoff;
                u.backoff = (u.backoff * 2).min(MAX_BACKOFF);
                retrying(u, e);
            }
            if u.pipe.is_none()
                && let Some(e) = u.last_error.clone()
                && u.status == StreamStatus::Active
            {
                // A start that failed (see `start`).
                retrying(u, e);
            }
            if let Some(since) = u.failing_since
                && u.pipe.is_none()
                && now.duration_since(since) >= self.retry
            {
                u.status = StreamStatus::Failed;
                let error = format!(
                    "{} (retried for {} s)",
                    u.last_error
                        .clone()
                        .unwrap_or_else(|| "stream failed".into()),
                    self.retry.as_secs()
                );
                emit(&HandlerEvent::Stream {
                    index: u.index,
                    status: StreamStatus::Failed,
                    error: Some(error),
                });
                continue;
            }
            if u.pipe.is_none() && now >= u.next_try && clock.is_some() {
                self.start(u, clock.as_ref(), base_time, log);
            }
        }
        self.urls = urls;
    }

    fn start(
        &self,
        u: &mut Url,
        clock: Option<&gst::Clock>,
        base: Option<gst::ClockTime>,
        log: &Logger,
    ) {
        u.attempt += 1;
        let name = format!("{}_stream{}_a{}", self.egress_id, u.index, u.attempt);
        let built = output_stream::build(&name, &u.url, self.video, self.audio, clock, base);
        let pipe = match built {
            Ok(p) => p,
            Err(e) => {
                u.last_error = Some(e.to_string());
                u.failing_since.get_or_insert(Instant::now());
                u.next_try = Instant::now() + u.backoff;
                return;
            }
        };
        if let Err(e) = pipe.pipeline.set_state(gst::State::Playing) {
            let why = pipe
                .pipeline
                .bus()
                .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
                .and_then(|m| match m.view() {
                    gst::MessageView::Error(e) => Some(e.error().to_string()),
                    _ => None,
                })
                .unwrap_or_else(|| e.to_string());
            u.last_error = Some(redact_errors(&why, &u.url));
            u.failing_since.get_or_insert(Instant::now());
            u.next_try = Instant::now() + u.backoff;
            u.backoff = (u.backoff * 2).min(MAX_BACKOFF);
            let p = pipe.pipeline;
            std::thread::spawn(move || {
                let _ = p.set_state(gst::State::Null);
            });
            return;
        }
        info!(log, "stream started"; "index" => u.index, "url" => redact::url(&u.url), "attempt" => u.attempt);
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Target {
                index: u.index,
                video: pipe.video.clone(),
                audio: pipe.audio.clone(),
                keyed: Arc::default(),
            });
        u.pipe = Some(pipe);
        u.up_since = Some(Instant::now());
        // While retrying it stays `retrying` until it has sent for a while (`poll`).
        if u.status == StreamStatus::Active {
            emit(&HandlerEvent::Stream {
                index: u.index,
                status: StreamStatus::Active,
                error: None,
            });
        }
        // A new viewer starts at a keyframe: ask the shared encoder for one now.
        if let Some(enc) = &self.encoder
            && let Some(pad) = enc.static_pad("src")
        {
            let s = gst::Structure::builder("GstForceKeyUnit")
                .field("running-time", u64::MAX)
                .field("all-headers", true)
                .field("count", 0u32)
                .build();
            pad.send_event(gst::event::CustomUpstream::new(s));
        }
    }

    /// The end: EOS into every URL pipeline, all torn down, each reported `ended`.
    pub fn end_all(&mut self) {
        let mut urls = std::mem::take(&mut self.urls);
        for u in &mut urls {
            if let Some(p) = &u.pipe {
                for src in [&p.video, &p.audio].into_iter().flatten() {
                    let _ = src.end_of_stream();
                }
            }
            self.teardown(u);
            match u.status {
                StreamStatus::Active => emit(&HandlerEvent::Stream {
                    index: u.index,
                    status: StreamStatus::Ended,
                    error: None,
                }),
                // Still failing when the egress ended: that is how it ends.
                StreamStatus::Retrying => emit(&HandlerEvent::Stream {
                    index: u.index,
                    status: StreamStatus::Failed,
                    error: u.last_error.clone(),
                }),
                _ => {}
            }
        }
    }
}

/// What a failure was, where GStreamer's text does not say (`srtsink` answers every failure
/// with "Could not open resource for writing"): a host name that does not resolve is named.
fn explain(url: &str, error: String) -> String {
    use std::net::ToSocketAddrs;
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return error;
    };
    let hostport = rest.split(['/', '?']).next().unwrap_or_default();
    let host = hostport
        .rsplit_once(':')
        .map_or(hostport, |(h, _)| h)
        .trim_matches(['[', ']']);
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() || error.contains("resolv") {
        return error;
    }
    match (host, 0).to_socket_addrs() {
        Err(e) if error.is_empty() => format!("cannot resolve host {host}: {e}: "),
        Err(e) => format!("cannot resolve host {host}: {e} ({error})"),
        Ok(_) => error,
    }
}

/// A failure of `u` (redacted `error`): `retrying`, said once per distinct error.
fn retrying(u: &mut Url, error: String) {
    let error = if error.contains("Could not open resource") {
        let url = u.url.clone();
        let found = u
            .dns
            .get_or_insert_with(|| Some(explain(&url, String::new())).filter(|e| !e.is_empty()));
        match found {
            Some(why) => format!("{why}{error}"),
            None => error,
        }
    } else {
        error
    };
    let changed = u.status != StreamStatus::Retrying || u.last_error.as_deref() != Some(&*error);
    u.status = StreamStatus::Retrying;
    u.last_error = Some(error.clone());
    u.up_since = None;
    if changed {
        emit(&HandlerEvent::Stream {
            index: u.index,
            status: StreamStatus::Retrying,
            error: Some(error),
        });
    }
}

/// GStreamer errors sometimes quote the location: never with its key.
fn redact_errors(text: &str, url: &str) -> String {
    redact::in_text(text, [url])
}

/// Fans each sample of a tap out to every target, in running time.
fn hook(tap: &gst::Element, targets: Targets, video: bool, has_video: bool) {
    let Ok(sink) = tap.clone().downcast::<gst_app::AppSink>() else {
        return;
    };
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let Ok(sample) = s.pull_sample() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let list = targets.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if list.is_empty() {
                    return Ok(gst::FlowSuccess::Ok);
                }
                let Some(buf) = sample.buffer_owned() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let mut buf = buf;
                if let Some(seg) = sample
                    .segment()
                    .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                {
                    let b = buf.make_mut();
                    let pts = b.pts().and_then(|t| seg.to_running_time(t));
                    let dts = b.dts().and_then(|t| seg.to_running_time(t));
                    b.set_pts(pts);
                    b.set_dts(dts);
                }
                let key = !buf.flags().contains(gst::BufferFlags::DELTA_UNIT);
                for t in list {
                    use std::sync::atomic::Ordering;
                    let src = if video { &t.video } else { &t.audio };
                    let Some(src) = src else { continue };
                    if video {
                        if !t.keyed.load(Ordering::Relaxed) {
                            if !key {
                                continue;
                            }
                            t.keyed.store(true, Ordering::Relaxed);
                        }
                    } else if has_video && !t.keyed.load(Ordering::Relaxed) {
                        continue;
                    }
                    if src.caps().is_none()
                        && let Some(c) = sample.caps()
                    {
                        src.set_caps(Some(&c.to_owned()));
                    }
                    // Never an error back into the recording: a failed URL is the poller's.
                    let _ = src.push_buffer(buf.clone());
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

#[cfg(test)]
mod tests {
    use super::explain;

    #[test]
    fn an_unresolvable_host_is_named() {
        let e = explain(
            "srt://no-such-host.invalid:9000",
            "Could not open resource".into(),
        );
        assert!(
            e.starts_with("cannot resolve host no-such-host.invalid"),
            "{e}"
        );
        let e = explain("rtmp://127.0.0.1:1/live/k", "Connection refused".into());
        assert_eq!(e, "Connection refused");
        let e = explain("rtmp://x.invalid/a/k", "Error resolving x.invalid".into());
        assert_eq!(e, "Error resolving x.invalid");
    }
}
