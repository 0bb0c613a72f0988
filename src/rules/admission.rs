//! The admission ledger: what this node has committed (running jobs and pending placement
//! claims) and the decisions to admit a job or take a claim. Pure: every call that depends on
//! time takes `now_ms`; the `Admission` actor is a thin shell around it.
//!
//! # How CPU is counted
//! - The budget is `capacity_cores * max_utilization`.
//! - A running job reserves `max(cost, measured)` while it is younger than `pending_hold_ms` or
//!   has never been measured, and its measured usage afterwards. A new job's estimate is thus
//!   held until real numbers exist, and a job that uses more than estimated is charged for it.
//! - A pending claim reserves its cost until it is consumed, released or expires (a claim is live
//!   while `now_ms < expires_at_ms`).
//! - `available = budget - running reservations - live claims` (may be negative when measured
//!   usage grew after admission; reports clamp it to 0).
//!
//! # Decisions
//! Admit and take-claim check, in order: draining, the per-type limit (`running + live claims of
//! the type < limit`, 0 = none), then CPU (`cost <= available`). A job admitted with a live claim
//! of its type takes that claim's place: the claim is removed (once) and both checks run as if it
//! had never existed, so its slot and CPU are not counted twice. A claim that is unknown, expired,
//! already consumed or of another type is ignored (and left alone): the job is checked like one
//! without a claim. A refused admit changes nothing.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::config::{Config, CpuConfig, CpuCostConfig, LimitsConfig};
use crate::error::AdmissionError;
use crate::model::EgressType;
use crate::rules::scoring::ScoreInput;

/// Slack for float sums so that, e.g., ten 0.1-core jobs fit a 1-core budget.
const EPS: f64 = 1e-9;

/// A job the node runs, as admission counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub egress_type: EgressType,
    /// Cores reserved at admission.
    pub cost: f64,
    /// When it was admitted; its cost is held for `pending_hold_ms` from here.
    pub started_at_ms: u64,
    /// Last measured usage of its handler, in cores.
    pub measured_cores: Option<f64>,
}

/// A slot and CPU held for a request that an affinity answer promised to this node.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingClaim {
    pub egress_type: EgressType,
    /// Cores held.
    pub cost: f64,
    /// The claim is dropped at this time unless consumed or released before.
    pub expires_at_ms: u64,
}

/// One type's line in `NodeState`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct TypeState {
    /// Running jobs of this type.
    pub active: u32,
    /// Concurrency limit (0 = none).
    pub limit: u32,
    /// What admission charges a job of this type (default video, one output), in cores: the
    /// learned price once learned, else the configured cost.
    pub cost: f64,
    /// Live claims of this type.
    pub pending_claims: u32,
}

/// What `GET /v1/node` reports, and what a fleet node publishes of itself at each heartbeat
/// (other nodes read it back: `fleet::registry::NodeRecord`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NodeState {
    pub node_id: String,
    pub capacity_cores: f64,
    /// Cores admission may commit: capacity * max_utilization.
    pub budget_cores: f64,
    /// Last node load from CpuMonitor: max(host busy, node CPU / capacity).
    pub load: f64,
    /// Cores admission can still commit (clamped at 0).
    pub available_cpu: f64,
    /// The same figure unclamped: negative when measured load has pushed the node over its
    /// budget, where even a job estimated at 0 cores is refused. Fleet placement checks this.
    pub headroom_cpu: f64,
    pub draining: bool,
    /// Every egress type, by name.
    pub types: BTreeMap<String, TypeState>,
    /// The egresses admission counts as running, sorted (fleet placement drops its reservation
    /// for a job once the node reports it here).
    pub egress_ids: Vec<String>,
    /// Free and reserved disk under the output directory (filled in by the node layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<crate::delivery::disk::DiskState>,
}

