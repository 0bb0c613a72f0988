//! The command-line client in the service's own binary: `egress-engine egress|node|fleet ...`
//! calls a node's admin API over HTTP (`--url`/`EGRESS_URL`, `--token`/`EGRESS_TOKEN`) and prints
//! tables, or the API's JSON with `--json`. One file per resource, like `api/`; `http` is the
//! client and its typed errors, `table` the formatting.
//!
//! Exit codes: 0 done; 1 the API answered with an error (its code and message go to stderr), or
//! a watched egress ended failed or aborted; 2 bad usage (clap's code too); 3 the node could not
//! be reached.

pub mod egress;
pub mod fleet;
pub mod http;
pub mod node;
mod table;

use std::process::ExitCode;

pub use http::{CliError, Client};

/// Where the node is and how to talk to it; every client command takes these, anywhere on its
/// command line.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// Base URL of a node's admin API (any node of a fleet answers for the whole fleet).
    #[arg(
        long,
        env = "EGRESS_URL",
        default_value = "http://127.0.0.1:7980",
        global = true
    )]
    pub url: String,
    /// Bearer token: the node's server.api_token.
    #[arg(long, env = "EGRESS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each HTTP answer.
    #[arg(long, default_value_t = 30.0, global = true)]
    pub http_timeout_s: f64,
}

/// A closed stdout (`egress-engine egress list | head -1`) ends a client command quietly, as it
/// ends other command-line tools, rather than as a panic in `println!` (Rust ignores SIGPIPE).
pub fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler code; called before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs a client command and turns its outcome into the exit code, printing an error on stderr.
pub fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints a JSON value the way `--json` promises: pretty, one document.
fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}
