//! The learned cost table's file, `state_dir/costs.json`: what the CostLearner keeps between
//! runs and `calibrate` writes. A JSON object of class key -> estimate, replaced atomically
//! (`write_atomic`, `Durability::Data`). Generic over the table, whose entries are the rules'
//! (`rules::costs::CostTable`; `rules::costs::keep_known` drops what a file may hold that is
//! no class), so this layer needs nothing above it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Durability, write_atomic};

/// The file the table is kept in, under `storage.state_dir`.
pub fn table_path(state_dir: &Path) -> PathBuf {
    state_dir.join("costs.json")
}

/// Reads a table file; a missing file is an empty table.
pub fn read_table<T: DeserializeOwned + Default>(path: &Path) -> Result<T, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice::<T>(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes a table file atomically: a crash leaves the old or the new.
pub fn write_table<T: Serialize>(path: &Path, table: &T) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(table).map_err(std::io::Error::other)?;
    write_atomic(path, &json, Durability::Data)
}

/// Writes the table `current` gives as it is when the write starts: one write at a time in
/// this process, the table read under that lock, so the last write to finish holds the newest
/// table (the write at exit may overlap one under way).
pub fn save_latest<T: Serialize>(path: &Path, current: impl FnOnce() -> T) -> std::io::Result<()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    write_table(path, &current())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::costs::{CostTable, Estimate};

    #[test]
    fn a_broken_file_is_an_error_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = table_path(dir.path());
        assert_eq!(read_table::<CostTable>(&p).unwrap(), CostTable::new());
        std::fs::write(&p, b"{nope").unwrap();
        assert!(
            read_table::<CostTable>(&p)
                .unwrap_err()
                .contains("costs.json")
        );
    }

    #[test]
    fn a_table_reads_back_as_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = table_path(dir.path());
        let mut t = CostTable::new();
        t.insert(
            "track 1280x720@30".into(),
            Estimate {
                p50: 0.5,
                p95: 0.75,
                max: 1.0,
                jobs: 3,
                calibrated: true,
                updated_at_ms: 7,
            },
        );
        save_latest(&p, || t.clone()).unwrap();
        assert_eq!(read_table::<CostTable>(&p).unwrap(), t);
    }
}
