//! Fleet-wide egress records and egress ownership in Redis.
//!
//! ```text
//!   HSET egress:records {egress_id} <EgressInfo JSON>     every change on the node that runs it
//!   SET  egress:owner:{egress_id} {node_id} PX 7 days     taken once, before admission
//! ```
//!
//! **Ownership** is what makes a placement retry safe: a node starts an egress only after taking
//! its owner key, which it may do when the key is absent, already its own, or held by a node that
//! is no longer live. A second node asked to start the same id while the first one lives refuses
//! with `already_placed`, so a retried placement can never run the job twice.
//!
//! **Records** are mirrored by each node's Supervisor (through a channel, so the actor never waits
//! for Redis). A node only writes records of egresses it owns: a node that comes back after its
//! jobs were placed elsewhere cannot overwrite the new owner's records.
//!
//! **The dead-node rule** is applied when records are read, never written: a record whose node is
//! not live and whose status is not final is reported `aborted` / "Node lost". If the node comes
//! back, it settles the record itself and the real outcome replaces the computed one.

use std::sync::Arc;
use std::time::Duration;

use slog::{debug, info, warn};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, NodeError};
use crate::fleet::client::{self, CallError, NodeStart, Target};
use crate::fleet::registry::NodeRecord;
use crate::fleet::{END_TIMEOUT, Fleet, FleetError};
use crate::model::is_valid_egress_id;
use crate::node::{EndAction, Node};
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use redis::Script;

use crate::model::{EgressInfo, EgressStatus, reason};

/// Lifetime of an owner key: longer than any egress is allowed to run (max_duration_s <= 7 days).
pub const OWNER_TTL_MS: u64 = 8 * 24 * 3600 * 1000;

/// Takes ownership of an egress id. KEYS[1] = owner key; ARGV = me, ttl_ms, node key prefix.
/// Returns the owner after the call (me when taken).
pub static CLAIM_OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] or redis.call('EXISTS', ARGV[3] .. cur) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return cur
"#,
    )
});

/// Gives ownership back if it is still mine (the node refused or failed to start the job).
/// KEYS[1] = owner key; ARGV[1] = me.
pub static DISOWN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Writes a record unless another node owns the egress. KEYS = records, owner key;
/// ARGV = egress_id, me, json, mode, owner ttl_ms. Mode `start` writes only when the stored record is absent or
/// another node's (a mirror write of this node's is at least as new). Returns 1 when written.
pub static PUT_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[2] then
  return 0
end
if not owner then
  -- Placed while Redis was away (degraded mode): the id becomes this node's now.
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[5])
end
if ARGV[4] == 'start' then
  local cur = redis.call('HGET', KEYS[1], ARGV[1])
  if cur then
    local ok, rec = pcall(cjson.decode, cur)
    if ok and type(rec) == 'table' and rec['node_id'] == ARGV[2] then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#,
    )
});

/// A record as the fleet reports it: unchanged, unless its node is not live and it is not final,
/// then `aborted` with end reason "Node lost".
pub fn as_seen(mut info: EgressInfo, live: &HashSet<String>) -> EgressInfo {
    if !info.status.is_final() && !live.contains(&info.node_id) {
        info.status = EgressStatus::Aborted;
        info.end_reason = Some(reason::NODE_LOST.to_string());
        info.error = Some(format!(
            "node {} stopped answering while the egress ran",
            info.node_id
        ));
        info.handler_pid = None;
    }
    info
}

/// The fleet's list: stored records with the dead-node rule, this node's own records (which are
/// never behind the mirror) in place of their stored copies, filtered, newest first.
pub fn merge(
    stored: HashMap<String, String>,
    local: Vec<EgressInfo>,
    live: &HashSet<String>,
    statuses: Option<&[EgressStatus]>,
) -> (Vec<EgressInfo>, Vec<String>) {
    let mut bad = Vec::new();
    let mut by_id: HashMap<String, EgressInfo> = HashMap::with_capacity(stored.len() + local.len());
    for (id, json) in stored {
        match serde_json::from_str::<EgressInfo>(&json) {
            Ok(info) => {
                by_id.insert(id, as_seen(info, live));
            }
            Err(e) => bad.push(format!("{id}: {e}")),
        }
    }
    for info in local {
        // A record another node took over (this node was presumed dead) stays theirs.
        let theirs = by_id
            .get(&info.egress_id)
            .is_some_and(|s| s.node_id != info.node_id && live.contains(&s.node_id));
        if !theirs {
            by_id.insert(info.egress_id.clone(), info);
        }
    }
    let mut v: Vec<EgressInfo> = by_id
        .into_values()
        .filter(|i| statuses.is_none_or(|s| s.contains(&i.status)))
        .collect();
    v.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(a.egress_id.cmp(&b.egress_id))
    });
    (v, bad)
}

