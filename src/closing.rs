//! The last look at an egress's outputs once its handler is gone: outputs a kill left unfinished
//! are made whole (`repair`), every output is read back for the record (sizes, durations,
//! segment and image counts), streams still listed as active are ended, and the final record is
//! written beside the outputs as `{egress_id}.json` (the manifest). Blocking: run it on a
//! blocking thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{
    Container, EgressInfo, EgressStatus, FileInfo, OutputsSpec, SegmentsOutput, StreamStatus,
    now_ms,
};
use crate::rules::fidelity::{Expected, StreamSpans};

/// What the Pipeline actor knows of an egress's outputs (a restarted service rebuilds it from
/// the record: `from_info`).
#[derive(Debug, Clone)]
pub struct Outputs {
    pub file: Option<(String, PathBuf, Container)>,
    pub segments: Option<SegmentsOutput>,
    pub images: Option<(PathBuf, String)>,
    pub manifest: PathBuf,
    /// Where the handler wrote the MP4's track starts (`timeline`), if it did; its spans file
    /// (what the file received of each stream) is beside it.
    pub timeline: Option<PathBuf>,
    /// What the handler's graph records (its `recording` event): the file is judged against it.
    pub expected: Option<crate::rules::fidelity::Expected>,
    /// When the recording's media ended (ms): the stop asked for (the sources are cut there),
    /// or when the source stopped sending, if it never came back. The file is judged up to
    /// then, not up to the handler's exit or the end of the wait.
    pub media_until: Option<u64>,
}

impl Outputs {
    pub fn of(o: &OutputsSpec, manifest: &Path) -> Outputs {
        Outputs {
            file: o
                .file
                .as_ref()
                .map(|f| (f.filename.clone(), f.path.clone(), f.container)),
            segments: o.segments.clone(),
            images: o.images.as_ref().map(|i| (i.dir.clone(), i.stem.clone())),
            manifest: manifest.to_path_buf(),
            timeline: None,
            expected: None,
            media_until: None,
        }
    }

    /// With the handler's timeline file (see `timeline::path_for`).
    pub fn with_timeline(mut self, path: PathBuf) -> Outputs {
        self.timeline = Some(path);
        self
    }

