//! What the API reports of an egress (`EgressInfo`, its files and uploads) and the events that
//! carry it.

use super::*;

/// One output file, described after it was closed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileInfo {
    pub filename: String,
    /// The local path; once uploaded, where the object is (`s3://bucket/key`, `gs://...`, the
    /// Azure blob URL).
    pub location: String,
    /// Bytes written so far while the egress records; the final size once it has ended.
    pub size_bytes: u64,
    /// Read back with Discoverer; absent when the file could not be read.
    pub duration_s: Option<f64>,
    /// Seconds of video the file holds (from its first to its last frame), read back at the
    /// end; absent while recording and when the file has no video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_s: Option<f64>,
    /// Seconds of audio the file holds, read back at the end; absent without audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_s: Option<f64>,
    /// Upload state when the egress has an upload target; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadState>,
}

/// Where an output is on its way to object storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// In the durable queue, not started yet.
    Pending,
    Uploading,
    /// The store confirmed the whole object.
    Done,
    /// Retries and the backup target failed; the local copy stays.
    Failed,
}

/// The record the API reports for an egress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EgressInfo {
    pub egress_id: String,
    pub node_id: String,
    #[serde(rename = "type")]
    pub egress_type: EgressType,
    pub status: EgressStatus,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub end_reason: Option<String>,
    pub error: Option<String>,
    /// The request as given, stream keys redacted.
    pub request: EgressRequest,
    pub files: Vec<FileInfo>,
    /// The HLS output, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<SegmentsInfo>,
    /// The stream URLs (redacted) with their state: those streaming or retrying, and the last
    /// few that failed or ended on their own (at most `MAX_STREAMS` of those).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamInfo>,
    /// Stream URLs no longer listed in `streams`: removed with `remove_urls`, or ended beyond
    /// the last `MAX_STREAMS` (the record stays small however often streams change).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub streams_removed: u32,
    /// The image output, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagesInfo>,
    /// What the outputs lack of what the source announced (e.g. "video missing from 3.2 s to
    /// the end"): a `complete` egress with no warning holds every announced stream for the
    /// whole recording.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Where the final record was written (`{egress_id}.json` beside the outputs), once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The handler's process id while it runs (so operators can find it in `ps`).
    #[serde(default)]
    pub handler_pid: Option<u32>,
    /// Admitted CPU cost in cores.
    #[serde(default)]
    pub cpu_cost: f64,
    /// `local` when a fleet node placed the egress on itself because the fleet's Redis did not
    /// answer (degraded mode); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// When retention (`storage.delete_after`) deleted the local outputs, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
    /// Where each WHIP source is published (`{advertise_url}/v1/whip/{egress_id}/{source}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub whip: Vec<WhipInfo>,
    /// The bearer token WHIP publishers of this egress send; shown in the answer to the create
    /// and in `GET /v1/egress/{id}`, `[redacted]` in lists, events, webhooks and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whip_token: Option<String>,
    /// A `room_composite`'s sources by id: those of the request (ids 0..), then those added
    /// while it records (`POST /v1/egress/{id}/sources`); a removed source keeps its id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceInfo>,
}

/// One source of a room, by its stable id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceInfo {
    /// The source's id: its place in the order sources were given and added, never reused
    /// (WHIP URLs and `remove` name it).
    pub id: usize,
    /// The source as requested (URI credentials redacted).
    pub source: SourceRequest,
    /// When it was added while recording, ms since the epoch (absent for the request's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_at: Option<u64>,
    /// When it was removed, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<u64>,
    /// When it was lost (its sender gone for `pipeline.source_reconnect_s`; its tile keeps the
    /// last frame until it is removed), ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_at: Option<u64>,
}

impl SourceInfo {
    /// Whether the source is still in the room (not removed).
    pub fn present(&self) -> bool {
        self.removed_at.is_none()
    }
}

/// One WHIP source of an egress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhipInfo {
    /// The source's index in `request.sources`.
    pub source: usize,
    /// Where a publisher POSTs its SDP offer.
    pub url: String,
    /// Whether a publisher is connected now.
    #[serde(default)]
    pub publishing: bool,
}

impl EgressInfo {
    /// The record as lists, events, webhooks and logs show it: the WHIP token hidden.
    pub fn shared(mut self) -> EgressInfo {
        if self.whip_token.is_some() {
            self.whip_token = Some(upload::REDACTED.to_string());
        }
        self
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What happened, as events (SSE, webhooks) and `webhooks.events` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new egress record (status `starting`).
    EgressStarted,
    /// Any later change before the end (active, ending, files).
    EgressUpdated,
    /// The final record (complete, failed, aborted, limit_reached).
    EgressEnded,
    /// The node's load, draining flag or per-type counts changed.
    NodeUpdated,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::EgressStarted,
        EventKind::EgressUpdated,
        EventKind::EgressEnded,
        EventKind::NodeUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::EgressStarted => "egress_started",
            EventKind::EgressUpdated => "egress_updated",
            EventKind::EgressEnded => "egress_ended",
            EventKind::NodeUpdated => "node_updated",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// `EgressInfo::placement` of an egress placed while the fleet's Redis did not answer.
pub const PLACEMENT_LOCAL: &str = "local";

/// A plausible record for unit tests of code that stores, merges or shows records.
#[cfg(test)]
pub fn sample_info(id: &str, node: &str, status: EgressStatus, created_at: u64) -> EgressInfo {
    EgressInfo {
        egress_id: id.into(),
        node_id: node.into(),
        egress_type: EgressType::Track,
        status,
        created_at,
        started_at: None,
        ended_at: None,
        end_reason: None,
        error: None,
        request: EgressRequest {
            egress_type: "track".into(),
            sources: vec![SourceRequest::uri("test://video")],
            url: None,
            output: Some(OutputRequest::File(FileOutputRequest {
                filename: Some("a.mp4".into()),
            })),
            outputs: None,
            video: None,
            audio: None,
            max_duration_s: None,
            estimated_cpu: None,
            upload: None,
        },
        files: vec![],
        segments: None,
        streams: vec![],
        images: None,
        manifest: None,
        warnings: Vec::new(),
        handler_pid: Some(42),
        cpu_cost: 0.5,
        placement: None,
        deleted_at: None,
        whip: Vec::new(),
        whip_token: None,
        streams_removed: 0,
        sources: Vec::new(),
    }
}
