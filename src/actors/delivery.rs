//! The Delivery actor: uploads every output to object storage through the durable queue in
//! `state_dir/uploads` (see `delivery::journal`), on an arbiter (thread) of its own, so hashing
//! and sending hundreds of megabytes never delays the actors that decide.
//!
//! An entry is written before its upload starts and removed once the store confirmed the whole
//! object (or it failed for good). Each target is retried with exponential backoff for
//! `storage.upload_retry_s`; credentials the store refuses are not retried; then
//! `storage.backup`; then the local copy stays and the egress ends `failed`, "upload failed:
//! ...". On start, the queue a previous run left is resumed: a multipart upload it left open is
//! aborted first and the object uploaded again whole.
//!
//! The entry points:
//! - `Enqueue`: one output as soon as it is written (segments, playlists, images, the manifest).
//! - `FinishEgress`: the egress's final record and its files; answers with the final record
//!   once every upload of the egress (enqueued ones too) is done, with `location` and `upload`
//!   filled in. `finish` wraps it for the Pipeline actor.
//! - `ResumeEgress`: a restarted service's Supervisor asks for the final record of an egress
//!   whose uploads were running when the previous run died.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{Logger, info, warn};
use tokio::sync::oneshot;

use crate::actors::supervisor::UpdateEgress;
use crate::config::Config;
use crate::delivery::journal::{Entry, Journal, UploadKind};
use crate::delivery::progress::{Queued, Settled};
use crate::delivery::target::{Connected, UploadTarget};
use crate::delivery::upload::{AttemptError, UploadShape, abort_stale, backoff, upload_file};
use crate::metrics::METRICS;
use crate::model::{EgressInfo, EgressStatus, UploadState, now_ms};

mod job;
mod link;
use job::Job;
pub use link::{
    DeliveryLink, deliverables, enqueue, exited, finish, image_written, segment_closed, started,
};

/// Entries uploaded at once (each with up to `storage.upload_concurrency` parts in flight).
const ACTIVE_ENTRIES: usize = 2;

/// What the Delivery actor needs from the config.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// `storage.upload`: used when a request names none.
    pub default_target: Option<UploadTarget>,
    pub backup: Option<UploadTarget>,
    pub retry: Duration,
    pub shape: UploadShape,
    pub keep_local: bool,
}

impl DeliveryConfig {
    pub fn from_config(cfg: &Config) -> DeliveryConfig {
        let s = &cfg.storage;
        DeliveryConfig {
            default_target: s.upload.clone(),
            backup: s.backup.clone(),
            retry: Duration::from_secs_f64(s.upload_retry_s),
            shape: UploadShape {
                part_bytes: s.upload_part_bytes,
                concurrency: s.upload_concurrency,
            },
            keep_local: s.keep_local,
        }
    }
}

/// An entry this run knows about.
struct Tracked {
    entry: Entry,
    state: UploadState,
}

/// An egress whose final record waits for its uploads.
struct Finishing {
    info: EgressInfo,
    report: Option<Recipient<UpdateEgress>>,
    waiters: Vec<oneshot::Sender<EgressInfo>>,
    /// The manifest, uploaded last: `(local path, name, target)`, rewritten with the final
    /// record (object locations included) once every other upload of the egress is done.
    manifest: Option<(PathBuf, String, UploadTarget)>,
}

pub struct Delivery {
    cfg: DeliveryConfig,
    journal: Journal,
    /// Entries not settled yet, by id.
    entries: HashMap<String, Tracked>,
    /// Ids waiting for one of the `ACTIVE_ENTRIES` slots, in order.
    waiting: VecDeque<String>,
    active: usize,
    /// Settled uploads of egresses not finished yet.
    outcomes: HashMap<String, Vec<Settled>>,
    finishing: HashMap<String, Finishing>,
    /// Final records of egresses resumed from the journal that the Supervisor has not asked for.
    unclaimed: HashMap<String, EgressInfo>,
    /// Clients by target (its JSON), made once.
    clients: HashMap<String, Connected>,
    next: u64,
    log: Logger,
}

impl Delivery {
    pub fn new(cfg: DeliveryConfig, journal: Journal, log: Logger) -> Delivery {
        Delivery {
            cfg,
            journal,
            entries: HashMap::new(),
            waiting: VecDeque::new(),
            active: 0,
            outcomes: HashMap::new(),
            finishing: HashMap::new(),
            unclaimed: HashMap::new(),
            clients: HashMap::new(),
            next: 0,
            log,
        }
    }

