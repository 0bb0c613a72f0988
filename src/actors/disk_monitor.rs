//! The DiskMonitor actor: keeps the output directory from filling up.
//!
//! Every second (on a blocking-pool thread) it reads the free space under `storage.output_dir`
//! and the size of every running egress's outputs, so each egress has a measured write rate.
//! Admission asks it (`CheckDisk`) before a start: free space must cover
//! `storage.min_free_bytes` plus what the running egresses write in `storage.disk_horizon_s`.
//! Below `storage.stop_free_bytes` it stops the egress writing fastest gracefully ("Disk
//! full", `complete`, its file finalized), one at a time like CPU overload: the next only once
//! that one has ended. With `storage.delete_after` it also deletes the local outputs of ended
//! egresses that old (never one recording or still queued for upload) and marks their records.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use slog::{Logger, info, warn};

use crate::actors::delivery::{Delivery, QueuedEgresses};
use crate::actors::pipeline::{StopPipeline, StopReason};
use crate::actors::supervisor::{EndedBefore, MarkDeleted, Supervisor};
use crate::config::Config;
use crate::delivery::disk::{DiskState, Growth, admit, reserved_bytes, victim};
use crate::error::AdmissionError;
use crate::metrics::METRICS;
use crate::model::now_ms;

const TICK: Duration = Duration::from_secs(1);

/// How long a "Disk full" victim may take to end before the next one may be picked.
const STOP_PATIENCE_MS: u64 = 30_000;

struct Watched {
    paths: Vec<PathBuf>,
    growth: Growth,
    stop: Recipient<StopPipeline>,
}

pub struct DiskMonitor {
    output_dir: PathBuf,
    min_free: u64,
    stop_free: u64,
    horizon_s: f64,
    delete_after_s: Option<f64>,
    watched: HashMap<String, Watched>,
    free: Option<u64>,
    /// The "Disk full" victim still ending, and since when.
    stopping: Option<(String, u64)>,
    /// A tick's scan still running.
    scanning: bool,
    retention_running: bool,
    supervisor: Option<Addr<Supervisor>>,
    delivery: Option<Addr<Delivery>>,
    log: Logger,
}

impl DiskMonitor {
    pub fn new(cfg: &Config, output_dir: PathBuf, log: Logger) -> DiskMonitor {
        DiskMonitor {
            output_dir,
            min_free: cfg.storage.min_free_bytes,
            stop_free: cfg.storage.stop_free_bytes,
            horizon_s: cfg.storage.disk_horizon_s,
            delete_after_s: cfg.delete_after_s(),
            watched: HashMap::new(),
            free: None,
            stopping: None,
            scanning: false,
            retention_running: false,
            supervisor: None,
            delivery: None,
            log,
        }
    }

