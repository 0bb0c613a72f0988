//! The Pipeline actor: one per egress, owning that egress's handler process.
//!
//! It launches `egress-engine handler --egress-id EG_...` in its own process group (so a Ctrl-C
//! on the service's terminal does not reach it), feeds it the spec over stdin, turns its stdout
//! events into status changes, enforces the start timeout, `max_duration_s` and the EOS timeout,
//! and when the process exits decides the final status, reads the files back with Discoverer and
//! reports everything to the Supervisor as `UpdateEgress`.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use slog::{Logger, info, warn};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::actors::supervisor::{Supervisor, UpdateEgress};
use crate::error::{NodeError, RequestError};
use crate::handler::protocol::{HandlerCommand, HandlerEvent};
use crate::model::{
    EgressInfo, EgressSpec, EgressStatus, MAX_STREAMS, PipelineOptions, StreamInfo, StreamStatus,
    StreamsUpdate, check_stream_url, now_ms, redact,
};

/// How long past `start_timeout` a handler that is not recording yet is killed.
const START_GRACE: Duration = Duration::from_secs(5);

pub use crate::rules::outcome::{KillReason, StopReason};

mod process;
mod room;
mod streams;
mod whip;
pub use process::{Launch, spawn_handler};
pub use room::ChangeSources;
pub use streams::ChangeStreams;
pub use whip::{WhipEnd, WhipPublish, WhipSession};

/// Everything a Pipeline actor needs to run one egress.
pub struct PipelineSetup {
    pub info: EgressInfo,
    pub spec: EgressSpec,
    pub options: PipelineOptions,
    pub log_path: PathBuf,
    /// `pipeline.handler_nice`.
    pub nice: i32,
    pub eos_timeout: Duration,
    pub start_timeout: Duration,
    pub max_duration: Option<Duration>,
    /// Uploads and disk measurement (None in a node without them, e.g. unit tests).
    pub delivery: Option<crate::actors::delivery::DeliveryLink>,
}

pub struct Pipeline {
    /// The record as this actor last reported it.
    info: EgressInfo,
    /// The outputs to read back (and repair, after a kill) at the end.
    outputs: crate::closing::Outputs,
    /// The handler's index and the URL with its key of each entry of `info.streams` (which
    /// has them redacted), in the same order.
    stream_slots: Vec<(usize, String)>,
    /// The handler index the next added URL gets.
    next_stream: usize,
    /// When the last stream changes were made (at most `STREAM_CHANGES` in `STREAM_WINDOW`).
    stream_changes: std::collections::VecDeque<std::time::Instant>,
    /// Whether the graph taps the encode for streams (URLs can be added while recording).
    streamable: bool,
    /// Commands to the handler's stdin; dropping it closes stdin (the handler then stops).
    commands: Option<mpsc::UnboundedSender<HandlerCommand>>,
    pid: u32,
    supervisor: Addr<Supervisor>,
    eos_timeout: Duration,
    start_timeout: Duration,
    max_duration: Option<Duration>,
    stop_reason: Option<StopReason>,
    kill_reason: Option<KillReason>,
    /// The first pipeline error the handler reported.
    error: Option<String>,
    source_ended: bool,
    /// The handler gave up on a stalled source ("Source lost").
    source_lost: bool,
    /// When a source stalled (or its sender ended the stream), until it recovers.
    stalled_at: Option<u64>,
    /// `pipeline.health_window_s`, for the health warnings' text.
    health_window_s: f64,
    /// Health conditions raised now (counted in `egress_health_active`).
    health: Vec<crate::rules::health::Condition>,
    finalized: bool,
    /// Whether media reached the outputs: set by `playing`, confirmed by `exiting` (no media, no
    /// file and no manifest).
    media: bool,
    /// The handler has exited (uploads may still run): nothing left to stop or kill.
    exited: bool,
    delivery: Option<crate::actors::delivery::DeliveryLink>,
    /// Its WHIP sources' publishers.
    whip: whip::Whip,
    log: Logger,
}

