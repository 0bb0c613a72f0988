//! The handler: the child process (`egress-engine handler --egress-id EG_...`) that runs one
//! egress's GStreamer pipeline. It reads `HandlerCommand`s from stdin, writes `HandlerEvent`s to
//! stdout, and finalizes its output on stop, on SIGTERM/SIGINT, and when stdin closes (the service
//! died), so that nothing recorded is lost.

pub mod protocol;
mod record;
pub mod web_filter;

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

/// The glibc tunables the service adds for a handler that renders a page
/// (`actors::pipeline::process::web_tunables` says why).
pub const WEB_MALLOC_TUNABLES: &str = "glibc.malloc.tcache_count=0:glibc.malloc.perturb=255";

/// `GLIBC_TUNABLES` as the operator set it, without `WEB_MALLOC_TUNABLES` (None when nothing
/// is left): what a web handler passes on to the processes it starts.
pub fn without_web_tunables(value: &str) -> Option<String> {
    let theirs = value
        .strip_suffix(WEB_MALLOC_TUNABLES)
        .map_or(value, |v| v.trim_end_matches(':'));
    (!theirs.is_empty()).then(|| theirs.to_string())
}

/// What the main thread is told: stop, or change the stream URLs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Control {
    /// Stop, and when it was asked (wall clock, ms) if the service said.
    Stop(Cause, Option<u64>),
    Streams {
        add: Vec<(usize, String)>,
        remove: Vec<usize>,
    },
    /// A WHIP publisher's offer for source `source` (session `session`).
    WhipOffer {
        source: usize,
        session: String,
        sdp: String,
    },
    /// A room's sources join (id, source) or leave (ids).
    Sources {
        add: Vec<(usize, crate::model::Source)>,
        remove: Vec<usize>,
    },
    /// The publisher of source `source` ended its session (DELETE).
    WhipEnd { source: usize },
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
                Some(HandlerCommand::Stop { at_ms }) => {
                    let _ = tx.send(Control::Stop(Cause::Stop, at_ms));
                }
                Some(HandlerCommand::Streams { add, remove }) => {
                    let _ = tx.send(Control::Streams { add, remove });
                }
                Some(HandlerCommand::WhipOffer {
                    source,
                    session,
                    sdp,
                }) => {
                    let _ = tx.send(Control::WhipOffer {
                        source,
                        session,
                        sdp,
                    });
                }
                Some(HandlerCommand::Sources { add, remove }) => {
                    let _ = tx.send(Control::Sources { add, remove });
                }
                Some(HandlerCommand::WhipEnd { source }) => {
                    let _ = tx.send(Control::WhipEnd { source });
                }
                Some(HandlerCommand::Start { .. }) | None => {}
            }
        }
        let _ = tx.send(Control::Stop(Cause::ParentGone, None));
    });
    match signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    let _ = ctl_tx.send(Control::Stop(Cause::Signal, None));
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

/// The service's event pipe once `keep_events_private` moved it off stdout.
static EVENTS: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Moves the service's event pipe (stdout) to a descriptor that child processes do not
/// inherit, and points stdout at stderr (the handler's log). Why: a page's WebKit processes,
/// which wpesrc starts, inherited stdout, and the service reads events until the pipe closes:
/// a handler that had exited was taken for running until they exited too (seen: 10 s after a
/// stop, with three pages on a busy node), and the record's end, which bounds what its file
/// is judged against, moved with it. Call while the process has one thread.
pub fn keep_events_private() -> std::io::Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: descriptor calls on this process's own stdout and stderr; the new descriptor is
    // owned by the File made from it, and by nothing else.
    unsafe {
        let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let events = std::fs::File::from_raw_fd(fd);
        if libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _ = EVENTS.set(std::sync::Mutex::new(events));
    }
    Ok(())
}

/// One JSON line to the service; a gone parent is not an error here (the stdin thread notices
/// it).
pub(crate) fn emit(ev: &HandlerEvent) {
    let Ok(line) = serde_json::to_string(ev) else {
        return;
    };
    match EVENTS.get() {
        Some(events) => {
            let mut out = events.lock().unwrap_or_else(|e| e.into_inner());
            let _ = out.write_all(format!("{line}\n").as_bytes());
        }
        None => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Builds and runs the pipeline until it is finalized; every error is reported to the service
/// once, here. Without media the outputs are deleted (the service makes the rest whole:
/// `closing`). Returns the outcome and whether media reached the outputs.
fn record(
    spec: &EgressSpec,
    options: &PipelineOptions,
    ctl: &Receiver<Control>,
    log: &Logger,
) -> (Result<Ended, PipelineError>, bool) {
    let mut media = false;
    let mut reported = false;
    let outcome = run_pipeline(spec, options, ctl, &mut media, &mut reported, log);
    if let (Err(e), false) = (&outcome, reported) {
        fail(e);
    }
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
    } else if outcome.is_ok() {
        // Finalized. The hybrid MP4 becomes a normal one in the service (`closing`), not here:
        // this process may hold elements that never reached Null (wpesrc).
        emit(&HandlerEvent::Eos);
    }
    (outcome, media)
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

fn run_pipeline(
    spec: &EgressSpec,
    options: &PipelineOptions,
    ctl: &Receiver<Control>,
    media: &mut bool,
    reported: &mut bool,
    log: &Logger,
) -> Result<Ended, PipelineError> {
    gst::init().map_err(|e| PipelineError::Build(e.to_string()))?;
    pipeline::quiet_dropped_buffer_criticals();
    let file = match &spec.outputs.file {
        Some(f) => Some(pipeline::output_file::open(&f.path)?),
        None => None,
    };
    let fd = file.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    let mut rec = record::Recording::new(spec, options, fd, log)?;
    let result = rec.run(ctl);
    // Reported before the teardown, which may take its 10 s: the service hears why at once.
    if let Err(e) = &result {
        fail(e);
        *reported = true;
    }
    *media = rec.media();
    rec.shutdown();
    rec.detach_renderers();
    // Null closes the sinks; a hybrid MP4 without EOS is repaired by the caller or the service.
    // Bounded: some elements (wpesrc) can hang going to Null, and after EOS everything is
    // written already.
    let pipeline = rec.pipeline().clone();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = pipeline.set_state(gst::State::Null);
        let _ = tx.send(());
    });
    if rx.recv_timeout(std::time::Duration::from_secs(10)).is_err() {
        warn!(
            log,
            "the pipeline did not reach Null within 10 s; going on without it"
        );
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_operators_tunables_are_kept_without_the_web_ones() {
        use super::{WEB_MALLOC_TUNABLES as Z, without_web_tunables as without};
        assert_eq!(without(Z), None);
        assert_eq!(
            without(&format!("glibc.malloc.arena_max=2:{Z}")),
            Some("glibc.malloc.arena_max=2".into())
        );
        assert_eq!(
            without("glibc.malloc.arena_max=2"),
            Some("glibc.malloc.arena_max=2".into())
        );
    }
}
