//! The line protocol between a Pipeline actor (in the service) and its handler process.
//!
//! One JSON object per line. The service writes `HandlerCommand`s to the handler's stdin (the first
//! line is always `Start`); the handler writes `HandlerEvent`s to its stdout and its logs to stderr.
//! End of file on stdin means the service is gone: the handler then stops gracefully on its own.
//!
//! A run: `started`, then `playing` once media reaches the output (never, if it ends first),
//! maybe `source_stalled`/`source_recovered` pairs, `segment_closed`, `image_written` and
//! `stream` lines as outputs progress, maybe `source_ended` or `source_lost`, then
//! `eos` when the output was finalized, maybe `error`, and last `exiting`. Fields added later
//! carry serde defaults, so either side may be one version older.

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
    /// Stop gracefully: end the recording (EOS into the encoders and the muxer), finalize the
    /// output, exit. `at_ms`: when the stop was asked (wall clock, ms); what the sources sent
    /// after it is not recorded, however late the handler reads this line.
    Stop {
        #[serde(default)]
        at_ms: Option<u64>,
    },
    /// Start streaming to `add` (index, URL) and stop streaming to the indices in `remove`.
    Streams {
        #[serde(default)]
        add: Vec<(usize, String)>,
        #[serde(default)]
        remove: Vec<usize>,
    },
    /// A WHIP publisher's SDP offer for source `source`; answered by `whip_answer` with the
    /// same `session`.
    WhipOffer {
        source: usize,
        session: String,
        sdp: String,
    },
    /// The publisher of WHIP source `source` ended its session: the source is lost as a
    /// stalled one is, unless a publisher comes back within `source_reconnect_s`.
    WhipEnd { source: usize },
    /// A room's sources change: `add` (id, source) join with a tile each, the ids in `remove`
    /// leave; the grid is laid out again for the sources present.
    Sources {
        #[serde(default)]
        add: Vec<(usize, crate::model::Source)>,
        #[serde(default)]
        remove: Vec<usize>,
    },
}

/// Handler -> service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HandlerEvent {
    /// The output is open and the sources are connecting.
    Started,
    /// Media reached the output: the egress is recording. `since_ms`: how long ago (ms) the
    /// first media the output holds arrived from the source (it may have waited for the graph
    /// to be built); the record's `started_at` is then. Sent again when another stream's first
    /// media, older, reaches the outputs later: `started_at` moves back to it.
    Playing {
        #[serde(default)]
        since_ms: u64,
    },
    /// The graph is decided: whether its outputs record video and audio (what the sources
    /// announced and the egress type takes).
    Recording { video: bool, audio: bool },
    /// Source `source` sent nothing for `pipeline.source_stall_s`: the handler reconnects.
    SourceStalled { source: usize },
    /// A stalled source delivers media again; the output goes on on the same timeline.
    SourceRecovered { source: usize },
    /// A stalled source did not come back within `pipeline.source_reconnect_s`: the handler
    /// finalizes the output and exits ("Source lost").
    SourceLost { source: usize },
    /// A room's source did not come back within `pipeline.source_reconnect_s`, while others
    /// still send: its tile keeps its last frame until it is removed; the recording goes on.
    SourceLeft { source: usize },
    /// WHIP source `source`'s publisher failed before its media came (ICE, DTLS): its session
    /// is over and the source takes another publisher.
    PublisherGone { source: usize },
    /// A source ended on its own (e.g. the stream closed): the handler finalizes and exits.
    SourceEnded,
    /// EOS went through the whole pipeline; the output is finalized.
    Eos,
    /// A pipeline error; the handler finalizes what it can and exits non-zero. `message` is
    /// for users, `element` is the path of the element that failed, `debug` GStreamer's text.
    Error {
        element: String,
        message: String,
        debug: String,
    },
    /// A segment closed and the playlists were rewritten: totals so far.
    SegmentClosed {
        count: u32,
        duration_s: f64,
        size_bytes: u64,
    },
    /// A JPEG snapshot was written: images so far.
    ImageWritten { count: u32 },
    /// A health condition (black or frozen picture, silent sound) held for
    /// `pipeline.health_window_s` (`raised`), or ended (not `raised`).
    Health {
        condition: crate::rules::health::Condition,
        raised: bool,
    },
    /// Stream `index` changed state: `active` (connecting or sending), `failed` (gave up after
    /// `stream_retry_s`; `error` says why) or `ended`. `error` is redacted of stream keys.
    Stream {
        index: usize,
        status: crate::model::StreamStatus,
        #[serde(default)]
        error: Option<String>,
    },
    /// The answer to `whip_offer` `session`: the SDP answer, or why there is none (`error`,
    /// for the publisher: a bad offer, no codec in common).
    WhipAnswer {
        session: String,
        #[serde(default)]
        sdp: Option<String>,
        #[serde(default)]
        error: Option<String>,
    },
    /// Last line before exit. `media`: whether any media reached the output; when false the
    /// handler deleted the (unplayable) output file.
    Exiting {
        finalized: bool,
        #[serde(default = "yes")]
        media: bool,
    },
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_exiting_line_means_media() {
        let ev: HandlerEvent =
            serde_json::from_str(r#"{"event":"exiting","finalized":true}"#).unwrap();
        assert_eq!(
            ev,
            HandlerEvent::Exiting {
                finalized: true,
                media: true
            }
        );
        let line = serde_json::to_string(&HandlerEvent::SourceLost { source: 0 }).unwrap();
        assert_eq!(line, r#"{"event":"source_lost","source":0}"#);
    }
}
