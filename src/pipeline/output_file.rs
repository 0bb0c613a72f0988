//! The file output: one muxer writing into the output file the handler opened (never a path the
//! muxer opens itself, so a symlink planted at the path is never followed).
//!
//! ```text
//!   ... ─► mux (mp4mux robust | matroskamux | webmmux | oggmux) ─► out_file_sink (fdsink fd=N)
//! ```

use std::os::fd::OwnedFd;
use std::path::Path;

use super::graph::{Node, el};
use crate::error::PipelineError;
use crate::model::{Container, EgressSpec, PipelineOptions};

/// The muxer and the sink.
pub fn chain(spec: &EgressSpec, opts: &PipelineOptions) -> Vec<Node> {
    let ns = |s: f64| (s * 1e9).round() as u64;
    let mux = match spec.file.container {
        // Robust mode: the index is rewritten every period into reserved space, so a killed
        // recording stays playable up to the last update.
        Container::Mp4 => el("mp4mux", "mux")
            .p(
                "reserved-max-duration",
                ns(opts.mp4_reserved_max_duration_s),
            )
            .p(
                "reserved-moov-update-period",
                ns(opts.mp4_moov_update_period_s),
            ),
        Container::Mkv => el("matroskamux", "mux"),
        Container::Webm => el("webmmux", "mux"),
        Container::Ogg => el("oggmux", "mux"),
    };
    vec![
        mux,
        Node::FileSink {
            name: "out_file_sink".into(),
            path: spec.file.path.display().to_string(),
        },
    ]
}

/// Opens the output file for writing without ever following a symlink: the service creates it
/// (empty) before the handler starts; if it does not exist yet, it is created here, exclusively.
/// The directory must exist: the handler creates none.
pub fn open(path: &Path) -> Result<OwnedFd, PipelineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let existing = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(path);
    let file = match existing {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|source| open_error(path, source))?,
        Err(source) => return Err(open_error(path, source)),
    };
    let meta = file.metadata().map_err(|source| open_error(path, source))?;
    if !meta.is_file() {
        return Err(PipelineError::Output(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file.into())
}

fn open_error(path: &Path, e: std::io::Error) -> PipelineError {
    // ELOOP is what O_NOFOLLOW answers for a symlink.
    let why = if e.raw_os_error() == Some(libc::ELOOP) {
        "is a symbolic link".to_string()
    } else {
        e.to_string()
    };
    PipelineError::Output(format!("cannot open output {}: {why}", path.display()))
}
