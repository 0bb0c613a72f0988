//! The Admission actor: the node's single source of truth for what it has committed. A thin shell
//! around `rules::admission::Ledger` (see there for how CPU, claims and limits are counted): it
//! supplies the clock, sweeps expired claims every 100 ms, feeds measurements from `CpuSample`s,
//! and keeps the admission metrics current.
//!
//! Being one actor, every decision is atomic: two affinity requests or two admissions never see
//! the same free CPU.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use slog::{Logger, debug, info};
use tokio::sync::Notify;

use crate::actors::cpu_monitor::CpuSample;
use crate::config::Config;
use crate::error::AdmissionError;
use crate::metrics::METRICS;
use crate::model::{EgressType, now_ms};
use crate::rules::admission::{Ledger, NodeState};
use crate::rules::scoring::ScoreInput;

/// How often expired claims are swept (they stop counting at expiry even before a sweep).
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

pub struct Admission {
    ledger: Ledger,
    /// Woken on every change of the ledger (the fleet publishes the node's state then).
    watcher: Option<Arc<Notify>>,
    log: Logger,
}

impl Admission {
    pub fn new(cfg: &Config, node_id: String, capacity_cores: f64, log: Logger) -> Self {
        Admission {
            ledger: Ledger::from_config(cfg, node_id, capacity_cores),
            watcher: None,
            log,
        }
    }

    /// Expires claims at `now`, refreshes every admission gauge, and wakes the watcher when the
    /// ledger `changed` (or a claim expired).
    fn refresh(&mut self, now: u64, changed: bool) {
        let expired = self.ledger.expire(now) > 0;
        if (changed || expired)
            && let Some(w) = &self.watcher
        {
            // Stores one permit when nobody waits: changes coalesce, none is missed.
            w.notify_one();
        }
        let l = &self.ledger;
        METRICS.available_cpu_cores.set(l.available(now).max(0.0));
        METRICS.draining.set(if l.draining() { 1.0 } else { 0.0 });
        for t in EgressType::ALL {
            let name = t.as_str();
            METRICS
                .type_active
                .with_label_values(&[name])
                .set(i64::from(l.active(t)));
            METRICS
                .type_limit
                .with_label_values(&[name])
                .set(i64::from(l.limit_of(t)));
            METRICS
                .pending_claims
                .with_label_values(&[name])
                .set(i64::from(l.pending(now, t)));
        }
    }
}

impl Actor for Admission {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(self.log, "admission ready"; "capacity_cores" => self.ledger.capacity_cores(),
              "budget_cores" => self.ledger.budget());
        self.refresh(now_ms(), false);
        ctx.run_interval(SWEEP_INTERVAL, |act, _| act.refresh(now_ms(), false));
    }
}

/// Asks to admit a job of `cost` cores, taking the place of `claim_id` if that is a live claim
/// of the same type. Returns Ok, or why the node refuses (draining, type limit, CPU).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), AdmissionError>")]
pub struct AdmitJob {
    pub egress_id: String,
    pub egress_type: EgressType,
    pub cost: f64,
    pub claim_id: Option<String>,
}

impl Handler<AdmitJob> for Admission {
    type Result = Result<(), AdmissionError>;

    fn handle(&mut self, msg: AdmitJob, _: &mut Context<Self>) -> Self::Result {
        let now = now_ms();
        let res = self.ledger.admit(
            now,
            &msg.egress_id,
            msg.egress_type,
            msg.cost,
            msg.claim_id.as_deref(),
        );
        let outcome = match &res {
            Ok(()) => "admitted",
            Err(e) => e.reason(),
        };
        METRICS
            .admissions_total
            .with_label_values(&[msg.egress_type.as_str(), outcome])
            .inc();
        match &res {
            Ok(()) => {
                debug!(self.log, "admitted"; "egress_id" => &msg.egress_id, "type" => msg.egress_type.as_str(),
                             "cost" => msg.cost, "claim_id" => msg.claim_id.as_deref().unwrap_or(""))
            }
            Err(e) => {
                info!(self.log, "refused"; "egress_id" => &msg.egress_id, "type" => msg.egress_type.as_str(),
                            "reason" => e.reason(), "error" => %e)
            }
        }
        self.refresh(now, res.is_ok());
        res
    }
}

