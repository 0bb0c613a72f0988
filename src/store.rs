//! Egress records persisted in `state_dir`, so they survive a restart of the service.
//!
//! ```text
//! state_dir/
//!   node_id                    this node's id when the config leaves it empty
//!   costs.json                 the learned cost table (`costs`)
//!   egresses/EG_x.json         the EgressInfo, rewritten (atomically) on every change
//!   egresses/index             what listing needs of every record, a line per change (`index`)
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

mod atomic;
pub mod costs;
pub mod index;

pub use atomic::{Durability, write_atomic, write_atomic_private};

use index::{Entry, Line, RecordIndex};

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
    /// The record, and whether its index entry changed (a line is appended after it).
    Save(Box<EgressInfo>, bool),
    /// Records pruned by retention: their files go, a removal line each.
    Remove(Vec<String>),
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
            let mut batch: Vec<(EgressInfo, bool)> = Vec::new();
            let mut removed = Vec::new();
            let mut acks = Vec::new();
            for cmd in std::iter::once(first).chain(rx.try_iter()) {
                match cmd {
                    WriteCmd::Save(info, indexed) => {
                        let mut indexed = indexed;
                        batch.retain(|(i, ix)| {
                            let same = i.egress_id == info.egress_id;
                            indexed |= same && *ix;
                            !same
                        });
                        batch.push((*info, indexed));
                    }
                    WriteCmd::Remove(ids) => removed.extend(ids),
                    WriteCmd::Flush(ack) => acks.push(ack),
                }
            }
            let mut lines = Vec::new();
            for (info, indexed) in &batch {
                // A state_dir removed under us is recreated: records are never dropped for it.
                let r = self
                    .save(info)
                    .or_else(|_| self.ensure_dirs().and_then(|()| self.save(info)));
                match r {
                    Ok(()) if *indexed => lines.push(Line {
                        id: info.egress_id.clone(),
                        entry: Some(Entry::of(info)),
                    }),
                    Ok(()) => {}
                    Err(e) => {
                        slog::warn!(log, "cannot persist egress record"; "egress_id" => &info.egress_id, "error" => %e);
                    }
                }
            }
            for id in removed {
                self.remove_files(&id);
                lines.push(Line { id, entry: None });
            }
            if let Err(e) = self.append_index(&lines) {
                slog::warn!(log, "cannot append to the record index (rebuilt at the next start)"; "error" => %e);
            }
            for a in acks {
                let _ = a.send(());
            }
        }
    }

    /// Queues a record for the writer thread (or writes it now when there is none); `indexed`:
    /// its index entry changed.
    pub fn save_later(&self, info: &EgressInfo, indexed: bool) {
        let queued = self.writer.as_ref().is_some_and(|w| {
            w.send(WriteCmd::Save(Box::new(info.clone()), indexed))
                .is_ok()
        });
        if !queued {
            let _ = self.save(info);
            if indexed {
                let _ = self.append_index(&[Line {
                    id: info.egress_id.clone(),
                    entry: Some(Entry::of(info)),
                }]);
            }
        }
    }

    /// Queues the removal of pruned records (record, result, sidecars, log).
    pub fn remove_later(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        if let Some(w) = &self.writer
            && let Err(crossbeam_channel::SendError(WriteCmd::Remove(ids))) =
                w.send(WriteCmd::Remove(ids))
        {
            for id in &ids {
                self.remove_files(id);
            }
        }
    }

    fn remove_files(&self, id: &str) {
        for ext in ["json", "result.json", "timeline", "spans", "jpg"] {
            let _ = fs::remove_file(self.egress_dir.join(format!("{id}.{ext}")));
        }
        let _ = fs::remove_file(self.log_path(id));
    }

    fn index_path(&self) -> PathBuf {
        self.egress_dir.join("index")
    }

    /// Appends lines to the index, on disk before it returns.
    fn append_index(&self, lines: &[Line]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut text, l).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.index_path())?;
        f.write_all(&text)?;
        f.sync_data()
    }

    /// The record of `id` as stored.
    pub fn load(&self, id: &str) -> Option<EgressInfo> {
        let b = fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// The index (read from its file, completed with any record the file lacks: a state_dir of
    /// an older version, or lines a crash cut), compacted when it holds many dead lines; and the
    /// records not final, whole (a restart settles them). Unreadable lines and records are
    /// reported, not fatal. Blocks: run it before the actors start.
    pub fn load_index(&self) -> (RecordIndex, Vec<EgressInfo>, Vec<String>) {
        let mut ix = RecordIndex::default();
        let mut problems = Vec::new();
        let mut lines = 0usize;
        if let Ok(text) = fs::read(self.index_path()) {
            for (n, l) in text.split(|b| *b == b'\n').enumerate() {
                if l.is_empty() {
                    continue;
                }
                lines += 1;
                match serde_json::from_slice::<Line>(l) {
                    Ok(line) => ix.apply(line),
                    // A line a crash cut short: the record itself is read below.
                    Err(e) => problems.push(format!("index line {}: {e}", n + 1)),
                }
            }
        }
        // Records the index lacks, and index entries whose record is gone.
        let mut on_disk = std::collections::HashSet::new();
        let mut added = Vec::new();
        if let Ok(entries) = fs::read_dir(&self.egress_dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                if !is_valid_egress_id(id) {
                    continue;
                }
                on_disk.insert(id.to_string());
                if ix.get(id).is_some() {
                    continue;
                }
                match self.read(&e.path()) {
                    Ok(info) => {
                        ix.upsert(id, Entry::of(&info));
                        added.push(id.to_string());
                    }
                    Err(err) => problems.push(err),
                }
            }
        }
        let gone: Vec<String> = ix
            .lines()
            .map(|l| l.id)
            .filter(|id| !on_disk.contains(id))
            .collect();
        for id in &gone {
            ix.remove(id);
        }
        let mut unfinished = Vec::new();
        for id in ix.unfinished() {
            match self.read(&self.record_path(&id)) {
                // The file is the truth: an index line may lag behind it.
                Ok(info) => {
                    ix.upsert(&id, Entry::of(&info));
                    if !info.status.is_final() {
                        unfinished.push(info);
                    }
                }
                Err(err) => problems.push(err),
            }
        }
        unfinished.sort_by_key(|i| i.created_at);
        if (lines > 2 * ix.len() + 1000 || !added.is_empty() || !gone.is_empty())
            && let Err(e) = self.rewrite_index(&ix)
        {
            problems.push(format!("cannot rewrite the record index: {e}"));
        }
        (ix, unfinished, problems)
    }

    fn read(&self, path: &Path) -> Result<EgressInfo, String> {
        fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<EgressInfo>(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the index with one line per entry (atomically).
    fn rewrite_index(&self, ix: &RecordIndex) -> io::Result<()> {
        let mut text = Vec::with_capacity(ix.len() * 80);
        for l in ix.lines() {
            serde_json::to_writer(&mut text, &l).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        write_atomic(&self.index_path(), &text, Durability::Data)
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
        let json = serde_json::to_vec_pretty(info).map_err(io::Error::other)?;
        write_atomic(&self.record_path(&info.egress_id), &json, Durability::Data)
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
        let (ix, all, problems) = s.load_index();
        assert_eq!(
            all.iter().map(|i| i.egress_id.as_str()).collect::<Vec<_>>(),
            ["EG_aaaaaaaaaaaa", "EG_bbbbbbbbbbbb"]
        );
        assert_eq!((ix.len(), problems.len()), (2, 1));
        // The index was written: the next load reads it and the same records.
        assert!(dir.path().join("egresses/index").is_file());
        let (ix, all, _) = s.load_index();
        assert_eq!((ix.len(), all.len()), (2, 2));
    }

    #[test]
    fn the_index_pages_ended_records_without_loading_them_and_prunes_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.start_writer(slog::Logger::root(slog::Discard, slog::o!()))
            .unwrap();
        for n in 0..30u64 {
            let mut i = info(&format!("EG_{n:012}"), n);
            s.save_later(&i, true);
            i.status = EgressStatus::Complete;
            i.ended_at = Some(n + 100);
            s.save_later(&i, true);
        }
        s.remove_later(vec!["EG_000000000003".into()]);
        assert!(s.flush(std::time::Duration::from_secs(5)));
        let (ix, unfinished, problems) = s.load_index();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((ix.len(), unfinished.len()), (29, 0));
        assert!(!dir.path().join("egresses/EG_000000000003.json").exists());
        let (page, next) = ix.page(None, None, 5);
        assert_eq!(page[0], "EG_000000000029");
        assert!(next.is_some());
        assert_eq!(
            s.load("EG_000000000029").unwrap().status,
            EgressStatus::Complete
        );
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
        s.save_later(&i, true);
        i.status = EgressStatus::Complete;
        s.save_later(&i, true);
        assert!(s.flush(std::time::Duration::from_secs(5)));
        let (ix, unfinished, problems) = s.load_index();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((ix.len(), unfinished.len()), (1, 0));
        assert_eq!(
            s.load("EG_aaaaaaaaaaaa").unwrap().status,
            EgressStatus::Complete
        );
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
