//! The Supervisor actor: the node's registry of egresses and the parent of every Pipeline actor.
//!
//! It admits and launches egresses (`StartEgress`), keeps each egress's record current from the Pipeline
//! actors' `UpdateEgress` reports, writes each new version to its record sinks (store, fleet
//! mirror, events: `sinks`), answers list/get, routes
//! stop/kill, tells Admission and CpuMonitor when a job ends, and on start-up settles the records
//! that a previous run of the service left unfinished. On CPU overload it escalates from a graceful
//! stop to a kill (see `rules::overload`).
//!
//! Here: the actor, its records, `StartEgress`, `UpdateEgress`, `MarkDeleted`. Beside it:
//! `control` (messages passed on to a running egress's Pipeline actor, `EndAll`), `queries`
//! (get, list, ended before, count running), `overload` (each `CpuSample`), `recover` (a
//! restart's settling), `sinks` (where record writes go).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use slog::{Logger, info};
use tokio::sync::oneshot;

use crate::actors::admission::{Admission, AdmitJob, EndJob};
use crate::actors::cost_learner::{CostLearner, JobEnded, TrackJob};
use crate::actors::cpu_monitor::{CpuMonitor, UnwatchProcess, WatchProcess};
use crate::actors::pipeline::{Pipeline, PipelineSetup, spawn_handler};
use crate::config::Config;
use crate::error::NodeError;
use crate::metrics::METRICS;
use crate::model::{EgressInfo, EgressStatus, EgressType, now_ms};
use crate::rules::costs::CostClass;
use crate::rules::overload::Overload;
use crate::rules::pricer::Pricer;
use crate::store::Store;
use crate::store::index::{Entry, RecordIndex};

mod control;
mod overload;
mod queries;
mod recover;
mod sinks;

pub use control::{
    ChangeEgressSources, ChangeEgressStreams, EndAll, EndWhip, KillEgress, PublishWhip, StopEgress,
};
pub use queries::{CountRunning, EgressPage, EndedBefore, GetEgress, ListEgresses};
pub use sinks::{Mirror, RecordSink};

pub struct Supervisor {
    /// The records of the egresses that run and of the last `RECENT_ENDED` that ended; the
    /// others are read from the store when asked for (`record`).
    egresses: HashMap<String, EgressInfo>,
    /// What listing needs of every record this node keeps, running or ended.
    index: RecordIndex,
    /// Ended records held in `egresses`, oldest first.
    recent: std::collections::VecDeque<String>,
    /// `storage.records_retention` in ms: ended records older are pruned; None = kept.
    records_retention_ms: Option<u64>,
    /// The Pipeline actor of each egress that still runs.
    pipelines: HashMap<String, Addr<Pipeline>>,
    /// Reads the records not in memory, prunes, and names each egress's log and result files.
    /// Writes go through `sinks` (the store is one of them).
    store: Store,
    /// Every record write goes to each of these, in order (`put`, `MarkDeleted`): the one place
    /// records leave the actor.
    sinks: Vec<Box<dyn RecordSink>>,
    admission: Addr<Admission>,
    cpu: Addr<CpuMonitor>,
    /// Escalation from graceful stop to kill on CPU overload.
    overload: Overload,
    /// `storage.output_dir`, canonical: no output may resolve outside it (symlinks included).
    output_root: std::path::PathBuf,
    /// Learns each job's real CPU per cost class: told of every launch and end.
    costs: Option<Addr<CostLearner>>,
    /// Prices each running job's class now, for overload's "CPU above its cost": a job admitted
    /// before its class was learned is judged by what its class is now known to cost.
    pricer: Option<Pricer>,
    /// The cost class of each running egress.
    classes: HashMap<String, CostClass>,
    /// Records a previous run left, settled once the actor starts (see `recover`).
    loaded: Vec<EgressInfo>,
    /// Callers waiting for an egress's final record (a kill answers with it).
    waiters: HashMap<String, Vec<oneshot::Sender<EgressInfo>>>,
    /// Uploads: a record a previous run left `ending` may still have uploads in its queue.
    delivery: Option<Addr<crate::actors::delivery::Delivery>>,
    log: Logger,
}

/// Ended records kept in memory (the most recent); older ones are read from the store.
const RECENT_ENDED: usize = 500;

