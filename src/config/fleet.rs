//! `fleet`: the Redis the nodes coordinate through, and how they announce themselves.

use super::*;

/// Shortest `fleet.reservation_ttl_ms`: a second longer than the placer waits for a start
/// (`fleet::placement::START_TIMEOUT`), so a slow start keeps its reservation until it answers.
pub const MIN_RESERVATION_TTL_MS: u64 = 6_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://host:port/db`, or `redis+sentinel://host:port[,host:port...]/master_name[/db]` to
    /// follow the primary Redis Sentinel names; empty = a single node, nothing else to run.
    #[serde(default)]
    pub redis_url: String,
    /// What every fleet key in Redis starts with; fleets that share one Redis use different ones.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// URL other nodes use to reach this node's API; empty = `http://` + server.listen.
    #[serde(default)]
    pub advertise_url: String,
    /// How often this node refreshes its registration.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// A node whose registration is older than this is dead.
    #[serde(default = "default_node_ttl")]
    pub node_ttl_ms: u64,
    /// How long a placement's reservation holds CPU and a slot on the chosen node while the
    /// job starts there (it ends sooner: when the node reports the job, or refuses it); at least
    /// `MIN_RESERVATION_TTL_MS`.
    #[serde(default = "default_reservation_ttl")]
    pub reservation_ttl_ms: u64,
    /// Fraction of the fleet's budget that should stay free: `GET /v1/fleet/capacity` derives
    /// `desired_nodes` (the autoscaler's target) from it.
    #[serde(default = "default_target_free_fraction")]
    pub target_free_fraction: f64,
}

fn default_heartbeat() -> u64 {
    1000
}

fn default_key_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_string()
}

fn default_node_ttl() -> u64 {
    3000
}

fn default_reservation_ttl() -> u64 {
    10_000
}

fn default_target_free_fraction() -> f64 {
    0.2
}

impl FleetConfig {
    /// The `fleet` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.key_prefix;
        if p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":_-.{}".contains(&b))
        {
            return Err(invalid(
                "fleet.key_prefix",
                "must be 1 to 64 characters of letters, digits and : _ - . { } (e.g. \"egress:\")",
            ));
        }
        if !self.redis_url.is_empty()
            && let Err(e) = RedisTarget::parse(&self.redis_url)
        {
            return Err(invalid(
                "fleet.redis_url",
                format!(
                    "{e}: use redis://host:port/db, redis+sentinel://host:port[,host:port...]/master_name[/db], \
                     or leave it empty for one node"
                ),
            ));
        }
        if !self.advertise_url.is_empty() && !self.advertise_url.starts_with("http://") {
            return Err(invalid("fleet.advertise_url", "must start with http://"));
        }
        if !(50..=60_000).contains(&self.heartbeat_ms) {
            return Err(invalid("fleet.heartbeat_ms", "must be in [50, 60000]"));
        }
        if self.node_ttl_ms <= self.heartbeat_ms {
            return Err(invalid(
                "fleet.node_ttl_ms",
                "must be larger than fleet.heartbeat_ms",
            ));
        }
        let f = self.target_free_fraction;
        if !(f.is_finite() && (0.0..=0.9).contains(&f)) {
            return Err(invalid("fleet.target_free_fraction", "must be in [0, 0.9]"));
        }
        if !(MIN_RESERVATION_TTL_MS..=600_000).contains(&self.reservation_ttl_ms) {
            return Err(invalid(
                "fleet.reservation_ttl_ms",
                format!("must be in [{MIN_RESERVATION_TTL_MS}, 600000]"),
            ));
        }
        Ok(())
    }
}