    fn reserved(&self) -> u64 {
        reserved_bytes(
            self.watched.values().map(|w| w.growth.rate()),
            self.horizon_s,
        )
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            return;
        }
        self.scanning = true;
        let dir = self.output_dir.clone();
        let paths: Vec<(String, Vec<PathBuf>)> = self
            .watched
            .iter()
            .map(|(id, w)| (id.clone(), w.paths.clone()))
            .collect();
        let scan = actix_web::rt::task::spawn_blocking(move || {
            let free = crate::store::free_bytes(&dir).ok();
            let sizes: Vec<(String, u64)> = paths
                .into_iter()
                .map(|(id, ps)| (id, ps.iter().map(|p| size_of(p)).sum()))
                .collect();
            (free, sizes)
        });
        ctx.spawn(actix::fut::wrap_future(scan).map(|r, act: &mut Self, _| {
            act.scanning = false;
            let Ok((free, sizes)) = r else { return };
            let at = now_ms();
            for (id, bytes) in sizes {
                if let Some(w) = act.watched.get_mut(&id) {
                    w.growth.add(at, bytes);
                }
            }
            act.free = free;
            let reserved = act.reserved();
            METRICS.disk_reserved_bytes.set(reserved as f64);
            if let Some(f) = free {
                METRICS.disk_free_bytes.set(f as f64);
                act.guard(f, at);
            }
        }));
        self.retention(ctx);
    }

    /// Below `stop_free_bytes`: stop the fastest writer, one at a time.
    fn guard(&mut self, free: u64, at: u64) {
        if let Some((id, since)) = &self.stopping {
            if self.watched.contains_key(id) && at.saturating_sub(*since) < STOP_PATIENCE_MS {
                return;
            }
            self.stopping = None;
        }
        let rates: HashMap<String, (f64, u64)> = self
            .watched
            .iter()
            .map(|(id, w)| (id.clone(), (w.growth.rate(), w.growth.bytes())))
            .collect();
        let Some(id) = victim(free, self.stop_free, &rates).map(str::to_string) else {
            return;
        };
        let (rate, bytes) = rates[&id];
        warn!(self.log, "disk nearly full: stopping the egress writing fastest";
              "egress_id" => &id, "free_bytes" => free, "stop_free_bytes" => self.stop_free,
              "rate_bytes_per_s" => rate, "bytes" => bytes, "running" => rates.len());
        METRICS
            .overload_actions_total
            .with_label_values(&["stop", "disk"])
            .inc();
        if let Some(w) = self.watched.get(&id) {
            w.stop.do_send(StopPipeline(StopReason::DiskFull));
        }
        self.stopping = Some((id, at));
    }

    /// Deletes the local outputs of ended egresses older than `storage.delete_after`.
    fn retention(&mut self, ctx: &mut Context<Self>) {
        let (Some(after_s), Some(sup)) = (self.delete_after_s, self.supervisor.clone()) else {
            return;
        };
        if self.retention_running {
            return;
        }
        self.retention_running = true;
        let delivery = self.delivery.clone();
        let root = self.output_dir.clone();
        let log = self.log.clone();
        let work = async move {
            // Those ended long enough ago whose outputs are still there (the index knows).
            let before_ms = now_ms().saturating_sub((after_s * 1000.0) as u64);
            let records = sup
                .send(EndedBefore { before_ms })
                .await
                .unwrap_or_default();
            let queued = match &delivery {
                Some(d) => match d.send(QueuedEgresses).await {
                    Ok(q) => q,
                    // Not knowing what is queued, delete nothing.
                    Err(_) => return,
                },
                None => Vec::new(),
            };
            let now = now_ms();
            let due: Vec<(String, Vec<PathBuf>)> =
                crate::delivery::retention::due(&records, now, after_s, |id| {
                    queued.iter().any(|q| q == id)
                })
                .into_iter()
                .map(|i| {
                    // By name under the output directory: once uploaded, `location` is the
                    // object's, and a kept local copy (`keep_local`) is still there.
                    // Segments and images by their `{prefix}_` stem, playlists by name.
                    let paths = i
                        .files
                        .iter()
                        .map(|f| root.join(&f.filename))
                        .chain(i.segments.iter().flat_map(|s| {
                            let mut v =
                                vec![root.join(&s.playlist), root.join(format!("{}_", s.prefix))];
                            v.extend(s.live_playlist.iter().map(|l| root.join(l)));
                            v
                        }))
                        .chain(
                            i.images
                                .iter()
                                .map(|im| root.join(format!("{}_", im.prefix))),
                        )
                        .collect();
                    (i.egress_id.clone(), paths)
                })
                .collect();
            for (id, paths) in due {
                let root = root.clone();
                let removed = actix_web::rt::task::spawn_blocking(move || {
                    paths
                        .iter()
                        .flat_map(|p| matching_files(p))
                        .filter(|p| confined(&root, p))
                        .filter(|p| std::fs::remove_file(p).is_ok())
                        .count()
                })
                .await
                .unwrap_or(0);
                info!(log, "retention: local outputs deleted"; "egress_id" => &id, "files" => removed);
                METRICS.retention_deleted_total.inc();
                sup.do_send(MarkDeleted {
                    egress_id: id,
                    at_ms: now,
                });
            }
        };
        ctx.spawn(
            actix::fut::wrap_future(work).map(|_, act: &mut Self, _| act.retention_running = false),
        );
    }
}

/// True when `p`, symlinks resolved, is inside `root` (retention never deletes outside it).
fn confined(root: &std::path::Path, p: &std::path::Path) -> bool {
    match (root.canonicalize(), p.canonicalize()) {
        (Ok(r), Ok(c)) => c.starts_with(r) && c.is_file(),
        _ => false,
    }
}

