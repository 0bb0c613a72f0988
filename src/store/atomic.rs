//! The one way this service replaces a file: a new temporary file beside it (created
//! exclusively, never through a symlink), written, then renamed over the path (a rename replaces
//! a symlink rather than writing through it), so a crash leaves the old content or the new,
//! never half of either. How durable is each caller's explicit choice.

use std::io::Write;
use std::path::Path;

/// What must be on disk when a write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Nothing synced: a picture replaced every few seconds may lose the last one in a crash.
    Cached,
    /// The data synced before the rename: records, playlists, the cost table, queued events.
    Data,
    /// The data and the rename (the directory synced too): the upload journal, whose entries
    /// must outlive a crash the moment an upload starts.
    Full,
}

/// Replaces `path` with `bytes` (mode 0644).
pub fn write_atomic(path: &Path, bytes: &[u8], d: Durability) -> std::io::Result<()> {
    write_with_mode(path, bytes, d, 0o644)
}

/// `write_atomic`, readable by the service's user alone (mode 0600): what may hold a secret.
pub fn write_atomic_private(path: &Path, bytes: &[u8], d: Durability) -> std::io::Result<()> {
    write_with_mode(path, bytes, d, 0o600)
}

fn write_with_mode(path: &Path, bytes: &[u8], d: Durability, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if d != Durability::Cached {
        f.sync_data()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if d == Durability::Full {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_write_replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, "keep").unwrap();
        let link = dir.path().join("p.m3u8");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        write_atomic(&link, b"#EXTM3U\n", Durability::Data).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "#EXTM3U\n");
        assert!(
            !std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_private_file_is_the_user_s_alone_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("entry.json");
        write_atomic_private(&p, b"{}", Durability::Full).unwrap();
        write_atomic_private(&p, b"{\"a\":1}", Durability::Full).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
