//! Fleet-wide placement of one egress: ask every live node for its affinity, start the job on the
//! best one, fall back to the next best, and retry a whole round when a burst of concurrent
//! placements is what filled the nodes.
//!
//! ```text
//!  POST /v1/egress (any node)
//!    validate locally (a 400 never fans out), new egress id
//!    ┌─ round ──────────────────────────────────────────────────────────────────────────┐
//!    │ live nodes (Redis) ──GET /v1/affinity──► every node at once (each takes a claim)  │
//!    │ wait for every answer or fleet.affinity_timeout_ms                               │
//!    │ rank: score >= 0, descending, equal scores in random order                       │
//!    │ POST /v1/affinity/release to every loser at once                                 │
//!    │ (all of the above under the fleet's decision lock in Redis, so decisions do not   │
//!    │ overlap: the next one sees only this one's winning claim)                         │
//!    │ POST /v1/node/egress {egress_id, claim_id} to the best; refused/unreachable:     │
//!    │   next best without a claim (admission checks again there)                       │
//!    └─ nobody placed it: retry the round after a few random ms if refusals were due to ┘
//!       other placers' pending claims (bounded: ROUND_LIMIT rounds, RETRY_BUDGET)
//! ```
//!
//! The egress id is fixed before the first round, so every retry starts the same egress: the
//! owner key (`records.rs`) guarantees that at most one node ever runs it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use slog::debug;

use crate::error::{AdmissionError, ApiError, RequestError};
use crate::fleet::Fleet;
use crate::fleet::client::{self, CallError, NodeStart, RemoteError, Target};
use crate::fleet::records::DISOWN;
use crate::fleet::registry::{NodeRecord, NodeReport};
use crate::metrics::METRICS;
use crate::model::{EgressInfo, EgressRequest, EgressType, ValidationContext, new_egress_id};
use crate::service::AppState;

/// The fleet's placement decision lock (see `fleet.decision_lock_ms`).
pub const DECISION_LOCK_KEY: &str = "egress:placement:lock";
/// Longest pause between two tries for the decision lock, in microseconds (plus as much jitter).
const MAX_LOCK_PAUSE_US: u64 = 2000;
/// Most rounds one placement runs.
pub const ROUND_LIMIT: u32 = 16;
/// A new round is not started past this (from the start of the placement).
pub const RETRY_BUDGET: Duration = Duration::from_secs(2);
/// Longest pause between rounds.
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// How long the chosen node may take to admit and launch the egress.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Claim releases and node-state reads are small; they get this long.
const SMALL_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// A node that answered with a score (it holds a claim for this request).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub node_id: String,
    pub url: String,
    pub score: f64,
    pub claim_id: Option<String>,
}

/// Candidates that can take the job, best first; equal scores in random order (never by the
/// order in which answers arrived). Negative and non-finite scores are dropped.
pub fn rank<R: Rng + ?Sized>(mut cands: Vec<Candidate>, rng: &mut R) -> Vec<Candidate> {
    cands.retain(|c| c.score.is_finite() && c.score >= 0.0);
    cands.shuffle(rng);
    // Stable: the shuffle decides among equal scores.
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    cands
}

/// Why a node would not take the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    Cpu,
    TypeLimit,
    Draining,
    /// Anything else a node gave as its reason (e.g. its actors do not answer).
    Other,
}

impl Refusal {
    pub fn parse(reason: Option<&str>) -> Refusal {
        match reason {
            Some("cpu") => Refusal::Cpu,
            Some("type_limit") => Refusal::TypeLimit,
            Some("draining") => Refusal::Draining,
            _ => Refusal::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Cpu => "cpu",
            Refusal::TypeLimit => "type_limit",
            Refusal::Draining => "draining",
            Refusal::Other => "unavailable",
        }
    }
}

/// The reason most nodes gave (ties: cpu, then type_limit, then draining); None without refusals.
pub fn dominant(refusals: &[Refusal]) -> Option<Refusal> {
    let mut counts: BTreeMap<Refusal, usize> = BTreeMap::new();
    for r in refusals {
        *counts.entry(*r).or_default() += 1;
    }
    // max_by_key keeps the last maximum; iterate in reverse order of preference.
    counts
        .into_iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .map(|(r, _)| r)
}

