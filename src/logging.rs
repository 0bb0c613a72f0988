//! slog set-up: terminal format for humans, JSON for log shippers. Actors take child loggers.

use slog::{Drain, Level, Logger, o};

pub fn parse_level(s: &str) -> Option<Level> {
    match s {
        "trace" => Some(Level::Trace),
        "debug" => Some(Level::Debug),
        "info" => Some(Level::Info),
        "warning" | "warn" => Some(Level::Warning),
        "error" => Some(Level::Error),
        "critical" => Some(Level::Critical),
        _ => None,
    }
}

/// The formatted stderr drain: JSON for log shippers, else terminal lines.
fn stderr_drain(format: &str) -> Box<dyn Drain<Ok = (), Err = slog::Never> + Send> {
    if format == "json" {
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
pub fn root(format: &str, level: &str) -> Logger {
    let level = parse_level(level).unwrap_or(Level::Info);
    let drain = slog_async::Async::new(stderr_drain(format))
        .build()
        .filter_level(level)
        .fuse();
    Logger::root(drain, o!())
}

/// `root`, and the guard whose drop flushes it and waits for the logging thread: for a process
/// that ends with `_exit`, which runs no destructors.
pub fn root_with_guard(format: &str, level: &str) -> (Logger, slog_async::AsyncGuard) {
    let level = parse_level(level).unwrap_or(Level::Info);
    let (drain, guard) = slog_async::Async::new(stderr_drain(format)).build_with_guard();
    // Lines logged after the guard is dropped (by a thread still running) are dropped, not a panic.
    (
        Logger::root(drain.filter_level(level).ignore_res(), o!()),
        guard,
    )
}
