//! slog set-up: terminal format for humans, JSON for log shippers. Actors take child loggers.

use serde::{Deserialize, Serialize};
use slog::{Drain, Level, Logger, o};

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for humans at a terminal.
    Term,
    /// One JSON object a line, for log shippers.
    Json,
}

/// The least severe lines written (`log.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    #[serde(alias = "warn")]
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    fn slog(self) -> Level {
        match self {
            LogLevel::Trace => Level::Trace,
            LogLevel::Debug => Level::Debug,
            LogLevel::Info => Level::Info,
            LogLevel::Warning => Level::Warning,
            LogLevel::Error => Level::Error,
            LogLevel::Critical => Level::Critical,
        }
    }
}

/// The formatted stderr drain: JSON for log shippers, else terminal lines.
fn stderr_drain(format: LogFormat) -> Box<dyn Drain<Ok = (), Err = slog::Never> + Send> {
    if format == LogFormat::Json {
        Box::new(
            slog_json::Json::new(std::io::stderr())
                .add_default_keys()
                .build()
                .fuse(),
        )
    } else {
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        Box::new(slog_term::FullFormat::new(decorator).build().fuse())
    }
}

/// The root logger, writing to stderr from a logging thread of its own.
pub fn root(format: LogFormat, level: LogLevel) -> Logger {
    let drain = slog_async::Async::new(stderr_drain(format))
        .build()
        .filter_level(level.slog())
        .fuse();
    Logger::root(drain, o!())
}

/// `root`, and the guard whose drop flushes it and waits for the logging thread: for a process
/// that ends with `_exit`, which runs no destructors.
pub fn root_with_guard(format: LogFormat, level: LogLevel) -> (Logger, slog_async::AsyncGuard) {
    let (drain, guard) = slog_async::Async::new(stderr_drain(format)).build_with_guard();
    // Lines logged after the guard is dropped (by a thread still running) are dropped, not a panic.
    (
        Logger::root(drain.filter_level(level.slog()).ignore_res(), o!()),
        guard,
    )
}
