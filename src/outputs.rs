//! Output files are confined to `storage.output_dir` and never overwrite anything.
//!
//! `prepare_file` is the one place an output file comes into being: the service creates it
//! (empty) before the handler starts, walking the client's relative path one component at a
//! time from the canonical output directory:
//!
//! ```text
//!  output_dir/            canonical, resolved once at start
//!    a/                   exists: a real directory, or a symlink whose target stays inside
//!      b/                 missing: created with mkdir (never through a symlink)
//!        rec.mp4          created with O_CREAT|O_EXCL|O_NOFOLLOW: fails if anything is there,
//!                         a dangling symlink included
//! ```
//!
//! The handler then opens that very file with `O_NOFOLLOW`. So a symlink planted in the output
//! directory (dangling or not) can never make a recording land outside it, two requests for one
//! name cannot both win, and a refused request creates no directory outside `output_dir`.
//! Everything here blocks (it touches the disk): call it from `spawn_blocking`, never from an
//! actor's thread.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::model::OutputsSpec;

/// Longest name one path component may have on Linux file systems.
pub const MAX_NAME_BYTES: usize = 255;

/// Why an output file cannot be created. `Exists` is a 409; what the client can fix by choosing
/// another name, or the operator by fixing the directory, a 400 with the reason (`error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output file '{0}' exists already: choose another filename")]
    Exists(String),
    #[error("'{name}': '{component}' is a file, not a directory")]
    UnderAFile { name: String, component: String },
    #[error("'{name}': the name '{component}' is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong { name: String, component: String },
    #[error("'{name}': '{component}' is a symbolic link that leads outside the output directory")]
    LeavesOutputDir { name: String, component: String },
    #[error(
        "'{name}': '{component}' is a symbolic link, and outputs are never written through one"
    )]
    Symlink { name: String, component: String },
    #[error("'{name}' is not a relative path inside the output directory")]
    NotRelative { name: String },
    #[error("the output directory is not writable ({path}): {source}")]
    NotWritable { path: String, source: io::Error },
    #[error("cannot create the output file '{name}': {source}")]
    Io { name: String, source: io::Error },
}

/// Creates `root/rel` as a new empty file, confined to `root` (which must be canonical).
/// Returns its path. See the module doc for the rules.
pub fn prepare_file(root: &Path, rel: &str) -> Result<PathBuf, OutputError> {
    let name = rel.to_string();
    let parts: Vec<&std::ffi::OsStr> = Path::new(rel)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(Ok(s)),
            Component::CurDir => None,
            _ => Some(Err(())),
        })
        .collect::<Result<_, _>>()
        .map_err(|_| OutputError::NotRelative { name: name.clone() })?;
    let Some((last, dirs)) = parts.split_last() else {
        return Err(OutputError::NotRelative { name });
    };
    for c in &parts {
        if c.len() > MAX_NAME_BYTES {
            return Err(OutputError::NameTooLong {
                name,
                component: c.to_string_lossy().into_owned(),
            });
        }
    }
    let mut cur = root.to_path_buf();
    for c in dirs {
        let component = c.to_string_lossy().into_owned();
        let p = cur.join(c);
        cur = match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                // A link to a directory inside the output directory is a layout choice; one
                // that leads outside (or nowhere) is refused.
                let real = p.canonicalize().ok().filter(|r| r.starts_with(root));
                match real {
                    Some(r) if r.is_dir() => r,
                    Some(_) => return Err(OutputError::UnderAFile { name, component }),
                    None => return Err(OutputError::LeavesOutputDir { name, component }),
                }
            }
            Ok(m) if m.is_dir() => p,
            Ok(_) => return Err(OutputError::UnderAFile { name, component }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::create_dir(&p) {
                    Ok(()) => {}
                    // Made by a concurrent request: check it like any existing one.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let m = fs::symlink_metadata(&p).map_err(|source| io_err(&name, source))?;
                        if !m.is_dir() {
                            return Err(OutputError::UnderAFile { name, component });
                        }
                    }
                    Err(source) => return Err(classify(&name, &cur, source)),
                }
                p
            }
            Err(source) => return Err(classify(&name, &cur, source)),
        };
    }
    let path = cur.join(last);
    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(OutputError::Symlink {
            name,
            component: last.to_string_lossy().into_owned(),
        });
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o644)
        .open(&path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => OutputError::Exists(name.clone()),
            _ => classify(&name, &cur, source),
        })?;
    Ok(path)
}

