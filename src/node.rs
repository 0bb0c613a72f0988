//! The node layer: what this node can do, as plain async methods over its actors. Both the HTTP
//! API (`api/`) and fleet placement (`fleet/`) call it; it calls neither, so requests flow one
//! way:
//!
//! ```text
//!   api/ ──────────────┐
//!     └──► fleet/ ──► Node ──► Supervisor (StartEgress: admit, create the output, spawn: one turn)
//!                         ├──► Admission (state, draining, claims)
//!                         └──► AffinityScorer
//! ```
//!
//! A `Node` is cheap to clone (addresses and an `Arc`); the service makes one in its wiring
//! function and hands it to the HTTP app and to the fleet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::sync::mpsc;

use crate::actors::admission::{Admission, GetNodeState, ReleaseClaim, SetDraining, WatchState};
use crate::actors::affinity::{Affinity, AffinityScorer, GetAffinity};
use crate::actors::pipeline::{KillReason, PipelineSetup, StopReason};
use crate::actors::supervisor::{
    CountRunning, EgressPage, EndAll, GetEgress, KillEgress, ListEgresses, StartEgress, StopEgress,
    Supervisor,
};
use crate::config::Config;
use crate::error::{NodeError, RequestError};
use crate::model::{
    EgressInfo, EgressRequest, EgressSpec, EgressStatus, ValidationContext, new_egress_id, now_ms,
};
use crate::rules::admission::NodeState;
use crate::rules::costs::CostClass;
use crate::rules::pricer::Pricer;

/// Free bytes below which `/readyz` calls a directory full (unusable). The disk rule of
/// admission (`storage.min_free_bytes` plus the running egresses' horizon) is separate: it
/// refuses starts with `reason: disk` while the node stays ready.
pub const READY_MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// What the service's control loop reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM or `POST /v1/node/drain`: take nothing new, exit when idle.
    Drain,
    /// SIGINT: stop everything gracefully now, then exit; a second one kills.
    Interrupt,
}

/// Which of stop/kill a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndAction {
    Stop,
    Kill,
}

impl EndAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EndAction::Stop => "stop",
            EndAction::Kill => "kill",
        }
    }
}

/// Whether the node can take work now (`GET /readyz`).
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    Ready,
    /// Why not: draining, a directory that cannot be written, a full disk.
    NotReady(String),
}

mod changes;

/// A handle on this node: its id, config and actors.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Arc<Config>,
    id: String,
    /// `storage.output_dir`, canonical.
    output_dir: PathBuf,
    supervisor: Addr<Supervisor>,
    admission: Addr<Admission>,
    affinity: Addr<AffinityScorer>,
    /// Prices jobs by their class (learned costs).
    pricer: Pricer,
    /// To the control loop (drain).
    control: mpsc::UnboundedSender<Control>,
    /// Uploads and disk safety (None only where a test builds a node without them).
    delivery: Option<Delivery>,
    /// This node's URL as others reach it (`fleet.advertise_url`, else the bound address), set
    /// once the HTTP server is bound: what WHIP URLs start with.
    base_url: std::sync::OnceLock<String>,
}

/// The delivery actors: uploads, and the disk's admission, stops and retention.
#[derive(Clone)]
pub struct Delivery {
    pub uploads: Addr<crate::actors::delivery::Delivery>,
    pub disk: Addr<crate::actors::disk_monitor::DiskMonitor>,
}

/// The actors a node is made of (see `service::serve`).
pub struct Parts {
    pub supervisor: Addr<Supervisor>,
    pub admission: Addr<Admission>,
    pub affinity: Addr<AffinityScorer>,
    pub pricer: Pricer,
    pub control: mpsc::UnboundedSender<Control>,
    pub delivery: Option<Delivery>,
}