    /// Starts the actor on an arbiter of its own; the caller keeps the arbiter alive.
    pub fn start_on_own_thread(self) -> (Addr<Delivery>, Arbiter) {
        let arbiter = Arbiter::new();
        let addr = Delivery::start_in_arbiter(&arbiter.handle(), move |_| self);
        (addr, arbiter)
    }

    fn client(&mut self, t: &UploadTarget) -> Result<Connected, AttemptError> {
        let k = serde_json::to_string(t).unwrap_or_default();
        if let Some(c) = self.clients.get(&k) {
            return Ok(c.clone());
        }
        // The node's own credentials sign only for the operator's targets.
        let own =
            Some(t) == self.cfg.default_target.as_ref() || Some(t) == self.cfg.backup.as_ref();
        let c = t.connect(own).map_err(|e| AttemptError {
            message: format!("{}: {e}", t.label()),
            permanent: true,
        })?;
        self.clients.insert(k, c.clone());
        Ok(c)
    }

    fn depth(&self) {
        METRICS.upload_queue_depth.set(self.entries.len() as i64);
    }

    /// Queues one upload: journal first, then the line.
    fn queue(
        &mut self,
        egress_id: &str,
        kind: UploadKind,
        local_path: PathBuf,
        name: String,
        target: UploadTarget,
    ) -> std::io::Result<String> {
        if kind == UploadKind::Playlist {
            // A newer playlist replaces one of the same name that has not started: the bucket
            // only ever needs the latest.
            let stale: Vec<String> = self
                .entries
                .values()
                .filter(|t| {
                    t.state == UploadState::Pending
                        && t.entry.egress_id == egress_id
                        && t.entry.name == name
                })
                .map(|t| t.entry.id.clone())
                .collect();
            for id in stale {
                if let Some(t) = self.entries.remove(&id)
                    && t.entry.snapshot_of.is_some()
                {
                    // The replaced playlist's copy (the journal's load skips dot files).
                    let _ = std::fs::remove_file(&t.entry.local_path);
                }
                self.waiting.retain(|w| *w != id);
                let _ = self.journal.remove(&id);
            }
        }
        self.next += 1;
        let id = format!("{egress_id}-{}-{:010}", now_ms(), self.next);
        let (local_path, snapshot_of) = if kind == UploadKind::Playlist {
            let snap = self.journal.snapshot_path(&id);
            std::fs::copy(&local_path, &snap)?;
            (snap, Some(local_path))
        } else {
            (local_path, None)
        };
        let entry = Entry {
            id,
            egress_id: egress_id.to_string(),
            kind,
            local_path,
            name,
            target,
            snapshot_of,
            multipart: None,
            queued_at_ms: now_ms(),
        };
        if let Err(e) = self.journal.put(&entry) {
            if entry.snapshot_of.is_some() {
                let _ = std::fs::remove_file(&entry.local_path);
            }
            return Err(e);
        }
        let id = entry.id.clone();
        self.entries.insert(
            id.clone(),
            Tracked {
                entry,
                state: UploadState::Pending,
            },
        );
        self.waiting.push_back(id.clone());
        self.depth();
        Ok(id)
    }

    /// Whether an upload of this egress's `path` is queued or settled already (`Enqueue`d).
    fn knows(&self, egress_id: &str, path: &Path) -> bool {
        self.entries.values().any(|t| {
            t.entry.egress_id == egress_id
                && (t.entry.local_path == path || t.entry.snapshot_of.as_deref() == Some(path))
        }) || self
            .outcomes
            .get(egress_id)
            .is_some_and(|v| v.iter().any(|o| o.local_path == path))
    }

    /// A playlist or manifest goes up only after every upload of its egress queued before it
    /// has settled, so the object in the bucket never names a segment that is not there yet.
    fn may_start(&self, id: &str) -> bool {
        let Some(t) = self.entries.get(id) else {
            return true;
        };
        if !matches!(t.entry.kind, UploadKind::Playlist | UploadKind::Manifest) {
            return true;
        }
        !self.entries.values().any(|o| {
            o.entry.egress_id == t.entry.egress_id
                && o.entry.id != t.entry.id
                && (o.entry.queued_at_ms, &o.entry.id) < (t.entry.queued_at_ms, &t.entry.id)
        })
    }