/// Creates every output of an egress (empty) the way `prepare_file` does, and returns them with
/// their real paths: the file, the playlists and the first segment (which claim the HLS prefix:
/// a second egress with the same prefix gets a 409), the first image (claiming its prefix).
/// On an error nothing created here is left behind; the error names the request field it is
/// about (`output.file.filename`, `segments.prefix`, `images.prefix`).
pub fn prepare_all(
    root: &Path,
    o: &OutputsSpec,
) -> Result<OutputsSpec, (&'static str, OutputError)> {
    let mut done: Vec<PathBuf> = Vec::new();
    let result = prepare_each(root, o, &mut done);
    if result.is_err() {
        for p in &done {
            remove_if_empty(p);
        }
    }
    result
}

fn prepare_each(
    root: &Path,
    o: &OutputsSpec,
    done: &mut Vec<PathBuf>,
) -> Result<OutputsSpec, (&'static str, OutputError)> {
    let mut out = o.clone();
    let mut make =
        |rel: &str, field: &'static str| -> Result<PathBuf, (&'static str, OutputError)> {
            let p = prepare_file(root, rel).map_err(|e| (field, e))?;
            done.push(p.clone());
            Ok(p)
        };
    if let Some(f) = &mut out.file {
        f.path = make(&f.filename, "output.file.filename")?;
    }
    if let Some(s) = &mut out.segments {
        s.playlist_path = make(&s.playlist, "segments.prefix")?;
        if let Some(l) = &mut s.live {
            l.1 = make(&l.0, "segments.prefix")?;
        }
        let first = make(&format!("{}_00000.ts", s.prefix), "segments.prefix")?;
        s.dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
        refuse_taken(&first, &s.prefix, "ts").map_err(|e| ("segments.prefix", e))?;
    }
    if let Some(im) = &mut out.images {
        let first = make(&format!("{}_00000.jpg", im.prefix), "images.prefix")?;
        im.dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
        refuse_taken(&first, &im.prefix, "jpg").map_err(|e| ("images.prefix", e))?;
    }
    Ok(out)
}

/// A numbered output whose later names are taken already (`img_00001.jpg` of an earlier
/// recording with the same prefix) is refused like a file that exists: none would be
/// overwritten, so the images or segments would skip numbers and their count would lie.
fn refuse_taken(first: &Path, prefix: &str, ext: &str) -> Result<(), OutputError> {
    let (Some(dir), Some(stem)) = (
        first.parent(),
        Path::new(prefix).file_name().and_then(|s| s.to_str()),
    ) else {
        return Ok(());
    };
    let names = crate::model::numbered::NumberedName::new(stem, ext);
    let taken = fs::read_dir(dir).into_iter().flatten().flatten().find(|e| {
        e.file_name()
            .to_str()
            .and_then(|n| names.number(n))
            .is_some_and(|n| n > 0)
    });
    match taken {
        Some(e) => {
            let rel = Path::new(prefix)
                .parent()
                .map(|p| p.join(e.file_name()))
                .unwrap_or_else(|| e.file_name().into());
            Err(OutputError::Exists(rel.display().to_string()))
        }
        None => Ok(()),
    }
}

/// Opens `path` for writing a new output: created exclusively, or the empty placeholder
/// `prepare_all` made; never through a symlink, never over content.
pub fn open_new(path: &Path) -> io::Result<fs::File> {
    let open = |create: bool| {
        let mut o = OpenOptions::new();
        o.write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        if create {
            o.create_new(true).mode(0o644);
        }
        o.open(path)
    };
    match open(true) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let f = open(false)?;
            let m = f.metadata()?;
            if m.is_file() && m.len() == 0 {
                Ok(f)
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

/// Removes an output file that `prepare_file` made and nothing wrote to (a start that failed,
/// a stop before the first frame), so it does not block its name. Anything with content stays.
pub fn remove_if_empty(path: &Path) {
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        let _ = fs::remove_file(path);
    }
}

fn io_err(name: &str, source: io::Error) -> OutputError {
    OutputError::Io {
        name: name.to_string(),
        source,
    }
}

fn classify(name: &str, dir: &Path, source: io::Error) -> OutputError {
    match source.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) => OutputError::NotWritable {
            path: dir.display().to_string(),
            source,
        },
        Some(libc::ENOTDIR) => OutputError::UnderAFile {
            name: name.to_string(),
            component: dir.display().to_string(),
        },
        _ => io_err(name, source),
    }
}

