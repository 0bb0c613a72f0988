//! What a Pipeline actor holds to deliver its egress (`DeliveryLink`) and the calls it makes as
//! its outputs appear and when it ends: each turns a handler event into messages to Delivery
//! and DiskMonitor.

use super::*;

/// What a Pipeline actor holds to deliver its egress: the actors, and its upload target (the
/// request's, else `storage.upload`; None = nothing is uploaded).
#[derive(Clone)]
pub struct DeliveryLink {
    pub delivery: Addr<Delivery>,
    pub disk: Addr<crate::actors::disk_monitor::DiskMonitor>,
    pub target: Option<UploadTarget>,
}

/// For the Pipeline actor as its handler starts: measure its output (disk safety) and keep its
/// upload target in the journal.
pub fn started(
    link: Option<&DeliveryLink>,
    egress_id: &str,
    outputs: Vec<PathBuf>,
    stop: Recipient<crate::actors::pipeline::StopPipeline>,
) {
    let Some(link) = link else { return };
    link.disk.do_send(crate::actors::disk_monitor::WatchOutput {
        egress_id: egress_id.to_string(),
        paths: outputs,
        stop,
    });
    if let Some(t) = &link.target {
        link.delivery.do_send(HoldTarget {
            egress_id: egress_id.to_string(),
            target: t.clone(),
        });
    }
}

/// For the Pipeline actor as its handler reports an output written while it records (a closed
/// segment, the playlist, an image, the manifest): queue it for upload to the egress's target.
/// Nothing happens without a target.
pub fn enqueue(
    link: Option<&DeliveryLink>,
    egress_id: &str,
    local_path: PathBuf,
    key: &str,
    kind: UploadKind,
) {
    let Some(link) = link else { return };
    if link.target.is_none() {
        return;
    }
    link.delivery.do_send(Enqueue {
        egress_id: egress_id.to_string(),
        target: link.target.clone(),
        local_path,
        key: key.to_string(),
        kind,
    });
}

/// The output's name relative to the output directory, from its relative prefix's directory.
fn beside(prefix: &str, name: &str) -> String {
    match Path::new(prefix).parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(name).display().to_string(),
        _ => name.to_string(),
    }
}

/// For the Pipeline actor as the handler closes HLS segment number `count` (1-based): upload it,
/// then the playlists (which go up only after it, see `may_start`).
pub fn segment_closed(
    link: Option<&DeliveryLink>,
    egress_id: &str,
    outputs: &crate::closing::Outputs,
    count: u32,
) {
    let (Some(s), Some(n)) = (&outputs.segments, count.checked_sub(1)) else {
        return;
    };
    let name = crate::pipeline::output_segments::segment_name(s, n);
    let key = beside(&s.prefix, &name);
    enqueue(
        link,
        egress_id,
        s.dir.join(&name),
        &key,
        UploadKind::Segment,
    );
    enqueue(
        link,
        egress_id,
        s.playlist_path.clone(),
        &s.playlist,
        UploadKind::Playlist,
    );
    if let Some((rel, abs, _)) = &s.live {
        enqueue(link, egress_id, abs.clone(), rel, UploadKind::Playlist);
    }
}

/// For the Pipeline actor as the handler writes image number `count` (1-based).
pub fn image_written(
    link: Option<&DeliveryLink>,
    egress_id: &str,
    outputs: &crate::closing::Outputs,
    prefix: &str,
    count: u32,
) {
    let (Some((dir, stem)), Some(n)) = (&outputs.images, count.checked_sub(1)) else {
        return;
    };
    let name = crate::model::numbered::NumberedName::new(stem, "jpg").name(n);
    let key = beside(prefix, &name);
    enqueue(link, egress_id, dir.join(&name), &key, UploadKind::Image);
}

/// For the Pipeline actor as its handler exits: its output no longer grows.
pub fn exited(link: Option<&DeliveryLink>, egress_id: &str) {
    if let Some(link) = link {
        link.disk
            .do_send(crate::actors::disk_monitor::UnwatchOutput {
                egress_id: egress_id.to_string(),
            });
    }
}

/// For the Pipeline actor once its handler exited and `info` holds the final record: None when
/// there is nothing to upload (report `info` as it is), else the final record once the uploads
/// are done (meanwhile the Supervisor gets `ending` records with the upload states).
pub fn finish(
    link: Option<&DeliveryLink>,
    info: &EgressInfo,
    outputs: &crate::closing::Outputs,
    report: Recipient<UpdateEgress>,
) -> Option<impl std::future::Future<Output = EgressInfo> + use<>> {
    let link = link?;
    link.target.as_ref()?;
    let pending = info.clone();
    let extra = deliverables(info, outputs);
    let ask = link.delivery.send(FinishEgress {
        info: pending.clone(),
        extra,
        target: link.target.clone(),
        report: Some(report),
    });
    Some(async move { ask.await.unwrap_or(pending) })
}

/// Every output of an ended egress besides its files, as `FinishEgress::extra`. The same list
/// whether the egress ended under this run or a previous run left it (`Supervisor::recover`),
/// so the bucket holds the same objects either way.
pub fn deliverables(
    info: &EgressInfo,
    outputs: &crate::closing::Outputs,
) -> Vec<(UploadKind, PathBuf, String)> {
    // Every segment and image the closed outputs hold (those not queued yet go up now), then
    // the final playlists.
    let mut extra = Vec::new();
    if let (Some(s), Some(si)) = (&outputs.segments, &info.segments) {
        for n in 0..si.count {
            let name = crate::pipeline::output_segments::segment_name(s, n);
            extra.push((
                UploadKind::Segment,
                s.dir.join(&name),
                beside(&s.prefix, &name),
            ));
        }
        extra.push((
            UploadKind::Playlist,
            s.playlist_path.clone(),
            s.playlist.clone(),
        ));
        if let Some((rel, abs, _)) = &s.live {
            extra.push((UploadKind::Playlist, abs.clone(), rel.clone()));
        }
    }
    if let Some(m) = &info.manifest {
        // Beside the outputs: its name relative to the output directory is the file's or the
        // playlist's directory joined with `{egress_id}.json`.
        let rel_dir = info
            .files
            .first()
            .map(|f| f.filename.clone())
            .or_else(|| info.segments.as_ref().map(|s| s.playlist.clone()))
            .or_else(|| info.images.as_ref().map(|i| i.prefix.clone()));
        if let Some(r) = rel_dir {
            let name = format!("{}.json", info.egress_id);
            extra.push((UploadKind::Manifest, PathBuf::from(m), beside(&r, &name)));
        }
    }
    if let (Some((dir, stem)), Some(im)) = (&outputs.images, &info.images) {
        for n in 0..im.count {
            let name = crate::model::numbered::NumberedName::new(stem, "jpg").name(n);
            extra.push((
                UploadKind::Image,
                dir.join(&name),
                beside(&im.prefix, &name),
            ));
        }
    }
    extra
}
