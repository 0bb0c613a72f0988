//! The command line: `serve`, `check-config`, `calibrate`, `handler` (run by the service, one per
//! egress), and the client commands `egress`, `node` and `fleet`, which call a node's API
//! (`src/cli/`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use egress_engine::cli::{self, Connection};
use egress_engine::config::Config;

#[derive(Parser)]
#[command(
    name = "egress-engine",
    version,
    about = "Records live media into files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: HTTP admin API, admission, one handler process per egress.
    Serve {
        /// YAML config file (keys can be overridden with EGRESS__SECTION__KEY).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config (file + environment) as JSON.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Measure what each egress type costs on this machine (one job at a time, from test
    /// sources) and write the figures into the learned cost table of storage.state_dir.
    Calibrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Comma-separated types (default: track,track_composite,participant,room_composite).
        #[arg(long)]
        types: Option<String>,
        /// Seconds each job is measured, after its start hold (cpu.pending_hold_ms).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Extra output profiles to measure besides the default 1280x720@30: WxH@fps,...
        #[arg(long)]
        profiles: Option<String>,
    },
    /// Internal: record one egress. Started by the service; the spec arrives on stdin.
    Handler {
        /// The egress this process records (on the command line so `ps` shows it).
        #[arg(long)]
        egress_id: String,
        /// Lower this process's CPU priority by this much (0-19) before anything else runs.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
        nice: i32,
    },
    /// Client: start, list, show, stop, kill and watch egresses (on a node or its fleet).
    Egress {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: cli::egress::EgressCommand,
    },
    /// Client: a node's state; drain it; its probes.
    Node {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: Option<cli::node::NodeCommand>,
    },
    /// Client: the fleet's nodes and capacity.
    Fleet {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: Option<cli::fleet::FleetCommand>,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    if matches!(
        args.command,
        Command::Egress { .. } | Command::Node { .. } | Command::Fleet { .. }
    ) {
        cli::default_sigpipe();
    }
    match args.command {
        Command::Egress { conn, cmd } => cli::finish(cli::egress::run(&conn, cmd)),
        Command::Node { conn, cmd } => cli::finish(cli::node::run(&conn, cmd)),
        Command::Fleet { conn, cmd } => cli::finish(cli::fleet::run(&conn, cmd)),
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(cfg) => {
                let shown = cfg.redacted();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&shown).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("invalid config: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("invalid config: {e}");
                    return ExitCode::from(2);
                }
            };
            match egress_engine::service::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("egress-engine: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Calibrate {
            config,
            types,
            seconds,
            profiles,
        } => {
            let plan = match egress_engine::calibrate::Plan::parse(
                types.as_deref(),
                profiles.as_deref(),
                seconds,
            ) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("egress-engine calibrate: {e}");
                    return ExitCode::from(2);
                }
            };
            match egress_engine::calibrate::run(config.as_deref(), &plan) {
                Ok((measured, took, path)) => {
                    print!(
                        "{}",
                        egress_engine::calibrate::render(&measured, took, &path)
                    );
                    ExitCode::SUCCESS
                }
                Err(e @ egress_engine::calibrate::CalibrateError::Config(_)) => {
                    eprintln!("egress-engine calibrate: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("egress-engine calibrate: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Handler { egress_id, nice } => {
            if nice > 0 {
                // First, while this is the only thread: every thread started later inherits it.
                // SAFETY: nice(2) has no memory-safety preconditions. Failing (-1) leaves the
                // handler at the service's priority, which is harmless.
                unsafe { libc::nice(nice) };
            }
            // The malloc tunables the service adds for a web handler are for wpesrc, in this
            // process (`actors::pipeline::process::web_tunables`); glibc read them at exec.
            // The page's WebKit processes, started from here, do not need them, and with freed
            // memory overwritten any stale read of theirs would become a crash: they get the
            // operator's own only.
            if let Ok(v) = std::env::var("GLIBC_TUNABLES") {
                // SAFETY: still the only thread, so nothing reads the environment meanwhile.
                match egress_engine::handler::without_web_tunables(&v) {
                    Some(theirs) => unsafe { std::env::set_var("GLIBC_TUNABLES", theirs) },
                    None => unsafe { std::env::remove_var("GLIBC_TUNABLES") },
                }
            }
            // Before anything can start a child process: children never hold the event pipe.
            if let Err(e) = egress_engine::handler::keep_events_private() {
                eprintln!("handler: cannot keep its event pipe private: {e}");
            }
            let (log, guard) = egress_engine::logging::root_with_guard(
                egress_engine::logging::LogFormat::Term,
                egress_engine::logging::LogLevel::Info,
            );
            let log = log.new(slog::o!("egress_id" => egress_id.clone()));
            let code = egress_engine::handler::run(&egress_id, log).clamp(0, 255);
            // Everything that matters is done: the output finalized, the result file written,
            // the last event sent. Leave without running exit-time destructors, which
            // can abort (SIGABRT) while a source's teardown still runs on another thread (a
            // network source going to Null is never waited for), and turn a finished recording
            // into a "killed" one.
            drop(guard);
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: _exit(2) ends the process at once; nothing after it runs.
            unsafe { libc::_exit(code) }
        }
    }
}
