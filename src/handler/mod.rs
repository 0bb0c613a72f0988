//! The handler: the child process (`egress-engine handler --egress-id EG_...`) that runs one
//! egress's GStreamer pipeline. It reads `HandlerCommand`s from stdin, writes `HandlerEvent`s to
//! stdout, and finalizes its output on stop, on SIGTERM/SIGINT, and when stdin closes (the service
//! died), so that nothing recorded is lost.

pub mod protocol;
mod record;

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;

use crossbeam_channel::Receiver;
use gstreamer as gst;
use gstreamer::prelude::*;
use record::Ended;
use slog::{Logger, error, info, warn};

use crate::error::PipelineError;
use crate::model::{EgressSpec, HandlerResult, PipelineOptions, now_ms};
use crate::pipeline;
use protocol::{HandlerCommand, HandlerEvent};

/// What the main thread is told: stop, or change the stream URLs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Control {
    Stop(Cause),
    Streams {
        add: Vec<(usize, String)>,
        remove: Vec<usize>,
    },
}

/// Why the handler is stopping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cause {
    Stop,
    ParentGone,
    Signal,
}

impl Cause {
    pub(crate) fn as_str(self) -> &'static str {
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
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded::<Control>();
    let tx = ctl_tx.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line
                .ok()
                .and_then(|l| serde_json::from_str::<HandlerCommand>(&l).ok())
            {
                Some(HandlerCommand::Stop) => {
                    let _ = tx.send(Control::Stop(Cause::Stop));
                }
                Some(HandlerCommand::Streams { add, remove }) => {
                    let _ = tx.send(Control::Streams { add, remove });
                }
                Some(HandlerCommand::Start { .. }) | None => {}
            }
        }
        let _ = tx.send(Control::Stop(Cause::ParentGone));
    });
    match signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    let _ = ctl_tx.send(Control::Stop(Cause::Signal));
                }
            });
        }
        Err(e) => warn!(log, "cannot watch signals"; "error" => %e),
    }

    let (outcome, media) = record(&spec, &options, &ctl_rx, &log);
    let (finalized, cause, err, media) = match &outcome {
        Ok(end) => (true, end.cause.clone(), None, end.media),
        Err(e) => (false, "error".to_string(), Some(user_error(e)), media),
    };
    let result = HandlerResult {
        finalized,
        cause,
        error: err,
        ended_at: now_ms(),
        media,
    };
    if let Ok(json) = serde_json::to_vec(&result) {
        // Written before the last event so a restarted service finds it even if we die next.
        if let Err(e) = std::fs::write(&spec.result_path, json) {
            warn!(log, "cannot write result"; "path" => spec.result_path.display(), "error" => %e);
        }
    }
    if finalized && !media {
        emit(&HandlerEvent::Eos);
    }
    emit(&HandlerEvent::Exiting { finalized, media });
    info!(log, "handler exiting"; "finalized" => finalized, "media" => media, "cause" => &result.cause);
    if finalized { 0 } else { 1 }
}

/// The text a user reads for `e` (the element path and debug text stay in the log).
fn user_error(e: &PipelineError) -> String {
    match e {
        PipelineError::Bus { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// One JSON line on stdout; a gone parent is not an error here (the stdin thread notices it).
pub(crate) fn emit(ev: &HandlerEvent) {
    if let Ok(line) = serde_json::to_string(ev) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Builds and runs the pipeline until it is finalized; every error is reported to the service
/// once, here. Without media the outputs are deleted; after an error with media they are made
/// whole (`repair`). Returns the outcome and whether media reached the outputs.
fn record(
    spec: &EgressSpec,
    options: &PipelineOptions,
    ctl: &Receiver<Control>,
    log: &Logger,
) -> (Result<Ended, PipelineError>, bool) {
    let mut media = false;
    let outcome = run_pipeline(spec, options, ctl, &mut media, log);
    if !media {
        // Never an output that does not play: a stop before the first frame, or a failed start.
        for path in outputs_to_remove(spec) {
            match std::fs::remove_file(&path) {
                Ok(()) => info!(log, "no media: output removed"; "path" => path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(log, "cannot remove an empty output"; "path" => path.display(), "error" => %e)
                }
            }
        }
    } else {
        if outcome.is_ok() {
            // Finalized: the service stops counting the EOS timeout; the remux below may take
            // a while for a long recording.
            emit(&HandlerEvent::Eos);
        }
        // After EOS the hybrid MP4 becomes a normal one; after an error, whatever is left is
        // made whole.
        repair_outputs(spec, log);
    }
    (outcome.inspect_err(fail), media)
}

/// What a recording without media leaves: the file, the playlists, an empty first segment.
fn outputs_to_remove(spec: &EgressSpec) -> Vec<std::path::PathBuf> {
    let o = &spec.outputs;
    let mut v: Vec<std::path::PathBuf> = o.file.iter().map(|f| f.path.clone()).collect();
    if let Some(s) = &o.segments {
        v.push(s.playlist_path.clone());
        v.extend(s.live.iter().map(|l| l.1.clone()));
        let first = s.dir.join(pipeline::output_segments::segment_name(s, 0));
        if std::fs::metadata(&first).is_ok_and(|m| m.len() == 0) {
            v.push(first);
        }
    }
    if let Some(im) = &o.images {
        let first = im.dir.join(pipeline::output_images::image_name(im, 0));
        if std::fs::metadata(&first).is_ok_and(|m| m.len() == 0) {
            v.push(first);
        }
    }
    v
}

/// The MP4 remuxed from fragmented to progressive; a playlist left open (after an error) ended.
fn repair_outputs(spec: &EgressSpec, log: &Logger) {
    if let Some(f) = &spec.outputs.file
        && let Some(r) = crate::repair::mp4_if_needed(&f.path)
    {
        match r {
            Ok(()) => info!(log, "MP4 remuxed to progressive"; "path" => f.path.display()),
            Err(e) => warn!(log, "MP4 repair failed; the fragmented file stays"; "error" => e),
        }
    }
    if let Some(s) = &spec.outputs.segments
        && let Err(e) = crate::repair::close_playlist(s)
    {
        warn!(log, "cannot end the playlist"; "error" => e);
    }
}

fn run_pipeline(
    spec: &EgressSpec,
    options: &PipelineOptions,
    ctl: &Receiver<Control>,
    media: &mut bool,
    log: &Logger,
) -> Result<Ended, PipelineError> {
    gst::init().map_err(|e| PipelineError::Build(e.to_string()))?;
    let file = match &spec.outputs.file {
        Some(f) => Some(pipeline::output_file::open(&f.path)?),
        None => None,
    };
    let fd = file.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    let mut rec = record::Recording::new(spec, options, fd, log)?;
    let result = rec.run(ctl);
    *media = rec.media();
    rec.shutdown();
    // Null closes the sinks; a hybrid MP4 without EOS is repaired by the caller or the service.
    let _ = rec.pipeline().set_state(gst::State::Null);
    // The fd outlives the pipeline that writes to it.
    drop(rec);
    drop(file);
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
