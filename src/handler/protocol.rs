//! The line protocol between a Pipeline actor (in the service) and its handler process.
//!
//! One JSON object per line. The service writes `HandlerCommand`s to the handler's stdin (the first
//! line is always `Start`); the handler writes `HandlerEvent`s to its stdout and its logs to stderr.
//! End of file on stdin means the service is gone: the handler then stops gracefully on its own.

use serde::{Deserialize, Serialize};

use crate::model::{EgressSpec, PipelineOptions};

/// Service -> handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum HandlerCommand {
    /// Build the pipeline for this spec and start it. Always the first line.
    Start {
        spec: Box<EgressSpec>,
        options: PipelineOptions,
    },
    /// Stop gracefully: send EOS, wait for it, finalize the output, exit.
    Stop,
}

/// Handler -> service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HandlerEvent {
    /// The pipeline is built and going to PLAYING.
    Started,
    /// The pipeline reached PLAYING: media flows.
    Playing,
    /// A source ended on its own (e.g. the stream closed): the handler finalizes and exits.
    SourceEnded,
    /// EOS went through the whole pipeline; the output is finalized.
    Eos,
    /// A pipeline error; the handler finalizes what it can and exits non-zero.
    Error {
        element: String,
        message: String,
        debug: String,
    },
    /// Last line before exit.
    Exiting { finalized: bool },
}