impl NodeState {
    /// Claims the node holds, of every type.
    pub fn pending_claims(&self) -> u32 {
        self.types.values().map(|t| t.pending_claims).sum()
    }
}

/// The node's admission state.
#[derive(Debug, Clone)]
pub struct Ledger {
    node_id: String,
    capacity_cores: f64,
    /// Fraction of the capacity admission may commit.
    max_utilization: f64,
    costs: CpuCostConfig,
    limits: LimitsConfig,
    /// How long a new job's cost is held before measurements alone count.
    pending_hold_ms: u64,
    /// Lifetime of a claim.
    claim_ttl_ms: u64,
    jobs: HashMap<String, Job>,
    claims: HashMap<String, PendingClaim>,
    draining: bool,
    /// Last load reported by CpuMonitor (for `NodeState` only).
    load: f64,
    /// Random per ledger, so claim ids from an earlier run of the service never match.
    claim_prefix: String,
    next_claim: u64,
}

/// Negative, NaN or infinite cores count as nothing.
fn sane(cores: f64) -> f64 {
    if cores.is_finite() && cores > 0.0 {
        cores
    } else {
        0.0
    }
}

impl Job {
    /// Cores this job holds at `now_ms` (see the module doc).
    pub fn reserved(&self, now_ms: u64, pending_hold_ms: u64) -> f64 {
        let held = now_ms < self.started_at_ms.saturating_add(pending_hold_ms);
        match self.measured_cores {
            Some(m) if held => self.cost.max(m),
            Some(m) => m,
            None => self.cost,
        }
    }
}

impl Ledger {
    pub fn new(
        node_id: String,
        capacity_cores: f64,
        cpu: &CpuConfig,
        costs: &CpuCostConfig,
        limits: &LimitsConfig,
        claim_ttl_ms: u64,
    ) -> Ledger {
        Ledger {
            node_id,
            capacity_cores: sane(capacity_cores),
            max_utilization: sane(cpu.max_utilization).min(1.0),
            costs: costs.clone(),
            limits: limits.clone(),
            pending_hold_ms: cpu.pending_hold_ms,
            claim_ttl_ms,
            jobs: HashMap::new(),
            claims: HashMap::new(),
            draining: false,
            load: 0.0,
            claim_prefix: format!("CL_{:08x}_", rand::random::<u32>()),
            next_claim: 0,
        }
    }

