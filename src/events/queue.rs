//! The webhook queue on disk: one directory per receiver, one file per event not yet delivered.
//!
//! ```text
//! state_dir/webhooks/{receiver}/        receiver = the first 16 hex digits of sha256(url)
//!   url                                 the receiver's URL, for people looking at the directory
//!   {hub id, 20 digits}.json            the exact body to POST (`Event::wire`), removed on a 2xx
//! ```
//!
//! An event is written (temp file, fsync, rename) before its first attempt, so what a restart or
//! a crash interrupts is sent again by the next run: delivery is at least once. File names sort
//! in the order the hub took the events (its ids grow across restarts). Everything here blocks:
//! call it from `spawn_blocking`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One receiver's queue.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

/// An event waiting in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The hub's id: the order, and the file name.
    pub seq: u64,
    /// The body, as it will be signed and sent.
    pub body: Vec<u8>,
}

/// The directory name of a receiver: stable for its URL, and no part of the URL (which may hold a
/// secret) in a file name.
pub fn receiver_dir_name(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Queue {
    /// Opens (creating) the queue of the receiver at `url` under `state_dir/webhooks`.
    pub fn open(state_dir: &Path, url: &str) -> io::Result<Queue> {
        let dir = state_dir.join("webhooks").join(receiver_dir_name(url));
        fs::create_dir_all(&dir)?;
        let q = Queue { dir };
        let url_file = q.dir.join("url");
        if fs::read_to_string(&url_file).ok().as_deref() != Some(url) {
            // The URL may carry a token: readable by the service's user only.
            crate::store::write_atomic_private(
                &url_file,
                url.as_bytes(),
                crate::store::Durability::Data,
            )?;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&url_file, fs::Permissions::from_mode(0o600))?;
        Ok(q)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Writes an event durably (recreating the directory if something removed it).
    pub fn put(&self, seq: u64, body: &[u8]) -> io::Result<()> {
        self.write(seq, body).or_else(|_| {
            fs::create_dir_all(&self.dir)?;
            self.write(seq, body)
        })
    }

    fn write(&self, seq: u64, body: &[u8]) -> io::Result<()> {
        crate::store::write_atomic(&self.path(seq), body, crate::store::Durability::Data)
    }

    /// Forgets a delivered (or dropped) event; one already gone is fine.
    pub fn remove(&self, seq: u64) -> io::Result<()> {
        match fs::remove_file(self.path(seq)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every queued event, oldest first; files that cannot be read are named in the second list.
    pub fn load(&self) -> (Vec<Queued>, Vec<String>) {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return (out, problems);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                if name.ends_with(".json.tmp") {
                    // A write a crash interrupted: its event was never attempted.
                    let _ = fs::remove_file(e.path());
                }
                continue;
            };
            match fs::read(e.path()) {
                Ok(body) => out.push(Queued { seq, body }),
                Err(err) => problems.push(format!("{}: {err}", e.path().display())),
            }
        }
        out.sort_by_key(|q| q.seq);
        (out, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_in_order_and_leave_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), "http://127.0.0.1:9/hook?secret=x").unwrap();
        assert!(!q.dir().to_string_lossy().contains("secret"));
        q.put(1_000_000_000_000_010, b"{\"b\":1}").unwrap();
        q.put(999_000_000_000_000, b"{\"a\":1}").unwrap();
        fs::write(q.dir().join("5.json.tmp"), b"half").unwrap();
        let (all, problems) = q.load();
        assert!(problems.is_empty());
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [999_000_000_000_000, 1_000_000_000_000_010]
        );
        assert_eq!(all[0].body, b"{\"a\":1}");
        assert!(!q.dir().join("5.json.tmp").exists());
        q.remove(999_000_000_000_000).unwrap();
        q.remove(999_000_000_000_000).unwrap();
        // A removed directory is recreated on the next write.
        fs::remove_dir_all(q.dir()).unwrap();
        q.put(7, b"{}").unwrap();
        let again = Queue::open(dir.path(), "http://127.0.0.1:9/hook?secret=x").unwrap();
        assert_eq!(again.load().0.len(), 1);
    }
}
