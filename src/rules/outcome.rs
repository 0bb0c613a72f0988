//! How an egress ends, decided in one place for both paths: a handler this run supervised
//! (`decide`, from why it was stopped or killed and how it exited) and one a previous run left
//! (`orphan`, from the result file the handler wrote on its own). Pure; the tables below are
//! the contract.

use crate::model::{EgressStatus, HandlerResult, reason};

/// Why a graceful stop was asked for; decides the final status when EOS completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `POST /v1/egress/{id}/stop`.
    Api,
    /// `max_duration_s` elapsed.
    SessionLimit,
    /// Overload supervision chose this egress.
    CpuLimit,
    /// The service is shutting down or draining past its timeout.
    Shutdown,
    /// Drain timeout elapsed.
    DrainTimeout,
    /// Free disk under the output directory fell below `storage.stop_free_bytes`.
    DiskFull,
}

impl StopReason {
    fn outcome(self) -> (EgressStatus, &'static str) {
        match self {
            StopReason::Api => (EgressStatus::Complete, reason::STOP_API),
            StopReason::SessionLimit => (EgressStatus::LimitReached, reason::SESSION_LIMIT),
            StopReason::CpuLimit => (EgressStatus::Complete, reason::CPU_LIMIT),
            StopReason::Shutdown => (EgressStatus::Complete, reason::SERVICE_STOPPED),
            StopReason::DrainTimeout => (EgressStatus::Complete, reason::DRAIN_TIMEOUT),
            StopReason::DiskFull => (EgressStatus::Complete, reason::DISK_FULL),
        }
    }
}

/// Why the handler was killed by us; decides the final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// `POST /v1/egress/{id}/kill`.
    Api,
    /// A graceful stop did not reach EOS within `pipeline.eos_timeout_s`.
    EosTimeout,
    /// Overload stayed above the hard threshold after a graceful stop.
    CpuExhausted,
    /// The pipeline did not reach PLAYING within `pipeline.start_timeout_s`.
    StartTimeout,
    /// A second SIGINT: stop everything now.
    Shutdown,
}

/// The final status, end reason and error of an egress.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: EgressStatus,
    pub end_reason: String,
    pub error: Option<String>,
}

fn outcome(status: EgressStatus, why: &str, error: Option<String>) -> Outcome {
    Outcome {
        status,
        end_reason: why.to_string(),
        error,
    }
}

/// What the Pipeline actor knows when its handler has exited.
#[derive(Debug, Clone, Default)]
pub struct Ending<'a> {
    pub kill: Option<KillReason>,
    pub stop: Option<StopReason>,
    /// The first pipeline error the handler reported.
    pub error: Option<&'a str>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The handler finalized its outputs.
    pub finalized: bool,
    /// Media reached the outputs.
    pub media: bool,
    /// The handler gave up on a stalled source.
    pub source_lost: bool,
    pub eos_timeout_s: f64,
    /// The start deadline, grace included.
    pub start_timeout_s: f64,
}

