//! The fleet's learned cost table in Redis, so that every node prices a class by what the whole
//! fleet measured and a new node starts with the fleet's knowledge.
//!
//! ```text
//!   HSET egress:costs {class} {Estimate as JSON}
//!   a job's end:  FOLD  (one script: the job folded into the stored estimate, as rules::costs does)
//!   INCR egress:costs:version on every change (FOLD, and PUSH when it stored anything)
//!   every COST_REFRESH: PUSH what the node may know better (everything once at start: calibrated
//!   classes; a class whose FOLD failed), GET the version, HGETALL only when it moved
//! ```

use std::sync::LazyLock;

use redis::Script;

use crate::fleet::{Fleet, FleetError};
use crate::rules::costs::{CostTable, EWMA_WEIGHT, Estimate, JobSummary};

/// Folds one job into a class's stored estimate (or stores `ARGV[3]`, the node's own, when there
/// is none), moves the table's version on, and returns the result. KEYS[1] = costs hash,
/// KEYS[2] = its version, ARGV = class, job JSON, local JSON, weight, now_ms.
static FOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
if not cur then
  -- Stored as the node wrote it: its figures come back exactly.
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return ARGV[3]
end
local e = cjson.decode(cur)
local j = cjson.decode(ARGV[2])
local w = tonumber(ARGV[4])
e.p50 = e.p50 + w * (j.p50 - e.p50)
e.p95 = e.p95 + w * (j.p95 - e.p95)
if j.max > e.max then e.max = j.max end
e.jobs = e.jobs + 1
e.updated_at_ms = tonumber(ARGV[5])
local out = cjson.encode(e)
redis.call('HSET', KEYS[1], ARGV[1], out)
return out
"#,
    )
});

/// Stores each given estimate whose class Redis lacks or knows from fewer jobs (a calibrated
/// one also replaces an uncalibrated one). KEYS[1] = costs hash, ARGV = class, JSON, jobs,
/// calibrated (0/1), ... Returns how many were stored.
static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
for i = 1, #ARGV, 4 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local take = not cur
  if cur then
    local ok, e = pcall(cjson.decode, cur)
    take = (not ok) or (tonumber(ARGV[i + 2]) > (tonumber(e.jobs) or 0))
      or (ARGV[i + 3] == '1' and e.calibrated ~= true)
  end
  if take then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
if n > 0 then redis.call('INCR', KEYS[2]) end
return n
"#,
    )
});

fn parse(raw: &str) -> Result<Estimate, FleetError> {
    serde_json::from_str(raw).map_err(|e| FleetError::Reply(format!("cost estimate: {e}: {raw}")))
}

impl Fleet {
    /// The fleet's table; entries that do not parse are left out.
    pub async fn load_costs(&self) -> Result<CostTable, FleetError> {
        let mut con = self.conns.con();
        let raw: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.costs())
            .query_async(&mut con)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| parse(&v).ok().map(|e| (k, e)))
            .collect())
    }

    /// The fleet table's version: it moves on every change (None before the first).
    pub async fn costs_version(&self) -> Result<Option<i64>, FleetError> {
        let mut con = self.conns.con();
        Ok(redis::cmd("GET")
            .arg(self.keys.costs_version())
            .query_async(&mut con)
            .await?)
    }

    /// Folds a finished job into the fleet's estimate of its class; `local` is this node's
    /// estimate after the job (stored when the fleet has none). Returns the fleet's estimate.
    pub async fn fold_cost(
        &self,
        class: &str,
        job: &JobSummary,
        local: &Estimate,
        now_ms: u64,
    ) -> Result<Estimate, FleetError> {
        let job = serde_json::json!({"p50": job.p50, "p95": job.p95, "max": job.max});
        let local = serde_json::to_string(local).unwrap_or_default();
        let mut con = self.conns.con();
        let out: String = FOLD
            .key(self.keys.costs())
            .key(self.keys.costs_version())
            .arg(class)
            .arg(job.to_string())
            .arg(local)
            .arg(EWMA_WEIGHT)
            .arg(now_ms)
            .invoke_async(&mut con)
            .await?;
        parse(&out)
    }

    /// Stores the entries of `table` that know more than the fleet's; returns how many.
    pub async fn push_costs(&self, table: &CostTable) -> Result<i64, FleetError> {
        if table.is_empty() {
            return Ok(0);
        }
        let mut inv = PUSH.prepare_invoke();
        inv.key(self.keys.costs()).key(self.keys.costs_version());
        for (k, e) in table {
            inv.arg(k)
                .arg(serde_json::to_string(e).unwrap_or_default())
                .arg(e.jobs)
                .arg(if e.calibrated { "1" } else { "0" });
        }
        let mut con = self.conns.con();
        Ok(inv.invoke_async(&mut con).await?)
    }
}
/// The learner's shared table is the fleet's (`actors::cost_learner::SharedCosts`).
impl crate::actors::cost_learner::SharedCosts for Fleet {
    fn push_costs<'a>(
        &'a self,
        table: &'a CostTable,
    ) -> crate::actors::cost_learner::SharedFuture<'a, i64> {
        Box::pin(async move {
            Fleet::push_costs(self, table)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn costs_version(&self) -> crate::actors::cost_learner::SharedFuture<'_, Option<i64>> {
        Box::pin(async move { Fleet::costs_version(self).await.map_err(|e| e.to_string()) })
    }

    fn load_costs(&self) -> crate::actors::cost_learner::SharedFuture<'_, CostTable> {
        Box::pin(async move { Fleet::load_costs(self).await.map_err(|e| e.to_string()) })
    }

    fn fold_cost<'a>(
        &'a self,
        class: &'a str,
        job: &'a JobSummary,
        local: &'a Estimate,
        now_ms: u64,
    ) -> crate::actors::cost_learner::SharedFuture<'a, Estimate> {
        Box::pin(async move {
            Fleet::fold_cost(self, class, job, local, now_ms)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
