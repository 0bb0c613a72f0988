//! GStreamer graphs per egress type and output.
//!
//! A graph is described once, as a launch description (`describe`), and that one description is
//! both what the handler runs (`build`, through `gst::parse::launch`) and what `scripts/bench`
//! runs under `gst-launch-1.0` as its baseline (`launch_line`): the comparison is like for like.

mod describe;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::error::PipelineError;
use crate::model::{EgressSpec, PipelineOptions};

pub use describe::{Desc, SourceStreams, VideoInput, describe, grid};

/// The streams each source carries: known for test sources, probed with Discoverer for URIs.
pub fn known_streams(spec: &EgressSpec) -> Vec<Option<SourceStreams>> {
    spec.sources.iter().map(SourceStreams::of_source).collect()
}

/// The graph for `spec` as a shell-quoted `gst-launch-1.0 -e` argument list (test sources only;
/// URI sources are assumed to carry raw-decodable audio and video).
pub fn launch_line(spec: &EgressSpec, opts: &PipelineOptions) -> String {
    let streams: Vec<SourceStreams> = known_streams(spec)
        .into_iter()
        .map(|s| s.unwrap_or(SourceStreams::AV_RAW))
        .collect();
    describe(spec, opts, &streams).shell()
}

/// Builds the pipeline for `spec` given what its sources carry. Creates the output's directory.
pub fn build(
    spec: &EgressSpec,
    opts: &PipelineOptions,
    streams: &[SourceStreams],
) -> Result<gst::Pipeline, PipelineError> {
    gst::init().map_err(|e| PipelineError::Build(e.to_string()))?;
    let desc = describe(spec, opts, streams);
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