    /// Starts waiting entries while slots are free.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.active < ACTIVE_ENTRIES {
            let Some(pos) = self.waiting.iter().position(|id| self.may_start(id)) else {
                return;
            };
            let Some(id) = self.waiting.remove(pos) else {
                return;
            };
            let Some(t) = self.entries.get_mut(&id) else {
                continue;
            };
            t.state = UploadState::Uploading;
            let entry = t.entry.clone();
            self.active += 1;
            self.show_progress(&entry.egress_id);
            let primary = self.client(&entry.target);
            let backup = self.cfg.backup.clone().map(|b| (self.client(&b), b));
            let job = Job {
                entry,
                primary,
                backup,
                cfg: self.cfg.clone(),
                journal: self.journal.clone(),
                log: self.log.clone(),
            };
            ctx.spawn(actix::fut::wrap_future(job.run()).map(
                move |outcome, act: &mut Self, ctx| {
                    act.active -= 1;
                    act.settled(&id, outcome, ctx);
                    act.pump(ctx);
                },
            ));
        }
    }

    fn settled(&mut self, id: &str, outcome: Settled, _: &mut Context<Self>) {
        let Some(t) = self.entries.remove(id) else {
            return;
        };
        if let Err(e) = self.journal.remove(id) {
            warn!(self.log, "cannot remove an upload from the queue"; "entry" => id, "error" => %e);
        }
        self.depth();
        let egress_id = t.entry.egress_id.clone();
        self.outcomes
            .entry(egress_id.clone())
            .or_default()
            .push(outcome);
        self.show_progress(&egress_id);
        self.try_finish(&egress_id);
    }

    /// The record of a finishing egress with its files' upload states as they are now.
    fn show_progress(&self, egress_id: &str) {
        let Some(f) = self.finishing.get(egress_id) else {
            return;
        };
        let Some(report) = &f.report else { return };
        let mut shown = f.info.clone();
        shown.status = EgressStatus::Ending;
        // It has not ended while its uploads run.
        shown.ended_at = None;
        self.apply(&mut shown, false);
        report.do_send(UpdateEgress(shown));
    }

    /// Fills in each output's upload state and location (`delivery::progress::apply`): from the
    /// egress's settled uploads and those still queued; with `final_`, a failed one fails it.
    fn apply(&self, info: &mut EgressInfo, final_: bool) {
        let settled: &[Settled] = self
            .outcomes
            .get(&info.egress_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let queued: Vec<Queued<'_>> = self
            .entries
            .values()
            .filter(|t| t.entry.egress_id == info.egress_id)
            .map(|t| Queued {
                local_path: &t.entry.local_path,
                kind: t.entry.kind,
                state: t.state,
            })
            .collect();
        crate::delivery::progress::apply(info, settled, &queued, final_);
    }

    /// Settles an egress once none of its uploads is left.
    fn try_finish(&mut self, egress_id: &str) {
        if !self.finishing.contains_key(egress_id)
            || self
                .entries
                .values()
                .any(|t| t.entry.egress_id == egress_id)
        {
            return;
        }
        if let Some((path, name, target)) = self
            .finishing
            .get_mut(egress_id)
            .and_then(|f| f.manifest.take())
        {
            // Everything else is up: the manifest says so, then goes up last.
            let mut shown = self.finishing[egress_id].info.clone();
            self.apply(&mut shown, true);
            shown.ended_at = Some(now_ms());
            shown.manifest = Some(target.location(&target.key_for(&name)));
            let written = serde_json::to_vec_pretty(&shown)
                .map_err(std::io::Error::other)
                .and_then(|json| {
                    crate::store::write_atomic(&path, &json, crate::store::Durability::Data)
                })
                .and_then(|()| self.queue(egress_id, UploadKind::Manifest, path, name, target));
            match written {
                Ok(_) => return,
                Err(e) => {
                    warn!(self.log, "cannot rewrite or queue the manifest"; "egress_id" => egress_id, "error" => %e)
                }
            }
        }
        let Some(f) = self.finishing.remove(egress_id) else {
            return;
        };
        let mut info = f.info;
        self.apply(&mut info, true);
        if let Some(o) = self
            .outcomes
            .get(egress_id)
            .into_iter()
            .flatten()
            .find(|o| o.kind == UploadKind::Manifest && o.state == UploadState::Done)
        {
            info.manifest = o.location.clone();
        }
        let _ = self.journal.remove_target(egress_id);
        if !self.cfg.keep_local {
            let uploaded: Vec<PathBuf> = self
                .outcomes
                .get(egress_id)
                .into_iter()
                .flatten()
                .filter(|o| o.state == UploadState::Done)
                .filter(|o| !matches!(o.kind, UploadKind::File | UploadKind::Manifest))
                .map(|o| o.local_path.clone())
                .collect();
            if !uploaded.is_empty() {
                tokio::task::spawn_blocking(move || {
                    for p in uploaded {
                        let _ = std::fs::remove_file(p);
                    }
                });
            }
        }
        // It ends now: `ended_at` is when the status became final.
        info.ended_at = Some(now_ms());
        self.outcomes.remove(egress_id);
        if let Err(e) = self.journal.remove_finish(egress_id) {
            warn!(self.log, "cannot remove a finish record"; "egress_id" => egress_id, "error" => %e);
        }
        info!(self.log, "uploads done"; "egress_id" => egress_id, "status" => info.status.as_str(),
              "error" => info.error.clone());
        if f.waiters.is_empty() && f.report.is_none() {
            self.unclaimed.insert(egress_id.to_string(), info);
            return;
        }
        for w in f.waiters {
            let _ = w.send(info.clone());
        }
    }
}

