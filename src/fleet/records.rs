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

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use redis::Script;

use crate::model::{EgressInfo, EgressStatus, reason};

pub const RECORDS_KEY: &str = "egress:records";
/// Lifetime of an owner key: longer than any egress is allowed to run (max_duration_s <= 7 days).
pub const OWNER_TTL_MS: u64 = 8 * 24 * 3600 * 1000;

pub fn owner_key(egress_id: &str) -> String {
    format!("egress:owner:{egress_id}")
}

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
/// ARGV = egress_id, me, json, mode. Mode `start` writes only when the stored record is absent or
/// another node's (a mirror write of this node's is at least as new). Returns 1 when written.
pub static PUT_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[2] then
  return 0
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