/// A supervised handler's end: our kill first, then a pipeline error, then a clean exit (by
/// why it stopped), else the process died.
pub fn decide(e: &Ending<'_>) -> Outcome {
    if let Some(k) = e.kill {
        return match k {
            KillReason::Api => outcome(EgressStatus::Aborted, reason::KILL_API, None),
            KillReason::Shutdown => outcome(EgressStatus::Aborted, reason::SERVICE_STOPPED, None),
            KillReason::EosTimeout => outcome(
                EgressStatus::Failed,
                reason::EOS_TIMEOUT,
                Some(format!(
                    "no EOS within {} s; handler killed",
                    e.eos_timeout_s
                )),
            ),
            KillReason::CpuExhausted => outcome(
                EgressStatus::Failed,
                reason::CPU_EXHAUSTED,
                Some("killed: CPU load stayed above the hard threshold".into()),
            ),
            KillReason::StartTimeout => outcome(
                EgressStatus::Failed,
                reason::FAILURE,
                Some(format!(
                    "pipeline did not start within {} s",
                    e.start_timeout_s
                )),
            ),
        };
    }
    if let Some(err) = e.error {
        return outcome(EgressStatus::Failed, reason::FAILURE, Some(err.to_string()));
    }
    if e.exit_code == Some(0) && e.finalized {
        // `complete` always means a file that decodes: with no media there is none.
        if !e.media {
            return outcome(EgressStatus::Aborted, reason::STOPPED_BEFORE_START, None);
        }
        if e.source_lost {
            return outcome(EgressStatus::Complete, reason::SOURCE_LOST, None);
        }
        if let Some(r) = e.stop {
            let (s, why) = r.outcome();
            return outcome(s, why, None);
        }
        return outcome(EgressStatus::Complete, reason::SOURCE_CLOSED, None);
    }
    let error = match (e.exit_code, e.signal) {
        (_, Some(sig)) => format!("handler killed by signal {sig}{}", signal_name(sig)),
        (Some(c), _) => format!("handler exited with code {c}"),
        _ => "handler exited".to_string(),
    };
    outcome(EgressStatus::Failed, reason::PROCESS_KILLED, Some(error))
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

/// An egress a previous run left unfinished, from the result its handler wrote on its own
/// (None: it wrote none). A finalized one without media recorded nothing (its files go).
pub fn orphan(result: Option<&HandlerResult>) -> Outcome {
    match result {
        Some(r) if r.finalized && !r.media => {
            outcome(EgressStatus::Aborted, reason::STOPPED_BEFORE_START, None)
        }
        Some(r) if r.finalized => outcome(EgressStatus::Complete, reason::SERVICE_STOPPED, None),
        Some(r) => outcome(
            EgressStatus::Failed,
            reason::FAILURE,
            Some(
                r.error
                    .clone()
                    .unwrap_or_else(|| format!("handler ended: {}", r.cause)),
            ),
        ),
        None => outcome(
            EgressStatus::Failed,
            reason::PROCESS_KILLED,
            Some("the service stopped and the handler left no result".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean<'a>() -> Ending<'a> {
        Ending {
            exit_code: Some(0),
            finalized: true,
            media: true,
            eos_timeout_s: 10.0,
            start_timeout_s: 35.0,
            ..Ending::default()
        }
    }

    #[test]
    fn a_supervised_end_is_decided_by_kill_then_error_then_exit() {
        use EgressStatus::{Aborted, Complete, Failed, LimitReached};
        let table: Vec<(Ending<'_>, EgressStatus, &str, Option<&str>)> = vec![
            (
                Ending {
                    kill: Some(KillReason::Api),
                    ..clean()
                },
                Aborted,
                reason::KILL_API,
                None,
            ),
            (
                Ending {
                    kill: Some(KillReason::Shutdown),
                    ..clean()
                },
                Aborted,
                reason::SERVICE_STOPPED,
                None,
            ),
            (
                Ending {
                    kill: Some(KillReason::EosTimeout),
                    ..clean()
                },
                Failed,
                reason::EOS_TIMEOUT,
                Some("no EOS within 10 s; handler killed"),
            ),
            (
                Ending {
                    kill: Some(KillReason::CpuExhausted),
                    ..clean()
                },
                Failed,
                reason::CPU_EXHAUSTED,
                Some("killed: CPU load stayed above the hard threshold"),
            ),
            (
                Ending {
                    kill: Some(KillReason::StartTimeout),
                    ..clean()
                },
                Failed,
                reason::FAILURE,
                Some("pipeline did not start within 35 s"),
            ),
            (
                Ending {
                    error: Some("connection refused: rtmp://h/app/{redacted}"),
                    stop: Some(StopReason::Api),
                    ..clean()
                },
                Failed,
                reason::FAILURE,
                Some("connection refused: rtmp://h/app/{redacted}"),
            ),
            (
                Ending {
                    media: false,
                    stop: Some(StopReason::Api),
                    ..clean()
                },
                Aborted,
                reason::STOPPED_BEFORE_START,
                None,
            ),
            (
                Ending {
                    source_lost: true,
                    ..clean()
                },
                Complete,
                reason::SOURCE_LOST,
                None,
            ),
            (
                Ending {
                    stop: Some(StopReason::Api),
                    ..clean()
                },
                Complete,
                reason::STOP_API,
                None,
            ),
            (
                Ending {
                    stop: Some(StopReason::SessionLimit),
                    ..clean()
                },
                LimitReached,
                reason::SESSION_LIMIT,
                None,
            ),
            (
                Ending {
                    stop: Some(StopReason::DiskFull),
                    ..clean()
                },
                Complete,
                reason::DISK_FULL,
                None,
            ),
            (
                Ending {
                    stop: Some(StopReason::CpuLimit),
                    ..clean()
                },
                Complete,
                reason::CPU_LIMIT,
                None,
            ),
            (
                Ending {
                    stop: Some(StopReason::DrainTimeout),
                    ..clean()
                },
                Complete,
                reason::DRAIN_TIMEOUT,
                None,
            ),
            (
                Ending {
                    stop: Some(StopReason::Shutdown),
                    ..clean()
                },
                Complete,
                reason::SERVICE_STOPPED,
                None,
            ),
            (clean(), Complete, reason::SOURCE_CLOSED, None),
            (
                Ending {
                    exit_code: None,
                    signal: Some(9),
                    ..clean()
                },
                Failed,
                reason::PROCESS_KILLED,
                Some("handler killed by signal 9 (SIGKILL)"),
            ),
            (
                Ending {
                    exit_code: Some(3),
                    ..clean()
                },
                Failed,
                reason::PROCESS_KILLED,
                Some("handler exited with code 3"),
            ),
            (
                Ending {
                    finalized: false,
                    ..clean()
                },
                Failed,
                reason::PROCESS_KILLED,
                Some("handler exited with code 0"),
            ),
        ];
        for (e, status, why, error) in table {
            let o = decide(&e);
            assert_eq!(
                (o.status, o.end_reason.as_str(), o.error.as_deref()),
                (status, why, error),
                "{e:?}"
            );
        }
    }

    #[test]
    fn an_orphan_is_decided_by_its_result_file() {
        let r = |finalized, media, error: Option<&str>| HandlerResult {
            finalized,
            media,
            error: error.map(str::to_string),
            cause: "stop".into(),
            ended_at: 0,
        };
        let table = [
            (
                Some(r(true, true, None)),
                EgressStatus::Complete,
                reason::SERVICE_STOPPED,
            ),
            (
                Some(r(true, false, None)),
                EgressStatus::Aborted,
                reason::STOPPED_BEFORE_START,
            ),
            (
                Some(r(false, true, Some("pipeline error"))),
                EgressStatus::Failed,
                reason::FAILURE,
            ),
            (None, EgressStatus::Failed, reason::PROCESS_KILLED),
        ];
        for (result, status, why) in table {
            let o = orphan(result.as_ref());
            assert_eq!(
                (o.status, o.end_reason.as_str()),
                (status, why),
                "{result:?}"
            );
        }
        assert_eq!(
            orphan(Some(&r(false, true, Some("pipeline error"))))
                .error
                .as_deref(),
            Some("pipeline error")
        );
    }
}