/// Tells admission a job ended, freeing its CPU and slot (idempotent). Returns nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EndJob {
    pub egress_id: String,
}

impl Handler<EndJob> for Admission {
    type Result = ();

    fn handle(&mut self, msg: EndJob, _: &mut Context<Self>) {
        let ended = self.ledger.end_job(&msg.egress_id);
        if ended {
            debug!(self.log, "job ended"; "egress_id" => &msg.egress_id);
        }
        self.refresh(now_ms(), ended);
    }
}

/// A claim held for a request, and the node as it was just before the claim was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub claim_id: String,
    pub node_id: String,
    /// What scoring needs, from the same atomic step that took the claim.
    pub before: ScoreInput,
}

/// Asks to hold a slot and `cost` cores (None = the type's configured cost) for
/// `affinity.pending_claim_ttl_ms`. Returns the claim, or why the node refuses.
#[derive(Debug, Message)]
#[rtype(result = "Result<Claim, AdmissionError>")]
pub struct TakeClaim {
    pub egress_type: EgressType,
    pub cost: Option<f64>,
}

impl Handler<TakeClaim> for Admission {
    type Result = Result<Claim, AdmissionError>;

    fn handle(&mut self, msg: TakeClaim, _: &mut Context<Self>) -> Self::Result {
        let now = now_ms();
        let cost = msg
            .cost
            .unwrap_or_else(|| self.ledger.cost_of(msg.egress_type));
        let res = self
            .ledger
            .take_claim(now, msg.egress_type, cost)
            .map(|(claim_id, before)| Claim {
                claim_id,
                node_id: self.ledger.node_id().to_string(),
                before,
            });
        if let Ok(c) = &res {
            debug!(self.log, "claim taken"; "claim_id" => &c.claim_id, "type" => msg.egress_type.as_str(), "cost" => cost);
        }
        self.refresh(now, res.is_ok());
        res
    }
}

/// Asks whether a request of `egress_type` and `cost` cores (None = the type's configured cost)
/// would be admitted now, holding nothing. Returns the node's id and the node as scoring sees it,
/// or why the node refuses.
#[derive(Debug, Message)]
#[rtype(result = "Result<(String, ScoreInput), AdmissionError>")]
pub struct CheckRequest {
    pub egress_type: EgressType,
    pub cost: Option<f64>,
}

impl Handler<CheckRequest> for Admission {
    type Result = Result<(String, ScoreInput), AdmissionError>;

    fn handle(&mut self, msg: CheckRequest, _: &mut Context<Self>) -> Self::Result {
        let now = now_ms();
        let cost = msg
            .cost
            .unwrap_or_else(|| self.ledger.cost_of(msg.egress_type));
        self.ledger.check(now, msg.egress_type, cost, None)?;
        Ok((
            self.ledger.node_id().to_string(),
            self.ledger.score_input(now, true),
        ))
    }
}

/// Gives a claim back before its expiry (idempotent). Returns nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReleaseClaim {
    pub claim_id: String,
}

impl Handler<ReleaseClaim> for Admission {
    type Result = ();

    fn handle(&mut self, msg: ReleaseClaim, _: &mut Context<Self>) {
        let released = self.ledger.release_claim(&msg.claim_id);
        self.refresh(now_ms(), released);
    }
}

/// Turns draining on (refuse every new job and claim) or off. Returns nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SetDraining(pub bool);

impl Handler<SetDraining> for Admission {
    type Result = ();

