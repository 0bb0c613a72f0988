//! The file output: one muxer writing into the output file the handler opened (never a path the
//! muxer opens itself, so a symlink planted at the path is never followed).
//!
//! ```text
//!   video_{codec}_tee ─► file_video_queue ─► [file_video_parse] ─┐
//!   audio_{codec}_tee ─► file_audio_queue ─► [file_audio_parse] ─┴► file_mux ─► file_sink (fdsink fd=N)
//! ```
//!
//! MP4 is hybrid: `mp4mux` writes a fragmented MP4 (moov, then moof+mdat every
//! `pipeline.mp4_fragment_s`) while recording, so a killed file decodes up to the last whole
//! fragment; after EOS the handler remuxes it (no re-encode, `crate::repair`) into a normal
//! progressive MP4 with its duration in the header, as the service does for a killed one. No
//! index space is reserved: the file's size is the media it holds. (`fragment-mode=
//! first-moov-then-finalise` would skip the remux, but a killed file with audio written that way
//! does not open in ffmpeg and GStreamer reads only its first fragment.)

use std::os::fd::OwnedFd;
use std::path::Path;

use super::encode::{AudioCodecKind, VideoCodec, branch};
use super::graph::{Desc, Node, el, link};
use crate::error::PipelineError;
use crate::model::{Container, FileOutput, PipelineOptions};

/// The video codec a container takes.
pub fn video_codec(c: Container) -> VideoCodec {
    match c {
        Container::Mp4 | Container::Mkv => VideoCodec::H264,
        Container::Webm => VideoCodec::Vp8,
        Container::Ogg => VideoCodec::Theora,
    }
}

/// Adds the muxer, the sink and the branches from the encoded tees (`video`, `audio`: the
/// codecs, when the egress records that stream).
pub fn add(
    d: &mut Desc,
    file: &FileOutput,
    opts: &PipelineOptions,
    video: Option<VideoCodec>,
    audio: Option<AudioCodecKind>,
) {
    let mux = match file.container {
        Container::Mp4 => el("mp4mux", "file_mux").p(
            "fragment-duration",
            (opts.mp4_fragment_s * 1000.0).round() as u64,
        ),
        Container::Mkv => el("matroskamux", "file_mux"),
        Container::Webm => el("webmmux", "file_mux"),
        Container::Ogg => el("oggmux", "file_mux"),
    };
    d.push(vec![
        mux,
        Node::FileSink {
            name: "file_sink".into(),
            path: file.path.display().to_string(),
        },
    ]);
    if let Some(c) = video {
        let mut chain = branch("file", true, &c.tee(), c.as_str());
        chain.push(link("file_mux"));
        d.push(chain);
    }
    if let Some(a) = audio {
        let mut chain = branch("file", false, &a.tee(), a.as_str());
        chain.push(link("file_mux"));
        d.push(chain);
    }
    d.sinks.push("file_sink".into());
    d.media.push("file_mux".into());
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
