//! `node`, `server` and `log`: who this node is, where it listens, how it logs.

use super::*;
use crate::logging::{LogFormat, LogLevel};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id reported in every egress (`node_id`); empty = `ND_` + random, fixed per state_dir.
    #[serde(default)]
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the admin API listens on; loopback unless an operator opens it up.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token required on every API call but the probes; required when not on loopback.
    #[serde(default)]
    pub api_token: String,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// HTTP worker threads.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Web origins (`scheme://host[:port]`) whose pages may call the API from a browser; any
    /// other cross-origin request (one with a foreign `Origin` header) is refused with 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `term` for humans, `json` for log shippers.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// trace, debug, info, warning (alias warn), error, critical.
    #[serde(default = "default_log_level")]
    pub level: LogLevel,
}

fn default_listen() -> String {
    "127.0.0.1:7980".into()
}

fn default_max_body() -> usize {
    64 * 1024
}

fn default_workers() -> usize {
    2
}

fn default_log_format() -> LogFormat {
    LogFormat::Term
}

fn default_log_level() -> LogLevel {
    LogLevel::Info
}

impl ServerConfig {
    /// The `server` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let addr: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("'{}' is not host:port", self.listen),
            )
        })?;
        if !addr.ip().is_loopback() && self.api_token.is_empty() {
            return Err(invalid(
                "server.api_token",
                format!("required when server.listen ({addr}) is not a loopback address"),
            ));
        }
        let token = &self.api_token;
        if !token.is_empty() && token.trim().is_empty() {
            // A blank token looks set but protects nothing a client cannot guess.
            return Err(invalid(
                "server.api_token",
                "is only whitespace: set a real token or leave it empty",
            ));
        }
        if token.trim() != token || token.chars().any(|c| c.is_control()) {
            // HTTP trims header values, so such a token could never be presented.
            return Err(invalid(
                "server.api_token",
                "must not start or end with whitespace or contain control characters",
            ));
        }
        for o in &self.allowed_origins {
            if !is_origin(o) {
                return Err(invalid(
                    "server.allowed_origins",
                    format!(
                        "'{o}' is not an origin: scheme://host[:port] with no path, e.g. https://dash.example.com"
                    ),
                ));
            }
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 16 << 20 {
            return Err(invalid(
                "server.max_body_bytes",
                "must be in [1024, 16777216]",
            ));
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(invalid("server.workers", "must be in [1, 64]"));
        }
        Ok(())
    }
}

/// `http(s)://host[:port]` exactly as a browser sends it in `Origin` (no path, no trailing `/`).
fn is_origin(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    else {
        return false;
    };
    // An IPv6 literal is bracketed: `[::1]:8080`.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, tail)) => (addr, tail),
            None => return false,
        },
        None => rest.split_at(rest.find(':').unwrap_or(rest.len())),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    host_ok && port_ok
}
