//! What an egress's record says of its uploads, from the uploads themselves: pure, so the
//! Delivery actor only gathers them and the rules are tested here.

use std::path::{Path, PathBuf};

use crate::delivery::journal::UploadKind;
use crate::model::{EgressInfo, EgressStatus, UploadState};

/// An upload of the egress that is settled (done or failed for good).
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub local_path: PathBuf,
    pub kind: UploadKind,
    pub state: UploadState,
    /// Where the object is, once done.
    pub location: Option<String>,
    pub error: Option<String>,
}

/// An upload of the egress still queued or running.
#[derive(Debug, Clone, Copy)]
pub struct Queued<'a> {
    pub local_path: &'a Path,
    pub kind: UploadKind,
    pub state: UploadState,
}

/// One state for all uploads of `kinds`: failed if one failed, else under way while one is,
/// else pending, else done; None when there are none.
pub fn aggregate(
    settled: &[Settled],
    queued: &[Queued<'_>],
    kinds: &[UploadKind],
) -> Option<UploadState> {
    let states: Vec<UploadState> = settled
        .iter()
        .filter(|o| kinds.contains(&o.kind))
        .map(|o| o.state)
        .chain(
            queued
                .iter()
                .filter(|q| kinds.contains(&q.kind))
                .map(|q| q.state),
        )
        .collect();
    [
        UploadState::Failed,
        UploadState::Uploading,
        UploadState::Pending,
        UploadState::Done,
    ]
    .into_iter()
    .find(|s| states.contains(s))
}

/// Fills in each output's upload state and location: a file's from its own upload, the
/// segments' and images' from all of theirs (their location is the bucket's once every one is
/// done); with `final_`, a failed upload fails the egress, saying why.
pub fn apply(info: &mut EgressInfo, settled: &[Settled], queued: &[Queued<'_>], final_: bool) {
    for f in info.files.iter_mut() {
        let local = Path::new(&f.location);
        if let Some(o) = settled.iter().find(|o| o.local_path == local) {
            f.upload = Some(o.state);
            if let Some(l) = &o.location {
                f.location = l.clone();
            }
        } else if let Some(q) = queued.iter().find(|q| q.local_path == local) {
            f.upload = Some(q.state);
        }
    }
    let done = |o: &&Settled| o.state == UploadState::Done;
    if let Some(seg) = info.segments.as_mut() {
        seg.upload = aggregate(
            settled,
            queued,
            &[UploadKind::Segment, UploadKind::Playlist],
        );
        let playlist = Path::new(&seg.location).to_path_buf();
        if seg.upload == Some(UploadState::Done)
            && let Some(l) = settled
                .iter()
                .filter(done)
                .filter(|o| o.local_path == playlist)
                .find_map(|o| o.location.clone())
        {
            seg.location = l;
        }
    }
    if let Some(im) = info.images.as_mut() {
        im.upload = aggregate(settled, queued, &[UploadKind::Image]);
        let stem = format!("{}_", im.location);
        if im.upload == Some(UploadState::Done)
            && let Some(l) = settled
                .iter()
                .filter(done)
                .filter(|o| o.local_path.to_string_lossy().starts_with(&stem))
                .find_map(|o| o.location.clone())
            && let Some(cut) = l.rfind('_')
        {
            im.location = l[..cut].to_string();
        }
    }
    if !final_ {
        return;
    }
    let failed: Vec<&str> = settled.iter().filter_map(|o| o.error.as_deref()).collect();
    if let Some(first) = failed.first() {
        info.status = EgressStatus::Failed;
        let more = if failed.len() > 1 {
            format!(" (and {} more)", failed.len() - 1)
        } else {
            String::new()
        };
        let msg = format!("{first}{more}");
        info.error = Some(match info.error.take() {
            Some(e) => format!("{e}; {msg}"),
            None => msg,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FileInfo, ImagesInfo, SegmentsInfo, sample_info};

    fn done(path: &str, kind: UploadKind, at: &str) -> Settled {
        Settled {
            local_path: path.into(),
            kind,
            state: UploadState::Done,
            location: Some(at.into()),
            error: None,
        }
    }

    fn info() -> EgressInfo {
        let mut i = sample_info("EG_abcdefghijkl", "ND_a", EgressStatus::Ending, 1);
        i.files = vec![FileInfo {
            filename: "a.mp4".into(),
            location: "/out/a.mp4".into(),
            ..FileInfo::default()
        }];
        i.segments = Some(SegmentsInfo {
            location: "/out/hls/a.m3u8".into(),
            ..SegmentsInfo::default()
        });
        i.images = Some(ImagesInfo {
            location: "/out/img/a".into(),
            ..ImagesInfo::default()
        });
        i
    }

    #[test]
    fn states_aggregate_worst_first() {
        let q = |state| Queued {
            local_path: Path::new("/out/hls/a_00001.ts"),
            kind: UploadKind::Segment,
            state,
        };
        let seg = [UploadKind::Segment, UploadKind::Playlist];
        let ok = done(
            "/out/hls/a_00000.ts",
            UploadKind::Segment,
            "s3://b/a_00000.ts",
        );
        assert_eq!(aggregate(&[], &[], &seg), None);
        assert_eq!(
            aggregate(std::slice::from_ref(&ok), &[], &seg),
            Some(UploadState::Done)
        );
        assert_eq!(
            aggregate(std::slice::from_ref(&ok), &[q(UploadState::Pending)], &seg),
            Some(UploadState::Pending)
        );
        assert_eq!(
            aggregate(
                std::slice::from_ref(&ok),
                &[q(UploadState::Uploading)],
                &seg
            ),
            Some(UploadState::Uploading)
        );
        let bad = Settled {
            state: UploadState::Failed,
            ..ok.clone()
        };
        assert_eq!(
            aggregate(&[bad], &[q(UploadState::Uploading)], &seg),
            Some(UploadState::Failed)
        );
        assert_eq!(aggregate(&[ok], &[], &[UploadKind::Image]), None);
    }

    #[test]
    fn locations_move_to_the_bucket_once_done_and_a_failure_fails_the_egress() {
        let settled = vec![
            done("/out/a.mp4", UploadKind::File, "s3://b/a.mp4"),
            done(
                "/out/hls/a_00000.ts",
                UploadKind::Segment,
                "s3://b/hls/a_00000.ts",
            ),
            done("/out/hls/a.m3u8", UploadKind::Playlist, "s3://b/hls/a.m3u8"),
            done(
                "/out/img/a_00000.jpg",
                UploadKind::Image,
                "s3://b/img/a_00000.jpg",
            ),
        ];
        let mut i = info();
        apply(&mut i, &settled, &[], true);
        assert_eq!(i.files[0].location, "s3://b/a.mp4");
        assert_eq!(i.files[0].upload, Some(UploadState::Done));
        assert_eq!(i.segments.as_ref().unwrap().location, "s3://b/hls/a.m3u8");
        assert_eq!(i.images.as_ref().unwrap().location, "s3://b/img/a");
        assert_eq!(i.status, EgressStatus::Ending);
        // An image still going up keeps the prefix local; a failed file fails the egress.
        let mut i = info();
        let q = [Queued {
            local_path: Path::new("/out/img/a_00001.jpg"),
            kind: UploadKind::Image,
            state: UploadState::Uploading,
        }];
        let mut failed = settled.clone();
        failed[0] = Settled {
            state: UploadState::Failed,
            location: None,
            error: Some("upload failed: s3://b: the store answered HTTP 403 Forbidden".into()),
            ..failed[0].clone()
        };
        apply(&mut i, &failed, &q, true);
        assert_eq!(i.images.as_ref().unwrap().location, "/out/img/a");
        assert_eq!(
            i.images.as_ref().unwrap().upload,
            Some(UploadState::Uploading)
        );
        assert_eq!(i.files[0].location, "/out/a.mp4");
        assert_eq!(i.status, EgressStatus::Failed);
        assert_eq!(
            i.error.as_deref(),
            Some("upload failed: s3://b: the store answered HTTP 403 Forbidden")
        );
    }
}
