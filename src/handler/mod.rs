//! The handler: the child process (`egress-engine handler --egress-id EG_...`) that runs one
//! egress's GStreamer pipeline. It reads `HandlerCommand`s from stdin, writes `HandlerEvent`s to
//! stdout, and finalizes its output on stop, on SIGTERM/SIGINT, and when stdin closes (the service
//! died), so that nothing recorded is lost.

pub mod protocol;

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use gstreamer as gst;
use gstreamer::prelude::*;
use slog::{Logger, error, info, warn};

use crate::error::PipelineError;
use crate::model::{EgressSpec, HandlerResult, PipelineOptions, now_ms};
use crate::pipeline;
use protocol::{HandlerCommand, HandlerEvent};

/// How long a URI source may take to answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one wait on the bus lasts before stop commands are looked at again.
const BUS_POLL: gst::ClockTime = gst::ClockTime::from_mseconds(100);
/// Without a parent to enforce `eos_timeout_s`, the handler gives EOS this long on its own.
const ORPHAN_EOS_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the handler is stopping.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    Stop,
    ParentGone,
    Signal,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Stop => "stop",
            Cause::ParentGone => "parent_gone",
            Cause::Signal => "signal",
        }
    }
}

/// Runs the handler to completion; returns the process exit code.
pub fn run(egress_id: &str, log: Logger) -> i32 {
    let stdin = std::io::stdin();
    let mut first = String::new();
    if stdin.lock().read_line(&mut first).unwrap_or(0) == 0 {
        error!(log, "stdin closed before the start command");
        return 2;
    }
    let (spec, options) = match serde_json::from_str::<HandlerCommand>(&first) {
        Ok(HandlerCommand::Start { spec, options }) if spec.egress_id == egress_id => {
            (spec, options)
        }
        Ok(_) => {
            error!(log, "first command is not Start for this egress");
            return 2;
        }
        Err(e) => {
            error!(log, "bad start command"; "error" => %e);
            return 2;
        }
    };
    // Control: stdin commands / EOF and signals, merged into one channel.
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded::<Cause>();
    let tx = ctl_tx.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line
                .ok()
                .and_then(|l| serde_json::from_str::<HandlerCommand>(&l).ok())
            {
                Some(HandlerCommand::Stop) => {
                    let _ = tx.send(Cause::Stop);
                }
                Some(HandlerCommand::Start { .. }) | None => {}
            }
        }
        let _ = tx.send(Cause::ParentGone);
    });
    match signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    let _ = ctl_tx.send(Cause::Signal);
                }
            });
        }
        Err(e) => warn!(log, "cannot watch signals"; "error" => %e),
    }

    let outcome = record(&spec, &options, &ctl_rx, &log);
    let (finalized, cause, err) = match &outcome {
        Ok(cause) => (true, cause.clone(), None),
        Err(e) => (false, "error".to_string(), Some(e.to_string())),
    };
    let result = HandlerResult {
        finalized,
        cause,
        error: err,
        ended_at: now_ms(),
    };
    if let Ok(json) = serde_json::to_vec(&result) {
        // Written before the last event so a restarted service finds it even if we die next.
        if let Err(e) = std::fs::write(&spec.result_path, json) {
            warn!(log, "cannot write result"; "path" => spec.result_path.display(), "error" => %e);
        }
    }
    if finalized {
        emit(&HandlerEvent::Eos);
    }
    emit(&HandlerEvent::Exiting { finalized });
    info!(log, "handler exiting"; "finalized" => finalized, "cause" => &result.cause);
    if finalized { 0 } else { 1 }
}

/// One JSON line on stdout; a gone parent is not an error here (the stdin thread notices it).
fn emit(ev: &HandlerEvent) {
    if let Ok(line) = serde_json::to_string(ev) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Builds and runs the pipeline until it is finalized; Ok(cause) once EOS went through. Every
/// error is reported to the service once, here.
fn record(
    spec: &EgressSpec,
    options: &PipelineOptions,
    ctl: &Receiver<Cause>,
    log: &Logger,
) -> Result<String, PipelineError> {
    run_pipeline(spec, options, ctl, log).inspect_err(fail)
}

fn run_pipeline(
    spec: &EgressSpec,
    options: &PipelineOptions,
    ctl: &Receiver<Cause>,
    log: &Logger,
) -> Result<String, PipelineError> {
    gst::init().map_err(|e| PipelineError::Build(e.to_string()))?;
    let streams = pipeline::streams_of(spec, |uri| crate::media::probe(uri, PROBE_TIMEOUT))
        .map_err(PipelineError::Build)?;
    let desc = pipeline::describe(spec, options, &streams);
    let pipeline = pipeline::build(spec, &desc)?;
    info!(log, "pipeline built"; "line" => desc.gst());
    emit(&HandlerEvent::Started);
    let result = drive(&pipeline, ctl, log);
    // Null closes the sink; with robust mp4 the file is readable even without EOS.
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn fail(e: &PipelineError) {
    let (element, message, debug) = match e {
        PipelineError::Bus {
            element,
            message,
            debug,
        } => (element.clone(), message.clone(), debug.clone()),
        other => (String::new(), other.to_string(), String::new()),
    };
    emit(&HandlerEvent::Error {
        element,
        message,
        debug,
    });
}

/// Runs the bus until EOS (Ok with the cause) or an error.
fn drive(
    pipeline: &gst::Pipeline,
    ctl: &Receiver<Cause>,
    log: &Logger,
) -> Result<String, PipelineError> {
    let bus = pipeline
        .bus()
        .ok_or_else(|| PipelineError::Build("pipeline without a bus".into()))?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| PipelineError::State(e.to_string()))?;
    let mut playing = false;
    let mut stopping: Option<(Cause, Instant)> = None;
    loop {
        // A stop is seen within one bus poll: fast enough, and one thread does it all.
        if let Ok(cause) = ctl.try_recv()
            && stopping.is_none()
        {
            info!(log, "stopping: sending EOS"; "cause" => cause.as_str());
            stopping = Some((cause, Instant::now()));
            pipeline.send_event(gst::event::Eos::new());
        }
        if let Some((Cause::ParentGone, since)) = stopping
            && since.elapsed() > ORPHAN_EOS_TIMEOUT
        {
            return Err(PipelineError::Build(
                "no EOS after the service went away".into(),
            ));
        }
        let Some(msg) = bus.timed_pop(BUS_POLL) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::StateChanged(s)
                if !playing
                    && s.current() == gst::State::Playing
                    && msg.src() == Some(pipeline.upcast_ref::<gst::Object>()) =>
            {
                playing = true;
                emit(&HandlerEvent::Playing);
            }
            gst::MessageView::Eos(_) => {
                return Ok(match stopping {
                    Some((c, _)) => c.as_str().to_string(),
                    None => {
                        emit(&HandlerEvent::SourceEnded);
                        "source_eos".to_string()
                    }
                });
            }
            gst::MessageView::Error(e) => {
                return Err(PipelineError::Bus {
                    element: e.src().map(|s| s.name().to_string()).unwrap_or_default(),
                    message: e.error().to_string(),
                    debug: e.debug().map(|d| d.to_string()).unwrap_or_default(),
                });
            }
            gst::MessageView::Warning(w) => {
                warn!(log, "pipeline warning"; "warning" => %w.error());
            }
            _ => {}
        }
    }
}
