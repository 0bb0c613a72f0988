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
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use slog::{info, warn};
use tokio::sync::{Notify, oneshot};

use crate::fleet::keys::Keys;
use crate::fleet::{FLUSH_TIMEOUT, Fleet, FleetError};
use crate::model::now_ms;
use crate::node::Node;
use crate::rules::admission::NodeState;

/// Publishes a node's registration: its record under its key with expiry `ttl_ms`, its id in
/// the set of nodes, and its place in the candidate index placement reads
/// (`reservations::PUBLISH`). Nodes run it on every change and at each heartbeat; the scale
/// benchmark and the placement tests publish simulated nodes with it, so they see exactly what
/// real nodes write.
pub fn publish(
    keys: &Keys,
    node_id: &str,
    url: &str,
    state: &NodeState,
    ttl_ms: u64,
) -> redis::ScriptInvocation<'static> {
    let record = serde_json::json!({
        "node_id": node_id, "url": url, "state": state, "updated_at_ms": now_ms(),
    });
    crate::fleet::reservations::publish(keys, node_id, Some(&record.to_string()), ttl_ms)
}

/// A node's admission state as it publishes it: the very `NodeState` of `GET /v1/node`.
pub use crate::rules::admission::{NodeState as NodeReport, TypeState as TypeReport};

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

// ---- I/O: this node's registration and the live nodes ----

impl Fleet {
    /// Registers the node under `url` and starts the heartbeat and the record writer. Call once,
    /// from the service's arbiter, when the HTTP server is bound.
    pub async fn join(self: &Arc<Self>, url: String, node: Node) -> Result<(), String> {
        let _ = self.url.set(url);
        if let Some(rx) = self.records_rx.lock().ok().and_then(|mut g| g.take()) {
            let flush = self.flush_rx.lock().ok().and_then(|mut g| g.take());
            let me = self.clone();
            actix_rt::spawn(async move { me.write_records(rx, flush).await });
        }
        // Every change of the node's admission state is published at once (placement reads it
        // from Redis); the heartbeat refreshes it when nothing changes.
        let changed = Arc::new(Notify::new());
        node.watch_state(changed.clone())
            .await
            .map_err(|e| format!("admission does not answer: {e}"))?;
        self.register(&node).await?;
        info!(self.log, "joined the fleet"; "url" => self.url(), "heartbeat_ms" => self.cfg.heartbeat_ms,
              "node_ttl_ms" => self.cfg.node_ttl_ms);
        let me = self.clone();
        let every = Duration::from_millis(self.cfg.heartbeat_ms);
        let handle = actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = changed.notified() => tick.reset(),
                }
                match me.register(&node).await {
                    Ok(()) if failing => {
                        info!(
                            me.log,
                            "heartbeat works again: publishing every record of this node"
                        );
                        failing = false;
                        me.set_degraded(None);
                        me.resync(&node).await;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        // With Sentinel, a failing primary may have been replaced: follow it.
                        match me.conns.refresh().await {
                            Ok(true) => {
                                info!(me.log, "Sentinel names a new primary: connected to it";
                                      "addr" => me.conns.addr());
                                tick.reset_immediately();
                                continue;
                            }
                            Ok(false) => {}
                            Err(re) => {
                                if !failing {
                                    warn!(me.log, "cannot ask Sentinel for the primary"; "error" => re);
                                }
                            }
                        }
                        if !failing {
                            warn!(me.log, "heartbeat failed: degraded, starts are placed on this node alone";
                                  "error" => &e);
                        }
                        failing = true;
                        me.set_degraded(Some(format!("the fleet's Redis does not answer: {e}")));
                    }
                }
            }
        });
        if let Ok(mut g) = self.heartbeat.lock() {
            *g = Some(handle);
        }
        Ok(())
    }

    /// Sends every record of this node to the record writer again (after Redis came back).
    async fn resync(&self, node: &Node) {
        match node.list(None).await {
            Ok(all) => {
                for info in all {
                    let _ = self.records_tx.send(info);
                }
            }
            Err(e) => {
                warn!(self.log, "cannot list this node's records to publish them"; "error" => %e)
            }
        }
    }

    /// One heartbeat: this node's state under its key, with expiry, and its id in the set.
    async fn register(&self, node: &Node) -> Result<(), String> {
        let state = node
            .state()
            .await
            .map_err(|e| format!("admission does not answer: {e}"))?;
        let mut con = self.conns.con();
        publish(
            &self.keys,
            &self.node_id,
            self.url(),
            &state,
            self.cfg.node_ttl_ms,
        )
        .invoke_async::<i64>(&mut con)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Graceful exit: no more heartbeats, the last records written, the registration removed.
    pub async fn leave(&self) {
        if let Some(h) = self.heartbeat.lock().ok().and_then(|mut g| g.take()) {
            h.abort();
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.flush_tx.send(ack_tx).is_ok()
            && tokio::time::timeout(FLUSH_TIMEOUT, ack_rx).await.is_err()
        {
            warn!(
                self.log,
                "the last egress records did not reach Redis in time"
            );
        }
        let mut con = self.conns.con();
        let res = crate::fleet::reservations::publish(&self.keys, &self.node_id, None, 0)
            .invoke_async::<i64>(&mut con)
            .await;
        match res {
            Ok(_) => info!(self.log, "left the fleet"),
            Err(e) => {
                warn!(self.log, "cannot remove this node's registration (it expires on its own)"; "error" => %e)
            }
        }
    }

    /// Every live node's registration, sorted by node id.
    pub async fn live_nodes(&self) -> Result<Vec<NodeRecord>, FleetError> {
        let mut con = self.conns.con();
        let raw: Vec<String> = LIVE_NODES
            .key(self.keys.nodes())
            .arg(self.keys.node_prefix())
            .invoke_async(&mut con)
            .await?;
        let (nodes, bad) = parse_nodes(raw);
        for b in bad {
            warn!(self.log, "unreadable node registration"; "problem" => b);
        }
        Ok(nodes)
    }

    /// `GET /v1/fleet/nodes`.
    pub async fn nodes(&self) -> Result<Vec<FleetNode>, FleetError> {
        Ok(self
            .live_nodes()
            .await?
            .into_iter()
            .map(FleetNode::from)
            .collect())
    }
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