// ---- I/O: mirroring records, starting an owned egress, reading the fleet's records ----

impl Fleet {
    /// Mirrors every record change to Redis. What Redis does not take (it is down, or restarting)
    /// stays pending, the latest version of each egress, and is written again with backoff
    /// (doubling to `MAX_BACKOFF`, with jitter) until it is: nothing recorded while Redis was
    /// away is lost, and every egress is written once per version that matters.
    pub(crate) async fn write_records(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<EgressInfo>,
        mut flush: Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>,
    ) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(50);
        const MAX_BACKOFF: Duration = Duration::from_secs(2);
        let mut pending: HashMap<String, EgressInfo> = HashMap::new();
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        loop {
            let mut acks = Vec::new();
            tokio::select! {
                biased;
                info = rx.recv() => match info {
                    Some(info) => { pending.insert(info.egress_id.clone(), info); }
                    None => return,
                },
                ack = async { match flush.as_mut() { Some(f) => f.recv().await, None => std::future::pending().await } } => {
                    match ack {
                        Some(ack) => acks.push(ack),
                        None => flush = None,
                    }
                }
                _ = tokio::time::sleep(backoff), if failing => {}
            }
            while let Ok(info) = rx.try_recv() {
                pending.insert(info.egress_id.clone(), info);
            }
            // Written oldest first, so a restarted reader sees starts before their ends.
            let mut batch: Vec<EgressInfo> = pending.values().cloned().collect();
            batch.sort_by_key(|i| i.created_at);
            let mut error = None;
            for info in batch {
                match self.put_record(&info, "mirror").await {
                    Ok(_) => {
                        pending.remove(&info.egress_id);
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            match error {
                None if failing => {
                    info!(self.log, "egress records reach Redis again");
                    failing = false;
                    backoff = FIRST_BACKOFF;
                }
                None => {}
                Some(e) => {
                    if !failing {
                        warn!(self.log, "cannot mirror egress records to Redis: kept until it answers";
                              "pending" => pending.len(), "error" => %e);
                    }
                    failing = true;
                    let jitter = rand::random::<f64>() * 0.5 + 0.75;
                    backoff = (backoff * 2).min(MAX_BACKOFF).mul_f64(jitter);
                }
            }
            crate::metrics::METRICS
                .fleet_unpublished_records
                .set(pending.len() as f64);
            for ack in acks {
                let _ = ack.send(());
            }
        }
    }

    /// Writes this node's record of an egress it owns (see `records::PUT_RECORD` for `mode`).
    async fn put_record(&self, info: &EgressInfo, mode: &str) -> Result<bool, redis::RedisError> {
        let json = serde_json::to_string(info).unwrap_or_default();
        let mut con = self.conns.con();
        let written: i64 = PUT_RECORD
            .key(self.keys.records())
            .key(self.keys.owner(&info.egress_id))
            .arg(&info.egress_id)
            .arg(&self.node_id)
            .arg(json)
            .arg(mode)
            .arg(OWNER_TTL_MS)
            .invoke_async(&mut con)
            .await?;
        Ok(written == 1)
    }

    /// `POST /v1/node/egress`: starts a placed egress on this node, once it owns the id.
    pub async fn start_owned(
        &self,
        node: &Node,
        start: NodeStart,
    ) -> Result<EgressInfo, FleetError> {
        let id = start.egress_id;
        if !is_valid_egress_id(&id) {
            return Err(ApiError::BadQuery(format!("'{id}' is not an egress id")).into());
        }
        if node.get(&id).await?.is_some() {
            return Err(ApiError::AlreadyPlaced {
                egress_id: id,
                owner: self.node_id.clone(),
            }
            .into());
        }
        let mut con = self.conns.con();
        let owner: String = CLAIM_OWNER
            .key(self.keys.owner(&id))
            .arg(&self.node_id)
            .arg(OWNER_TTL_MS)
            .arg(self.keys.node_prefix())
            .invoke_async(&mut con)
            .await?;
        if owner != self.node_id {
            debug!(self.log, "egress owned elsewhere"; "egress_id" => &id, "owner" => &owner);
            return Err(ApiError::AlreadyPlaced {
                egress_id: id,
                owner,
            }
            .into());
        }
        match node
            .start(start.request, Some(id.clone()), start.claim_id)
            .await
        {
            Ok(info) => {
                // Readable fleet-wide before the placer answers (the mirror follows at once).
                if let Err(e) = self.put_record(&info, "start").await {
                    warn!(self.log, "cannot write the new egress record"; "egress_id" => &id, "error" => %e);
                }
                Ok(info)
            }
            Err(e) => {
                // "exists already" means it runs here: keep the id. Otherwise give it back, so a
                // retry on another node can take it.
                if !matches!(e, NodeError::Conflict(_)) {
                    let r: Result<i64, _> = DISOWN
                        .key(self.keys.owner(&id))
                        .arg(&self.node_id)
                        .invoke_async(&mut con)
                        .await;
                    if let Err(de) = r {
                        warn!(self.log, "cannot give an egress id back (it stays blocked until this node dies)";
                              "egress_id" => &id, "error" => %de);
                    }
                }
                Err(e.into())
            }
        }
    }

    /// The record, whether its owner lives, and the owner key: what `resolve_owner` decides on.
    pub(crate) async fn ownership(
        &self,
        egress_id: &str,
    ) -> Result<(Option<EgressInfo>, Option<String>, bool), FleetError> {
        let mut con = self.conns.con();
        let (record, owner): (Option<String>, Option<String>) = redis::pipe()
            .cmd("HGET")
            .arg(self.keys.records())
            .arg(egress_id)
            .cmd("GET")
            .arg(self.keys.owner(egress_id))
            .query_async(&mut con)
            .await?;
        let live = match &owner {
            Some(o) if o == &self.node_id => true,
            Some(o) => {
                redis::cmd("EXISTS")
                    .arg(self.keys.node(o))
                    .query_async::<i64>(&mut con)
                    .await?
                    == 1
            }
            None => false,
        };
        let record = record.and_then(|r| serde_json::from_str::<EgressInfo>(&r).ok());
        Ok((record, owner, live))
    }

    /// `GET /v1/egress` fleet-wide: stored records with the dead-node rule, this node's own
    /// records as they are now.
    pub async fn list(
        &self,
        node: &Node,
        statuses: Option<Vec<EgressStatus>>,
    ) -> Result<Vec<EgressInfo>, FleetError> {
        let mut con = self.conns.con();
        let stored: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.records())
            .query_async(&mut con)
            .await?;
        let mut live: HashSet<String> = self
            .live_nodes()
            .await?
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        live.insert(self.node_id.clone());
        let local = node.list(None).await?;
        let (list, bad) = merge(stored, local, &live, statuses.as_deref());
        for b in bad {
            warn!(self.log, "unreadable egress record in Redis"; "problem" => b);
        }
        Ok(list)
    }

    /// One egress from the fleet's records (the caller looked on this node first).
    pub async fn get(&self, id: &str) -> Result<Option<EgressInfo>, FleetError> {
        let (record, _, _) = self.ownership(id).await?;
        let Some(info) = record else { return Ok(None) };
        let live = if info.node_id == self.node_id {
            true
        } else {
            let mut con = self.conns.con();
            redis::cmd("EXISTS")
                .arg(self.keys.node(&info.node_id))
                .query_async::<i64>(&mut con)
                .await?
                == 1
        };
        let live_set: HashSet<String> = if live {
            [info.node_id.clone()].into()
        } else {
            HashSet::new()
        };
        Ok(Some(as_seen(info, &live_set)))
    }

    /// Stop or kill forwarded to the node that runs the egress. None when no other node has it.
    pub async fn end_remote(
        &self,
        id: &str,
        action: EndAction,
    ) -> Result<Option<EgressInfo>, FleetError> {
        let (record, owner, _) = self.ownership(id).await?;
        let Some(node) = record.as_ref().map(|r| r.node_id.clone()).or(owner) else {
            return Ok(None);
        };
        if node == self.node_id {
            return Ok(None);
        }
        let mut con = self.conns.con();
        let reg: Option<String> = redis::cmd("GET")
            .arg(self.keys.node(&node))
            .query_async(&mut con)
            .await?;
        let Some(reg) = reg.and_then(|r| serde_json::from_str::<NodeRecord>(&r).ok()) else {
            return Err(ApiError::Conflict(format!(
                "egress {id} ran on node {node}, which is no longer live: it ended (aborted, \"Node lost\")"
            ))
            .into());
        };
        let action_name = action.as_str();
        let answer: Result<Option<EgressInfo>, ApiError> = match client::end(
            Target {
                url: &reg.url,
                token: &self.token,
            },
            id,
            action_name,
            END_TIMEOUT,
        )
        .await
        {
            Ok(info) => Ok(Some(info)),
            Err(CallError::Remote(r)) if r.status == 404 => Ok(None),
            Err(CallError::Remote(r)) if r.status == 409 => Err(ApiError::Conflict(r.message)),
            Err(CallError::Remote(r)) => Err(ApiError::Unavailable(format!(
                "node {node} that runs egress {id} answered {} {}: {}",
                r.status, r.code, r.message
            ))),
            Err(e) => Err(ApiError::Unavailable(format!(
                "cannot reach node {node} ({}) that runs egress {id} to {action_name} it: {e}",
                reg.url
            ))),
        };
        Ok(answer?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, node: &str, status: EgressStatus, created_at: u64) -> EgressInfo {
        crate::model::sample_info(id, node, status, created_at)
    }

    fn live(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dead_node_rule() {
        let alive = live(&["ND_a"]);
        // (node, status, expected status)
        let table = [
            ("ND_a", EgressStatus::Active, EgressStatus::Active),
            ("ND_a", EgressStatus::Starting, EgressStatus::Starting),
            ("ND_b", EgressStatus::Starting, EgressStatus::Aborted),
            ("ND_b", EgressStatus::Active, EgressStatus::Aborted),
            ("ND_b", EgressStatus::Ending, EgressStatus::Aborted),
            ("ND_b", EgressStatus::Complete, EgressStatus::Complete),
            ("ND_b", EgressStatus::Failed, EgressStatus::Failed),
            (
                "ND_b",
                EgressStatus::LimitReached,
                EgressStatus::LimitReached,
            ),
        ];
        for (node, status, want) in table {
            let seen = as_seen(info("EG_x", node, status, 1), &alive);
            assert_eq!(seen.status, want, "{node} {status:?}");
            let lost = want == EgressStatus::Aborted;
            assert_eq!(
                seen.end_reason.as_deref() == Some(reason::NODE_LOST),
                lost,
                "{node} {status:?}"
            );
            assert_eq!(seen.handler_pid.is_none(), lost);
        }
    }

    #[test]
    fn merge_prefers_local_records_filters_and_sorts() {
        let mut stored = HashMap::new();
        let put = |m: &mut HashMap<String, String>, i: EgressInfo| {
            m.insert(i.egress_id.clone(), serde_json::to_string(&i).unwrap());
        };
        put(&mut stored, info("EG_1", "ND_a", EgressStatus::Starting, 1));
        put(&mut stored, info("EG_2", "ND_b", EgressStatus::Active, 2));
        put(
            &mut stored,
            info("EG_3", "ND_gone", EgressStatus::Active, 3),
        );
        // Taken over by ND_b after ND_a was presumed dead: ND_a's stale copy must not win.
        put(&mut stored, info("EG_4", "ND_b", EgressStatus::Active, 4));
        stored.insert("EG_bad".into(), "{".into());
        let local = vec![
            info("EG_1", "ND_a", EgressStatus::Active, 1),
            info("EG_4", "ND_a", EgressStatus::Failed, 4),
            info("EG_5", "ND_a", EgressStatus::Starting, 5),
        ];
        let alive = live(&["ND_a", "ND_b"]);
        let (all, bad) = merge(stored.clone(), local.clone(), &alive, None);
        assert_eq!(bad.len(), 1);
        let ids: Vec<_> = all
            .iter()
            .map(|i| (i.egress_id.as_str(), i.node_id.as_str(), i.status))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("EG_5", "ND_a", EgressStatus::Starting),
                ("EG_4", "ND_b", EgressStatus::Active),
                ("EG_3", "ND_gone", EgressStatus::Aborted),
                ("EG_2", "ND_b", EgressStatus::Active),
                ("EG_1", "ND_a", EgressStatus::Active),
            ]
        );
        let (active, _) = merge(stored, local, &alive, Some(&[EgressStatus::Active]));
        assert_eq!(active.len(), 3);
    }
}