impl Node {
    pub fn new(cfg: Arc<Config>, id: String, output_dir: PathBuf, parts: Parts) -> Node {
        Node {
            inner: Arc::new(Inner {
                cfg,
                id,
                output_dir,
                supervisor: parts.supervisor,
                admission: parts.admission,
                affinity: parts.affinity,
                pricer: parts.pricer,
                control: parts.control,
                delivery: parts.delivery,
                base_url: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Sets where this node is reached (once, after the server is bound).
    pub fn set_base_url(&self, url: &str) {
        let _ = self
            .inner
            .base_url
            .set(url.trim_end_matches('/').to_string());
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Job prices by class (learned costs).
    pub fn pricer(&self) -> &Pricer {
        &self.inner.pricer
    }

    /// Checks a request as this node would before starting it (no side effect).
    pub fn validate(
        &self,
        req: &EgressRequest,
        egress_id: &str,
    ) -> Result<EgressSpec, RequestError> {
        let cfg = &self.inner.cfg;
        let ctx = ValidationContext {
            output_dir: &self.inner.output_dir,
            state_dir: &cfg.storage.state_dir,
            allowed_schemes: &cfg.sources.allowed_schemes,
            allowed_web_hosts: &cfg.sources.allowed_web_hosts,
            allowed_endpoints: &cfg.storage.allowed_endpoints,
        };
        req.validate(egress_id, &ctx)
    }

    /// Refuses a page or an upload endpoint whose host resolves to an internal address,
    /// unless its allow-list names that host itself (`model::hosts`).
    async fn check_resolved(&self, req: &EgressRequest) -> Result<(), RequestError> {
        use crate::model::hosts;
        let cfg = &self.inner.cfg;
        let mut checks = Vec::new();
        if let Some(url) = &req.url {
            checks.push((
                "url".to_string(),
                url.clone(),
                &cfg.sources.allowed_web_hosts,
                "sources.allowed_web_hosts",
            ));
        }
        if let Some((field, e)) = req.upload.as_ref().and_then(|u| u.endpoint()) {
            checks.push((
                format!("upload.{field}"),
                e.to_string(),
                &cfg.storage.allowed_endpoints,
                "storage.allowed_endpoints",
            ));
        }
        for (field, url, allowed, key) in checks {
            let Some((host, port)) = hosts::host_port(&url) else {
                continue;
            };
            if hosts::listed(&host, allowed) == hosts::Listed::Exact {
                continue;
            }
            let checked = actix_web::rt::task::spawn_blocking(move || {
                hosts::check_resolved(&host, port, key)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(why) = checked {
                return Err(RequestError::invalid(&field, why));
            }
        }
        Ok(())
    }

    /// Validates, admits and launches an egress here. `egress_id` is given when the fleet placed
    /// the job (a retry elsewhere keeps its id); `claim_id` is a claim this node gave earlier.
    pub async fn start(
        &self,
        req: EgressRequest,
        egress_id: Option<String>,
        claim_id: Option<String>,
    ) -> Result<EgressInfo, NodeError> {
        self.start_placed(req, egress_id, claim_id, None).await
    }

    /// `start`, with the record saying how the egress was placed (`EgressInfo::placement`).
    pub async fn start_placed(
        &self,
        req: EgressRequest,
        egress_id: Option<String>,
        claim_id: Option<String>,
        placement: Option<&str>,
    ) -> Result<EgressInfo, NodeError> {
        let id = egress_id.unwrap_or_else(new_egress_id);
        let spec = self.validate(&req, &id)?;
        let cfg = &self.inner.cfg;
        if req.upload.is_some() && !cfg.storage.request_upload {
            return Err(RequestError::invalid(
                "upload",
                "this node takes no upload target in requests (storage.request_upload is false)",
            )
            .into());
        }
        self.check_resolved(&req).await?;
        if let Some(d) = &self.inner.delivery {
            // Free space now, not at the last sample: a disk filled a moment ago refuses.
            let dir = self.inner.output_dir.clone();
            let free_bytes =
                actix_web::rt::task::spawn_blocking(move || crate::store::free_bytes(&dir).ok())
                    .await
                    .ok()
                    .flatten();
            let disk = d
                .disk
                .send(crate::actors::disk_monitor::CheckDisk { free_bytes })
                .await
                .map_err(NodeError::from_mailbox)?;
            if let Err(e) = disk {
                crate::metrics::METRICS
                    .admissions_total
                    .with_label_values(&[spec.egress_type.as_str(), e.reason()])
                    .inc();
                return Err(NodeError::NoCapacity(e));
            }
        }
        // The request's own target (credentials included) goes to the uploads; the record
        // shows it with its secrets redacted.
        let link = self
            .inner
            .delivery
            .as_ref()
            .map(|d| crate::actors::delivery::DeliveryLink {
                delivery: d.uploads.clone(),
                disk: d.disk.clone(),
                target: req.upload.clone().or_else(|| cfg.storage.upload.clone()),
            });
        let cost = req.estimated_cpu.unwrap_or_else(|| {
            let configured = cfg.cpu_cost.priced(
                spec.egress_type,
                spec.outputs.count(),
                crate::pipeline::plan::extra_encodes(&spec.outputs),
            );
            self.inner.pricer.price(&CostClass::of(&spec), configured)
        });
        // Each WHIP source's URL on this node, and the token its publishers show.
        let base = self.inner.base_url.get().cloned().unwrap_or_default();
        let whip: Vec<crate::model::WhipInfo> = spec
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, crate::model::Source::Whip))
            .map(|(i, _)| crate::model::WhipInfo {
                source: i,
                url: format!("{base}/v1/whip/{id}/{i}"),
                publishing: false,
            })
            .collect();
        let whip_token = (!whip.is_empty()).then(crate::model::new_whip_token);
        let info = EgressInfo {
            egress_id: id,
            node_id: self.inner.id.clone(),
            egress_type: spec.egress_type,
            status: EgressStatus::Starting,
            created_at: now_ms(),
            started_at: None,
            ended_at: None,
            end_reason: None,
            error: None,
            request: req.redacted(),
            files: Vec::new(),
            segments: None,
            streams: Vec::new(),
            images: None,
            manifest: None,
            warnings: Vec::new(),
            handler_pid: None,
            cpu_cost: cost,
            placement: placement.map(str::to_string),
            deleted_at: None,
            streams_removed: 0,
            whip,
            whip_token,
            sources: if spec.egress_type == crate::model::EgressType::RoomComposite {
                req.sources
                    .iter()
                    .enumerate()
                    .map(|(id, s)| crate::model::SourceInfo {
                        id,
                        source: s.redacted(),
                        added_at: None,
                        removed_at: None,
                        lost_at: None,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        };
        // A WHIP source starts when its publisher does: the egress waits for it that long.
        let start_timeout_s = if info.whip.is_empty() {
            cfg.pipeline.start_timeout_s
        } else {
            cfg.pipeline
                .start_timeout_s
                .max(cfg.webrtc.publish_timeout_s)
        };
        let setup = PipelineSetup {
            info,
            log_path: PathBuf::new(),
            nice: cfg.pipeline.handler_nice,
            options: crate::model::PipelineOptions {
                allowed_web_hosts: cfg.sources.allowed_web_hosts.clone(),
                webrtc: crate::model::WebrtcOptions::from(&cfg.webrtc),
                start_timeout_s,
                ..crate::model::PipelineOptions::from(&cfg.pipeline)
            },
            spec,
            eos_timeout: Duration::from_secs_f64(cfg.pipeline.eos_timeout_s),
            start_timeout: Duration::from_secs_f64(start_timeout_s),
            max_duration: req.max_duration_s.map(Duration::from_secs_f64),
            delivery: link,
        };
        self.inner
            .supervisor
            .send(StartEgress {
                setup: Box::new(setup),
                claim_id,
            })
            .await
            .map_err(NodeError::from_mailbox)?
    }

    /// Every egress of this node, newest first, optionally only those in `statuses` (the
    /// fleet's merged list; the API pages with `list_page`).
    pub async fn list(
        &self,
        statuses: Option<Vec<EgressStatus>>,
    ) -> Result<Vec<EgressInfo>, NodeError> {
        Ok(self.list_page(statuses, None, usize::MAX).await?.egresses)
    }

    /// A page of this node's egresses, newest first, optionally only those in `statuses`.
    pub async fn list_page(
        &self,
        statuses: Option<Vec<EgressStatus>>,
        after: Option<crate::store::index::Cursor>,
        limit: usize,
    ) -> Result<EgressPage, NodeError> {
        let mut page = self
            .inner
            .supervisor
            .send(ListEgresses {
                statuses,
                after,
                limit,
            })
            .await
            .map_err(NodeError::from_mailbox)?;
        let list = &mut page.egresses;
        // Recording files show their sizes now, as `get` does (the dashboard lists them).
        let running: Vec<(usize, Vec<crate::model::FileInfo>)> = list
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.status.is_final() && !e.files.is_empty())
            .map(|(i, e)| (i, e.files.clone()))
            .collect();
        if !running.is_empty()
            && let Ok(sized) = actix_web::rt::task::spawn_blocking(move || {
                running
                    .into_iter()
                    .map(|(i, f)| (i, with_live_sizes(f)))
                    .collect::<Vec<_>>()
            })
            .await
        {
            for (i, files) in sized {
                list[i].files = files;
            }
        }
        Ok(page)
    }

    /// One egress, if this node has it. While it records, its files' `size_bytes` are their
    /// sizes now (the record holds 0 until a file is closed), so a client can follow it.
    pub async fn get(&self, id: &str) -> Result<Option<EgressInfo>, NodeError> {
        let info = self
            .inner
            .supervisor
            .send(GetEgress(id.to_string()))
            .await
            .map_err(NodeError::from_mailbox)?;
        match info {
            Some(mut info) if !info.status.is_final() && !info.files.is_empty() => {
                let files = info.files.clone();
                // A stat per file: off the worker thread, like every other file access.
                if let Ok(files) =
                    actix_web::rt::task::spawn_blocking(move || with_live_sizes(files)).await
                {
                    info.files = files;
                }
                Ok(Some(info))
            }
            other => Ok(other),
        }
    }

    /// Stops (gracefully) or kills an egress of this node: its record (a kill's shows the killed
    /// status once the handler is gone), None when this node does not have it, `Conflict` once ended.
    pub async fn end(&self, id: &str, action: EndAction) -> Result<Option<EgressInfo>, NodeError> {
        let sup = &self.inner.supervisor;
        let r = match action {
            EndAction::Stop => sup
                .send(StopEgress {
                    egress_id: id.to_string(),
                    reason: StopReason::Api,
                })
                .await
                .map_err(NodeError::from_mailbox)?,
            EndAction::Kill => sup
                .send(KillEgress {
                    egress_id: id.to_string(),
                    reason: KillReason::Api,
                })
                .await
                .map_err(NodeError::from_mailbox)?,
        };
        here(r)
    }

    /// Stops or kills every running egress (SIGINT, drain timeout); returns how many ran.
    pub async fn end_all(&self, all: EndAll) -> usize {
        self.inner.supervisor.send(all).await.unwrap_or(0)
    }

    /// Egresses whose handlers still run.
    pub async fn count_running(&self) -> usize {
        self.inner.supervisor.send(CountRunning).await.unwrap_or(0)
    }

    /// Capacity, load, per-type counts and disk (`GET /v1/node`).
    pub async fn state(&self) -> Result<NodeState, NodeError> {
        let mut s = self
            .inner
            .admission
            .send(GetNodeState)
            .await
            .map_err(NodeError::from_mailbox)?;
        // The price admission charges (learned, once a type's class is learned), not the
        // configured one: after `calibrate` they differ.
        for (t, v) in s.types.iter_mut() {
            if let Some(t) = crate::model::EgressType::parse(t) {
                v.cost = self.inner.pricer.price_of_type(t);
            }
        }
        if let Some(d) = &self.inner.delivery {
            s.disk = d
                .disk
                .send(crate::actors::disk_monitor::GetDiskState)
                .await
                .ok();
        }
        Ok(s)
    }

    /// Takes nothing new from now on (Admission refuses before this returns, so the caller's
    /// answer and every start after it see the node draining); the service exits when idle.
    pub async fn drain(&self) {
        self.set_draining().await;
        let _ = self.inner.control.send(Control::Drain);
    }

    /// Admission refuses everything from now on (the control loop's side of a drain).
    pub async fn set_draining(&self) {
        let _ = self.inner.admission.send(SetDraining(true)).await;
    }

    /// Wakes `notify` on every change of the node's admission state (the fleet publishes it).
    pub async fn watch_state(&self, notify: Arc<tokio::sync::Notify>) -> Result<(), NodeError> {
        self.inner
            .admission
            .send(WatchState(notify))
            .await
            .map_err(NodeError::from_mailbox)
    }

    /// This node's placement score for a request (see `AffinityScorer`).
    pub async fn affinity(&self, ask: GetAffinity) -> Result<Affinity, NodeError> {
        self.inner
            .affinity
            .send(ask)
            .await
            .map_err(NodeError::from_mailbox)
    }

    /// Gives back a claim before its expiry (idempotent).
    pub async fn release_claim(&self, claim_id: String) -> Result<(), NodeError> {
        self.inner
            .admission
            .send(ReleaseClaim { claim_id })
            .await
            .map_err(NodeError::from_mailbox)
    }

    /// Ready when not draining and both the state and the output directory take writes and
    /// have room (directories removed under the service are recreated here).
    pub async fn readiness(&self) -> Result<Readiness, NodeError> {
        let state = self.state().await?;
        if state.draining {
            return Ok(Readiness::NotReady("the node is draining".into()));
        }
        let dirs: Vec<PathBuf> = vec![
            self.inner.cfg.storage.state_dir.clone(),
            self.inner.output_dir.clone(),
        ];
        let checked = actix_web::rt::task::spawn_blocking(move || {
            dirs.iter()
                .try_for_each(|d| crate::store::dir_ready(d, READY_MIN_FREE_BYTES))
        })
        .await
        .map_err(|e| NodeError::Internal(format!("readiness check failed: {e}")))?;
        Ok(match checked {
            Ok(()) => Readiness::Ready,
            Err(why) => Readiness::NotReady(why),
        })
    }
}

/// `files` with each size read from the file itself; a file not there yet keeps its size.
fn with_live_sizes(mut files: Vec<crate::model::FileInfo>) -> Vec<crate::model::FileInfo> {
    for f in &mut files {
        if let Ok(meta) = std::fs::metadata(&f.location) {
            f.size_bytes = meta.len();
        }
    }
    files
}

/// An answer about an egress that may not run on this node: None when it is not here (a fleet
/// then asks its owner).
fn here(r: Result<EgressInfo, NodeError>) -> Result<Option<EgressInfo>, NodeError> {
    match r {
        Ok(info) => Ok(Some(info)),
        Err(NodeError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
