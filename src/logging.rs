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

/// The root logger, writing to stderr.
pub fn root(format: &str, level: &str) -> Logger {
    let level = parse_level(level).unwrap_or(Level::Info);
    if format == "json" {
        let drain = slog_json::Json::new(std::io::stderr())
            .add_default_keys()
            .build()
            .fuse();
        let drain = slog_async::Async::new(drain)
            .build()
            .filter_level(level)
            .fuse();
        Logger::root(drain, o!())
    } else {
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        let drain = slog_async::Async::new(drain)
            .build()
            .filter_level(level)
            .fuse();
        Logger::root(drain, o!())
    }
}
