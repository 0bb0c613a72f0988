//! Fleet-wide placement of one egress: one Redis script ranks every live node and reserves the
//! best for the job (`reservations.rs`), the job is started there, a node that refuses is dropped
//! for the next best, and a whole round is retried when a burst of concurrent placements is what
//! filled the nodes.
//!
//! ```text
//!  POST /v1/egress (any node)
//!    validate locally (a 400 never fans out), new egress id
//!    ┌─ round ──────────────────────────────────────────────────────────────────────────┐
//!    │ EVALSHA place: every live node's published state + reservations of placements   │
//!    │   still starting, scored with this node's affinity mode, equal scores broken at  │
//!    │   random; the best node gets a reservation (atomic: a burst sees each one)       │
//!    │ POST /v1/node/egress {egress_id} to it                                           │
//!    │   201: shorten the reservation (the node reports the job in its state from now)  │
//!    │   refused/unreachable: drop the reservation, exclude the node, EVALSHA again     │
//!    └─ nobody can take it: retry the round after a few random ms if the refusals were ┘
//!       due to other placements' claims (bounded: ROUND_LIMIT rounds, RETRY_BUDGET)
//! ```
//!
//! The egress id is fixed before the first round, so every retry starts the same egress: the
//! owner key (`records.rs`) guarantees that at most one node ever runs it.
//!
//! What is decided without I/O (a refusal's reason, whether to retry a round, who owns an id, the
//! answer when nobody took the job) is in `rules::placement`; this file does the Redis calls and
//! the starts.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use rand::Rng;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use slog::debug;

use crate::config::MIN_RESERVATION_TTL_MS;
use crate::error::{ApiError, RequestError};
use crate::fleet::client::{self, CallError, NodeStart, RemoteError, Target};
use crate::fleet::reservations::{self, Ask, Chosen, Decision, SHORTEN};
use crate::fleet::{Fleet, FleetError, REDIS_CONNECT_TIMEOUT, REDIS_RESPONSE_TIMEOUT};
use crate::metrics::METRICS;
use crate::model::{EgressInfo, EgressRequest, PLACEMENT_LOCAL, new_egress_id};
use crate::node::Node;
pub use crate::rules::placement::Refusal;
use crate::rules::placement::{Owner, RoundReport, describe, final_error, retry_after, settle};
use crate::rules::scoring::curve;

thread_local! {
    /// Each HTTP worker's own Redis connection for placement decisions; its driver runs on the
    /// worker's runtime. (One fleet per process.)
    static PLACER: RefCell<Option<MultiplexedConnection>> = const { RefCell::new(None) };
}

/// How long the chosen node may take to admit and launch the egress (the reservation lives
/// longer: `fleet.reservation_ttl_ms` >= `MIN_RESERVATION_TTL_MS`).
const START_TIMEOUT: Duration = Duration::from_secs(5);
const _: () = assert!(START_TIMEOUT.as_millis() as u64 + 1_000 <= MIN_RESERVATION_TTL_MS);

/// A placed egress and how long placing it took.
#[derive(Debug, Clone)]
pub struct Placement {
    pub info: EgressInfo,
    /// From the request to the reservation on the node that took the job.
    pub decide: Duration,
    /// Of `decide`: the round trip of the placement script that chose that node.
    pub script: Duration,
    /// From the request to the chosen node's answer.
    pub total: Duration,
    pub rounds: u32,
    /// Start requests sent (1 when the best node took it).
    pub attempts: u32,
}

impl Placement {
    /// A `Server-Timing` header value: `script;dur=0.21, decide;dur=0.84, total;dur=3.10`
    /// (milliseconds).
    pub fn server_timing(&self) -> String {
        format!(
            "script;dur={:.3}, decide;dur={:.3}, total;dur={:.3}",
            self.script.as_secs_f64() * 1000.0,
            self.decide.as_secs_f64() * 1000.0,
            self.total.as_secs_f64() * 1000.0
        )
    }
}