impl Pipeline {
    /// Starts the actor for a handler that `spawn_handler` launched.
    pub fn start_with(
        setup: PipelineSetup,
        mut child: tokio::process::Child,
        supervisor: Addr<Supervisor>,
        log: &Logger,
    ) -> Addr<Pipeline> {
        let pid = child.id().unwrap_or(0);
        let log = log.new(slog::o!("egress_id" => setup.info.egress_id.clone(), "pid" => pid));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(HandlerCommand::Start {
            spec: Box::new(setup.spec.clone()),
            options: setup.options.clone(),
        });
        let actor = Pipeline {
            outputs: crate::closing::Outputs::of(&setup.spec.outputs, &setup.spec.manifest_path)
                .with_timeline(crate::timeline::path_for(&setup.spec.result_path)),
            stream_slots: setup
                .spec
                .outputs
                .stream_urls
                .iter()
                .cloned()
                .enumerate()
                .collect(),
            next_stream: setup.spec.outputs.stream_urls.len(),
            stream_changes: Default::default(),
            streamable: setup.spec.outputs.stream,
            info: setup.info,
            commands: Some(tx),
            pid,
            supervisor,
            eos_timeout: setup.eos_timeout,
            start_timeout: setup.start_timeout,
            max_duration: setup.max_duration,
            stop_reason: None,
            kill_reason: None,
            error: None,
            source_ended: false,
            source_lost: false,
            stalled_at: None,
            health_window_s: setup.options.health_window_s,
            health: Vec::new(),
            finalized: false,
            media: false,
            exited: false,
            delivery: setup.delivery,
            whip: Default::default(),
            log,
        };
        Pipeline::create(move |ctx| {
            let addr = ctx.address();
            actix::spawn(write_commands(stdin, rx));
            actix::spawn(read_events(stdout, child, addr));
            actor
        })
    }

    fn report(&self) {
        self.supervisor.do_send(UpdateEgress(self.info.clone()));
    }

    fn send_signal(&self, sig: i32) {
        if self.pid > 0 {
            // SAFETY: kill(2) with a pid we spawned; the worst case is ESRCH if it already exited.
            unsafe {
                libc::kill(self.pid as i32, sig);
            }
        }
    }

    fn kill(&mut self, why: KillReason) {
        if self.exited {
            return;
        }
        if self.kill_reason.is_none() {
            self.kill_reason = Some(why);
        }
        info!(self.log, "killing handler"; "why" => format!("{why:?}"));
        self.send_signal(libc::SIGKILL);
    }

    /// The recording's media ended at `at` (ms), if it did not end before.
    fn media_ends(&mut self, at: Option<u64>) {
        let until = &mut self.outputs.media_until;
        *until = match (*until, at) {
            (Some(u), Some(a)) => Some(u.min(a)),
            (u, a) => u.or(a),
        };
    }

    fn stop(&mut self, why: StopReason, ctx: &mut Context<Self>) {
        if self.stop_reason.is_some() || self.info.status.is_final() || self.exited {
            return;
        }
        self.stop_reason = Some(why);
        info!(self.log, "stopping gracefully"; "why" => format!("{why:?}"));
        // The handler cuts the sources here: the file is judged up to the stop, not up to the
        // handler's exit.
        let at = now_ms();
        self.media_ends(Some(at));
        if let Some(tx) = &self.commands {
            let _ = tx.send(HandlerCommand::Stop { at_ms: Some(at) });
        }
        self.info.status = EgressStatus::Ending;
        self.report();
        ctx.run_later(self.eos_timeout, |act, _| {
            if !act.info.status.is_final() && act.kill_reason.is_none() && !act.finalized {
                warn!(act.log, "no EOS within the timeout"; "eos_timeout_s" => act.eos_timeout.as_secs_f64());
                act.kill(KillReason::EosTimeout);
            }
        });
    }