/// How often records past `storage.records_retention` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long a kill waits for the killed handler's final record before it answers.
const KILL_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl Supervisor {
    /// `output_root` is `storage.output_dir`, canonical; `index` every record in the store,
    /// `loaded` those not final (whole); `sinks` where every record write goes.
    // Each argument is a distinct part the start function wires in once.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        index: RecordIndex,
        loaded: Vec<EgressInfo>,
        admission: Addr<Admission>,
        cpu: Addr<CpuMonitor>,
        cfg: &Config,
        output_root: std::path::PathBuf,
        sinks: Vec<Box<dyn RecordSink>>,
        log: Logger,
    ) -> Self {
        Supervisor {
            egresses: HashMap::new(),
            index,
            recent: Default::default(),
            records_retention_ms: cfg.records_retention_s().map(|s| (s * 1000.0) as u64),
            pipelines: HashMap::new(),
            store,
            sinks,
            admission,
            cpu,
            overload: Overload::new(&cfg.overload, cfg.cpu.pending_hold_ms),
            output_root,
            costs: None,
            pricer: None,
            classes: HashMap::new(),
            loaded,
            waiters: HashMap::new(),
            delivery: None,
            log,
        }
    }

    /// Uploads: settle records whose uploads a previous run left queued through `delivery`.
    pub fn with_delivery(mut self, d: Option<Addr<crate::actors::delivery::Delivery>>) -> Self {
        self.delivery = d;
        self
    }

    /// Tell `costs` of every job's launch (with its class) and end; judge overload by `pricer`.
    pub fn with_costs(mut self, costs: Addr<CostLearner>, pricer: Pricer) -> Self {
        self.costs = Some(costs);
        self.pricer = Some(pricer);
        self
    }

    fn count(e: &Entry, delta: i64) {
        METRICS
            .egresses
            .with_label_values(&[e.egress_type.as_str(), e.status.as_str()])
            .add(delta);
    }

    /// The record of `id`: from memory, else read from the store (an ended one).
    fn record(&self, id: &str) -> Option<EgressInfo> {
        if let Some(i) = self.egresses.get(id) {
            return Some(i.clone());
        }
        self.index.get(id)?;
        self.store.load(id)
    }

    /// The records of `ids` in order (those it knows): from memory, the others read from the
    /// store on a blocking thread, never on the actor's.
    fn records(
        &self,
        ids: Vec<String>,
    ) -> impl std::future::Future<Output = Vec<EgressInfo>> + use<> {
        let found: Vec<Result<EgressInfo, String>> = ids
            .into_iter()
            .filter(|id| self.egresses.contains_key(id) || self.index.get(id).is_some())
            .map(|id| self.egresses.get(&id).cloned().ok_or(id))
            .collect();
        let store = self.store.clone();
        async move {
            if found.iter().all(Result::is_ok) {
                return found.into_iter().flatten().collect();
            }
            actix_web::rt::task::spawn_blocking(move || {
                found
                    .into_iter()
                    .filter_map(|r| r.or_else(|id| store.load(&id).ok_or(())).ok())
                    .collect()
            })
            .await
            .unwrap_or_default()
        }
    }

    /// Keeps `info` in memory: every running record, and the most recent ended ones.
    fn hold(&mut self, info: EgressInfo) {
        let id = info.egress_id.clone();
        let ended = info.status.is_final();
        self.egresses.insert(id.clone(), info);
        if ended {
            self.recent.push_back(id);
            while self.recent.len() > RECENT_ENDED {
                if let Some(old) = self.recent.pop_front()
                    && self.egresses.get(&old).is_some_and(|i| i.status.is_final())
                {
                    self.egresses.remove(&old);
                }
            }
        }
    }

    /// Prunes ended records past `storage.records_retention` (and their logs and sidecars).
    fn prune(&mut self) {
        let Some(keep) = self.records_retention_ms else {
            return;
        };
        let due = self
            .index
            .ended_before(now_ms().saturating_sub(keep), false);
        if due.is_empty() {
            return;
        }
        for id in &due {
            if let Some(e) = self.index.get(id).copied() {
                Self::count(&e, -1);
            }
            self.index.remove(id);
            self.egresses.remove(id);
        }
        self.recent.retain(|id| self.egresses.contains_key(id));
        info!(self.log, "records pruned"; "count" => due.len(), "older_than_ms" => keep);
        self.store.remove_later(due);
    }

    /// Stores a new version of a record: metrics, the index, every sink, and the end-of-job
    /// bookkeeping.
    fn put(&mut self, mut info: EgressInfo) {
        if self
            .index
            .get(&info.egress_id)
            .is_some_and(|e| e.status.is_final())
        {
            // A final record never changes again (late reports are ignored).
            return;
        }
        let old = self.egresses.get(&info.egress_id).cloned();
        if let Some(e) = self.index.get(&info.egress_id).copied() {
            Self::count(&e, -1);
        }
        if info.status.is_final() {
            // The file the service created for a handler that never wrote to it (a failed
            // start, a crash before the first frame) is no recording, and must not block its
            // name.
            let (empty, kept) = info.files.drain(..).partition(|f| f.size_bytes == 0);
            info.files = kept;
            let empty: Vec<crate::model::FileInfo> = empty;
            if !empty.is_empty() {
                actix_web::rt::task::spawn_blocking(move || {
                    for f in empty {
                        crate::outputs::remove_if_empty(std::path::Path::new(&f.location));
                    }
                });
            }
        }
        let entry = Entry::of(&info);
        Self::count(&entry, 1);
        let changed = self.index.upsert(&info.egress_id, entry);
        for s in &self.sinks {
            s.record_changed(old.as_ref(), &info, changed);
        }
        let was_final = old.as_ref().map(|o| o.status.is_final()).unwrap_or(false);
        if info.status.is_final() && !was_final {
            self.pipelines.remove(&info.egress_id);
            self.admission.do_send(EndJob {
                egress_id: info.egress_id.clone(),
            });
            self.cpu.do_send(UnwatchProcess {
                egress_id: info.egress_id.clone(),
            });
            self.classes.remove(&info.egress_id);
            if let Some(c) = &self.costs {
                c.do_send(JobEnded {
                    egress_id: info.egress_id.clone(),
                });
            }
            let why = info.end_reason.clone().unwrap_or_default();
            METRICS
                .results_total
                .with_label_values(&[info.egress_type.as_str(), &why])
                .inc();
            info!(self.log, "egress ended"; "egress_id" => &info.egress_id, "status" => info.status.as_str(),
                  "end_reason" => &why, "error" => info.error.clone());
            for w in self.waiters.remove(&info.egress_id).unwrap_or_default() {
                let _ = w.send(info.clone());
            }
        }
        self.hold(info);
    }

    fn lookup(&self, id: &str) -> Result<EgressInfo, NodeError> {
        self.record(id)
            .ok_or_else(|| NodeError::NotFound(format!("no egress {id} on this node")))
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.recover(ctx);
    }
}

