//! `fleet`: the Redis the nodes coordinate through, and how they announce themselves.

use super::*;

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