    fn handle(&mut self, msg: SetDraining, _: &mut Context<Self>) {
        if msg.0 != self.ledger.draining() {
            info!(self.log, "draining"; "draining" => msg.0);
        }
        let changed = msg.0 != self.ledger.draining();
        self.ledger.set_draining(msg.0);
        self.refresh(now_ms(), changed);
    }
}

/// Asks for the node's admission state; returns the `GET /v1/node` report.
#[derive(Debug, Message)]
#[rtype(result = "NodeState")]
pub struct GetNodeState;

impl Handler<GetNodeState> for Admission {
    type Result = MessageResult<GetNodeState>;

    fn handle(&mut self, _: GetNodeState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.ledger.state(now_ms()))
    }
}

/// Measured usage of each job and the node load, from CpuMonitor.
impl Handler<CpuSample> for Admission {
    type Result = ();

    fn handle(&mut self, sample: CpuSample, _: &mut Context<Self>) {
        for (id, usage) in &sample.jobs {
            self.ledger.measure(id, usage.cores);
        }
        self.ledger.set_load(sample.load);
        self.refresh(now_ms(), true);
    }
}

/// Wakes `0` on every later change of the ledger (admit, end, claims, draining, measurements).
/// Returns nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WatchState(pub Arc<Notify>);

impl Handler<WatchState> for Admission {
    type Result = ();

    fn handle(&mut self, msg: WatchState, _: &mut Context<Self>) {
        self.watcher = Some(msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::actors::cpu_monitor::JobUsage;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// 4 cores at 100%, claims live 100 ms, a hold of 0 so measurements count at once.
    fn cfg() -> Config {
        let mut c = Config::default();
        c.cpu.max_utilization = 1.0;
        c.cpu.pending_hold_ms = 0;
        c.affinity.pending_claim_ttl_ms = 100;
        c.limits.max_concurrent_room_composite = 1;
        c
    }

    fn start() -> Addr<Admission> {
        Admission::new(&cfg(), "ND_test".into(), 4.0, log()).start()
    }

    fn admit(id: &str, t: EgressType, cost: f64, claim_id: Option<String>) -> AdmitJob {
        AdmitJob {
            egress_id: id.into(),
            egress_type: t,
            cost,
            claim_id,
        }
    }

    #[actix_rt::test]
    async fn every_change_wakes_the_watcher_and_reads_do_not() {
        let a = start();
        let w = Arc::new(Notify::new());
        a.send(WatchState(w.clone())).await.unwrap();
        let woken = || async {
            tokio::time::timeout(Duration::from_millis(500), w.notified())
                .await
                .is_ok()
        };
        a.send(admit("EG_1", EgressType::Track, 0.5, None))
            .await
            .unwrap()
            .unwrap();
        assert!(woken().await, "admit");
        let s = a.send(GetNodeState).await.unwrap();
        assert_eq!(
            (s.egress_ids, s.budget_cores),
            (vec!["EG_1".to_string()], 4.0)
        );
        // A refusal and a read change nothing: no wake-up.
        a.send(admit("EG_2", EgressType::Track, 99.0, None))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            tokio::time::timeout(Duration::from_millis(150), w.notified())
                .await
                .is_err(),
            "a refusal woke the watcher"
        );
        a.send(EndJob {
            egress_id: "EG_1".into(),
        })
        .await
        .unwrap();
        assert!(woken().await, "end");
        a.send(SetDraining(true)).await.unwrap();
        assert!(woken().await, "draining");
    }

    #[actix_rt::test]
    async fn claim_then_admit_consumes_it() {
        let a = start();
        let c = a
            .send(TakeClaim {
                egress_type: EgressType::RoomComposite,
                cost: None,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.node_id, "ND_test");
        assert_eq!(c.before.available_cpu, 4.0);
        let s = a.send(GetNodeState).await.unwrap();
        assert_eq!(s.types["room_composite"].pending_claims, 1);
        assert_eq!(s.available_cpu, 0.0);
        // Without the claim there is no room (limit 1, and all 4 cores claimed).
        let e = a
            .send(admit("EG_x", EgressType::RoomComposite, 4.0, None))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.reason(), "type_limit");
        a.send(admit(
            "EG_1",
            EgressType::RoomComposite,
            4.0,
            Some(c.claim_id.clone()),
        ))
        .await
        .unwrap()
        .unwrap();
        let s = a.send(GetNodeState).await.unwrap();
        assert_eq!(
            (
                s.types["room_composite"].active,
                s.types["room_composite"].pending_claims
            ),
            (1, 0)
        );
        // Consumed: it cannot be used again.
        let e = a
            .send(admit(
                "EG_2",
                EgressType::RoomComposite,
                4.0,
                Some(c.claim_id),
            ))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.reason(), "type_limit");
        a.send(EndJob {
            egress_id: "EG_1".into(),
        })
        .await
        .unwrap();
        a.send(EndJob {
            egress_id: "EG_1".into(),
        })
        .await
        .unwrap();
        assert_eq!(a.send(GetNodeState).await.unwrap().available_cpu, 4.0);
    }