/// An output that could not be created, and the request field it comes from.
impl From<(&'static str, OutputError)> for crate::error::NodeError {
    fn from((field, e): (&'static str, OutputError)) -> Self {
        use crate::error::{NodeError, RequestError};
        use OutputError as O;
        match e {
            O::Exists(_) => NodeError::OutputExists(e.to_string()),
            O::Io { .. } => NodeError::Internal(e.to_string()),
            _ => NodeError::Request(RequestError::invalid(field, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir_all(&out).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        let out = out.canonicalize().unwrap();
        (t, out, elsewhere)
    }

    #[test]
    fn creates_the_file_and_its_directories_once() {
        let (_t, out, _) = root();
        let p = prepare_file(&out, "a/b/./c.mp4").unwrap();
        assert_eq!(p, out.join("a/b/c.mp4"));
        assert_eq!(fs::metadata(&p).unwrap().len(), 0);
        assert!(matches!(
            prepare_file(&out, "a/b/c.mp4"),
            Err(OutputError::Exists(_))
        ));
        remove_if_empty(&p);
        assert!(prepare_file(&out, "a/b/c.mp4").is_ok());
    }

    #[test]
    fn a_dangling_symlink_is_never_followed() {
        let (_t, out, elsewhere) = root();
        symlink(elsewhere.join("x.mp4"), out.join("d.mp4")).unwrap();
        let e = prepare_file(&out, "d.mp4").unwrap_err();
        assert!(matches!(e, OutputError::Symlink { .. }), "{e}");
        assert!(!elsewhere.join("x.mp4").exists());
    }

    #[test]
    fn a_directory_symlink_leaving_the_root_is_refused_and_nothing_is_created_outside() {
        let (_t, out, elsewhere) = root();
        symlink(&elsewhere, out.join("link")).unwrap();
        symlink(elsewhere.join("missing"), out.join("dangling")).unwrap();
        for name in ["link/x.mp4", "link/new/x.mp4", "dangling/x.mp4"] {
            let e = prepare_file(&out, name).unwrap_err();
            assert!(
                matches!(e, OutputError::LeavesOutputDir { .. }),
                "{name}: {e}"
            );
        }
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        // A link that stays inside is fine.
        fs::create_dir(out.join("real")).unwrap();
        symlink(out.join("real"), out.join("inside")).unwrap();
        assert_eq!(
            prepare_file(&out, "inside/y.mp4").unwrap(),
            out.join("real/y.mp4")
        );
    }

    #[test]
    fn client_mistakes_are_named() {
        let (_t, out, _) = root();
        prepare_file(&out, "f.mp4").unwrap();
        let e = prepare_file(&out, "f.mp4/g.mp4").unwrap_err();
        assert!(matches!(e, OutputError::UnderAFile { .. }), "{e}");
        let long = format!("{}/x.mp4", "d".repeat(256));
        let e = prepare_file(&out, &long).unwrap_err();
        assert!(matches!(e, OutputError::NameTooLong { .. }), "{e}");
        assert!(!out.join("d".repeat(256)).exists());
        for bad in ["../x.mp4", "/etc/x.mp4", ""] {
            assert!(matches!(
                prepare_file(&out, bad),
                Err(OutputError::NotRelative { .. })
            ));
        }
    }

    #[test]
    fn a_read_only_directory_is_reported_as_such() {
        // As root (CI) permission bits do not stop writes, so the mapping itself is checked:
        // a read-only mount (EROFS) or a directory we may not write (EACCES).
        for errno in [libc::EROFS, libc::EACCES] {
            let e = classify(
                "x.mp4",
                Path::new("/rec"),
                io::Error::from_raw_os_error(errno),
            );
            assert!(matches!(e, OutputError::NotWritable { .. }), "{e}");
            assert!(e.to_string().contains("not writable"), "{e}");
        }
    }
}
