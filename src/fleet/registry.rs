//! Fleet membership: each node's registration in Redis, refreshed by a heartbeat, and the set of
//! live nodes as any node reads it.
//!
//! ```text
//!   SET  egress:node:{node_id} {node_id, url, state, updated_at_ms}  PX node_ttl_ms
//!        (on every change of the node's admission state, else every heartbeat_ms)
//!   SADD egress:nodes {node_id}
//!   live = SMEMBERS egress:nodes whose egress:node:{id} still exists (the others are SREMed)
//! ```
//!
//! A node is live exactly while its key exists: a node that stops heartbeating (killed, frozen,
//! cut off from Redis) is dead `node_ttl_ms` after its last heartbeat, with nothing to clean up.

use std::collections::BTreeMap;

use redis::Script;
use serde::{Deserialize, Serialize};

/// The set of every node that ever registered (pruned lazily).
pub const NODES_KEY: &str = "egress:nodes";
/// Prefix of each node's registration key.
pub const NODE_KEY_PREFIX: &str = "egress:node:";

pub fn node_key(node_id: &str) -> String {
    format!("{NODE_KEY_PREFIX}{node_id}")
}

/// One type's counts in a node's report (as `GET /v1/node` gives them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct TypeReport {
    pub active: u32,
    pub limit: u32,
    pub cost: f64,
    pub pending_claims: u32,
}

/// A node's admission state (`NodeState` from the Admission actor, read back).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeReport {
    pub node_id: String,
    pub capacity_cores: f64,
    pub load: f64,
    pub available_cpu: f64,
    pub draining: bool,
    pub types: BTreeMap<String, TypeReport>,
}

impl NodeReport {
    /// Claims the node holds, of every type.
    pub fn pending_claims(&self) -> u32 {
        self.types.values().map(|t| t.pending_claims).sum()
    }
}

/// What a node writes at each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// Base URL of its admin API, as other nodes reach it.
    pub url: String,
    pub state: NodeReport,
    /// When the node wrote this, in ms since the Unix epoch.
    pub updated_at_ms: u64,
}

/// One line of `GET /v1/fleet/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FleetNode {
    pub node_id: String,
    pub url: String,
    pub load: f64,
    pub capacity_cores: f64,
    pub available_cpu: f64,
    pub draining: bool,
    pub types: BTreeMap<String, TypeReport>,
    pub updated_at_ms: u64,
}

impl From<NodeRecord> for FleetNode {
    fn from(r: NodeRecord) -> FleetNode {
        FleetNode {
            node_id: r.node_id,
            url: r.url,
            load: r.state.load,
            capacity_cores: r.state.capacity_cores,
            available_cpu: r.state.available_cpu,
            draining: r.state.draining,
            types: r.state.types,
            updated_at_ms: r.updated_at_ms,
        }
    }
}

/// Every live registration in one round trip; members whose key expired are removed from the set.
/// KEYS[1] = egress:nodes, ARGV[1] = egress:node: prefix.
pub static LIVE_NODES: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('SMEMBERS', KEYS[1])
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then
    table.insert(out, v)
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"#,
    )
});

/// Parses registrations, skipping (and naming) the ones that do not parse; sorted by node id.
pub fn parse_nodes(raw: Vec<String>) -> (Vec<NodeRecord>, Vec<String>) {
    let mut nodes = Vec::new();
    let mut bad = Vec::new();
    for r in raw {
        match serde_json::from_str::<NodeRecord>(&r) {
            Ok(n) => nodes.push(n),
            Err(e) => bad.push(format!("{e}: {}", r.chars().take(120).collect::<String>())),
        }
    }
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    (nodes, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_state_json_reads_back() {
        // What the Admission actor's NodeState serializes to.
        let raw = serde_json::json!({
            "node_id": "ND_a", "url": "http://127.0.0.1:1", "updated_at_ms": 5,
            "state": {"node_id": "ND_a", "capacity_cores": 8.0, "load": 0.25, "available_cpu": 6.0,
                      "draining": false, "types": {"track": {"active": 1, "limit": 0, "cost": 0.5, "pending_claims": 2},
                                                   "web": {"active": 0, "limit": 1, "cost": 4.0, "pending_claims": 1}}}
        })
        .to_string();
        let (nodes, bad) = parse_nodes(vec![raw, "{broken".into()]);
        assert_eq!(bad.len(), 1);
        assert_eq!(nodes[0].state.pending_claims(), 3);
        let line = FleetNode::from(nodes[0].clone());
        assert_eq!((line.available_cpu, line.types["track"].active), (6.0, 1));
    }
}