impl Actor for Delivery {
    type Context = Context<Self>;

    /// Resumes what a previous run left in the queue.
    fn started(&mut self, ctx: &mut Context<Self>) {
        let (entries, finishes, problems) = self.journal.load();
        for p in problems {
            warn!(self.log, "unreadable upload queue entry"; "problem" => p);
        }
        if !entries.is_empty() || !finishes.is_empty() {
            info!(self.log, "resuming the upload queue"; "uploads" => entries.len(), "egresses" => finishes.len());
        }
        for e in entries {
            self.waiting.push_back(e.id.clone());
            self.entries.insert(
                e.id.clone(),
                Tracked {
                    entry: e,
                    state: UploadState::Pending,
                },
            );
        }
        for info in finishes {
            let id = info.egress_id.clone();
            self.finishing.insert(
                id.clone(),
                Finishing {
                    info,
                    report: None,
                    waiters: Vec::new(),
                    manifest: None,
                },
            );
            self.try_finish(&id);
        }
        self.depth();
        self.pump(ctx);
    }
}

/// Queue one output of a running egress for upload as soon as it is written (a closed segment,
/// the playlist after it, an image, the manifest). `key` is the output's name relative to the
/// output directory (the target's prefix is added). Returns the location the object will have
/// on the primary target, or None when the egress has no upload target (nothing is queued).
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct Enqueue {
    pub egress_id: String,
    /// The request's target; None = `storage.upload`.
    pub target: Option<UploadTarget>,
    pub local_path: PathBuf,
    pub key: String,
    pub kind: UploadKind,
}

impl Handler<Enqueue> for Delivery {
    type Result = Option<String>;
    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) -> Option<String> {
        let target = msg.target.or_else(|| self.cfg.default_target.clone())?;
        let location = target.location(&target.key_for(&msg.key));
        if let Err(e) = self.queue(&msg.egress_id, msg.kind, msg.local_path, msg.key, target) {
            // Without its journal entry an upload could be lost to a crash; say so loudly, but
            // still upload it now.
            warn!(self.log, "cannot write the upload queue entry"; "egress_id" => &msg.egress_id, "error" => %e);
        }
        self.pump(ctx);
        Some(location)
    }
}

/// The egress ended: `info` is its final record (status decided, files read back). Uploads its
/// files (those not uploaded yet), waits for every upload of the egress, and answers with the
/// final record, `location` and `upload` filled in (`failed`, "upload failed: ..." if one
/// failed). While it waits, `report` gets the record (status `ending`) at each change.
#[derive(Message)]
#[rtype(result = "EgressInfo")]
pub struct FinishEgress {
    pub info: EgressInfo,
    /// Outputs besides `info.files`: `(kind, local path, name relative to the output directory)`;
    /// a playlist is uploaded again (its final version), the others when not queued yet.
    pub extra: Vec<(UploadKind, PathBuf, String)>,
    pub target: Option<UploadTarget>,
    pub report: Option<Recipient<UpdateEgress>>,
}

