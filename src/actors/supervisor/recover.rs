//! What a restarted service does with the records a previous run left unfinished: waits for a
//! handler that still finalizes on its own, settles the record by the same rules as any end
//! (`rules::outcome::orphan`), makes its outputs whole and delivers them like any other end's.

use super::*;
use crate::store::handler_alive;

impl Supervisor {
    /// Settles records a previous run left unfinished: waits for a handler that still runs
    /// (it is finalizing on its own after losing its parent), then reads its result and files.
    pub(super) fn recover(&mut self, ctx: &mut Context<Self>) {
        let mut counts: HashMap<(EgressType, EgressStatus), i64> = HashMap::new();
        for (_, e) in self.index.entries() {
            *counts.entry((e.egress_type, e.status)).or_default() += 1;
        }
        for ((t, st), n) in counts {
            METRICS
                .egresses
                .with_label_values(&[t.as_str(), st.as_str()])
                .add(n);
        }
        self.prune();
        ctx.run_interval(PRUNE_EVERY, |act, _| act.prune());
        for info in std::mem::take(&mut self.loaded) {
            self.egresses.insert(info.egress_id.clone(), info.clone());
            info!(self.log, "settling an egress left by a previous run"; "egress_id" => &info.egress_id);
            let store = self.store.clone();
            let resume = self.delivery.clone().map(|d| {
                d.send(crate::actors::delivery::ResumeEgress {
                    egress_id: info.egress_id.clone(),
                    report: Some(ctx.address().recipient()),
                })
            });
            let root = self.output_root.clone();
            let delivery = self.delivery.clone();
            let report = ctx.address().recipient();
            let fut = async move {
                // Its handler was done and its uploads were running: they finish it.
                if let Some(r) = resume
                    && let Ok(Some(done)) = r.await
                {
                    return done;
                }
                let result_path = store.result_path(&info.egress_id);
                let settled = settle_orphan(info, store, root.clone()).await;
                // What the handler finalized on its own is uploaded like any other ending:
                // files, every segment, the final playlists, images and the manifest.
                let outputs = crate::closing::Outputs::from_info(&settled, &root)
                    .with_timeline(crate::timeline::path_for(&result_path));
                let extra = crate::actors::delivery::deliverables(&settled, &outputs);
                match delivery {
                    Some(d) => d
                        .send(crate::actors::delivery::FinishEgress {
                            info: settled.clone(),
                            extra,
                            target: None,
                            report: Some(report),
                        })
                        .await
                        .unwrap_or(settled),
                    None => settled,
                }
            };
            ctx.spawn(actix::fut::wrap_future(fut).map(|info, act: &mut Self, _| act.put(info)));
        }
    }
}

async fn settle_orphan(mut info: EgressInfo, store: Store, output_root: PathBuf) -> EgressInfo {
    if let Some(pid) = info.handler_pid {
        // The handler saw its stdin close and is finalizing; give it the time it needs.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        // `/proc` is read on a blocking thread, never on the actor's.
        let alive = |id: String| async move {
            actix_web::rt::task::spawn_blocking(move || handler_alive(pid, &id))
                .await
                .unwrap_or(false)
        };
        while alive(info.egress_id.clone()).await && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let result = store.read_result(&info.egress_id);
    info.handler_pid = None;
    info.ended_at = Some(result.as_ref().map(|r| r.ended_at).unwrap_or_else(now_ms));
    // The same rules as a supervised end (`rules::outcome`), from the handler's result file.
    let o = crate::rules::outcome::orphan(result.as_ref());
    if o.status == EgressStatus::Aborted {
        // The handler deleted an output that got no media: nothing was recorded.
        info.files.clear();
    }
    info.status = o.status;
    info.end_reason = Some(o.end_reason);
    if o.error.is_some() {
        info.error = o.error;
    }
    // Outputs a killed handler left unfinished are made whole, then read back.
    let media = info.status != EgressStatus::Aborted;
    let outputs = crate::closing::Outputs::from_info(&info, &output_root).with_timeline(
        crate::timeline::path_for(&store.result_path(&info.egress_id)),
    );
    let mut closed = info.clone();
    match actix_web::rt::task::spawn_blocking(move || {
        crate::closing::close(&mut closed, &outputs, media);
        closed
    })
    .await
    {
        Ok(closed) => closed,
        Err(_) => info,
    }
}
