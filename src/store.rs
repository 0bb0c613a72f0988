//! Egress records persisted in `state_dir`, so they survive a restart of the service.
//!
//! ```text
//! state_dir/
//!   node_id                    this node's id when the config leaves it empty
//!   egresses/EG_x.json         the EgressInfo, rewritten (atomically) on every change
//!   egresses/EG_x.result.json  written by the handler itself when it ends (see HandlerResult)
//!   egresses/EG_x.timeline     its MP4's track starts; EG_x.spans: what each stream covered
//!   egresses/EG_x.jpg          its latest picture while it runs (`pipeline.thumbnail_s`)
//!   logs/EG_x.log              the handler's stderr
//!   webhooks/{receiver}/       webhook events not yet delivered (`events::queue`)
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender};

use crate::model::{EgressInfo, HandlerResult, is_valid_egress_id};

#[derive(Clone)]
pub struct Store {
    /// `state_dir/egresses`.
    egress_dir: PathBuf,
    /// `state_dir/logs`.
    log_dir: PathBuf,
    /// The writer thread's queue (`start_writer`); without it `save_later` writes at once.
    writer: Option<Sender<WriteCmd>>,
}

/// What the writer thread is asked to do.
enum WriteCmd {
    Save(Box<EgressInfo>),
    /// Answer once everything sent before is on disk.
    Flush(Sender<()>),
}

impl Store {
    /// Creates the directories if needed.
    pub fn open(state_dir: &Path) -> io::Result<Store> {
        let s = Store {
            egress_dir: state_dir.join("egresses"),
            log_dir: state_dir.join("logs"),
            writer: None,
        };
        s.ensure_dirs()?;
        Ok(s)
    }

    /// Recreates `egresses/` and `logs/` if something removed them while the service runs.
    pub fn ensure_dirs(&self) -> io::Result<()> {
        fs::create_dir_all(&self.egress_dir)?;
        fs::create_dir_all(&self.log_dir)
    }

    /// Starts the thread that writes records (each with an fsync) in the order they are handed
    /// to `save_later`, so the actors never wait on the disk. Versions of one record queued
    /// together are written once, as the latest.
    pub fn start_writer(&mut self, log: slog::Logger) -> io::Result<()> {
        let (tx, rx) = crossbeam_channel::unbounded::<WriteCmd>();
        let me = self.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || me.write_loop(&rx, &log))?;
        self.writer = Some(tx);
        Ok(())
    }

    fn write_loop(&self, rx: &Receiver<WriteCmd>, log: &slog::Logger) {
        while let Ok(first) = rx.recv() {
            let mut batch: Vec<EgressInfo> = Vec::new();
            let mut acks = Vec::new();
            for cmd in std::iter::once(first).chain(rx.try_iter()) {
                match cmd {
                    WriteCmd::Save(info) => {
                        batch.retain(|i| i.egress_id != info.egress_id);
                        batch.push(*info);
                    }
                    WriteCmd::Flush(ack) => acks.push(ack),
                }
            }
            for info in &batch {
                // A state_dir removed under us is recreated: records are never dropped for it.
                let r = self
                    .save(info)
                    .or_else(|_| self.ensure_dirs().and_then(|()| self.save(info)));
                if let Err(e) = r {
                    slog::warn!(log, "cannot persist egress record"; "egress_id" => &info.egress_id, "error" => %e);
                }
            }
            for a in acks {
                let _ = a.send(());
            }
        }
    }

    /// Queues a record for the writer thread (or writes it now when there is none).
    pub fn save_later(&self, info: &EgressInfo) {
        let queued = self
            .writer
            .as_ref()
            .is_some_and(|w| w.send(WriteCmd::Save(Box::new(info.clone()))).is_ok());
        if !queued {
            let _ = self.save(info);
        }
    }

    /// Waits (at most `timeout`) until every record queued so far is on disk. Blocks.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let Some(w) = &self.writer else { return true };
        let (tx, rx) = crossbeam_channel::bounded(1);
        w.send(WriteCmd::Flush(tx)).is_ok() && rx.recv_timeout(timeout).is_ok()
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.egress_dir.join(format!("{id}.json"))
    }

    /// Where a handler writes its own result (also carried in its spec).
    pub fn result_path(&self, id: &str) -> PathBuf {
        self.egress_dir.join(format!("{id}.result.json"))
    }

    /// The handler's stderr.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.log_dir.join(format!("{id}.log"))
    }

    /// Writes the record atomically (temp file + rename), so a crash never leaves half a record.
    pub fn save(&self, info: &EgressInfo) -> io::Result<()> {
        let path = self.record_path(&info.egress_id);
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(info).map_err(io::Error::other)?)?;
        f.sync_data()?;
        fs::rename(&tmp, &path)
    }

    /// Every stored record, oldest first; unreadable files are reported, not fatal.
    pub fn load_all(&self) -> (Vec<EgressInfo>, Vec<String>) {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        let Ok(entries) = fs::read_dir(&self.egress_dir) else {
            return (out, problems);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if !is_valid_egress_id(id) {
                continue;
            }
            match fs::read(e.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<EgressInfo>(&b).map_err(|e| e.to_string()))
            {
                Ok(info) => out.push(info),
                Err(err) => problems.push(format!("{}: {err}", e.path().display())),
            }
        }
        out.sort_by_key(|i| i.created_at);
        (out, problems)
    }

    pub fn read_result(&self, id: &str) -> Option<HandlerResult> {
        let b = fs::read(self.result_path(id)).ok()?;
        serde_json::from_slice(&b).ok()
    }
}