/// How one start request ended.
enum StartOutcome {
    Placed(Box<EgressInfo>),
    /// Refused by the node's admission (its own figures differ from what it published).
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

impl Fleet {
    /// See the module doc.
    pub(crate) async fn place_egress(
        &self,
        node: &Node,
        req: EgressRequest,
    ) -> Result<Placement, FleetError> {
        let t0 = Instant::now();
        let egress_id = new_egress_id();
        let cfg = node.config();
        // A request this node finds invalid is answered here: a 400 never fans out.
        let spec = node.validate(&req, &egress_id).map_err(ApiError::from)?;
        let egress_type = spec.egress_type;
        // Every node charges the job the same learned price when there is one (the table is
        // the fleet's); else each node its own configured cost.
        let cost = req.estimated_cpu.or_else(|| {
            node.pricer()
                .learned_price(&crate::rules::costs::CostClass::of(&spec))
        });
        let lines = curve(cfg.affinity_mode(), egress_type);
        // Known to be degraded (the last heartbeat failed): no need to wait for Redis's timeout.
        if let Some(why) = self.degraded() {
            return self.place_locally(node, req, egress_id, t0, why).await;
        }
        let mut attempts = 0u32;
        let mut round = 0u32;
        let failed = |e: FleetError| {
            METRICS
                .placements_total
                .with_label_values(&["failed"])
                .inc();
            e
        };
        loop {
            round += 1;
            let mut excluded: Vec<String> = Vec::new();
            let mut report = RoundReport::default();
            let mut start_refusals = Vec::new();
            let mut failures: Vec<String> = Vec::new();
            let mut client_errors: Vec<RemoteError> = Vec::new();
            let (refused, live) = loop {
                let ask = Ask {
                    keys: &self.keys,
                    egress_id: &egress_id,
                    egress_type: egress_type.as_str(),
                    cost,
                    curve: lines,
                    seed: rand::rng().random(),
                    ttl_ms: self.cfg.reservation_ttl_ms,
                    excluded: &excluded,
                };
                let asked = Instant::now();
                let answer = match self.decide(&ask).await {
                    Ok(a) => a,
                    // Degraded mode: with no Redis to decide, this node takes the job itself
                    // (before anything was reserved or sent anywhere, so it cannot run twice).
                    Err(e) if e.is_unreachable() && attempts == 0 && round == 1 => {
                        let why = format!("the fleet's Redis does not answer: {e}");
                        return self.place_locally(node, req, egress_id, t0, why).await;
                    }
                    Err(e) => return Err(failed(e)),
                };
                let script = asked.elapsed();
                let chosen = match answer.decision {
                    Decision::Reserved(c) => c,
                    Decision::Nobody(refused) => break (refused, answer.live),
                };
                let decide = t0.elapsed();
                attempts += 1;
                if attempts > 1 {
                    METRICS
                        .placements_total
                        .with_label_values(&["retried"])
                        .inc();
                }
                match self.start_on(node, &chosen, &egress_id, &req).await {
                    StartOutcome::Placed(info) => {
                        if info.node_id == chosen.node_id {
                            self.shorten_later(&chosen.node_id, &egress_id);
                        } else {
                            // An earlier attempt's node runs it after all.
                            self.drop_reservation(&chosen.node_id, &egress_id).await;
                        }
                        let p = Placement {
                            info: *info,
                            decide,
                            script,
                            total: t0.elapsed(),
                            rounds: round,
                            attempts,
                        };
                        METRICS
                            .placements_total
                            .with_label_values(&["placed"])
                            .inc();
                        debug!(self.log, "placed"; "egress_id" => &egress_id, "on" => &p.info.node_id,
                               "score" => chosen.score, "decide_ms" => p.decide.as_secs_f64() * 1000.0,
                               "total_ms" => p.total.as_secs_f64() * 1000.0, "rounds" => round,
                               "attempts" => attempts, "live" => answer.live);
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
                        failures.push(format!("{}: {message}", chosen.node_id));
                        report.transient_failures += u32::from(transient);
                        client_errors.extend(client_error);
                    }
                    StartOutcome::Fatal(e) => {
                        self.drop_reservation(&chosen.node_id, &egress_id).await;
                        return Err(failed(e.into()));
                    }
                }
                // Given back at once, so the next decision (this one's or anyone's) sees it.
                self.drop_reservation(&chosen.node_id, &egress_id).await;
                excluded.push(chosen.node_id);
            };
            if live == 0 {
                return Err(failed(
                    ApiError::Unavailable("no live node is registered in the fleet".into()).into(),
                ));
            }
            // Nobody took it. Were the refusals due to other placements' claims?
            report.refused = refused.iter().map(|r| (r.why, r.pending)).collect();
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
            let mut all: Vec<Refusal> = refused.iter().map(|r| r.why).collect();
            all.extend(start_refusals);
            debug!(self.log, "placement failed"; "egress_id" => &egress_id, "rounds" => round,
                   "ms" => t0.elapsed().as_secs_f64() * 1000.0, "refused" => describe(&all),
                   "failures" => failures.join("; "));
            if all.is_empty()
                && let Some(r) = client_errors.pop()
            {
                return Err(failed(client_error(r).into()));
            }
            return Err(failed(
                final_error(egress_type, &all, &failures, live).into(),
            ));
        }
    }

