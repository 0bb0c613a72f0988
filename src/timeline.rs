//! Where each track of a hybrid MP4 really starts. `mp4mux` in fragmented mode starts every
//! track at zero, so a track that began later (video at its first keyframe, audio at its first
//! frame after it, tens of ms apart) would be shifted against the other: the sync would be off
//! by that difference for the whole file. The handler measures each track's first running time
//! at the muxer and writes it here (`{egress_id}.timeline` in the state directory; JSON, named apart from the records); the
//! remux into a progressive MP4 (after a graceful end as after a kill) puts the tracks back at
//! their true distance, which `mp4mux` then keeps in an edit list.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The first running time of each track at the muxer, in ns (video: its first decode time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub video_start_ns: i64,
    pub audio_start_ns: i64,
}

impl Timeline {
    /// What to add to each track's timestamps (video, audio) so that both keep their true
    /// distance and neither goes below zero.
    pub fn shifts(&self) -> (u64, u64) {
        let d = self.video_start_ns - self.audio_start_ns;
        if d >= 0 {
            (d as u64, 0)
        } else {
            (0, d.unsigned_abs())
        }
    }

    pub fn read(path: &Path) -> Option<Timeline> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::store::write_atomic(path, &json, crate::store::Durability::Data)
    }
}

/// What the file output received of each stream (`{egress_id}.spans`, measured by the handler
/// at the muxer's inputs).
pub use crate::rules::fidelity::StreamSpans as Spans;

pub fn read_spans(path: &Path) -> Option<Spans> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub fn write_spans(spans: &Spans, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec(spans).map_err(std::io::Error::other)?;
    crate::store::write_atomic(path, &json, crate::store::Durability::Data)
}

/// The spans file of the egress whose handler writes its result to `result_path`.
pub fn spans_path_for(result_path: &Path) -> PathBuf {
    spans_beside(&path_for(result_path))
}

/// The spans file beside a timeline file.
pub fn spans_beside(timeline: &Path) -> PathBuf {
    timeline.with_extension("spans")
}

/// The thumbnail (latest picture, JPEG) of the egress whose handler writes its result to
/// `result_path`.
pub fn thumbnail_path_for(result_path: &Path) -> PathBuf {
    let name = result_path
        .file_name()
        .map(|n| n.to_string_lossy().replace(".result.json", ".jpg"))
        .unwrap_or_else(|| "thumbnail.jpg".into());
    result_path.with_file_name(name)
}

/// The thumbnail of egress `id` in `state_dir` (`egresses/EG_x.jpg`).
pub fn thumbnail_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("egresses").join(format!("{id}.jpg"))
}

/// The timeline file of the egress whose handler writes its result to `result_path`.
pub fn path_for(result_path: &Path) -> PathBuf {
    let name = result_path
        .file_name()
        .map(|n| n.to_string_lossy().replace(".result.json", ".timeline"))
        .unwrap_or_else(|| "timeline".into());
    result_path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_later_track_is_moved_by_the_difference() {
        let t = Timeline {
            video_start_ns: 5_066_000_000,
            audio_start_ns: 5_050_000_000,
        };
        assert_eq!(t.shifts(), (16_000_000, 0));
        let t = Timeline {
            video_start_ns: 5_000_000_000,
            audio_start_ns: 5_033_000_000,
        };
        assert_eq!(t.shifts(), (0, 33_000_000));
        assert_eq!(
            path_for(Path::new("/s/egresses/EG_a.result.json")),
            Path::new("/s/egresses/EG_a.timeline")
        );
        assert_eq!(
            spans_path_for(Path::new("/s/egresses/EG_a.result.json")),
            Path::new("/s/egresses/EG_a.spans")
        );
    }
}
