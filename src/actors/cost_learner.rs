//! The CostLearner actor: learns what each class of job really costs on this hardware (see
//! `rules::costs`). The Supervisor tells it when a job launches (`TrackJob`, with its class) and
//! ends (`JobEnded`); CpuMonitor's samples give each running job's CPU. At a job's end its samples
//! after the start hold are summarised and folded into the class's estimate, which is written to
//! `state_dir/costs.json` (`store::costs`) and, in a fleet, folded into the fleet's table in
//! Redis (`fleet::costs`), which every node merges in every `COST_REFRESH`.
//!
//! Prices are read through a `Pricer`, a cheap handle on the same table that the node layer,
//! affinity and placement use without a message round trip (a price is read on every start).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use slog::{Logger, debug, info, warn};

use crate::actors::cpu_monitor::CpuSample;
use crate::config::Config;
use crate::model::now_ms;
use crate::rules::costs::{
    CostClass, CostTable, Estimate, JobSummary, MAX_JOB_SAMPLES, learn, merge,
};
pub use crate::rules::pricer::{ClassCost, CostsReport, Pricer};
use crate::store::costs::{save_latest, table_path};

/// What a node's answer from the shared table is: a value, or why not (said in the log).
pub type SharedFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + 'a>>;

/// A cost table shared with other nodes (the fleet's, in Redis: `fleet::costs` implements it).
/// Here as a trait so this actor needs nothing of the fleet above it.
pub trait SharedCosts {
    /// Adds what this node knows better; answers how many classes were taken.
    fn push_costs<'a>(&'a self, table: &'a CostTable) -> SharedFuture<'a, i64>;
    /// The shared table's version (None before any write).
    fn costs_version(&self) -> SharedFuture<'_, Option<i64>>;
    /// The whole shared table.
    fn load_costs(&self) -> SharedFuture<'_, CostTable>;
    /// Folds one job into the shared estimate of `class`; answers the shared estimate.
    fn fold_cost<'a>(
        &'a self,
        class: &'a str,
        job: &'a JobSummary,
        local: &'a Estimate,
        now_ms: u64,
    ) -> SharedFuture<'a, Estimate>;
}

/// How often a fleet node merges the fleet's table into its own (and pushes what it knows better).
const COST_REFRESH: Duration = Duration::from_secs(2);

/// A running job being measured.
struct Tracked {
    class: CostClass,
    /// Samples at or after this count (launch + start hold).
    count_from_ms: u64,
    samples: Vec<(u64, f64)>,
}

pub struct CostLearner {
    pricer: Pricer,
    /// `state_dir/costs.json`.
    path: PathBuf,
    /// `cpu.pending_hold_ms`: samples before a job's hold is over do not count.
    hold_ms: u64,
    /// `cpu.sample_interval_ms`: the time each sample stands for.
    interval_ms: u64,
    jobs: HashMap<String, Tracked>,
    /// Fleet mode: the table is shared through Redis.
    fleet: Option<Arc<dyn SharedCosts>>,
    /// A write of the file is under way (writes are serialized: the newest table wins).
    writing: bool,
    /// The table changed while a write was under way.
    dirty: bool,
    /// Classes the fleet's table may lack from this node: every class at start, and one whose
    /// fold into Redis failed; pushed at the next sync.
    unshared: std::collections::BTreeSet<String>,
    /// The fleet table's version when this node last read it.
    seen_version: Option<i64>,
    /// A sync is under way (one at a time).
    syncing: bool,
    log: Logger,
}

impl CostLearner {
    pub fn new(
        cfg: &Config,
        pricer: Pricer,
        fleet: Option<Arc<dyn SharedCosts>>,
        log: Logger,
    ) -> CostLearner {
        let pricer_keys = pricer.table().into_keys().collect();
        CostLearner {
            pricer,
            path: table_path(&cfg.storage.state_dir),
            hold_ms: cfg.cpu.pending_hold_ms,
            interval_ms: cfg.cpu.sample_interval_ms,
            jobs: HashMap::new(),
            fleet,
            writing: false,
            dirty: false,
            unshared: pricer_keys,
            seen_version: None,
            syncing: false,
            log,
        }
    }