    /// The final status, end reason and error once the handler has exited.
    fn outcome(&self, exit: &ExitInfo) -> (EgressStatus, String, Option<String>) {
        let o = crate::rules::outcome::decide(&crate::rules::outcome::Ending {
            kill: self.kill_reason,
            stop: self.stop_reason,
            error: self.error.as_deref(),
            exit_code: exit.code,
            signal: exit.signal,
            finalized: self.finalized,
            media: self.media,
            source_lost: self.source_lost,
            eos_timeout_s: self.eos_timeout.as_secs_f64(),
            start_timeout_s: (self.start_timeout + START_GRACE).as_secs_f64(),
        });
        (o.status, o.end_reason, o.error)
    }
}

async fn write_commands(
    stdin: Option<tokio::process::ChildStdin>,
    mut rx: mpsc::UnboundedReceiver<HandlerCommand>,
) {
    let Some(mut stdin) = stdin else { return };
    while let Some(cmd) = rx.recv().await {
        let Ok(mut line) = serde_json::to_vec(&cmd) else {
            continue;
        };
        line.push(b'\n');
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

/// Forwards each stdout event, then the exit status, in order: the actor sees every event
/// before it learns that the process is gone.
async fn read_events(
    stdout: Option<tokio::process::ChildStdout>,
    mut child: tokio::process::Child,
    addr: Addr<Pipeline>,
) {
    if let Some(out) = stdout {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(ev) = serde_json::from_str::<HandlerEvent>(&line) {
                addr.do_send(HandlerLine(ev));
            }
        }
    }
    let exit = match child.wait().await {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            ExitInfo {
                code: status.code(),
                signal: status.signal(),
            }
        }
        Err(_) => ExitInfo {
            code: None,
            signal: None,
        },
    };
    addr.do_send(HandlerExited(exit));
}

impl Actor for Pipeline {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Conditions still raised at the end stay in the record, not in the live gauge.
        for c in self.health.drain(..) {
            crate::metrics::METRICS
                .health_active
                .with_label_values(&[c.as_str()])
                .dec();
        }
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(self.log, "handler launched"; "type" => self.info.egress_type.as_str());
        let stop = ctx.address().recipient();
        // What grows on disk: the file, and the segments and images by their `{stem}_` (the
        // disk monitor counts the numbered files of a stem: `disk_monitor::matching_files`).
        let o = &self.outputs;
        let paths: Vec<PathBuf> = o
            .file
            .iter()
            .map(|f| f.1.clone())
            .chain(
                o.segments
                    .iter()
                    .map(|s| s.dir.join(format!("{}_", s.stem))),
            )
            .chain(
                o.images
                    .iter()
                    .map(|(dir, stem)| dir.join(format!("{stem}_"))),
            )
            .collect();
        crate::actors::delivery::started(self.delivery.as_ref(), &self.info.egress_id, paths, stop);
        // The handler fails a source that shows nothing within `start_timeout` itself, with the
        // reason; this kill is for a handler that cannot even do that.
        ctx.run_later(self.start_timeout + START_GRACE, |act, _| {
            if act.info.status == EgressStatus::Starting {
                warn!(act.log, "pipeline did not start in time");
                act.kill(KillReason::StartTimeout);
            }
        });
    }
}

/// Ask for a graceful stop (EOS, finalize); the final status follows from `reason`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPipeline(pub StopReason);

impl Handler<StopPipeline> for Pipeline {
    type Result = ();
    fn handle(&mut self, msg: StopPipeline, ctx: &mut Context<Self>) {
        self.stop(msg.0, ctx);
    }
}

/// Kill the handler at once (SIGKILL); the file stays readable up to the last index update.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KillPipeline(pub KillReason);

impl Handler<KillPipeline> for Pipeline {
    type Result = ();
    fn handle(&mut self, msg: KillPipeline, _: &mut Context<Self>) {
        if !self.info.status.is_final() {
            self.kill(msg.0);
        }
    }
}