    #[actix_rt::test]
    async fn claims_expire_after_their_ttl_and_can_be_released() {
        let a = start();
        a.send(TakeClaim {
            egress_type: EgressType::Track,
            cost: Some(3.0),
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(a.send(GetNodeState).await.unwrap().available_cpu, 1.0);
        actix_rt::time::sleep(Duration::from_millis(250)).await;
        let s = a.send(GetNodeState).await.unwrap();
        assert_eq!((s.available_cpu, s.types["track"].pending_claims), (4.0, 0));

        let c = a
            .send(TakeClaim {
                egress_type: EgressType::Track,
                cost: Some(3.0),
            })
            .await
            .unwrap()
            .unwrap();
        a.send(ReleaseClaim {
            claim_id: c.claim_id.clone(),
        })
        .await
        .unwrap();
        a.send(ReleaseClaim {
            claim_id: c.claim_id,
        })
        .await
        .unwrap();
        assert_eq!(a.send(GetNodeState).await.unwrap().available_cpu, 4.0);
    }

    #[actix_rt::test]
    async fn refusals_name_their_reason() {
        let a = start();
        a.send(admit("EG_1", EgressType::RoomComposite, 1.0, None))
            .await
            .unwrap()
            .unwrap();
        let e = a
            .send(TakeClaim {
                egress_type: EgressType::RoomComposite,
                cost: None,
            })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            e,
            AdmissionError::TypeLimit {
                egress_type: EgressType::RoomComposite,
                active: 1,
                limit: 1
            }
        );
        let e = a
            .send(admit("EG_2", EgressType::Participant, 3.5, None))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.reason(), "cpu");
        a.send(SetDraining(true)).await.unwrap();
        let e = a
            .send(admit("EG_3", EgressType::Track, 0.1, None))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e, AdmissionError::Draining);
        assert!(a.send(GetNodeState).await.unwrap().draining);
        a.send(SetDraining(false)).await.unwrap();
        a.send(admit("EG_3", EgressType::Track, 0.1, None))
            .await
            .unwrap()
            .unwrap();
    }

    #[actix_rt::test]
    async fn samples_feed_measurements_and_load() {
        let a = start();
        a.send(admit("EG_1", EgressType::Track, 0.5, None))
            .await
            .unwrap()
            .unwrap();
        let mut jobs = HashMap::new();
        jobs.insert(
            "EG_1".to_string(),
            JobUsage {
                cores: 2.0,
                rss_bytes: 0,
            },
        );
        let sample = CpuSample {
            at_ms: 0,
            capacity_cores: 4.0,
            host_busy: 0.6,
            node_cores: 2.0,
            load: 0.6,
            service_cores: 0.0,
            service_rss_bytes: 0,
            jobs,
        };
        a.send(sample).await.unwrap();
        let s = a.send(GetNodeState).await.unwrap();
        assert_eq!((s.available_cpu, s.load), (2.0, 0.6));
    }
}