    /// Writes the table to disk off the arbiter thread, one write at a time.
    fn persist(&mut self, ctx: &mut Context<Self>) {
        self.pricer.export_metrics();
        if self.writing {
            self.dirty = true;
            return;
        }
        self.writing = true;
        self.dirty = false;
        let pricer = self.pricer.clone();
        let path = self.path.clone();
        let write = actix_rt::task::spawn_blocking(move || save_latest(&path, || pricer.table()));
        ctx.spawn(
            actix::fut::wrap_future(write).map(|r, act: &mut Self, ctx| {
                act.writing = false;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(act.log, "cannot write the learned cost table"; "path" => act.path.display().to_string(), "error" => %e)
                    }
                    Err(e) => warn!(act.log, "cost table write lost"; "error" => %e),
                }
                if act.dirty {
                    act.persist(ctx);
                }
            }),
        );
    }

    /// Pushes the classes the fleet may not have from this node (all of them once at start:
    /// calibrated ones, ones learned while Redis was away), and merges the fleet's table in when
    /// its version moved (a `GET` otherwise: the table is read only when something changed).
    fn sync_fleet(&mut self, ctx: &mut Context<Self>) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        if self.syncing {
            return;
        }
        self.syncing = true;
        let table = self.pricer.table();
        let push: CostTable = table
            .into_iter()
            .filter(|(k, _)| self.unshared.contains(k))
            .collect();
        let seen = self.seen_version;
        let work = async move {
            let pushed = fleet.push_costs(&push).await?;
            let version = fleet.costs_version().await?;
            let theirs = if version != seen || pushed > 0 {
                Some(fleet.load_costs().await?)
            } else {
                None
            };
            Ok::<_, String>((push, pushed, version, theirs))
        };
        ctx.spawn(actix::fut::wrap_future(work).map(|r, act: &mut Self, ctx| {
            act.syncing = false;
            match r {
                Ok((push, pushed, version, theirs)) => {
                    for k in push.keys() {
                        act.unshared.remove(k);
                    }
                    act.seen_version = version;
                    let changed = theirs.map_or(0, |t| act.pricer.update(|mine| merge(mine, &t)));
                    if changed > 0 || pushed > 0 {
                        debug!(act.log, "cost table synced with the fleet"; "taken" => changed, "pushed" => pushed);
                    }
                    if changed > 0 {
                        act.persist(ctx);
                    }
                }
                Err(e) => {
                    debug!(act.log, "cannot sync the cost table with the fleet"; "error" => %e)
                }
            }
        }));
    }
}

impl Actor for CostLearner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.pricer.export_metrics();
        info!(self.log, "cost learner ready"; "classes" => self.pricer.table().len(),
              "mode" => self.pricer.report().mode);
        if self.fleet.is_some() {
            self.sync_fleet(ctx);
            ctx.run_interval(COST_REFRESH, |act, ctx| act.sync_fleet(ctx));
        }
    }
}

/// A job launched: measure it as one of `class`, counting samples from `started_at_ms` plus
/// the start hold. Returns nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct TrackJob {
    pub egress_id: String,
    pub class: CostClass,
    pub started_at_ms: u64,
}

impl Handler<TrackJob> for CostLearner {
    type Result = ();

    fn handle(&mut self, msg: TrackJob, _: &mut Context<Self>) {
        self.jobs.insert(
            msg.egress_id,
            Tracked {
                class: msg.class,
                count_from_ms: msg.started_at_ms.saturating_add(self.hold_ms),
                samples: Vec::new(),
            },
        );
    }
}

/// A job ended: fold its measured CPU into its class (when it ran long enough). Returns nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct JobEnded {
    pub egress_id: String,
}

impl Handler<JobEnded> for CostLearner {
    type Result = ();

    fn handle(&mut self, msg: JobEnded, ctx: &mut Context<Self>) {
        let Some(job) = self.jobs.remove(&msg.egress_id) else {
            return;
        };
        let Some(summary) = JobSummary::of(&job.samples, self.interval_ms) else {
            return;
        };
        let now = now_ms();
        let Some(local) = self
            .pricer
            .with_table(|t| learn(t, &job.class, &summary, now))
        else {
            debug!(self.log, "job too short to learn from"; "egress_id" => &msg.egress_id,
                   "measured_ms" => summary.span_ms);
            return;
        };
        let key = job.class.key();
        info!(self.log, "learned from a job"; "egress_id" => &msg.egress_id, "class" => &key,
              "p50" => summary.p50, "p95" => summary.p95, "max" => summary.max,
              "class_p95" => local.p95, "class_jobs" => local.jobs);
        let Some(fleet) = self.fleet.clone() else {
            self.persist(ctx);
            return;
        };
        // In a fleet the table is written once the fleet answered (its estimate replaces ours).
        {
            let k = key.clone();
            let fold = async move { fleet.fold_cost(&k, &summary, &local, now).await };
            ctx.spawn(actix::fut::wrap_future(fold).map(move |r, act: &mut Self, ctx| match r {
                Ok(e) => {
                    // The fleet's estimate replaces this node's: it has this job and others'.
                    act.pricer.update(|t| {
                        t.insert(key, e);
                        1
                    });
                    act.persist(ctx);
                }
                Err(e) => {
                    warn!(act.log, "cannot share a learned cost with the fleet (pushed at the next sync)"; "error" => %e);
                    act.unshared.insert(key);
                    act.persist(ctx);
                }
            }));
        }
    }
}

/// Each sample adds its figure to every tracked job past its start hold.
impl Handler<CpuSample> for CostLearner {
    type Result = ();

    fn handle(&mut self, sample: CpuSample, _: &mut Context<Self>) {
        for (id, usage) in &sample.jobs {
            let Some(job) = self.jobs.get_mut(id) else {
                continue;
            };
            if sample.at_ms < job.count_from_ms {
                continue;
            }
            if job.samples.len() >= MAX_JOB_SAMPLES {
                let mut i = 0;
                job.samples.retain(|_| {
                    i += 1;
                    i % 2 == 0
                });
            }
            job.samples.push((sample.at_ms, usage.cores));
        }
    }
}

