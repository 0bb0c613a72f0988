//! `events` and `webhooks`: the live event stream and the receivers events are POSTed to.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Events kept for clients that reconnect with `Last-Event-ID` (1-100000).
    #[serde(default = "default_events_buffer")]
    pub buffer: usize,
    /// A comment is sent on a quiet stream this often, so proxies keep it open.
    #[serde(default = "default_keepalive")]
    pub keepalive_ms: u64,
    /// `node_updated` is sent when the node's state changed, at most this often.
    #[serde(default = "default_node_interval")]
    pub node_interval_ms: u64,
    /// Event streams (`GET /v1/events`) open at once; one more is answered 503 (each holds a
    /// connection and a worker's attention).
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Receivers (`https://host[:port]/path`, or `http://`) each event is POSTed to; empty =
    /// no webhooks.
    #[serde(default)]
    pub urls: Vec<String>,
    /// The signing secret (Standard Webhooks `webhook-signature`, and `x-egress-signature`):
    /// `whsec_` + base64 of the key, as Standard Webhooks libraries take it, or the key itself
    /// (16+ bytes); required when `urls` is set.
    #[serde(default)]
    pub signing_key: String,
    /// A PEM file of CA certificates trusted for https receivers besides the system's roots
    /// (a private CA); empty = the system's roots only.
    #[serde(default)]
    pub ca_file: String,
    /// Which events are sent: egress_started, egress_updated, egress_ended, node_updated.
    #[serde(default = "default_webhook_events")]
    pub events: Vec<String>,
    /// One delivery attempt may take this long (connect and answer).
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    /// The wait after a failed attempt; doubled after each further failure...
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// ...up to this.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Most events queued per receiver; beyond, the oldest are dropped (and counted as failures).
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
}

fn default_events_buffer() -> usize {
    1000
}

fn default_keepalive() -> u64 {
    15_000
}

fn default_max_clients() -> usize {
    100
}

fn default_node_interval() -> u64 {
    1000
}

fn default_webhook_events() -> Vec<String> {
    ["egress_started", "egress_updated", "egress_ended"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_webhook_timeout() -> u64 {
    5000
}

fn default_backoff_initial() -> u64 {
    500
}

fn default_backoff_max() -> u64 {
    30_000
}

fn default_max_queue() -> usize {
    100_000
}