    /// From a record a previous run left (paths as they were resolved then).
    pub fn from_info(info: &EgressInfo, root: &Path) -> Outputs {
        let file = info.files.first().map(|f| {
            let p = PathBuf::from(&f.location);
            let c = p
                .extension()
                .and_then(|e| e.to_str())
                .and_then(Container::from_extension)
                .unwrap_or(Container::Mp4);
            (f.filename.clone(), p, c)
        });
        let segments = info
            .segments
            .as_ref()
            .map(|s| crate::repair::segments_of(s, root, 6.0));
        let images = info.images.as_ref().map(|i| {
            let p = PathBuf::from(&i.location);
            (
                p.parent().map(Path::to_path_buf).unwrap_or_default(),
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
        });
        let dir = file
            .as_ref()
            .and_then(|f| f.1.parent().map(Path::to_path_buf))
            .or_else(|| {
                segments
                    .as_ref()
                    .and_then(|s| s.playlist_path.parent().map(Path::to_path_buf))
            })
            .or_else(|| images.as_ref().map(|i| i.0.clone()))
            .unwrap_or_else(|| root.to_path_buf());
        Outputs {
            file,
            segments,
            images,
            manifest: dir.join(format!("{}.json", info.egress_id)),
            timeline: None,
            expected: None,
            media_until: None,
        }
    }
}

/// Makes every output whole (remuxes a hybrid MP4, ends a playlist left open), reads it back
/// and reports it; returns notes for the log.
pub fn close(info: &mut EgressInfo, o: &Outputs, media: bool) -> Vec<String> {
    let mut notes = Vec::new();
    info.files.clear();
    if let Some((name, path, container)) = &o.file {
        // A hybrid MP4 is fragmented until remuxed here, after a graceful end as after a kill.
        if media && *container == Container::Mp4 {
            let timeline = o
                .timeline
                .as_deref()
                .and_then(crate::timeline::Timeline::read);
            match crate::repair::mp4_if_needed(path, timeline) {
                Some(Ok(())) => notes.push("hybrid MP4 remuxed into a normal MP4".into()),
                Some(Err(e)) => {
                    notes.push(format!("MP4 repair failed, the fragmented file stays: {e}"))
                }
                None => {}
            }
        }
        let spans = o
            .timeline
            .as_deref()
            .and_then(|t| crate::timeline::read_spans(&crate::timeline::spans_beside(t)));
        info.files = describe_file(name, path);
        if let (Some(f), Some(s)) = (info.files.first_mut(), spans) {
            f.video_s = s.video_s();
            f.audio_s = s.audio_s();
        }
        if let (Some(expected), Some(spans)) = (o.expected, spans) {
            judge(info, expected, &spans, o.media_until);
        }
        if info.files.first().is_some_and(|f| f.size_bytes == 0) {
            crate::outputs::remove_if_empty(path);
            info.files.clear();
        }
    }
    if let Some(s) = &o.segments {
        if s.playlist_path.exists()
            && let Err(e) = crate::repair::close_playlist(s)
        {
            notes.push(format!("cannot end the playlist: {e}"));
        }
        let first = s
            .dir
            .join(crate::pipeline::output_segments::segment_name(s, 0));
        crate::outputs::remove_if_empty(&first);
        info.segments = s
            .playlist_path
            .exists()
            .then(|| crate::repair::segments_info(s));
    }
    if let Some((dir, stem)) = &o.images {
        crate::outputs::remove_if_empty(&dir.join(format!("{stem}_00000.jpg")));
        if let Some(im) = &mut info.images {
            im.count = crate::repair::count_images(dir, stem);
        }
    }
    for s in &mut info.streams {
        match s.status {
            StreamStatus::Active => s.status = StreamStatus::Ended,
            // Still failing at the end (the handler was killed before it said so).
            StreamStatus::Retrying => s.status = StreamStatus::Failed,
            _ => continue,
        }
        s.ended_at = Some(now_ms());
    }
    if media || !info.files.is_empty() || info.segments.is_some() {
        info.manifest = Some(o.manifest.display().to_string());
        match serde_json::to_vec_pretty(&info) {
            Ok(json) => {
                if let Err(e) =
                    crate::store::write_atomic(&o.manifest, &json, crate::store::Durability::Data)
                {
                    notes.push(format!("cannot write the manifest: {e}"));
                    info.manifest = None;
                }
            }
            Err(e) => notes.push(format!("cannot render the manifest: {e}")),
        }
    }
    notes
}

/// Size and Discoverer duration of a closed output file; no entry when there is none (the
/// handler deletes an output that got no media).
pub fn describe_file(filename: &str, path: &Path) -> Vec<FileInfo> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let duration_s = crate::media::discover(path, Duration::from_secs(10))
        .ok()
        .and_then(|m| m.duration_s);
    let files = vec![FileInfo {
        filename: filename.to_string(),
        location: path.display().to_string(),
        size_bytes: meta.len(),
        duration_s,
        video_s: None,
        audio_s: None,
        upload: None,
    }];
    files
}

/// A `complete` egress whose file lacks an announced stream fails; one whose file holds it for
/// less than the recording gets warnings (`rules::fidelity`).
fn judge(info: &mut EgressInfo, expected: Expected, spans: &StreamSpans, until: Option<u64>) {
    if info.status != EgressStatus::Complete {
        return;
    }
    let end = match (info.ended_at, until) {
        (Some(e), Some(u)) => Some(e.min(u)),
        (e, _) => e,
    };
    let recorded_s = match (info.started_at, end) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1000.0,
        _ => 0.0,
    };
    let v = crate::rules::fidelity::judge(expected, spans, recorded_s);
    let gaps = &crate::metrics::METRICS.recording_gaps_total;
    if let Some(f) = v.failure {
        for stream in ["video", "audio"] {
            if f.contains(stream) {
                gaps.with_label_values(&[stream, "missing"]).inc();
            }
        }
        info.status = EgressStatus::Failed;
        info.end_reason = Some(crate::model::reason::FAILURE.into());
        info.error = Some(f);
    }
    for w in v.warnings {
        let stream = if w.starts_with("video") {
            "video"
        } else {
            "audio"
        };
        gaps.with_label_values(&[stream, "partial"]).inc();
        if !info.warnings.contains(&w) {
            info.warnings.push(w);
        }
    }
}
