//! `events` and `webhooks`: the live event stream and the receivers events are POSTed to.

use super::*;
use crate::model::EventKind;

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
    pub events: Vec<EventKind>,
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

fn default_webhook_events() -> Vec<EventKind> {
    vec![
        EventKind::EgressStarted,
        EventKind::EgressUpdated,
        EventKind::EgressEnded,
    ]
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

impl EventsConfig {
    /// The `events` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.buffer) {
            return Err(invalid("events.buffer", "must be in [1, 100000]"));
        }
        if !(100..=600_000).contains(&self.keepalive_ms) {
            return Err(invalid("events.keepalive_ms", "must be in [100, 600000]"));
        }
        if !(1..=100_000).contains(&self.max_clients) {
            return Err(invalid("events.max_clients", "must be in [1, 100000]"));
        }
        if !(100..=60_000).contains(&self.node_interval_ms) {
            return Err(invalid(
                "events.node_interval_ms",
                "must be in [100, 60000]",
            ));
        }
        Ok(())
    }
}

impl WebhooksConfig {
    /// The `webhooks` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for u in &self.urls {
            if let Err(why) = check_webhook_url(u) {
                let u = crate::model::redact::url(u);
                return Err(invalid("webhooks.urls", format!("'{u}': {why}")));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.urls.iter().find(|u| !seen.insert(u.as_str())) {
            let dup = crate::model::redact::url(dup);
            return Err(invalid("webhooks.urls", format!("'{dup}' is listed twice")));
        }
        if !self.ca_file.is_empty()
            && let Err(e) = read_ca_file(Path::new(&self.ca_file))
        {
            return Err(invalid("webhooks.ca_file", e));
        }
        if self.signing_key.starts_with("whsec_") && key_bytes(&self.signing_key).len() < 16 {
            return Err(invalid(
                "webhooks.signing_key",
                "a whsec_ key is base64 of 16+ bytes",
            ));
        }
        if !self.urls.is_empty() && self.signing_key.len() < 16 {
            return Err(invalid(
                "webhooks.signing_key",
                "must be at least 16 bytes when webhooks.urls is set (receivers check each body's HMAC with it)",
            ));
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            return Err(invalid("webhooks.timeout_ms", "must be in [100, 120000]"));
        }
        if !(10..=600_000).contains(&self.backoff_initial_ms) {
            return Err(invalid(
                "webhooks.backoff_initial_ms",
                "must be in [10, 600000]",
            ));
        }
        if !(self.backoff_initial_ms..=3_600_000).contains(&self.backoff_max_ms) {
            return Err(invalid(
                "webhooks.backoff_max_ms",
                "must be in [webhooks.backoff_initial_ms, 3600000]",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_queue) {
            return Err(invalid("webhooks.max_queue", "must be in [1, 10000000]"));
        }
        Ok(())
    }
}

/// A receiver the webhook client can reach: `http://host[:port][/path]` (this build's HTTP
/// client speaks no TLS: an https receiver goes behind a TLS-originating proxy).
fn check_webhook_url(u: &str) -> Result<(), &'static str> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or("must start with https:// or http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err("must name a host (and no user:password@)");
    }
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters");
    }
    u.parse::<actix_web::http::Uri>()
        .map(|_| ())
        .map_err(|_| "is not a valid URL")
}
