//! One upload queue entry's upload: the primary target with retries and backoff for
//! `storage.upload_retry_s`, then the backup target; runs off the actor, answers a `Settled`.

use super::*;

/// One entry's upload: primary target with retries, then the backup.
pub(super) struct Job {
    pub(super) entry: Entry,
    pub(super) primary: Result<Connected, AttemptError>,
    pub(super) backup: Option<(Result<Connected, AttemptError>, UploadTarget)>,
    pub(super) cfg: DeliveryConfig,
    pub(super) journal: Journal,
    pub(super) log: Logger,
}

impl Job {
    pub(super) async fn run(self) -> Settled {
        let started = Instant::now();
        let mut entry = self.entry.clone();
        // A previous run died with a multipart upload open: abort it, then upload whole again.
        if let Some((on_backup, upload_id)) = entry.multipart.take() {
            let store = if on_backup {
                self.backup
                    .as_ref()
                    .and_then(|(c, t)| c.as_ref().ok().map(|c| (c, t)))
            } else {
                self.primary.as_ref().ok().map(|c| (c, &entry.target))
            };
            if let Some((s, t)) = store {
                match abort_stale(s, &t.key_for(&entry.name), &upload_id).await {
                    Ok(()) => info!(self.log, "aborted a multipart upload left by a previous run";
                                    "entry" => &entry.id),
                    Err(e) => {
                        warn!(self.log, "cannot abort a stale multipart upload (the store expires it)";
                                    "entry" => &entry.id, "error" => e)
                    }
                }
            }
            let j = self.journal.clone();
            let e2 = entry.clone();
            let _ = tokio::task::spawn_blocking(move || j.put(&e2)).await;
        }
        let first = self
            .attempt_target(&entry, &self.primary, &entry.target, false)
            .await;
        let result = match first {
            Ok(loc) => Ok(loc),
            Err(e1) => match &self.backup {
                Some((client, target)) => {
                    warn!(self.log, "upload failed; trying the backup target";
                          "entry" => &entry.id, "target" => entry.target.label(), "error" => &e1);
                    METRICS.upload_backup_total.inc();
                    self.attempt_target(&entry, client, target, true)
                        .await
                        .map_err(|e2| {
                            format!(
                                "upload failed: {}: {e1}; backup {}: {e2}",
                                entry.target.label(),
                                target.label()
                            )
                        })
                }
                None => Err(format!("upload failed: {}: {e1}", entry.target.label())),
            },
        };
        if entry.snapshot_of.is_some() {
            // Ours, whatever happened: the playlist itself stays where the handler writes it.
            let p = entry.local_path.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(p)).await;
        }
        let local_path = entry
            .snapshot_of
            .clone()
            .unwrap_or(entry.local_path.clone());
        match result {
            Ok(location) => {
                METRICS
                    .upload_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                // Segments, playlists and images stay until the egress is finished: the
                // closing of its outputs still reads them (and a playlist is rewritten).
                let now = matches!(entry.kind, UploadKind::File | UploadKind::Manifest)
                    && entry.snapshot_of.is_none();
                if !self.cfg.keep_local && now {
                    let p = entry.local_path.clone();
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(p)).await;
                }
                info!(self.log, "uploaded"; "entry" => &entry.id, "location" => &location,
                      "seconds" => started.elapsed().as_secs_f64());
                Settled {
                    local_path,
                    kind: entry.kind,
                    state: UploadState::Done,
                    location: Some(location),
                    error: None,
                }
            }
            Err(error) => {
                METRICS.upload_failures_total.inc();
                warn!(self.log, "upload failed for good; the local copy stays";
                      "entry" => &entry.id, "error" => &error);
                Settled {
                    local_path,
                    kind: entry.kind,
                    state: UploadState::Failed,
                    location: None,
                    error: Some(error),
                }
            }
        }
    }

    /// Retries one target with backoff for `storage.upload_retry_s` (not when it refuses the
    /// credentials); its location, or the last error.
    async fn attempt_target(
        &self,
        entry: &Entry,
        client: &Result<Connected, AttemptError>,
        target: &UploadTarget,
        on_backup: bool,
    ) -> Result<String, String> {
        let store = client.as_ref().map_err(|e| e.message.clone())?;
        let key = target.key_for(&entry.name);
        let deadline = Instant::now() + self.cfg.retry;
        let mut n = 0u32;
        loop {
            let journal = self.journal.clone();
            let base = entry.clone();
            let on_open = move |id: Option<String>| {
                let (journal, mut e) = (journal.clone(), base.clone());
                e.multipart = id.map(|id| (on_backup, id));
                async move {
                    let _ = tokio::task::spawn_blocking(move || journal.put(&e)).await;
                }
            };
            match upload_file(store, &entry.local_path, &key, self.cfg.shape, on_open).await {
                Ok(bytes) => {
                    METRICS.upload_bytes_total.inc_by(bytes);
                    return Ok(target.location(&key));
                }
                Err(e) => {
                    let wait = backoff(n);
                    if e.permanent || Instant::now() + wait > deadline {
                        return Err(e.message);
                    }
                    METRICS.upload_retries_total.inc();
                    warn!(self.log, "upload attempt failed; retrying"; "entry" => &entry.id,
                          "target" => target.label(), "attempt" => n + 1,
                          "retry_in_s" => wait.as_secs_f64(), "error" => &e.message);
                    tokio::time::sleep(wait).await;
                    n += 1;
                }
            }
        }
    }
}