/// Start an egress: admit it (Admission, consuming `claim_id`), create its output file, spawn its
/// handler and Pipeline actor, all in one turn of this actor (no other message is handled in
/// between, so two starts never race for one filename or one slot). Returns its record, or why
/// not: `Conflict` for an id that exists, `OutputExists`, `Request` for an output path that
/// cannot be, `NoCapacity` when admission refuses. A refused start leaves no record, file or admitted cost behind.
#[derive(Message)]
#[rtype(result = "Result<EgressInfo, NodeError>")]
pub struct StartEgress {
    pub setup: Box<PipelineSetup>,
    pub claim_id: Option<String>,
}

impl Handler<StartEgress> for Supervisor {
    type Result = AtomicResponse<Self, Result<EgressInfo, NodeError>>;

    fn handle(&mut self, msg: StartEgress, _: &mut Context<Self>) -> Self::Result {
        let mut setup = *msg.setup;
        let id = setup.info.egress_id.clone();
        if self.egresses.contains_key(&id) || self.index.get(&id).is_some() {
            let e = NodeError::Conflict(format!("egress {id} exists already"));
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(e))));
        }
        let admit = self.admission.send(AdmitJob {
            egress_id: id.clone(),
            egress_type: setup.spec.egress_type,
            cost: setup.info.cpu_cost,
            claim_id: msg.claim_id,
        });
        let root = self.output_root.clone();
        let store = self.store.clone();
        let outputs = setup.spec.outputs.clone();
        let admission = self.admission.clone();
        setup.log_path = self.store.log_path(&id);
        let launch = crate::actors::pipeline::Launch::of(&setup);
        let work = async move {
            admit.await.map_err(NodeError::from_mailbox)??;
            // Disk and process work off the actor thread (outputs created, then the handler
            // forked and exec'd); the actor still takes no other message meanwhile.
            let prepared = actix_web::rt::task::spawn_blocking(move || {
                store
                    .ensure_dirs()
                    .map_err(|e| NodeError::Unavailable(format!("state_dir: {e}")))?;
                let outputs =
                    crate::outputs::prepare_all(&root, &outputs).map_err(NodeError::from)?;
                Ok((outputs, spawn_handler(&launch)))
            })
            .await
            .map_err(|e| NodeError::Internal(format!("output check failed: {e}")))
            .and_then(|r| r);
            if prepared.is_err() {
                admission.do_send(EndJob {
                    egress_id: id.clone(),
                });
            }
            prepared
        };
        type Prepared = (
            crate::model::OutputsSpec,
            std::io::Result<tokio::process::Child>,
        );
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(work).map(
            move |prepared: Result<Prepared, NodeError>, act: &mut Self, ctx| {
                let (outputs, child) = prepared?;
                setup.spec.outputs = outputs;
                act.launch(setup, child, ctx)
            },
        )))
    }
}