/// The file at `p`; or, for a path that is no file (`dir/stem_` of segments or images), the
/// numbered files of that stem in `dir` (`stem_00000.ts`, `stem_00001.4242.ts`, `stem_00002.jpg`):
/// never another egress's whose prefix only starts the same (`stem_b_00000.ts`).
fn matching_files(p: &std::path::Path) -> Vec<PathBuf> {
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
        return vec![p.to_path_buf()];
    }
    let (Some(dir), Some(stem)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix(stem))
                        .is_some_and(crate::model::numbered::is_numbered_rest)
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes of what `matching_files` finds at `p`.
fn size_of(p: &std::path::Path) -> u64 {
    matching_files(p)
        .iter()
        .filter_map(|f| std::fs::symlink_metadata(f).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

impl Actor for DiskMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tick(ctx);
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }
}

/// The actors retention asks (set once both exist; see `service::serve`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectDisk {
    pub supervisor: Addr<Supervisor>,
    pub delivery: Addr<Delivery>,
}

impl Handler<ConnectDisk> for DiskMonitor {
    type Result = ();
    fn handle(&mut self, msg: ConnectDisk, _: &mut Context<Self>) {
        self.supervisor = Some(msg.supervisor);
        self.delivery = Some(msg.delivery);
    }
}

/// A running egress's outputs (files or directories) to measure; `stop` is its Pipeline.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchOutput {
    pub egress_id: String,
    pub paths: Vec<PathBuf>,
    pub stop: Recipient<StopPipeline>,
}

impl Handler<WatchOutput> for DiskMonitor {
    type Result = ();
    fn handle(&mut self, msg: WatchOutput, _: &mut Context<Self>) {
        self.watched.insert(
            msg.egress_id,
            Watched {
                paths: msg.paths,
                growth: Growth::default(),
                stop: msg.stop,
            },
        );
    }
}

/// The egress stopped writing (its handler exited).
#[derive(Message)]
#[rtype(result = "()")]
pub struct UnwatchOutput {
    pub egress_id: String,
}

impl Handler<UnwatchOutput> for DiskMonitor {
    type Result = ();
    fn handle(&mut self, msg: UnwatchOutput, _: &mut Context<Self>) {
        self.watched.remove(&msg.egress_id);
    }
}

/// Admission's disk check for a new egress, with the free bytes the caller just read (off
/// this thread; None = use the last sample): Ok, or `AdmissionError::Disk` (503
/// `no_capacity`, `reason: disk`).
#[derive(Message)]
#[rtype(result = "Result<(), AdmissionError>")]
pub struct CheckDisk {
    pub free_bytes: Option<u64>,
}

impl Handler<CheckDisk> for DiskMonitor {
    type Result = Result<(), AdmissionError>;
    fn handle(&mut self, msg: CheckDisk, _: &mut Context<Self>) -> Self::Result {
        // Before any reading nothing is known to be short.
        let Some(free) = msg.free_bytes.or(self.free) else {
            return Ok(());
        };
        let reserved = self.reserved();
        admit(free, self.min_free, reserved).map_err(|needed| AdmissionError::Disk {
            free_bytes: free,
            needed_bytes: needed,
        })
    }
}

/// Free and reserved disk for `GET /v1/node`.
#[derive(Message)]
#[rtype(result = "DiskState")]
pub struct GetDiskState;

impl Handler<GetDiskState> for DiskMonitor {
    type Result = MessageResult<GetDiskState>;
    fn handle(&mut self, _: GetDiskState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(DiskState {
            free_bytes: self.free.unwrap_or(0),
            reserved_bytes: self.reserved(),
            min_free_bytes: self.min_free,
            stop_free_bytes: self.stop_free,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{matching_files, size_of};

    #[test]
    fn a_stem_matches_its_numbered_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, len) in [
            ("show_00000.ts", 10),
            ("show_00001.4242.ts", 20),
            ("show_123456.jpg", 40),
            ("show_b_00000.ts", 1000),
            ("show_final.mp4", 1000),
            ("show.m3u8", 1000),
            ("show_0001.ts", 1000),
        ] {
            std::fs::write(dir.path().join(name), vec![0u8; len]).expect("write");
        }
        let stem = dir.path().join("show_");
        let mut found: Vec<String> = matching_files(&stem)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        found.sort();
        assert_eq!(
            found,
            ["show_00000.ts", "show_00001.4242.ts", "show_123456.jpg"]
        );
        assert_eq!(size_of(&stem), 70);
        assert_eq!(size_of(&dir.path().join("show_final.mp4")), 1000);
    }
}
