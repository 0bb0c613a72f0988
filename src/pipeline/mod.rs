//! GStreamer graphs per egress type and output.
//!
//! A graph is described once, as a launch description (`describe`), and that one description is
//! both what the handler runs (`build`, through `gst::parse::launch`) and what `scripts/bench`
//! runs under `gst-launch-1.0` as its baseline (`launch_line`): the comparison is like for like.

mod describe;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::error::PipelineError;
use std::convert::Infallible;

use crate::model::{EgressSpec, PipelineOptions, Source};

pub use describe::{Desc, SourceStreams, VideoInput, describe, grid};

/// What each source carries: known for test sources, asked of `probe` for URIs.
pub fn streams_of<E>(
    spec: &EgressSpec,
    mut probe: impl FnMut(&str) -> Result<SourceStreams, E>,
) -> Result<Vec<SourceStreams>, E> {
    spec.sources
        .iter()
        .map(|s| match s {
            Source::Test { media, .. } => Ok(SourceStreams::of_test(*media)),
            Source::Uri { uri } => probe(uri),
        })
        .collect()
}

/// The graph for `spec` as a shell-quoted `gst-launch-1.0 -e` argument list (URI sources are
/// assumed to carry raw-decodable audio and video).
pub fn launch_line(spec: &EgressSpec, opts: &PipelineOptions) -> String {
    let Ok(streams) = streams_of::<Infallible>(spec, |_| Ok(SourceStreams::AV_RAW));
    describe(spec, opts, &streams).shell()
}

/// Builds the pipeline `desc` describes for `spec`. Creates the output's directory.
pub fn build(spec: &EgressSpec, desc: &Desc) -> Result<gst::Pipeline, PipelineError> {
    gst::init().map_err(|e| PipelineError::Build(e.to_string()))?;
    // Checked up front so a missing plugin is a clear error, not a parse failure.
    for name in desc.factories() {
        if gst::ElementFactory::find(&name).is_none() {
            return Err(PipelineError::MissingElement(name));
        }
    }
    if let Some(dir) = spec.file.path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| PipelineError::OutputDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let line = desc.gst();
    let element =
        gst::parse::launch(&line).map_err(|e| PipelineError::Build(format!("{e}: {line}")))?;
    element
        .downcast::<gst::Pipeline>()
        .map_err(|_| PipelineError::Build("launch description is not a pipeline".into()))
}