impl Supervisor {
    /// Takes on the handler spawned for an admitted egress whose outputs exist (empty).
    fn launch(
        &mut self,
        mut setup: PipelineSetup,
        child: std::io::Result<tokio::process::Child>,
        ctx: &mut Context<Self>,
    ) -> Result<EgressInfo, NodeError> {
        let id = setup.info.egress_id.clone();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                self.admission.do_send(EndJob { egress_id: id });
                let o = crate::closing::Outputs::of(&setup.spec.outputs, &setup.spec.manifest_path);
                actix_web::rt::task::spawn_blocking(move || {
                    let mut gone = setup.info;
                    crate::closing::close(&mut gone, &o, false);
                });
                return Err(NodeError::Internal(format!(
                    "cannot launch the handler process: {e}"
                )));
            }
        };
        let pid = child.id().unwrap_or(0);
        setup.info.handler_pid = Some(pid);
        // Every output is listed from the start, so a restarted service knows where to look.
        describe_outputs(&mut setup.info, &setup.spec.outputs);
        let info = setup.info.clone();
        self.put(info.clone());
        self.cpu.do_send(WatchProcess {
            egress_id: id.clone(),
            pid,
        });
        let class = CostClass::of(&setup.spec);
        self.classes.insert(id.clone(), class.clone());
        if let Some(c) = &self.costs {
            c.do_send(TrackJob {
                egress_id: id.clone(),
                class,
                started_at_ms: now_ms(),
            });
        }
        let addr = Pipeline::start_with(setup, child, ctx.address(), &self.log);
        self.pipelines.insert(id, addr);
        Ok(info)
    }
}

/// A Pipeline actor's new view of its egress (status, times, files).
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateEgress(pub EgressInfo);

/// The record's view of freshly prepared outputs: nothing written yet.
fn describe_outputs(info: &mut EgressInfo, o: &crate::model::OutputsSpec) {
    use crate::model::{FileInfo, ImagesInfo, SegmentsInfo, StreamInfo, StreamStatus};
    info.files = o
        .file
        .iter()
        .map(|f| FileInfo {
            filename: f.filename.clone(),
            location: f.path.display().to_string(),
            size_bytes: 0,
            duration_s: None,
            video_s: None,
            audio_s: None,
            upload: None,
        })
        .collect();
    info.segments = o.segments.as_ref().map(|s| SegmentsInfo {
        playlist: s.playlist.clone(),
        location: s.playlist_path.display().to_string(),
        live_playlist: s.live.as_ref().map(|l| l.0.clone()),
        live_length: s.live.as_ref().map(|l| l.2),
        prefix: s.prefix.clone(),
        ..SegmentsInfo::default()
    });
    info.streams = o
        .stream_urls
        .iter()
        .map(|u| StreamInfo {
            url: crate::model::redact::url(u),
            status: StreamStatus::Active,
            started_at: None,
            ended_at: None,
            error: None,
        })
        .collect();
    info.images = o.images.as_ref().map(|i| ImagesInfo {
        prefix: i.prefix.clone(),
        location: i.dir.join(&i.stem).display().to_string(),
        count: 0,
        upload: None,
    });
}

impl Handler<UpdateEgress> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: UpdateEgress, _: &mut Context<Self>) {
        // `handler_pid` is the Pipeline actor's to clear (when its handler exits), as a
        // restart's is `settle_orphan`'s: a record never loses it anywhere else.
        self.put(msg.0);
    }
}

/// Retention deleted an ended egress's local outputs: its record keeps `deleted_at` (the one
/// change a final record takes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct MarkDeleted {
    pub egress_id: String,
    pub at_ms: u64,
}

impl Handler<MarkDeleted> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: MarkDeleted, _: &mut Context<Self>) {
        let Some(mut info) = self.record(&msg.egress_id) else {
            return;
        };
        if !info.status.is_final() || info.deleted_at.is_some() {
            return;
        }
        info.deleted_at = Some(msg.at_ms);
        let changed = self.index.upsert(&info.egress_id, Entry::of(&info));
        // The same sinks as `put`; the events sink makes no event of it (see `sinks`).
        for s in &self.sinks {
            s.outputs_deleted(&info, changed);
        }
        if self.egresses.contains_key(&info.egress_id) {
            self.egresses.insert(info.egress_id.clone(), info);
        }
    }
}
