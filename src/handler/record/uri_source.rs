//! One URI source of a recording: its current connection, the pads it showed and what it
//! announced, and when that is enough to decide the graph (`complete`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;

use super::PAD_SETTLE;
use crate::pipeline::announce::Announced;
use crate::pipeline::source_uri::{self, Connection, Held};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum SrcState {
    /// First connection, before the graph exists.
    Discovering,
    Live,
    /// Stalled at `since`; attempts until `since + source_reconnect_s`. `ended`: the sender
    /// ended its stream (not a failure), so giving up is the source's end, not its loss.
    Reconnecting {
        since: Instant,
        ended: bool,
    },
    /// A room's source that did not come back (or could not join): its tile keeps its last
    /// frame, nothing more is tried until it is removed.
    Gone,
}

pub(super) struct UriSource {
    pub(super) index: usize,
    /// A WHIP source: its connections are its publishers' sessions, made on their offers.
    pub(super) whip: bool,
    /// A WHEP source: each connection is a session this side offers to the endpoint.
    pub(super) whep: Option<crate::pipeline::source_whep::Whep>,
    pub(super) uri: String,
    pub(super) bin: Option<gst::Element>,
    pub(super) held: Arc<Held>,
    pub(super) conn: Arc<Connection>,
    /// Connection number: 0 first, then one per reconnection attempt.
    pub(super) attempt: u32,
    pub(super) started: Instant,
    /// Pads of the current connection, in order, and when the last one came.
    pub(super) pads: Vec<gst::Pad>,
    pub(super) last_pad: Option<Instant>,
    /// Streams `decodebin3` selected for the current connection: the pads to expect.
    pub(super) expected: Option<usize>,
    /// What the source's metadata announced (FLV `onMetaData`).
    pub(super) announced: Option<Announced>,
    /// Every stream type `decodebin3`'s collections listed for the current connection.
    pub(super) collection: Announced,
    /// Streams appear one by one (FLV, RTSP): the collection is not the whole set.
    pub(super) flv: bool,
    /// How many of `pads` are linked (to the graph or a discard sink).
    pub(super) linked: usize,
    pub(super) state: SrcState,
}

impl UriSource {
    /// Source `index` before its first connection (a WHIP source's comes with its offer).
    pub(super) fn new(index: usize, uri: String, whip: bool, epoch: Instant) -> UriSource {
        UriSource {
            index,
            whip,
            whep: None,
            flv: !whip && crate::pipeline::announce::is_incremental(&uri),
            uri,
            bin: None,
            held: Arc::default(),
            conn: Connection::new(false, epoch),
            attempt: 0,
            started: epoch,
            pads: Vec::new(),
            last_pad: None,
            expected: None,
            announced: None,
            collection: Announced::default(),
            linked: 0,
            state: SrcState::Discovering,
        }
    }

    /// Source `index` of the spec, when the handler connects to it (URI, WHIP, WHEP).
    pub(super) fn of(index: usize, s: &crate::model::Source, epoch: Instant) -> Option<UriSource> {
        use crate::model::Source;
        Some(match s {
            Source::Uri { uri } => UriSource::new(index, uri.clone(), false, epoch),
            Source::Whip => UriSource::new(index, format!("whip (source {index})"), true, epoch),
            Source::Whep { url, token } => {
                let mut src = UriSource::new(index, url.clone(), false, epoch);
                src.flv = false;
                src.whep = Some(crate::pipeline::source_whep::Whep::new(
                    url.clone(),
                    token.clone(),
                ));
                src
            }
            Source::Test { .. } | Source::Web { .. } => return None,
        })
    }

    /// The name of the current connection's element: `src{i}`, then `src{i}_r{n}`.
    pub(super) fn name(&self) -> String {
        match self.attempt {
            0 => format!("src{}", self.index),
            n => format!("src{}_r{n}", self.index),
        }
    }

    pub(super) fn has(&self, prefix: &str) -> bool {
        self.pads
            .iter()
            .any(|p| source_uri::caps_name(p).starts_with(prefix))
    }

    /// What the transport announced: FLV metadata, else `decodebin3`'s stream collection (an
    /// MPEG-TS PMT, a container header or an SDP list every stream at once; FLV's collection
    /// grows tag by tag, so it announces nothing).
    pub(super) fn announced(&self) -> Option<Announced> {
        self.announced.or_else(|| {
            (!self.flv && (self.collection.video || self.collection.audio))
                .then_some(self.collection)
        })
    }

    /// Whether this connection showed every stream the graph may use: a video and an audio
    /// pad (no source gives the graph more), or every stream the source announced; without an
    /// announcement, all the streams `decodebin3` selected and no new pad for `PAD_SETTLE`
    /// (for FLV without metadata, `first_keyframe` since the start: its video comes with a
    /// keyframe). An announced audio stream that has not shown by `first_keyframe` is given
    /// up (video is not: see `missing_video`).
    pub(super) fn complete(&self, first_keyframe: Duration) -> bool {
        let (video, audio) = (self.has("video/"), self.has("audio/"));
        if video && audio {
            return true;
        }
        // A pad that has not said what it carries yet (HLS gives its caps after its pads).
        if self.pads.is_empty()
            || self
                .pads
                .iter()
                .any(|p| source_uri::caps_name(p).is_empty())
        {
            return false;
        }
        let waited = self.started.elapsed() >= first_keyframe;
        if let Some(a) = self.announced() {
            return (video || !a.video) && (audio || !a.audio || waited);
        }
        let settled = self.last_pad.is_some_and(|t| t.elapsed() >= PAD_SETTLE);
        if self.flv && !video {
            return waited;
        }
        match self.expected {
            Some(n) => n > 0 && self.pads.len() >= n && settled,
            None => settled,
        }
    }

    /// Whether the source announced video that has not come within `first_keyframe`.
    pub(super) fn missing_video(&self, first_keyframe: Duration) -> bool {
        self.started.elapsed() >= first_keyframe
            && self.announced().is_some_and(|a| a.video)
            && !self.has("video/")
    }
}