    /// Starts the egress on this node alone (its own admission only), the record saying
    /// `placement: local`; it reaches the fleet's records once Redis answers again.
    async fn place_locally(
        &self,
        node: &Node,
        req: EgressRequest,
        egress_id: String,
        t0: Instant,
        why: String,
    ) -> Result<Placement, FleetError> {
        slog::warn!(self.log, "placing on this node alone"; "egress_id" => &egress_id, "why" => &why);
        self.set_degraded(Some(why));
        let info = node
            .start_placed(req, Some(egress_id), None, Some(PLACEMENT_LOCAL))
            .await?;
        METRICS.placements_total.with_label_values(&["local"]).inc();
        Ok(Placement {
            info,
            decide: t0.elapsed(),
            script: Duration::ZERO,
            total: t0.elapsed(),
            rounds: 0,
            attempts: 0,
        })
    }

    /// One decision: the script's answer (see `reservations::PLACE`). It runs on this worker
    /// thread's own connection, so the answer is read where it is awaited, not behind the shared
    /// connection's other traffic or another thread's wake-up; the shared one is the fallback.
    /// Running the script twice for one egress is harmless: it drops the egress's earlier
    /// reservation before it reserves again.
    async fn decide(&self, ask: &Ask<'_>) -> Result<reservations::Answer, FleetError> {
        let mut reply: Option<Vec<String>> = None;
        if let Some(mut con) = self.worker_connection().await {
            match ask.invocation().invoke_async(&mut con).await {
                Ok(r) => reply = Some(r),
                // Only the connection failed (or reaches a demoted primary): the shared one
                // reconnects, and follows Sentinel, on its own.
                Err(e) if crate::fleet::unreachable(&e) => {
                    debug!(self.log, "placement connection failed: using the shared one"; "error" => %e);
                    PLACER.with(|p| p.borrow_mut().take());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let reply = match reply {
            Some(r) => r,
            None => {
                let mut con = self.conns.con();
                ask.invocation().invoke_async(&mut con).await?
            }
        };
        reservations::parse(&reply)
            .ok_or_else(|| FleetError::Reply(format!("to the placement script: {reply:?}")))
    }

    /// Opens this worker thread's placement connection ahead of its first placement.
    pub async fn open_worker_connection(&self) {
        self.worker_connection().await;
    }

    /// This thread's placement connection, opened on first use (None if it cannot be opened).
    async fn worker_connection(&self) -> Option<MultiplexedConnection> {
        if let Some(c) = PLACER.with(|p| p.borrow().clone()) {
            return Some(c);
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT));
        match self
            .conns
            .client()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
        {
            Ok(c) => {
                PLACER.with(|p| *p.borrow_mut() = Some(c.clone()));
                Some(c)
            }
            Err(e) => {
                debug!(self.log, "cannot open a placement connection"; "error" => %e);
                None
            }
        }
    }

    /// Drops this placement's reservation on a node that did not take the job.
    async fn drop_reservation(&self, node_id: &str, egress_id: &str) {
        let mut con = self.conns.con();
        let r: redis::RedisResult<i64> =
            reservations::drop_reservation(&self.keys, node_id, egress_id)
                .invoke_async(&mut con)
                .await;
        if let Err(e) = r {
            // It expires on its own after fleet.reservation_ttl_ms.
            debug!(self.log, "cannot drop a reservation"; "node" => node_id, "error" => %e);
        }
    }

    /// The job runs on `node_id`: its reservation only has to last until the node publishes a
    /// state that counts the job (on the change itself, at the latest at its next heartbeat).
    fn shorten_later(&self, node_id: &str, egress_id: &str) {
        let mut con = self.conns.con();
        let key = self.keys.reserved(node_id);
        let id = egress_id.to_string();
        let ttl = self.cfg.node_ttl_ms;
        let log = self.log.clone();
        actix_rt::spawn(async move {
            let r: redis::RedisResult<i64> = SHORTEN
                .key(key)
                .arg(&id)
                .arg(ttl)
                .invoke_async(&mut con)
                .await;
            if let Err(e) = r {
                debug!(log, "cannot shorten a reservation"; "egress_id" => &id, "error" => %e);
            }
        });
    }

    /// Starts the egress on the chosen node (in-process when it is this one, over HTTP
    /// otherwise); settles an `already_placed` answer.
    async fn start_on(
        &self,
        node: &Node,
        cand: &Chosen,
        egress_id: &str,
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
                claim_id: None,
                request: req.clone(),
            };
            let started = if cand.node_id == self.node_id {
                // The same steps as `POST /v1/node/egress` on this node, without the HTTP call.
                self.start_owned(node, body).await.map_err(|e| match e {
                    FleetError::Node(e) => CallError::Remote(Box::new(RemoteError::of_local(&e))),
                    other => {
                        CallError::Remote(Box::new(RemoteError::of_local(&ApiError::from(other))))
                    }
                })
            } else {
                client::start(target, &body, START_TIMEOUT).await
            };
            match started {
                Ok(info) => return StartOutcome::Placed(Box::new(info)),
                Err(CallError::Remote(r)) if r.code == "already_placed" => {
                    match self
                        .resolve_owner(egress_id, r.owner.as_deref().unwrap_or(""))
                        .await
                    {
                        Ok(Owner::Placed(info)) => return StartOutcome::Placed(info),
                        Ok(Owner::Free) => continue,
                        Err(e) => return StartOutcome::Fatal(e.into()),
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
    async fn resolve_owner(&self, egress_id: &str, owner_hint: &str) -> Result<Owner, FleetError> {
        let limit = Duration::from_millis(self.cfg.node_ttl_ms + self.cfg.heartbeat_ms)
            + Duration::from_secs(1);
        let deadline = Instant::now() + limit;
        debug!(self.log, "egress id held by another node: waiting for it to start or give it up";
               "egress_id" => egress_id, "owner" => owner_hint);
        loop {
            let (record, owner, owner_live) = self.ownership(egress_id).await?;
            let owner = match settle(record, owner, owner_live) {
                Ok(settled) => return Ok(settled),
                Err(live_owner) => live_owner,
            };
            if Instant::now() >= deadline {
                return Err(ApiError::StartPending {
                    egress_id: egress_id.to_string(),
                    owner,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::ResponseError;

    #[test]
    fn a_script_error_is_a_500_and_an_unreachable_redis_a_503() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        let status = |e: RedisError| ApiError::from(FleetError::Redis(e)).status_code().as_u16();
        let raised = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "user_script:1: boom",
        ));
        assert_eq!(status(raised), 500);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(status(RedisError::from(reset)), 503);
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        assert_eq!(status(RedisError::from(timeout)), 503);
        let loading =
            RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
        assert_eq!(status(loading), 503);
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
}
