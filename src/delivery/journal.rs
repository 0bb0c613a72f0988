//! The durable upload queue in `state_dir/uploads/`, so a service killed mid-upload finishes the
//! job on its next start.
//!
//! ```text
//! state_dir/uploads/
//!   EG_x-<n>.json        one queued upload (written, fsynced, before it starts; removed once
//!                        the store confirmed the object); holds the multipart upload id while
//!                        one is open, so a restart aborts it instead of leaving it to bill
//!   EG_x.finish.json     the final record of an egress whose uploads are still running (the
//!                        status it ends with once they are done)
//!   EG_x.target.json     the target of an egress still recording, so a service that dies
//!                        meanwhile uploads its file on the next start (records show the
//!                        target redacted)
//! ```
//!
//! Files are written whole (temp file, fsync, rename) with mode 0600: entries carry the target,
//! credentials included when a request gave them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::delivery::target::UploadTarget;
use crate::model::EgressInfo;

/// What an output is; segments, playlists and images arrive while the egress records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadKind {
    File,
    Segment,
    Playlist,
    Image,
    Manifest,
}

/// One queued upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `EG_x-<n>`: unique within this state_dir.
    pub id: String,
    pub egress_id: String,
    pub kind: UploadKind,
    /// The local copy.
    pub local_path: PathBuf,
    /// The output's name relative to the output directory; each target adds its prefix.
    pub name: String,
    /// Where it goes first.
    pub target: UploadTarget,
    /// For a playlist: the file it is a snapshot of (`local_path` is then the snapshot in this
    /// directory, so the object uploaded is the playlist as it was when queued, never one
    /// naming a segment queued after it).
    #[serde(default)]
    pub snapshot_of: Option<PathBuf>,
    /// The multipart upload open at the last write of this entry: `(backup?, upload id)`.
    #[serde(default)]
    pub multipart: Option<(bool, String)>,
    pub queued_at_ms: u64,
}

#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(state_dir: &Path) -> io::Result<Journal> {
        let j = Journal {
            dir: state_dir.join("uploads"),
        };
        fs::create_dir_all(&j.dir)?;
        Ok(j)
    }

    fn write_json<T: Serialize>(&self, name: &str, v: &T) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let body = serde_json::to_vec(v).map_err(io::Error::other)?;
        // Entries hold a request's upload credentials: private; the rename durable too.
        crate::store::write_atomic_private(
            &self.dir.join(name),
            &body,
            crate::store::Durability::Full,
        )
    }

    /// Writes (or rewrites) an entry durably.
    pub fn put(&self, e: &Entry) -> io::Result<()> {
        self.write_json(&format!("{}.json", e.id), e)
    }

    /// Where a playlist's snapshot for entry `id` is kept.
    pub fn snapshot_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(".snap-{id}"))
    }

    /// Drops an entry (the store has the object, or it failed for good).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(format!("{id}.json"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The final record an egress ends with once its uploads are done.
    pub fn put_finish(&self, info: &EgressInfo) -> io::Result<()> {
        self.write_json(&format!("{}.finish.json", info.egress_id), info)
    }

    pub fn remove_finish(&self, egress_id: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(format!("{egress_id}.finish.json"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The target of an egress that records (see the module doc).
    pub fn put_target(&self, egress_id: &str, t: &UploadTarget) -> io::Result<()> {
        self.write_json(&format!("{egress_id}.target.json"), t)
    }

    pub fn target(&self, egress_id: &str) -> Option<UploadTarget> {
        let body = fs::read(self.dir.join(format!("{egress_id}.target.json"))).ok()?;
        serde_json::from_slice(&body).ok()
    }

    pub fn remove_target(&self, egress_id: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(format!("{egress_id}.target.json"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every entry and finish record left (oldest entry first), plus what could not be read.
    pub fn load(&self) -> (Vec<Entry>, Vec<EgressInfo>, Vec<String>) {
        let mut entries = Vec::new();
        let mut finishes = Vec::new();
        let mut problems = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return (entries, finishes, problems);
        };
        for d in rd.flatten() {
            let name = d.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !name.ends_with(".json") || name.ends_with(".target.json") {
                continue;
            }
            let body = match fs::read(d.path()) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    continue;
                }
            };
            if name.ends_with(".finish.json") {
                match serde_json::from_slice::<EgressInfo>(&body) {
                    Ok(i) => finishes.push(i),
                    Err(e) => problems.push(format!("{name}: {e}")),
                }
            } else {
                match serde_json::from_slice::<Entry>(&body) {
                    Ok(e) => entries.push(e),
                    Err(e) => problems.push(format!("{name}: {e}")),
                }
            }
        }
        entries.sort_by(|a, b| a.queued_at_ms.cmp(&b.queued_at_ms).then(a.id.cmp(&b.id)));
        (entries, finishes, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let target: UploadTarget =
            serde_json::from_str(r#"{"s3": {"bucket": "rec", "access_key": "k", "secret": "s"}}"#)
                .unwrap();
        let e = Entry {
            id: "EG_abcdefghijkl-1".into(),
            egress_id: "EG_abcdefghijkl".into(),
            kind: UploadKind::File,
            local_path: "/rec/a.mp4".into(),
            name: "a.mp4".into(),
            target,
            snapshot_of: None,
            multipart: Some((false, "upload-1".into())),
            queued_at_ms: 5,
        };
        j.put(&e).unwrap();
        let info = crate::model::sample_info(
            "EG_abcdefghijkl",
            "ND_a",
            crate::model::EgressStatus::Complete,
            1,
        );
        j.put_finish(&info).unwrap();
        let mode = fs::metadata(dir.path().join("uploads/EG_abcdefghijkl-1.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (entries, finishes, problems) = Journal::open(dir.path()).unwrap().load();
        assert_eq!(entries, vec![e.clone()]);
        assert_eq!(finishes, vec![info]);
        assert!(problems.is_empty());
        j.remove("EG_abcdefghijkl-1").unwrap();
        j.remove("EG_abcdefghijkl-1").unwrap();
        j.remove_finish("EG_abcdefghijkl").unwrap();
        j.put_target("EG_abcdefghijkl", &e.target).unwrap();
        assert_eq!(j.target("EG_abcdefghijkl"), Some(e.target.clone()));
        assert!(j.load().2.is_empty(), "a held target is no queue entry");
        j.remove_target("EG_abcdefghijkl").unwrap();
        assert_eq!(j.target("EG_abcdefghijkl"), None);
        let (entries, finishes, _) = j.load();
        assert!(entries.is_empty() && finishes.is_empty());
    }
}