    pub fn from_config(cfg: &Config, node_id: String, capacity_cores: f64) -> Ledger {
        Ledger::new(
            node_id,
            capacity_cores,
            &cfg.cpu,
            &cfg.cpu_cost,
            &cfg.limits,
            cfg.affinity.pending_claim_ttl_ms,
        )
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn capacity_cores(&self) -> f64 {
        self.capacity_cores
    }

    /// Cores admission may commit: capacity * max_utilization.
    pub fn budget(&self) -> f64 {
        self.capacity_cores * self.max_utilization
    }

    /// The configured cost of a type, in cores.
    pub fn cost_of(&self, t: EgressType) -> f64 {
        self.costs.cost(t)
    }

    /// The concurrency limit of a type (0 = none).
    pub fn limit_of(&self, t: EgressType) -> u32 {
        self.limits.limit(t)
    }

    pub fn jobs(&self) -> &HashMap<String, Job> {
        &self.jobs
    }

    /// Every claim held, live or not yet swept.
    pub fn claims(&self) -> &HashMap<String, PendingClaim> {
        &self.claims
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Records the node load for reports; it plays no part in decisions.
    pub fn set_load(&mut self, load: f64) {
        self.load = if load.is_finite() { load.max(0.0) } else { 0.0 };
    }

    fn live_claims(&self, now_ms: u64) -> impl Iterator<Item = (&String, &PendingClaim)> {
        self.claims
            .iter()
            .filter(move |(_, c)| now_ms < c.expires_at_ms)
    }

    fn live_claim(&self, now_ms: u64, claim_id: &str) -> Option<&PendingClaim> {
        self.claims
            .get(claim_id)
            .filter(|c| now_ms < c.expires_at_ms)
    }

    /// Running jobs of a type.
    pub fn active(&self, t: EgressType) -> u32 {
        self.jobs.values().filter(|j| j.egress_type == t).count() as u32
    }

    /// Live claims of a type.
    pub fn pending(&self, now_ms: u64, t: EgressType) -> u32 {
        self.live_claims(now_ms)
            .filter(|(_, c)| c.egress_type == t)
            .count() as u32
    }

    /// Cores committed at `now_ms`: running jobs' reservations plus live claims.
    pub fn committed(&self, now_ms: u64) -> f64 {
        let jobs: f64 = self
            .jobs
            .values()
            .map(|j| j.reserved(now_ms, self.pending_hold_ms))
            .sum();
        let claims: f64 = self.live_claims(now_ms).map(|(_, c)| c.cost).sum();
        jobs + claims
    }

    /// Cores that can still be committed (negative when measured usage outgrew the budget).
    pub fn available(&self, now_ms: u64) -> f64 {
        self.budget() - self.committed(now_ms)
    }

    /// Whether a job of type `t` and `cost` cores would be admitted, with the live claim
    /// `excluding` (if any) counted as not there.
    pub fn check(
        &self,
        now_ms: u64,
        t: EgressType,
        cost: f64,
        excluding: Option<&str>,
    ) -> Result<(), AdmissionError> {
        if self.draining {
            return Err(AdmissionError::Draining);
        }
        let excluded = excluding.and_then(|id| self.live_claim(now_ms, id));
        let limit = self.limit_of(t);
        if limit > 0 {
            let same_type = excluded.filter(|c| c.egress_type == t).map_or(0, |_| 1);
            let active = (self.active(t) + self.pending(now_ms, t)).saturating_sub(same_type);
            if active >= limit {
                return Err(AdmissionError::TypeLimit {
                    egress_type: t,
                    active,
                    limit,
                });
            }
        }
        let available = self.available(now_ms) + excluded.map_or(0.0, |c| c.cost);
        if sane(cost) > available + EPS {
            return Err(AdmissionError::Cpu {
                egress_type: t,
                needed: sane(cost),
                available: available.max(0.0),
            });
        }
        Ok(())
    }

    /// Admits a job. With `claim_id` naming a live claim of the same type, the job takes that
    /// claim's place (the claim is consumed). Admitting an egress id that is already running is a
    /// no-op that succeeds (it is never counted twice; a claim given with it is left alone).
    /// A cost that is negative or not finite counts as 0.
    pub fn admit(
        &mut self,
        now_ms: u64,
        egress_id: &str,
        t: EgressType,
        cost: f64,
        claim_id: Option<&str>,
    ) -> Result<(), AdmissionError> {
        self.expire(now_ms);
        if self.jobs.contains_key(egress_id) {
            return Ok(());
        }
        let claim = claim_id.filter(|id| {
            self.live_claim(now_ms, id)
                .is_some_and(|c| c.egress_type == t)
        });
        self.check(now_ms, t, cost, claim)?;
        if let Some(id) = claim {
            self.claims.remove(id);
        }
        self.jobs.insert(
            egress_id.to_string(),
            Job {
                egress_type: t,
                cost: sane(cost),
                started_at_ms: now_ms,
                measured_cores: None,
            },
        );
        Ok(())
    }

    /// Holds a slot and `cost` cores for a request of type `t` until `now_ms + claim_ttl_ms`.
    /// Returns the fresh claim id and the node as it was just before the claim (for scoring).
    pub fn take_claim(
        &mut self,
        now_ms: u64,
        t: EgressType,
        cost: f64,
    ) -> Result<(String, ScoreInput), AdmissionError> {
        self.expire(now_ms);
        self.check(now_ms, t, cost, None)?;
        let before = self.score_input(now_ms, true);
        self.next_claim += 1;
        let id = format!("{}{}", self.claim_prefix, self.next_claim);
        self.claims.insert(
            id.clone(),
            PendingClaim {
                egress_type: t,
                cost: sane(cost),
                expires_at_ms: now_ms.saturating_add(self.claim_ttl_ms),
            },
        );
        Ok((id, before))
    }

    /// Drops a claim; true if it was held. Releasing an unknown id does nothing.
    pub fn release_claim(&mut self, claim_id: &str) -> bool {
        self.claims.remove(claim_id).is_some()
    }

    /// Drops every claim that expired at or before `now_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.claims.len();
        self.claims.retain(|_, c| now_ms < c.expires_at_ms);
        before - self.claims.len()
    }

    /// Forgets a job; true if it was running. Ending an unknown id does nothing.
    pub fn end_job(&mut self, egress_id: &str) -> bool {
        self.jobs.remove(egress_id).is_some()
    }

    /// Records a job's measured usage in cores; false if the job is unknown.
    pub fn measure(&mut self, egress_id: &str, cores: f64) -> bool {
        match self.jobs.get_mut(egress_id) {
            Some(j) => {
                j.measured_cores = Some(sane(cores));
                true
            }
            None => false,
        }
    }

    /// The node as scoring sees it: claims already deducted, claimed slots counted as jobs.
    pub fn score_input(&self, now_ms: u64, can_admit: bool) -> ScoreInput {
        ScoreInput {
            capacity_cores: self.capacity_cores,
            budget_cores: self.budget(),
            available_cpu: self.available(now_ms),
            jobs: (self.jobs.len() + self.live_claims(now_ms).count()) as u32,
            can_admit,
        }
    }

    /// The `GET /v1/node` report.
    pub fn state(&self, now_ms: u64) -> NodeState {
        let types = EgressType::ALL
            .into_iter()
            .map(|t| {
                let ts = TypeState {
                    active: self.active(t),
                    limit: self.limit_of(t),
                    cost: self.cost_of(t),
                    pending_claims: self.pending(now_ms, t),
                };
                (t.as_str().to_string(), ts)
            })
            .collect();
        let mut egress_ids: Vec<String> = self.jobs.keys().cloned().collect();
        egress_ids.sort();
        let available = self.available(now_ms);
        NodeState {
            node_id: self.node_id.clone(),
            capacity_cores: self.capacity_cores,
            budget_cores: self.budget(),
            load: self.load,
            available_cpu: available.max(0.0),
            headroom_cpu: available,
            draining: self.draining,
            types,
            egress_ids,
            disk: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// 10 cores at 100%: a budget of 10. Every type costs 1 unless a test says otherwise.
    fn ledger(limits: LimitsConfig) -> Ledger {
        let cpu = CpuConfig {
            capacity: 10.0,
            max_utilization: 1.0,
            pending_hold_ms: 1000,
            ..CpuConfig::default()
        };
        let costs = CpuCostConfig {
            room_composite: 1.0,
            web: 1.0,
            participant: 1.0,
            track_composite: 1.0,
            track: 1.0,
            output: 0.1,
            encode: 1.0,
        };
        Ledger::new("ND_test".into(), 10.0, &cpu, &costs, &limits, 500)
    }

    fn set_limit(l: &mut LimitsConfig, t: EgressType, v: u32) {
        match t {
            EgressType::RoomComposite => l.max_concurrent_room_composite = v,
            EgressType::Web => l.max_concurrent_web = v,
            EgressType::Participant => l.max_concurrent_participant = v,
            EgressType::TrackComposite => l.max_concurrent_track_composite = v,
            EgressType::Track => l.max_concurrent_track = v,
        }
    }

    /// Another type than `t`, with no limit in the table test.
    fn other(t: EgressType) -> EgressType {
        if t == EgressType::Track {
            EgressType::Web
        } else {
            EgressType::Track
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Limit {
        None,
        Reached,
        Free,
    }

    #[test]
    fn decision_table() {
        for t in EgressType::ALL {
            for limit in [Limit::None, Limit::Reached, Limit::Free] {
                for cpu_full in [false, true] {
                    for draining in [false, true] {
                        for via_claim in [false, true] {
                            let mut limits = LimitsConfig::default();
                            set_limit(
                                &mut limits,
                                t,
                                match limit {
                                    Limit::None => 0,
                                    Limit::Reached => 2,
                                    Limit::Free => 3,
                                },
                            );
                            let mut l = ledger(limits);
                            let now = 10_000;
                            // Two of the type (one running, one claimed) except with a free limit.
                            l.admit(now, "EG_t1", t, 1.0, None).unwrap();
                            if limit != Limit::Free {
                                l.take_claim(now, t, 1.0).unwrap();
                            }
                            // Fill the CPU with another type: all 10 cores committed, or 8.
                            let base = if limit == Limit::Free { 1 } else { 2 };
                            let fill = if cpu_full { 10 - base } else { 8 - base };
                            for i in 0..fill {
                                l.admit(now, &format!("EG_f{i}"), other(t), 1.0, None)
                                    .unwrap();
                            }
                            l.set_draining(draining);
                            let got = if via_claim {
                                l.take_claim(now, t, 1.0).map(|_| ())
                            } else {
                                l.admit(now, "EG_new", t, 1.0, None)
                            };
                            let case = format!(
                                "{t} {limit:?} cpu_full={cpu_full} draining={draining} claim={via_claim}"
                            );
                            match (draining, limit, cpu_full) {
                                (true, _, _) => {
                                    assert_eq!(got, Err(AdmissionError::Draining), "{case}")
                                }
                                (false, Limit::Reached, _) => assert_eq!(
                                    got,
                                    Err(AdmissionError::TypeLimit {
                                        egress_type: t,
                                        active: 2,
                                        limit: 2
                                    }),
                                    "{case}"
                                ),
                                (false, _, true) => assert_eq!(
                                    got,
                                    Err(AdmissionError::Cpu {
                                        egress_type: t,
                                        needed: 1.0,
                                        available: 0.0
                                    }),
                                    "{case}"
                                ),
                                (false, _, false) => assert_eq!(got, Ok(()), "{case}"),
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_claim_is_consumed_once_and_not_counted_twice() {
        let limits = LimitsConfig {
            max_concurrent_room_composite: 1,
            ..LimitsConfig::default()
        };
        let mut l = ledger(limits);
        // Leave exactly 4 cores, then claim them.
        for i in 0..6 {
            l.admit(0, &format!("EG_f{i}"), EgressType::Track, 1.0, None)
                .unwrap();
        }
        let (id, before) = l.take_claim(0, EgressType::RoomComposite, 4.0).unwrap();
        assert_eq!(before.available_cpu, 4.0);
        assert_eq!(before.jobs, 6);
        assert_eq!(l.available(0), 0.0);
        // Without the claim the room is refused on its limit (the claim holds the only slot).
        assert!(matches!(
            l.admit(0, "EG_x", EgressType::RoomComposite, 4.0, None),
            Err(AdmissionError::TypeLimit { .. })
        ));
        // A claim of another type is ignored (and left alone).
        assert!(l.admit(0, "EG_y", EgressType::Web, 1.0, Some(&id)).is_err());
        assert!(l.claims().contains_key(&id));
        // With it, the job takes its place: slot and CPU are not counted twice.
        l.admit(0, "EG_room", EgressType::RoomComposite, 4.0, Some(&id))
            .unwrap();
        assert!(l.claims().is_empty());
        assert_eq!(l.available(0), 0.0);
        assert_eq!(l.active(EgressType::RoomComposite), 1);
        // The same claim again buys nothing.
        l.end_job("EG_f0");
        assert!(matches!(
            l.admit(0, "EG_room2", EgressType::RoomComposite, 1.0, Some(&id)),
            Err(AdmissionError::TypeLimit {
                active: 1,
                limit: 1,
                ..
            })
        ));
    }

    #[test]
    fn a_claimed_job_costing_more_than_its_claim_needs_the_difference() {
        let mut l = ledger(LimitsConfig::default());
        for i in 0..7 {
            l.admit(0, &format!("EG_f{i}"), EgressType::Track, 1.0, None)
                .unwrap();
        }
        let (id, _) = l.take_claim(0, EgressType::Participant, 2.0).unwrap();
        // 1 free + 2 claimed = 3 available to this job.
        assert!(matches!(
            l.admit(0, "EG_p", EgressType::Participant, 3.5, Some(&id)),
            Err(AdmissionError::Cpu { needed, available, .. }) if needed == 3.5 && available == 3.0
        ));
        assert!(
            l.claims().contains_key(&id),
            "a refused admit changes nothing"
        );
        l.admit(0, "EG_p", EgressType::Participant, 3.0, Some(&id))
            .unwrap();
        assert_eq!(l.available(0), 0.0);
    }

    #[test]
    fn claims_expire_after_their_ttl() {
        let mut l = ledger(LimitsConfig::default());
        let (id, _) = l.take_claim(1000, EgressType::Track, 4.0).unwrap();
        assert_eq!(l.available(1499), 6.0);
        assert_eq!(
            l.available(1500),
            10.0,
            "an expired claim holds nothing even before a sweep"
        );
        // An expired claim is not consumed: the job is checked like one without a claim.
        l.admit(1500, "EG_1", EgressType::Track, 1.0, Some(&id))
            .unwrap();
        assert!(l.claims().is_empty());
        assert_eq!(l.expire(2000), 0);
        let (_, _) = l.take_claim(2000, EgressType::Track, 1.0).unwrap();
        assert_eq!(l.expire(2499), 0);
        assert_eq!(l.expire(2500), 1);
        assert!(!l.release_claim("CL_nope"));
    }

    #[test]
    fn cost_is_held_then_measurements_count() {
        let mut l = ledger(LimitsConfig::default());
        l.admit(0, "EG_1", EgressType::Participant, 2.0, None)
            .unwrap();
        assert_eq!(l.available(0), 8.0);
        // Held: max(cost, measured).
        l.measure("EG_1", 0.5);
        assert_eq!(l.available(999), 8.0);
        l.measure("EG_1", 3.0);
        assert_eq!(l.available(999), 7.0);
        // After the hold: the measurement alone.
        assert_eq!(l.available(1000), 7.0);
        l.measure("EG_1", 0.5);
        assert_eq!(l.available(1000), 9.5);
        // Never measured: the cost.
        l.admit(0, "EG_2", EgressType::Track, 1.0, None).unwrap();
        assert_eq!(l.available(5000), 8.5);
        assert!(!l.measure("EG_nope", 1.0));
        // Measurements can push usage over the budget; admission then refuses and reports 0.
        l.measure("EG_1", 20.0);
        assert!(l.available(5000) < 0.0);
        assert_eq!(l.state(5000).available_cpu, 0.0);
        assert!(matches!(
            l.admit(5000, "EG_3", EgressType::Track, 0.1, None),
            Err(AdmissionError::Cpu { .. })
        ));
    }

    #[test]
    fn admitting_twice_is_a_no_op_and_ending_is_idempotent() {
        let mut l = ledger(LimitsConfig::default());
        l.admit(0, "EG_1", EgressType::Track, 1.0, None).unwrap();
        l.admit(0, "EG_1", EgressType::Track, 1.0, None).unwrap();
        assert_eq!(l.active(EgressType::Track), 1);
        assert_eq!(l.available(0), 9.0);
        assert!(l.end_job("EG_1"));
        assert!(!l.end_job("EG_1"));
        assert_eq!(l.available(0), 10.0);
    }

    #[test]
    fn node_state_lists_every_type() {
        let limits = LimitsConfig {
            max_concurrent_web: 2,
            ..LimitsConfig::default()
        };
        let mut l = ledger(limits);
        l.admit(0, "EG_1", EgressType::Web, 1.0, None).unwrap();
        l.take_claim(0, EgressType::Web, 1.0).unwrap();
        l.set_load(0.25);
        let s = l.state(0);
        assert_eq!(s.types.len(), 5);
        assert_eq!(
            s.types["web"],
            TypeState {
                active: 1,
                limit: 2,
                cost: 1.0,
                pending_claims: 1
            }
        );
        assert_eq!(
            s.types["track"],
            TypeState {
                active: 0,
                limit: 0,
                cost: 1.0,
                pending_claims: 0
            }
        );
        assert_eq!(
            (s.available_cpu, s.load, s.capacity_cores, s.draining),
            (8.0, 0.25, 10.0, false)
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["types"]["web"]["pending_claims"], 1);
    }

    #[test]
    fn insane_costs_count_as_nothing() {
        let mut l = ledger(LimitsConfig::default());
        l.admit(0, "EG_1", EgressType::Track, -5.0, None).unwrap();
        l.admit(0, "EG_2", EgressType::Track, f64::NAN, None)
            .unwrap();
        assert_eq!(l.available(0), 10.0);
    }

    // ---- property test over random interleavings -------------------------------------------

    #[derive(Debug, Clone)]
    enum Op {
        Claim(EgressType, f64),
        AdmitWithClaim(usize, EgressType, f64),
        AdmitWithout(EgressType, f64),
        Release(usize),
        Expire,
        End(usize),
        Measure(usize, f64),
        Advance(u64),
        Drain(bool),
    }

    fn any_type() -> impl Strategy<Value = EgressType> {
        prop::sample::select(EgressType::ALL.to_vec())
    }

    fn any_op() -> impl Strategy<Value = Op> {
        let cost = prop_oneof![Just(0.0), 0.1f64..3.0, Just(4.0)];
        prop_oneof![
            3 => (any_type(), cost.clone()).prop_map(|(t, c)| Op::Claim(t, c)),
            3 => (any::<usize>(), any_type(), cost.clone()).prop_map(|(i, t, c)| Op::AdmitWithClaim(i, t, c)),
            2 => (any_type(), cost).prop_map(|(t, c)| Op::AdmitWithout(t, c)),
            1 => any::<usize>().prop_map(Op::Release),
            1 => Just(Op::Expire),
            2 => any::<usize>().prop_map(Op::End),
            2 => (any::<usize>(), 0.0f64..6.0).prop_map(|(i, c)| Op::Measure(i, c)),
            2 => (0u64..800).prop_map(Op::Advance),
            1 => prop::bool::weighted(0.2).prop_map(Op::Drain),
        ]
    }

    fn any_limits() -> impl Strategy<Value = LimitsConfig> {
        prop::collection::vec(0u32..4, 5).prop_map(|v| LimitsConfig {
            max_concurrent_room_composite: v[0],
            max_concurrent_web: v[1],
            max_concurrent_participant: v[2],
            max_concurrent_track_composite: v[3],
            max_concurrent_track: v[4],
        })
    }

    fn pick<T: Clone>(v: &[T], i: usize) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[i % v.len()].clone())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn invariants_hold_over_any_interleaving(
            limits in any_limits(),
            capacity in 1.0f64..16.0,
            util in 0.3f64..=1.0,
            ops in prop::collection::vec(any_op(), 1..120),
        ) {
            let cpu = CpuConfig { capacity, max_utilization: util, pending_hold_ms: 1000, ..CpuConfig::default() };
            let mut l = Ledger::new("ND_p".into(), capacity, &cpu, &CpuCostConfig::default(), &limits, 500);
            let mut now = 1_000u64;
            let mut issued: Vec<String> = Vec::new();
            let mut seen: HashSet<String> = HashSet::new();
            let mut consumed: HashSet<String> = HashSet::new();
            let mut jobs: Vec<String> = Vec::new();
            let mut n = 0;
            for op in ops {
                match op {
                    Op::Claim(t, c) => {
                        if let Ok((id, before)) = l.take_claim(now, t, c) {
                            prop_assert!(seen.insert(id.clone()), "claim id {id} issued twice");
                            prop_assert!((before.available_cpu - c - l.available(now)).abs() < 1e-6);
                            prop_assert!(l.committed(now) <= l.budget() + 1e-6, "claim over budget");
                            issued.push(id);
                        }
                    }
                    Op::AdmitWithClaim(i, t, c) => {
                        let Some(id) = pick(&issued, i) else { continue };
                        let live = l.claims().get(&id).is_some_and(|p| now < p.expires_at_ms);
                        let was_live = live && l.claims()[&id].egress_type == t;
                        n += 1;
                        let egress_id = format!("EG_{n}");
                        let res = l.admit(now, &egress_id, t, c, Some(&id));
                        if res.is_ok() {
                            jobs.push(egress_id);
                            prop_assert!(l.committed(now) <= l.budget() + 1e-6, "admit over budget");
                            if was_live {
                                prop_assert!(consumed.insert(id.clone()), "claim {id} consumed twice");
                                prop_assert!(!l.claims().contains_key(&id));
                            } else {
                                // Unknown, expired or of another type: left alone.
                                prop_assert_eq!(l.claims().contains_key(&id), live);
                            }
                        } else {
                            // A refused admit changes nothing.
                            prop_assert_eq!(l.claims().contains_key(&id), live);
                            prop_assert!(!l.jobs().contains_key(&egress_id));
                        }
                    }
                    Op::AdmitWithout(t, c) => {
                        n += 1;
                        let egress_id = format!("EG_{n}");
                        if l.admit(now, &egress_id, t, c, None).is_ok() {
                            jobs.push(egress_id);
                            prop_assert!(l.committed(now) <= l.budget() + 1e-6, "admit over budget");
                        }
                    }
                    Op::Release(i) => {
                        if let Some(id) = pick(&issued, i) {
                            l.release_claim(&id);
                            l.release_claim(&id);
                            prop_assert!(!l.claims().contains_key(&id));
                        }
                    }
                    Op::Expire => {
                        l.expire(now);
                        prop_assert!(l.claims().values().all(|c| now < c.expires_at_ms));
                    }
                    Op::End(i) => {
                        if let Some(id) = pick(&jobs, i) {
                            l.end_job(&id);
                            l.end_job(&id);
                            prop_assert!(!l.jobs().contains_key(&id));
                        }
                    }
                    Op::Measure(i, c) => {
                        if let Some(id) = pick(&jobs, i) {
                            l.measure(&id, c);
                        }
                    }
                    Op::Advance(dt) => now += dt,
                    Op::Drain(d) => l.set_draining(d),
                }
                for t in EgressType::ALL {
                    let limit = l.limit_of(t);
                    if limit > 0 {
                        prop_assert!(l.active(t) + l.pending(now, t) <= limit, "{t} above its limit");
                    }
                }
                let s = l.state(now);
                prop_assert!(s.available_cpu >= 0.0);
                prop_assert_eq!(s.types.values().map(|t| t.active as usize).sum::<usize>(), l.jobs().len());
                for j in l.jobs().values() {
                    // A held job never counts less than its cost.
                    if now < j.started_at_ms + 1000 {
                        prop_assert!(j.reserved(now, 1000) >= j.cost);
                    }
                }
            }
        }
    }
}
