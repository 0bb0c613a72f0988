//! `GET /v1/fleet/capacity` and the fleet gauges: the live nodes' published state and their
//! jobs' records, made into autoscaling figures by `rules::capacity`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use slog::debug;

use crate::fleet::{Fleet, FleetError};
use crate::metrics::METRICS;
use crate::model::{EgressInfo, EgressType, now_ms};
use crate::rules::capacity::{Capacity, NodeView, TypeView, capacity};
use crate::rules::costs::CostClass;
use crate::rules::pricer::Pricer;

/// How often the fleet gauges are refreshed (by one node of the fleet; the others read its
/// figures): an autoscaler acts on a scale of tens of seconds.
const CAPACITY_REFRESH: Duration = Duration::from_secs(2);

/// Time left until a job reaches its `max_duration_s` (None without one).
fn remaining_ms(info: &EgressInfo, now: u64) -> Option<u64> {
    let d = info.request.max_duration_s?;
    let from = info.started_at.unwrap_or(info.created_at);
    Some(from.saturating_add((d * 1000.0) as u64).saturating_sub(now))
}

impl Fleet {
    /// The fleet's capacity figures now (`GET /v1/fleet/capacity`); also sets the fleet gauges.
    pub async fn capacity(&self, pricer: &Pricer) -> Result<Capacity, FleetError> {
        let nodes = self.live_nodes().await?;
        let ids: Vec<&String> = nodes
            .iter()
            .filter(|n| !n.state.draining)
            .flat_map(|n| n.state.egress_ids.iter())
            .collect();
        let mut records: BTreeMap<String, EgressInfo> = BTreeMap::new();
        if !ids.is_empty() {
            let mut con = self.conns.con();
            let raw: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.keys.records())
                .arg(&ids)
                .query_async(&mut con)
                .await?;
            for r in raw.into_iter().flatten() {
                if let Ok(info) = serde_json::from_str::<EgressInfo>(&r) {
                    records.insert(info.egress_id.clone(), info);
                }
            }
        }
        let now = now_ms();
        let views: Vec<NodeView> = nodes
            .into_iter()
            .map(|n| NodeView {
                node_id: n.node_id,
                budget_cores: n.state.budget_cores,
                headroom_cpu: n.state.headroom_cpu,
                draining: n.state.draining,
                types: n
                    .state
                    .types
                    .iter()
                    .map(|(k, t)| {
                        (
                            k.clone(),
                            TypeView {
                                active: t.active,
                                limit: t.limit,
                                pending_claims: t.pending_claims,
                                cost: t.cost,
                            },
                        )
                    })
                    .collect(),
                // A job whose record is not in Redis yet counts as one without an end.
                jobs_remaining_ms: n
                    .state
                    .egress_ids
                    .iter()
                    .map(|id| records.get(id).and_then(|i| remaining_ms(i, now)))
                    .collect(),
            })
            .collect();
        let learned: BTreeMap<String, f64> = EgressType::ALL
            .into_iter()
            .filter_map(|t| {
                pricer
                    .learned_price(&CostClass::default_of(t))
                    .map(|p| (t.as_str().to_string(), p))
            })
            .collect();
        let c = capacity(&views, &learned, self.cfg.target_free_fraction);
        export(&c);
        Ok(c)
    }

    /// Keeps the fleet gauges current for an autoscaler that scrapes `/metrics` rather than
    /// calling the API. Computing them reads every live node and its jobs' records, so one node
    /// per `CAPACITY_REFRESH` does it (whichever takes the lock) and publishes the figures; the
    /// others read that one key. Every node then exports the same figures.
    pub fn watch_capacity(self: &Arc<Self>, pricer: Pricer) {
        let me = self.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(CAPACITY_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.refresh_capacity(&pricer).await {
                    debug!(me.log, "cannot refresh the fleet's capacity"; "error" => %e);
                }
            }
        });
    }

    async fn refresh_capacity(&self, pricer: &Pricer) -> Result<(), FleetError> {
        let ms = CAPACITY_REFRESH.as_millis() as u64;
        let mut con = self.conns.con();
        let won: Option<String> = redis::cmd("SET")
            .arg(self.keys.capacity_lock())
            .arg(&self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(ms.saturating_sub(ms / 10))
            .query_async(&mut con)
            .await?;
        if won.is_some() {
            let c = self.capacity(pricer).await?;
            let json = serde_json::to_string(&c).unwrap_or_default();
            let _: () = redis::cmd("SET")
                .arg(self.keys.capacity())
                .arg(json)
                .arg("PX")
                .arg(3 * ms)
                .query_async(&mut con)
                .await?;
            return Ok(());
        }
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.keys.capacity())
            .query_async(&mut con)
            .await?;
        if let Some(c) = raw.and_then(|r| serde_json::from_str::<Capacity>(&r).ok()) {
            export(&c);
        }
        Ok(())
    }
}

/// Sets the fleet gauges.
fn export(c: &Capacity) {
    METRICS.fleet_budget_cores.set(c.budget_cores);
    METRICS.fleet_used_cores.set(c.used_cores);
    METRICS.fleet_free_cores.set(c.free_cores);
    METRICS.fleet_nodes.set(f64::from(c.nodes));
    METRICS.fleet_desired_nodes.set(f64::from(c.desired_nodes));
    for (t, n) in &c.fits {
        METRICS
            .fleet_fits
            .with_label_values(&[t.as_str()])
            .set(n.map_or(-1, |n| n.min(i64::MAX as u64) as i64));
    }
}
