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