/// Writes the table to disk now (the service sends it before it exits, so a job that ended just
/// before is not lost with a write still under way). Returns whether the write succeeded.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct SaveCosts;

impl Handler<SaveCosts> for CostLearner {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, _: SaveCosts, _: &mut Context<Self>) -> Self::Result {
        let pricer = self.pricer.clone();
        let path = self.path.clone();
        let log = self.log.clone();
        Box::pin(async move {
            match actix_rt::task::spawn_blocking(move || save_latest(&path, || pricer.table()))
                .await
            {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    warn!(log, "cannot write the learned cost table"; "error" => %e);
                    false
                }
                Err(_) => false,
            }
        })
    }
}

/// Asks for the learned costs; returns the `GET /v1/node/costs` report.
#[derive(Debug, Message)]
#[rtype(result = "CostsReport")]
pub struct GetCosts;

impl Handler<GetCosts> for CostLearner {
    type Result = MessageResult<GetCosts>;

    fn handle(&mut self, _: GetCosts, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.pricer.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::cpu_monitor::JobUsage;
    use crate::model::EgressType;
    use crate::store::costs::read_table;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn sample(at_ms: u64, jobs: &[(&str, f64)]) -> CpuSample {
        CpuSample {
            at_ms,
            capacity_cores: 4.0,
            host_busy: 0.0,
            node_cores: 0.0,
            load: 0.0,
            service_cores: 0.0,
            service_rss_bytes: 0,
            jobs: jobs
                .iter()
                .map(|(id, c)| {
                    (
                        id.to_string(),
                        JobUsage {
                            cores: *c,
                            rss_bytes: 0,
                        },
                    )
                })
                .collect(),
        }
    }

    #[actix_rt::test]
    async fn a_job_after_its_hold_is_learned_persisted_and_priced() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.storage.state_dir = dir.path().to_path_buf();
        cfg.cpu.pending_hold_ms = 1000;
        cfg.cpu.cost_mode = crate::config::CostMode::Learned;
        cfg.cpu.learn_min_jobs = 1;
        let pricer = Pricer::new(&cfg, CostTable::new());
        let class = CostClass::default_of(EgressType::Participant);
        assert_eq!(pricer.price(&class, 2.0), 2.0);
        let a = CostLearner::new(&cfg, pricer.clone(), None, log()).start();
        a.send(TrackJob {
            egress_id: "EG_a".into(),
            class: class.clone(),
            started_at_ms: 10_000,
        })
        .await
        .unwrap();
        // The start spike (before 11 000) is left out; 4 s of 1.0 with one 1.5.
        a.send(sample(10_500, &[("EG_a", 9.0)])).await.unwrap();
        for i in 0..=20 {
            let c = if i == 7 { 1.5 } else { 1.0 };
            a.send(sample(11_000 + i * 200, &[("EG_a", c), ("EG_other", 5.0)]))
                .await
                .unwrap();
        }
        a.send(JobEnded {
            egress_id: "EG_a".into(),
        })
        .await
        .unwrap();
        let r = a.send(GetCosts).await.unwrap();
        let line = r.classes.iter().find(|c| c.class == class.key()).unwrap();
        assert_eq!(
            (line.p50, line.p95, line.max, line.samples, line.learned),
            (Some(1.0), Some(1.0), Some(1.5), 1, true)
        );
        assert_eq!(pricer.price(&class, 2.0), 1.2);
        // On disk, atomically: the file reads back the same.
        let path = table_path(dir.path());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read_table::<CostTable>(&path).unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "not written");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(read_table::<CostTable>(&path).unwrap(), pricer.table());
        // Every type's default class is reported, unlearned.
        let track = r
            .classes
            .iter()
            .find(|c| c.class == "track 1280x720@30")
            .unwrap();
        assert_eq!((track.learned, track.price, track.samples), (false, 0.5, 0));
    }

    #[actix_rt::test]
    async fn a_short_or_unknown_job_teaches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.storage.state_dir = dir.path().to_path_buf();
        cfg.cpu.pending_hold_ms = 0;
        let pricer = Pricer::new(&cfg, CostTable::new());
        let a = CostLearner::new(&cfg, pricer.clone(), None, log()).start();
        a.send(TrackJob {
            egress_id: "EG_a".into(),
            class: CostClass::default_of(EgressType::Track),
            started_at_ms: 0,
        })
        .await
        .unwrap();
        for t in [0, 1000, 1900] {
            a.send(sample(t, &[("EG_a", 1.0)])).await.unwrap();
        }
        a.send(JobEnded {
            egress_id: "EG_a".into(),
        })
        .await
        .unwrap();
        a.send(JobEnded {
            egress_id: "EG_b".into(),
        })
        .await
        .unwrap();
        assert!(pricer.table().is_empty());
    }
}