/// One event line from the handler's stdout.
#[derive(Message)]
#[rtype(result = "()")]
struct HandlerLine(HandlerEvent);

impl Handler<HandlerLine> for Pipeline {
    type Result = ();
    fn handle(&mut self, msg: HandlerLine, ctx: &mut Context<Self>) {
        match msg.0 {
            HandlerEvent::Started => info!(self.log, "output open; sources connecting"),
            HandlerEvent::Recording { video, audio } => {
                info!(self.log, "graph decided"; "video" => video, "audio" => audio);
                self.outputs.expected = Some(crate::rules::fidelity::Expected { video, audio });
            }
            HandlerEvent::WhipAnswer {
                session,
                sdp,
                error,
            } => self.on_whip_answer(session, sdp, error),
            HandlerEvent::SourceStalled { source } => {
                warn!(self.log, "source stalled; handler reconnecting"; "source" => source);
                self.whip_gone(source);
                self.stalled_at.get_or_insert_with(now_ms);
                crate::metrics::METRICS
                    .source_events_total
                    .with_label_values(&["stalled"])
                    .inc();
            }
            HandlerEvent::SourceRecovered { source } => {
                info!(self.log, "source recovered"; "source" => source);
                self.stalled_at = None;
                crate::metrics::METRICS
                    .source_events_total
                    .with_label_values(&["recovered"])
                    .inc();
            }
            HandlerEvent::SourceLeft { source } => self.on_source_left(source),
            HandlerEvent::PublisherGone { source } => {
                warn!(self.log, "whip publisher failed before its media"; "source" => source);
                self.whip_gone(source);
            }
            HandlerEvent::SourceLost { source } => {
                warn!(self.log, "source lost"; "source" => source);
                self.whip_gone(source);
                crate::metrics::METRICS
                    .source_events_total
                    .with_label_values(&["lost"])
                    .inc();
                self.source_lost = true;
                self.media_ends(self.stalled_at);
                if !self.info.status.is_final() && self.info.status != EgressStatus::Ending {
                    self.info.status = EgressStatus::Ending;
                    self.report();
                }
            }
            HandlerEvent::Playing { since_ms } => {
                // Media reached the outputs: a kill from now on leaves something to repair.
                self.media = true;
                let began = now_ms().saturating_sub(since_ms.min(30_000));
                if self.info.status == EgressStatus::Active
                    && self.info.started_at.is_some_and(|s| began < s)
                {
                    // Another stream's first media, reaching the outputs later, is older.
                    self.info.started_at = Some(began);
                    self.report();
                } else if self.info.status == EgressStatus::Starting {
                    self.info.status = EgressStatus::Active;
                    // When the first media the outputs hold arrived (not when it got through).
                    self.info.started_at = Some(began);
                    info!(self.log, "recording");
                    self.report();
                    if let Some(d) = self.max_duration {
                        ctx.run_later(d, |act, ctx| act.stop(StopReason::SessionLimit, ctx));
                    }
                }
            }
            HandlerEvent::SourceEnded => {
                self.source_ended = true;
                self.media_ends(self.stalled_at);
                if self.info.status.is_final() || self.info.status == EgressStatus::Ending {
                    return;
                }
                self.info.status = EgressStatus::Ending;
                self.report();
            }
            HandlerEvent::Eos => self.finalized = true,
            HandlerEvent::Error {
                element,
                message,
                debug,
            } => {
                warn!(self.log, "pipeline error"; "element" => &element, "message" => &message, "debug" => &debug);
                // `message` is written for users; the element path and debug text stay in the log.
                if self.error.is_none() {
                    self.error = Some(message);
                }
            }
            HandlerEvent::Exiting { finalized, media } => {
                self.finalized |= finalized;
                self.media = media;
            }
            HandlerEvent::SegmentClosed {
                count,
                duration_s,
                size_bytes,
            } => {
                if let Some(s) = &mut self.info.segments {
                    s.count = count;
                    s.duration_s = duration_s;
                    s.size_bytes = size_bytes;
                    self.report();
                }
                let id = &self.info.egress_id;
                crate::actors::delivery::segment_closed(
                    self.delivery.as_ref(),
                    id,
                    &self.outputs,
                    count,
                );
            }
            HandlerEvent::Health { condition, raised } => {
                let m = &crate::metrics::METRICS;
                let label = [condition.as_str()];
                if raised && !self.health.contains(&condition) {
                    warn!(self.log, "health warning"; "condition" => condition.as_str());
                    self.health.push(condition);
                    m.health_warnings_total.with_label_values(&label).inc();
                    m.health_active.with_label_values(&label).inc();
                    self.info
                        .warnings
                        .push(condition.warning(self.health_window_s));
                } else if !raised && self.health.contains(&condition) {
                    info!(self.log, "health warning cleared"; "condition" => condition.as_str());
                    self.health.retain(|c| *c != condition);
                    m.health_active.with_label_values(&label).dec();
                    self.info.warnings.retain(|w| !condition.is_warning(w));
                }
                self.report();
            }
            HandlerEvent::ImageWritten { count } => {
                if let Some(im) = &mut self.info.images {
                    im.count = count;
                    self.report();
                }
                if let Some(im) = &self.info.images {
                    let (id, prefix) = (&self.info.egress_id, &im.prefix);
                    crate::actors::delivery::image_written(
                        self.delivery.as_ref(),
                        id,
                        &self.outputs,
                        prefix,
                        count,
                    );
                }
            }
            HandlerEvent::Stream {
                index,
                status,
                error,
            } => self.on_stream(index, status, error),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ExitInfo {
    code: Option<i32>,
    signal: Option<i32>,
}

/// The handler process has exited (after its last stdout line).
#[derive(Message)]
#[rtype(result = "()")]
struct HandlerExited(ExitInfo);

impl Handler<HandlerExited> for Pipeline {
    type Result = ();
    fn handle(&mut self, msg: HandlerExited, ctx: &mut Context<Self>) {
        self.commands = None;
        self.exited = true;
        crate::actors::delivery::exited(self.delivery.as_ref(), &self.info.egress_id);
        let (status, end_reason, error) = self.outcome(&msg.0);
        info!(self.log, "handler exited"; "code" => msg.0.code, "signal" => msg.0.signal,
              "status" => status.as_str(), "end_reason" => &end_reason);
        self.info.status = status;
        self.info.end_reason = Some(end_reason);
        self.info.error = error;
        self.info.ended_at = Some(now_ms());
        self.info.handler_pid = None;
        let mut info = self.info.clone();
        let outputs = self.outputs.clone();
        let media = self.media;
        let done = actix_web::rt::task::spawn_blocking(move || {
            let notes = crate::closing::close(&mut info, &outputs, media);
            (info, notes)
        });
        ctx.wait(actix::fut::wrap_future(done).map(
            move |closed, act: &mut Pipeline, ctx: &mut Context<Self>| {
                if let Ok((info, notes)) = closed {
                    for n in notes {
                        info!(act.log, "outputs closed"; "note" => n);
                    }
                    act.info = info;
                }
                // With an upload target the egress stays `ending` until its uploads are done.
                let report = act.supervisor.clone().recipient();
                match crate::actors::delivery::finish(
                    act.delivery.as_ref(),
                    &act.info,
                    &act.outputs,
                    report,
                ) {
                    None => {
                        act.report();
                        ctx.stop();
                    }
                    Some(uploads) => {
                        ctx.wait(actix::fut::wrap_future(uploads).map(
                            |info, act: &mut Pipeline, ctx: &mut Context<Self>| {
                                act.info = info;
                                act.report();
                                ctx.stop();
                            },
                        ));
                    }
                }
            },
        ));
    }
}