/// "2 nodes refused (cpu: 1, draining: 1)".
pub fn describe(refusals: &[Refusal]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in refusals {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let n = refusals.len();
    format!(
        "{n} node{} refused ({})",
        if n == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// What a round that placed nothing saw, for the retry decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundReport {
    /// Nodes that answered -1: why, and the claims they held for such jobs when asked again
    /// (pending claims of the type for `type_limit`, of every type for `cpu`; None = unknown).
    pub refused: Vec<(Refusal, Option<u32>)>,
    /// Starts on a ranked node that failed in a way that may pass (refused by admission after
    /// the claim was gone, node unreachable or timed out).
    pub transient_failures: u32,
    /// Nodes that did not answer the affinity request in time (alive but busy, perhaps).
    pub timeouts: u32,
}

/// Whether to run another round, and after how long. A refusal is worth a retry only while the
/// refusing node holds claims of other placements (they are released or consumed within
/// milliseconds); a fleet that is simply full, or draining, is answered at once.
/// `jitter` is uniform in [0, 1): concurrent placers must not retry in lockstep.
pub fn retry_after(
    report: &RoundReport,
    round: u32,
    elapsed: Duration,
    jitter: f64,
) -> Option<Duration> {
    let claims_in_the_way = report.refused.iter().any(|(why, pending)| {
        matches!(why, Refusal::Cpu | Refusal::TypeLimit) && pending.unwrap_or(0) > 0
    });
    let may_pass = claims_in_the_way || report.transient_failures > 0 || report.timeouts > 0;
    if !may_pass || round >= ROUND_LIMIT {
        return None;
    }
    let base_us = 1000.0 + 4000.0 * jitter.clamp(0.0, 1.0);
    let backoff =
        Duration::from_micros((base_us * f64::from(round.max(1))) as u64).min(MAX_BACKOFF);
    (elapsed + backoff <= RETRY_BUDGET).then_some(backoff)
}

/// A placed egress and how long placing it took.
#[derive(Debug, Clone)]
pub struct Placement {
    pub info: EgressInfo,
    /// From the request to the choice of the node that took the job.
    pub decide: Duration,
    /// From the request to the chosen node's answer.
    pub total: Duration,
    pub rounds: u32,
    /// Start requests sent (1 when the best node took it).
    pub attempts: u32,
}

impl Placement {
    /// A `Server-Timing` header value: `decide;dur=0.84, total;dur=3.10` (milliseconds).
    pub fn server_timing(&self) -> String {
        format!(
            "decide;dur={:.3}, total;dur={:.3}",
            self.decide.as_secs_f64() * 1000.0,
            self.total.as_secs_f64() * 1000.0
        )
    }
}

/// How one start request ended.
enum StartOutcome {
    Placed(EgressInfo),
    /// Refused by admission (no claim any more, or the claim lapsed).
    Refused(Refusal),
    /// `client_error`: a 4xx the client should see if no node takes the job (the node's config
    /// differs from the placer's, e.g. its allowed schemes, or its output file exists).
    Failed {
        transient: bool,
        message: String,
        client_error: Option<RemoteError>,
    },
    /// Stop the whole placement with this answer.
    Fatal(ApiError),
}

/// Who owns an egress id that a node refused as `already_placed`.
enum Owner {
    /// It runs there: this is its record.
    Placed(Box<EgressInfo>),
    /// Nobody live holds it any more: start it again.
    Free,
}

impl Fleet {
    /// See the module doc.
    pub(crate) async fn place_egress(
        &self,
        state: &AppState,
        req: EgressRequest,
    ) -> Result<Placement, ApiError> {
        let t0 = Instant::now();
        let egress_id = new_egress_id();
        let cfg = &state.cfg;
        let ctx = ValidationContext {
            output_dir: &state.output_dir,
            state_dir: &cfg.storage.state_dir,
            allowed_schemes: &cfg.sources.allowed_schemes,
        };
        let egress_type = req.validate(&egress_id, &ctx)?.egress_type;
        let affinity_timeout = Duration::from_millis(self.cfg.affinity_timeout_ms);
        let token = self.token.as_str();
        let mut attempts = 0u32;
        let mut round = 0u32;
        loop {
            round += 1;
            // One decision at a time fleet-wide: the winner's claim is the only one left when
            // the next placement asks, so a burst is placed as evenly as one request at a time.
            let lock = self.lock_decisions().await;
            let nodes = match self.live_nodes().await {
                Ok(n) if !n.is_empty() => n,
                other => {
                    self.unlock_decisions(lock).await;
                    METRICS
                        .placements_total
                        .with_label_values(&["failed"])
                        .inc();
                    return Err(other.err().unwrap_or_else(|| {
                        ApiError::Unavailable("no live node is registered in the fleet".into())
                    }));
                }
            };
            let answers = futures_util::future::join_all(nodes.iter().map(|n| {
                client::affinity(
                    Target { url: &n.url, token },
                    egress_type.as_str(),
                    req.estimated_cpu,
                    affinity_timeout,
                )
            }))
            .await;
            let mut cands = Vec::new();
            let mut refused: Vec<(Refusal, &NodeRecord)> = Vec::new();
            let mut silent: Vec<String> = Vec::new();
            let mut timeouts = 0u32;
            for (n, a) in nodes.iter().zip(answers) {
                match a {
                    Ok(a) if a.score.is_finite() && a.score >= 0.0 => cands.push(Candidate {
                        node_id: n.node_id.clone(),
                        url: n.url.clone(),
                        score: a.score,
                        claim_id: a.claim_id,
                    }),
                    Ok(a) => refused.push((Refusal::parse(a.reason.as_deref()), n)),
                    Err(e) => {
                        timeouts += u32::from(matches!(e, CallError::Timeout(_)));
                        silent.push(format!("{}: {e}", n.node_id));
                    }
                }
            }
            let ranked = rank(cands, &mut rand::rng());
            if lock.is_some() {
                // Released before the lock is: the next decision must not see them.
                futures_util::future::join_all(ranked.iter().skip(1).map(|l| self.release_now(l)))
                    .await;
            } else {
                for loser in ranked.iter().skip(1) {
                    self.release_later(loser);
                }
            }
            self.unlock_decisions(lock).await;
            let mut report = RoundReport {
                timeouts,
                ..RoundReport::default()
            };
            let mut start_refusals = Vec::new();
            let mut failures: Vec<String> = Vec::new();
            let mut client_errors: Vec<RemoteError> = Vec::new();
            for (i, cand) in ranked.iter().enumerate() {
                let decide = t0.elapsed();
                let claim = if i == 0 { cand.claim_id.clone() } else { None };
                attempts += 1;
                if attempts > 1 {
                    METRICS
                        .placements_total
                        .with_label_values(&["retried"])
                        .inc();
                }
                match self.start_on(cand, &egress_id, claim, &req).await {
                    StartOutcome::Placed(info) => {
                        let p = Placement {
                            info,
                            decide,
                            total: t0.elapsed(),
                            rounds: round,
                            attempts,
                        };
                        METRICS
                            .placements_total
                            .with_label_values(&["placed"])
                            .inc();
                        debug!(self.log, "placed"; "egress_id" => &egress_id, "on" => &p.info.node_id,
                               "score" => cand.score, "decide_ms" => p.decide.as_secs_f64() * 1000.0,
                               "total_ms" => p.total.as_secs_f64() * 1000.0, "rounds" => round,
                               "attempts" => attempts, "nodes" => nodes.len(), "candidates" => ranked.len());
                        return Ok(p);
                    }
                    StartOutcome::Refused(why) => {
                        start_refusals.push(why);
                        report.transient_failures += 1;
                    }
                    StartOutcome::Failed {
                        transient,
                        message,
                        client_error,
                    } => {
                        failures.push(format!("{}: {message}", cand.node_id));
                        report.transient_failures += u32::from(transient);
                        client_errors.extend(client_error);
                    }
                    StartOutcome::Fatal(e) => {
                        METRICS
                            .placements_total
                            .with_label_values(&["failed"])
                            .inc();
                        return Err(e);
                    }
                }
                if i == 0 {
                    // Not consumed (refused) or unknown (no answer): give it back either way.
                    self.release_later(cand);
                }
            }
            // Nobody took it. Were the refusals due to other placements' pending claims?
            let states =
                futures_util::future::join_all(refused.iter().map(|(why, n)| async move {
                    match why {
                        Refusal::Cpu | Refusal::TypeLimit => {
                            client::node_state(Target { url: &n.url, token }, SMALL_CALL_TIMEOUT)
                                .await
                                .ok()
                                .and_then(|v| serde_json::from_value::<NodeReport>(v).ok())
                        }
                        _ => None,
                    }
                }))
                .await;
            report.refused = refused
                .iter()
                .zip(states)
                .map(|((why, _), st)| {
                    let pending = st.map(|s| match why {
                        Refusal::TypeLimit => s
                            .types
                            .get(egress_type.as_str())
                            .map(|t| t.pending_claims)
                            .unwrap_or(0),
                        _ => s.pending_claims(),
                    });
                    (*why, pending)
                })
                .collect();
            let jitter: f64 = rand::rng().random();
            if let Some(backoff) = retry_after(&report, round, t0.elapsed(), jitter) {
                METRICS
                    .placements_total
                    .with_label_values(&["retried"])
                    .inc();
                debug!(self.log, "placement round placed nothing: retrying"; "egress_id" => &egress_id,
                       "round" => round, "backoff_ms" => backoff.as_secs_f64() * 1000.0,
                       "refused" => describe(&report.refused.iter().map(|r| r.0).collect::<Vec<_>>()),
                       "failures" => failures.join("; "));
                tokio::time::sleep(backoff).await;
                continue;
            }
            METRICS
                .placements_total
                .with_label_values(&["failed"])
                .inc();
            let mut all: Vec<Refusal> = refused.iter().map(|r| r.0).collect();
            all.extend(start_refusals);
            debug!(self.log, "placement failed"; "egress_id" => &egress_id, "rounds" => round,
                   "ms" => t0.elapsed().as_secs_f64() * 1000.0, "refused" => describe(&all),
                   "failures" => failures.join("; "), "silent" => silent.join("; "));
            if all.is_empty()
                && let Some(r) = client_errors.pop()
            {
                return Err(client_error(r));
            }
            return Err(final_error(
                egress_type,
                &all,
                &failures,
                &silent,
                nodes.len(),
            ));
        }
    }

    /// Starts the egress on one ranked node; settles an `already_placed` answer.
    async fn start_on(
        &self,
        cand: &Candidate,
        egress_id: &str,
        mut claim_id: Option<String>,
        req: &EgressRequest,
    ) -> StartOutcome {
        let target = Target {
            url: &cand.url,
            token: &self.token,
        };
        // An owner that vanished lets the id be started again; twice is plenty.
        for _ in 0..3 {
            let body = NodeStart {
                egress_id: egress_id.to_string(),
                claim_id: claim_id.take(),
                request: req.clone(),
            };
            match client::start(target, &body, START_TIMEOUT).await {
                Ok(info) => return StartOutcome::Placed(info),
                Err(CallError::Remote(r)) if r.code == "already_placed" => {
                    match self
                        .resolve_owner(egress_id, r.owner.as_deref().unwrap_or(""))
                        .await
                    {
                        Ok(Owner::Placed(info)) => return StartOutcome::Placed(*info),
                        Ok(Owner::Free) => continue,
                        Err(e) => return StartOutcome::Fatal(e),
                    }
                }
                Err(CallError::Remote(r)) if r.status == 503 && r.reason.is_some() => {
                    return StartOutcome::Refused(Refusal::parse(r.reason.as_deref()));
                }
                Err(CallError::Remote(r)) => {
                    // 5xx: the node is shutting down or cannot reach Redis; 4xx: its config differs.
                    return StartOutcome::Failed {
                        transient: r.status >= 500,
                        message: format!("{} {}: {}", r.status, r.code, r.message),
                        client_error: (400..500).contains(&r.status).then_some(*r),
                    };
                }
                Err(e) => {
                    return StartOutcome::Failed {
                        transient: true,
                        message: e.to_string(),
                        client_error: None,
                    };
                }
            }
        }
        StartOutcome::Failed {
            transient: true,
            message: format!("the owner of {egress_id} kept changing"),
            client_error: None,
        }
    }

    /// A node refused to start `egress_id` because `owner` holds it. Either the owner runs it
    /// (its record appears), or it gives the id up (refused, or stops being live): wait for one
    /// of the two, at most until a dead owner's registration has expired.
    async fn resolve_owner(&self, egress_id: &str, owner_hint: &str) -> Result<Owner, ApiError> {
        let limit = Duration::from_millis(self.cfg.node_ttl_ms + self.cfg.heartbeat_ms)
            + Duration::from_secs(1);
        let deadline = Instant::now() + limit;
        debug!(self.log, "egress id held by another node: waiting for it to start or give it up";
               "egress_id" => egress_id, "owner" => owner_hint);
        loop {
            let (record, owner, owner_live) = self.ownership(egress_id).await?;
            if let (Some(info), Some(o)) = (&record, &owner)
                && &info.node_id == o
            {
                return Ok(Owner::Placed(Box::new(info.clone())));
            }
            let Some(owner) = owner.filter(|_| owner_live) else {
                return Ok(Owner::Free);
            };
            if Instant::now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "egress {egress_id} is held by node {owner}, which neither starts it nor gives it up; \
                     GET /v1/egress/{egress_id} later"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes the fleet's decision lock (`fleet.decision_lock_ms`); None when it is off, or when
    /// Redis does not grant it within the retry budget (then decisions overlap, nothing fails).
    async fn lock_decisions(&self) -> Option<String> {
        if self.cfg.decision_lock_ms == 0 {
            return None;
        }
        let token = format!("{}:{}", self.node_id, rand::rng().random::<u64>());
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut redis = self.redis.clone();
        let mut pause_us = 500u64;
        loop {
            let got: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(DECISION_LOCK_KEY)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(self.cfg.decision_lock_ms)
                .query_async(&mut redis)
                .await;
            match got {
                Ok(Some(_)) => return Some(token),
                Ok(None) if Instant::now() < deadline => {}
                Ok(None) => {
                    debug!(
                        self.log,
                        "decision lock busy past the retry budget: deciding without it"
                    );
                    return None;
                }
                Err(e) => {
                    debug!(self.log, "decision lock unavailable: deciding without it"; "error" => %e);
                    return None;
                }
            }
            // Short, growing, jittered pauses: waiters neither hammer Redis nor queue in lockstep.
            let jitter = rand::rng().random_range(0..=pause_us);
            tokio::time::sleep(Duration::from_micros(pause_us + jitter)).await;
            pause_us = (pause_us * 2).min(MAX_LOCK_PAUSE_US);
        }
    }

    async fn unlock_decisions(&self, token: Option<String>) {
        let Some(token) = token else { return };
        let mut redis = self.redis.clone();
        let r: redis::RedisResult<i64> = DISOWN
            .key(DECISION_LOCK_KEY)
            .arg(&token)
            .invoke_async(&mut redis)
            .await;
        if let Err(e) = r {
            // It expires on its own after fleet.decision_lock_ms.
            debug!(self.log, "cannot release the decision lock"; "error" => %e);
        }
    }

    /// Gives a loser's claim back and waits for the answer (under the decision lock).
    async fn release_now(&self, cand: &Candidate) {
        let Some(claim) = cand.claim_id.as_deref() else {
            return;
        };
        if let Err(e) = client::release(
            Target {
                url: &cand.url,
                token: &self.token,
            },
            claim,
            SMALL_CALL_TIMEOUT,
        )
        .await
        {
            debug!(self.log, "cannot release a claim"; "claim_id" => claim, "url" => &cand.url, "error" => %e);
        }
    }

    /// Gives a loser's (or a failed winner's) claim back without waiting for the answer.
    fn release_later(&self, cand: &Candidate) {
        let Some(claim) = cand.claim_id.clone() else {
            return;
        };
        let url = cand.url.clone();
        let token = self.token.clone();
        let log = self.log.clone();
        actix_rt::spawn(async move {
            if let Err(e) = client::release(
                Target {
                    url: &url,
                    token: &token,
                },
                &claim,
                SMALL_CALL_TIMEOUT,
            )
            .await
            {
                // It expires on its own after affinity.pending_claim_ttl_ms.
                debug!(log, "cannot release a claim"; "claim_id" => &claim, "url" => &url, "error" => %e);
            }
        });
    }
}

/// A node's 4xx answer to the start, as this node's own error.
fn client_error(r: RemoteError) -> ApiError {
    let strip = |m: &str, f: &str| m.strip_prefix(&format!("{f}: ")).unwrap_or(m).to_string();
    match (r.status, r.code.as_str()) {
        (400, "invalid_field") => {
            let field = r.field.unwrap_or_default();
            let message = strip(&r.message, &field);
            ApiError::BadRequest(RequestError::Invalid { field, message })
        }
        (400, "unknown_type") => ApiError::BadRequest(RequestError::UnknownType(r.message)),
        (400, "unsupported") => ApiError::BadRequest(RequestError::Unsupported(r.message)),
        (400, "scheme_not_allowed") => {
            ApiError::BadRequest(RequestError::SchemeNotAllowed(r.message))
        }
        (409, "output_exists") => ApiError::OutputExists(r.message),
        (409, _) => ApiError::Conflict(r.message),
        (s, code) => ApiError::Unavailable(format!(
            "the chosen node answered {s} {code}: {}",
            r.message
        )),
    }
}

/// The answer when no round placed the job.
fn final_error(
    egress_type: EgressType,
    refusals: &[Refusal],
    failures: &[String],
    silent: &[String],
    nodes: usize,
) -> ApiError {
    match dominant(refusals) {
        Some(reason) if reason != Refusal::Other => {
            let mut detail = format!("{} of {nodes} live", describe(refusals));
            if !silent.is_empty() || !failures.is_empty() {
                detail.push_str(&format!(
                    ", {} did not answer or failed",
                    silent.len() + failures.len()
                ));
            }
            ApiError::NoCapacity(AdmissionError::NoNode {
                egress_type,
                reason: reason.as_str(),
                detail,
            })
        }
        _ => {
            let mut why: Vec<String> = failures.to_vec();
            why.extend(silent.iter().cloned());
            ApiError::Unavailable(format!(
                "no node of the fleet ({nodes} live) could start the egress: {}",
                if why.is_empty() {
                    describe(refusals)
                } else {
                    why.join("; ")
                }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashMap;

    fn cand(id: &str, score: f64) -> Candidate {
        Candidate {
            node_id: id.into(),
            url: format!("http://{id}"),
            score,
            claim_id: Some(format!("CL_{id}")),
        }
    }

    #[test]
    fn rank_orders_by_score_and_drops_refusals() {
        let mut rng = StdRng::seed_from_u64(7);
        let ranked = rank(
            vec![
                cand("a", 0.2),
                cand("b", -1.0),
                cand("c", 0.9),
                cand("d", f64::NAN),
                cand("e", 0.5),
                cand("f", 0.0),
            ],
            &mut rng,
        );
        let ids: Vec<_> = ranked.iter().map(|c| c.node_id.as_str()).collect();
        assert_eq!(ids, vec!["c", "e", "a", "f"]);
    }

    #[test]
    fn equal_scores_are_broken_at_random_not_by_arrival() {
        // Four nodes tie at the top, one is worse: each tied node wins about a quarter of the
        // time whatever its position in the answers, and the worse one is never first.
        let mut rng = StdRng::seed_from_u64(42);
        let mut wins: HashMap<String, u32> = HashMap::new();
        let n = 8000;
        for _ in 0..n {
            let answers = vec![
                cand("a", 0.5),
                cand("b", 0.5),
                cand("low", 0.25),
                cand("c", 0.5),
                cand("d", 0.5),
            ];
            let ranked = rank(answers, &mut rng);
            assert_eq!(ranked[4].node_id, "low");
            *wins.entry(ranked[0].node_id.clone()).or_default() += 1;
        }
        for id in ["a", "b", "c", "d"] {
            let share = f64::from(wins[id]) / f64::from(n);
            assert!(
                (share - 0.25).abs() < 0.03,
                "{id} won {share:.3} of the time: {wins:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn rank_is_a_sorted_permutation_of_the_candidates(
            scores in proptest::collection::vec(
                proptest::prop_oneof![proptest::strategy::Just(-1.0), 0.0f64..=1.0, proptest::strategy::Just(0.5)],
                0..12,
            ),
            seed: u64,
        ) {
            use proptest::prelude::*;
            let cands: Vec<_> = scores.iter().enumerate().map(|(i, s)| cand(&format!("n{i}"), *s)).collect();
            let ranked = rank(cands, &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(ranked.len(), scores.iter().filter(|s| **s >= 0.0).count());
            prop_assert!(ranked.windows(2).all(|w| w[0].score >= w[1].score));
            let mut ids: Vec<_> = ranked.iter().map(|c| c.node_id.clone()).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), ranked.len());
        }
    }

    #[test]
    fn dominant_reason_and_its_ties() {
        use Refusal::*;
        assert_eq!(dominant(&[]), None);
        assert_eq!(dominant(&[Draining, Cpu, Draining]), Some(Draining));
        assert_eq!(dominant(&[TypeLimit, Cpu]), Some(Cpu));
        assert_eq!(dominant(&[Draining, TypeLimit]), Some(TypeLimit));
        assert_eq!(
            describe(&[Cpu, Draining, Cpu]),
            "3 nodes refused (cpu: 2, draining: 1)"
        );
    }

    #[test]
    fn retry_decision() {
        use Refusal::*;
        let ms = Duration::from_millis;
        let report = |refused: Vec<(Refusal, Option<u32>)>, transient_failures| RoundReport {
            refused,
            transient_failures,
            timeouts: 0,
        };
        // (report, round, elapsed, retries?)
        let table = [
            // A full fleet with no claims in the way: answer at once.
            (
                report(vec![(Cpu, Some(0)), (TypeLimit, Some(0))], 0),
                1,
                ms(0),
                false,
            ),
            // Unknown pending claims (the node did not answer): no retry on that alone.
            (report(vec![(Cpu, None)], 0), 1, ms(0), false),
            // Draining never passes, claims or not.
            (report(vec![(Draining, Some(3))], 0), 1, ms(0), false),
            // Other placements hold claims: a burst.
            (
                report(vec![(Cpu, Some(0)), (Cpu, Some(2))], 0),
                1,
                ms(0),
                true,
            ),
            (report(vec![(TypeLimit, Some(1))], 0), 3, ms(100), true),
            // A start that failed but may pass (refused without a claim, node unreachable).
            (report(vec![], 1), 1, ms(0), true),
            // A node that did not answer in time may answer the next round.
            (
                RoundReport {
                    timeouts: 1,
                    ..report(vec![(Cpu, Some(0))], 0)
                },
                1,
                ms(0),
                true,
            ),
            // Bounded in rounds and time.
            (report(vec![(Cpu, Some(2))], 0), ROUND_LIMIT, ms(0), false),
            (report(vec![(Cpu, Some(2))], 0), 2, RETRY_BUDGET, false),
        ];
        for (i, (r, round, elapsed, want)) in table.into_iter().enumerate() {
            assert_eq!(
                retry_after(&r, round, elapsed, 0.5).is_some(),
                want,
                "case {i}: {r:?}"
            );
        }
        // Backoff: a few random ms, growing with the round, capped.
        let r = report(vec![(Cpu, Some(1))], 0);
        assert_eq!(retry_after(&r, 1, ms(0), 0.0), Some(ms(1)));
        assert_eq!(
            retry_after(&r, 1, ms(0), 0.999_999),
            Some(Duration::from_micros(4999))
        );
        assert_eq!(retry_after(&r, 2, ms(0), 0.0), Some(ms(2)));
        assert_eq!(retry_after(&r, 15, ms(0), 1.0), Some(MAX_BACKOFF));
    }

    #[test]
    fn a_remote_client_error_keeps_its_code() {
        let r = RemoteError {
            status: 400,
            code: "invalid_field".into(),
            message: "sources[0].uri: scheme 'rtsp' is not allowed".into(),
            field: Some("sources[0].uri".into()),
            ..Default::default()
        };
        let e = client_error(r);
        assert_eq!(
            (e.code(), e.body()["error"]["field"].as_str()),
            ("invalid_field", Some("sources[0].uri"))
        );
        assert_eq!(
            e.to_string(),
            "sources[0].uri: scheme 'rtsp' is not allowed"
        );
        let e = client_error(RemoteError {
            status: 409,
            code: "output_exists".into(),
            ..Default::default()
        });
        assert_eq!(e.code(), "output_exists");
    }

    #[test]
    fn final_errors_name_the_dominant_reason() {
        let e = final_error(
            EgressType::Track,
            &[Refusal::Cpu, Refusal::Cpu, Refusal::Draining],
            &[],
            &[],
            3,
        );
        assert_eq!(
            (e.code(), e.body()["error"]["reason"].as_str()),
            ("no_capacity", Some("cpu"))
        );
        assert!(
            e.to_string()
                .contains("3 nodes refused (cpu: 2, draining: 1) of 3 live"),
            "{e}"
        );
        let e = final_error(EgressType::Track, &[Refusal::Draining], &[], &[], 1);
        assert_eq!(
            (e.code(), e.body()["error"]["reason"].as_str()),
            ("no_capacity", Some("draining"))
        );
        let e = final_error(
            EgressType::Track,
            &[],
            &["ND_a: unreachable".into()],
            &[],
            1,
        );
        assert_eq!(e.code(), "unavailable");
        assert!(e.to_string().contains("ND_a: unreachable"), "{e}");
    }
}
