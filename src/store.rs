//! Egress records persisted in `state_dir`, so they survive a restart of the service.
//!
//! ```text
//! state_dir/
//!   node_id                    this node's id when the config leaves it empty
//!   egresses/EG_x.json         the EgressInfo, rewritten (atomically) on every change
//!   egresses/EG_x.result.json  written by the handler itself when it ends (see HandlerResult)
//!   logs/EG_x.log              the handler's stderr
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::model::{EgressInfo, HandlerResult, is_valid_egress_id};

#[derive(Clone)]
pub struct Store {
    /// `state_dir/egresses`.
    egress_dir: PathBuf,
    /// `state_dir/logs`.
    log_dir: PathBuf,
}

impl Store {
    /// Creates the directories if needed.
    pub fn open(state_dir: &Path) -> io::Result<Store> {
        let egress_dir = state_dir.join("egresses");
        let log_dir = state_dir.join("logs");
        fs::create_dir_all(&egress_dir)?;
        fs::create_dir_all(&log_dir)?;
        Ok(Store {
            egress_dir,
            log_dir,
        })
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
    fn node_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = node_id(dir.path(), "").unwrap();
        assert_eq!(a, node_id(dir.path(), "").unwrap());
        assert_eq!(node_id(dir.path(), "ND_fixed").unwrap(), "ND_fixed");
    }
}