impl Handler<FinishEgress> for Delivery {
    type Result = ResponseFuture<EgressInfo>;
    fn handle(&mut self, msg: FinishEgress, ctx: &mut Context<Self>) -> Self::Result {
        let info = msg.info;
        let id = info.egress_id.clone();
        let target = msg
            .target
            .or_else(|| self.journal.target(&id))
            .or_else(|| self.cfg.default_target.clone());
        let mut manifest = None;
        if let Some(t) = &target {
            for f in &info.files {
                let path = PathBuf::from(&f.location);
                if f.size_bytes == 0 || !path.is_file() || self.knows(&id, &path) {
                    continue;
                }
                let name = f.filename.clone();
                if let Err(e) = self.queue(&id, UploadKind::File, path, name, t.clone()) {
                    warn!(self.log, "cannot write the upload queue entry"; "egress_id" => &id, "error" => %e);
                }
            }
            for (kind, path, name) in msg.extra {
                if kind == UploadKind::Manifest {
                    manifest = Some((path, name, t.clone()));
                    continue;
                }
                if !path.is_file() || (kind != UploadKind::Playlist && self.knows(&id, &path)) {
                    continue;
                }
                if let Err(e) = self.queue(&id, kind, path, name, t.clone()) {
                    warn!(self.log, "cannot write the upload queue entry"; "egress_id" => &id, "error" => %e);
                }
            }
        }
        let pending = self.entries.values().any(|t| t.entry.egress_id == id);
        if !pending && !self.outcomes.contains_key(&id) && manifest.is_none() {
            let _ = self.journal.remove_target(&id);
            return Box::pin(std::future::ready(info));
        }
        if let Err(e) = self.journal.put_finish(&info) {
            warn!(self.log, "cannot write the finish record"; "egress_id" => &id, "error" => %e);
        }
        let (tx, rx) = oneshot::channel();
        self.finishing.insert(
            id.clone(),
            Finishing {
                info: info.clone(),
                report: msg.report,
                waiters: vec![tx],
                manifest,
            },
        );
        self.show_progress(&id);
        self.pump(ctx);
        self.try_finish(&id);
        // try_finish may have queued the manifest.
        self.pump(ctx);
        Box::pin(async move { rx.await.unwrap_or(info) })
    }
}

/// A restarted service's Supervisor: the final record of an egress whose uploads a previous
/// run left in the queue, once they are done; None when the queue holds nothing of it.
#[derive(Message)]
#[rtype(result = "Option<EgressInfo>")]
pub struct ResumeEgress {
    pub egress_id: String,
    pub report: Option<Recipient<UpdateEgress>>,
}

impl Handler<ResumeEgress> for Delivery {
    type Result = ResponseFuture<Option<EgressInfo>>;
    fn handle(&mut self, msg: ResumeEgress, _: &mut Context<Self>) -> Self::Result {
        if let Some(info) = self.unclaimed.remove(&msg.egress_id) {
            return Box::pin(std::future::ready(Some(info)));
        }
        let Some(f) = self.finishing.get_mut(&msg.egress_id) else {
            return Box::pin(std::future::ready(None));
        };
        let (tx, rx) = oneshot::channel();
        f.waiters.push(tx);
        f.report = msg.report;
        self.show_progress(&msg.egress_id);
        Box::pin(async move { rx.await.ok() })
    }
}

/// An egress with an upload target started recording: its target is kept in the journal until
/// it is delivered, so a service that dies meanwhile still uploads its file on the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HoldTarget {
    pub egress_id: String,
    pub target: UploadTarget,
}

impl Handler<HoldTarget> for Delivery {
    type Result = ();
    fn handle(&mut self, msg: HoldTarget, _: &mut Context<Self>) {
        if let Err(e) = self.journal.put_target(&msg.egress_id, &msg.target) {
            warn!(self.log, "cannot keep the upload target"; "egress_id" => &msg.egress_id, "error" => %e);
        }
    }
}

/// Egresses with uploads still queued or running (retention leaves their outputs alone).
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct QueuedEgresses;

impl Handler<QueuedEgresses> for Delivery {
    type Result = Vec<String>;
    fn handle(&mut self, _: QueuedEgresses, _: &mut Context<Self>) -> Vec<String> {
        let mut ids: Vec<String> = self
            .entries
            .values()
            .map(|t| t.entry.egress_id.clone())
            .chain(self.finishing.keys().cloned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}