/// The node id: configured, else the one stored in `state_dir/node_id`, else a new one (stored).
pub fn node_id(state_dir: &Path, configured: &str) -> io::Result<String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let path = state_dir.join("node_id");
    if let Ok(s) = fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_string());
        }
    }
    let id = format!("ND_{}", &crate::model::new_egress_id()[3..]);
    fs::create_dir_all(state_dir)?;
    fs::write(&path, &id)?;
    Ok(id)
}

/// An exclusive hold on `state_dir` for the life of the service: two services on one state_dir
/// would take the same node id and settle each other's live recordings as failed.
pub struct StateLock {
    /// The locked file; the lock goes when it is closed (at exit, crash included). Opened with
    /// O_CLOEXEC (Rust's default), so handler processes never inherit it.
    _file: fs::File,
}

/// Takes the lock on `state_dir/lock` without waiting; the error says who holds it.
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, String> {
    use std::os::unix::io::AsRawFd;
    fs::create_dir_all(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let path = state_dir.join("lock");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is shared with the kernel.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let holder = fs::read_to_string(&path).unwrap_or_default();
        return Err(format!(
            "another egress-engine service (pid {}) uses state_dir {}: each service needs its own",
            holder.trim(),
            state_dir.display()
        ));
    }
    // Who holds it, for the message above.
    let _ = file.set_len(0);
    let _ = file.write_all(std::process::id().to_string().as_bytes());
    Ok(StateLock { _file: file })
}

/// Whether the service can write in `dir` now: the directory exists (recreated if it was
/// removed), a file can be created in it, and at least `min_free` bytes are free. Blocks.
pub fn dir_ready(dir: &Path, min_free: u64) -> Result<(), String> {
    let shown = dir.display();
    fs::create_dir_all(dir).map_err(|e| format!("{shown} cannot be created: {e}"))?;
    let probe = dir.join(format!(".ready-{}", std::process::id()));
    let w = fs::File::create(&probe).and_then(|mut f| f.write_all(b"1"));
    let _ = fs::remove_file(&probe);
    w.map_err(|e| format!("{shown} is not writable: {e}"))?;
    let free = free_bytes(dir).map_err(|e| format!("{shown}: cannot read free space: {e}"))?;
    if free < min_free {
        return Err(format!(
            "{shown} is full: {free} bytes free, at least {min_free} needed"
        ));
    }
    Ok(())
}

/// Bytes available to this (unprivileged) user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs(3) fills the zeroed struct we pass; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// True while a process with this pid runs `egress-engine handler` for this egress; guards
/// against a recycled pid belonging to something else.
pub fn handler_alive(pid: u32, egress_id: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A zombie has exited; it only waits for its (dead) parent to reap it.
    let zombie = stat
        .rsplit(')')
        .next()
        .map(|s| s.trim_start().starts_with('Z'))
        .unwrap_or(false);
    let cmd = String::from_utf8_lossy(&cmdline);
    !zombie && cmd.contains("handler") && cmd.contains(egress_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn info(id: &str, created: u64) -> EgressInfo {
        sample_info(id, "ND_x", EgressStatus::Active, created)
    }

    #[test]
    fn records_round_trip_in_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.save(&info("EG_bbbbbbbbbbbb", 2)).unwrap();
        s.save(&info("EG_aaaaaaaaaaaa", 1)).unwrap();
        fs::write(dir.path().join("egresses/EG_cccccccccccc.json"), b"{broken").unwrap();
        let (all, problems) = s.load_all();
        assert_eq!(
            all.iter().map(|i| i.egress_id.as_str()).collect::<Vec<_>>(),
            ["EG_aaaaaaaaaaaa", "EG_bbbbbbbbbbbb"]
        );
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn the_writer_recreates_a_removed_state_dir_and_keeps_the_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut s = Store::open(&state).unwrap();
        s.start_writer(slog::Logger::root(slog::Discard, slog::o!()))
            .unwrap();
        fs::remove_dir_all(&state).unwrap();
        let mut i = info("EG_aaaaaaaaaaaa", 1);
        s.save_later(&i);
        i.status = EgressStatus::Complete;
        s.save_later(&i);
        assert!(s.flush(std::time::Duration::from_secs(5)));
        let (all, problems) = s.load_all();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].status, EgressStatus::Complete);
        assert!(state.join("logs").is_dir());
    }

    #[test]
    fn a_second_lock_on_one_state_dir_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_state_dir(dir.path()).unwrap();
        let e = lock_state_dir(dir.path()).err().unwrap();
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        assert!(lock_state_dir(dir.path()).is_ok());
    }

    #[test]
    fn dir_ready_recreates_and_checks_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("gone");
        assert!(dir_ready(&d, 0).is_ok());
        assert!(d.is_dir());
        let e = dir_ready(&d, u64::MAX).unwrap_err();
        assert!(e.contains("is full"), "{e}");
    }

    #[test]
    fn node_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = node_id(dir.path(), "").unwrap();
        assert_eq!(a, node_id(dir.path(), "").unwrap());
        assert_eq!(node_id(dir.path(), "ND_fixed").unwrap(), "ND_fixed");
    }
}
