//! The egress data model: what a client asks for (`EgressRequest`), what the node resolved it to
//! after validation (`EgressSpec`, also what a handler process is given), and the record the API
//! reports (`EgressInfo`). Validation lives here so the API, the fleet and the handler agree on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use validate::RequestError;

pub mod hosts;
pub mod numbered;
mod outputs;
pub mod redact;
pub mod upload;
pub mod validate;

pub use outputs::{
    FileOutputRequest, ImagesInfo, ImagesOutput, ImagesRequest, LivePlaylistRequest, MAX_STREAMS,
    OutputRequest, OutputsSpec, SegmentsInfo, SegmentsOutput, SegmentsRequest, StreamInfo,
    StreamRequest, StreamStatus, StreamsUpdate, TemplateValues, check_stream_url,
};

/// The kinds of recording job. Each has its own pipeline shape and so its own CPU cost.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EgressType {
    /// One source recorded as is where it is already encoded (remux), else encoded.
    Track,
    /// One video source and one audio source, encoded and muxed together.
    TrackComposite,
    /// One source carrying audio and video, transcoded.
    Participant,
    /// 1..16 sources composited into a grid with their audio mixed.
    RoomComposite,
    /// A web page rendered headless (WPE WebKit), with its audio when the element gives it.
    Web,
}

impl EgressType {
    pub const ALL: [EgressType; 5] = [
        EgressType::Track,
        EgressType::TrackComposite,
        EgressType::Participant,
        EgressType::RoomComposite,
        EgressType::Web,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EgressType::Track => "track",
            EgressType::TrackComposite => "track_composite",
            EgressType::Participant => "participant",
            EgressType::RoomComposite => "room_composite",
            EgressType::Web => "web",
        }
    }

    pub fn parse(s: &str) -> Option<EgressType> {
        EgressType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EgressType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an egress is in its life. The last four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EgressStatus {
    Starting,
    Active,
    Ending,
    Complete,
    Failed,
    Aborted,
    LimitReached,
}

impl EgressStatus {
    pub const ALL: [EgressStatus; 7] = [
        EgressStatus::Starting,
        EgressStatus::Active,
        EgressStatus::Ending,
        EgressStatus::Complete,
        EgressStatus::Failed,
        EgressStatus::Aborted,
        EgressStatus::LimitReached,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            EgressStatus::Complete
                | EgressStatus::Failed
                | EgressStatus::Aborted
                | EgressStatus::LimitReached
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EgressStatus::Starting => "starting",
            EgressStatus::Active => "active",
            EgressStatus::Ending => "ending",
            EgressStatus::Complete => "complete",
            EgressStatus::Failed => "failed",
            EgressStatus::Aborted => "aborted",
            EgressStatus::LimitReached => "limit_reached",
        }
    }
}

/// End reasons, as strings users see in `end_reason`.
pub mod reason {
    pub const STOP_API: &str = "StopEgress API";
    pub const KILL_API: &str = "KillEgress API";
    pub const SOURCE_CLOSED: &str = "Source closed";
    pub const SESSION_LIMIT: &str = "Session limit reached";
    pub const PROCESS_KILLED: &str = "Process killed";
    pub const FAILURE: &str = "Failure";
    pub const CPU_LIMIT: &str = "CPU limit reached";
    pub const CPU_EXHAUSTED: &str = "CPU exhausted";
    pub const SERVICE_STOPPED: &str = "Service stopped";
    pub const EOS_TIMEOUT: &str = "EOS timeout";
    pub const DRAIN_TIMEOUT: &str = "Drain timeout";
    pub const NODE_LOST: &str = "Node lost";
    /// A live source stopped sending and did not come back within `pipeline.source_reconnect_s`.
    pub const SOURCE_LOST: &str = "Source lost";
    /// The egress ended before any media reached its output: no file is kept.
    pub const STOPPED_BEFORE_START: &str = "Stopped before start";
    /// Free space under the output directory fell below `storage.stop_free_bytes`.
    pub const DISK_FULL: &str = "Disk full";
}

/// `POST /v1/egress` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    /// One of the egress types, as a string (kept raw so an unknown type gets its own error).
    #[serde(rename = "type")]
    #[schema(
        pattern = "^(track|track_composite|participant|room_composite|web)$",
        example = "track"
    )]
    pub egress_type: String,
    /// The inputs: one for track/participant, video+audio for track_composite, 1..16 for rooms;
    /// none for `web` (it records `url`).
    #[serde(default)]
    #[schema(max_items = 16)]
    pub sources: Vec<SourceRequest>,
    /// `web`: the page to record (`http(s)://`, its host in `sources.allowed_web_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4096, example = "https://example.com/room")]
    pub url: Option<String>,
    /// One output (the form older clients send): `{"file": {"filename": "a.mp4"}}`. Give this or
    /// `outputs`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputRequest>,
    /// Every output of the egress, all fed by one encode: at most one `file`, one `segments` and
    /// one `images`, and one `stream` with any number of URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 4)]
    pub outputs: Option<Vec<OutputRequest>>,
    /// Video encoding overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoRequest>,
    /// Audio: encoding overrides, or `false` to record no audio (`true`: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioField>,
    /// Stop the egress after this many seconds with status `limit_reached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 604800)]
    pub max_duration_s: Option<f64>,
    /// Overrides the type's configured CPU cost for admission, in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 256)]
    pub estimated_cpu: Option<f64>,
    /// Where the outputs are uploaded (overrides `storage.upload`); secrets are never echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<upload::UploadTarget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRequest {
    /// `scheme://...` with a scheme in `sources.allowed_schemes`; `test://video|audio|av?pattern=
    /// ball&wave=sine&freq=440&width=1280&height=720&fps=30` is a synthetic live source.
    #[schema(
        max_length = 4096,
        pattern = "^[A-Za-z0-9+.-]+://[^\\x00-\\x1f\\x7f-\\x9f]+$",
        example = "test://av?pattern=ball&freq=440"
    )]
    pub uri: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VideoRequest {
    /// Default 1280; odd values are rounded down to even.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 16, maximum = 3840)]
    pub width: Option<u32>,
    /// Default 720; odd values are rounded down to even.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 16, maximum = 2160)]
    pub height: Option<u32>,
    /// Default 30.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 1, maximum = 60)]
    pub fps: Option<u32>,
    /// Default 3000.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 100, maximum = 50000)]
    pub bitrate_kbps: Option<u32>,
}

/// `"audio": true|false` or `"audio": {"codec", "bitrate_kbps"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AudioField {
    Enabled(bool),
    Settings(AudioRequest),
}

impl AudioField {
    fn settings(&self) -> AudioRequest {
        match self {
            AudioField::Settings(a) => a.clone(),
            AudioField::Enabled(_) => AudioRequest::default(),
        }
    }
    fn enabled(&self) -> bool {
        !matches!(self, AudioField::Enabled(false))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AudioRequest {
    /// `aac` or `opus`; defaults by container (aac for mp4/mkv, opus for webm/ogg); webm and
    /// ogg take opus only.
    #[schema(pattern = "^(aac|opus)$")]
    pub codec: Option<String>,
    /// Default 128.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 8, maximum = 512)]
    pub bitrate_kbps: Option<u32>,
}

/// An optional whole number written `30` or `30.0`: JSON Schema's `integer` (and so the OpenAPI
/// document) allows both, and Python's `json` writes floats with `.0`.
fn whole_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    match Option::<f64>::deserialize(d)? {
        None => Ok(None),
        Some(x) if x.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&x) => {
            Ok(Some(x as u32))
        }
        Some(x) => Err(D::Error::custom(format!(
            "expected a whole number in [0, {}], got {x}",
            u32::MAX
        ))),
    }
}

/// A source after validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A synthetic live source: `test://video|audio|av?key=value...`.
    Test {
        /// What it carries.
        media: TestMedia,
        /// videotestsrc `pattern` (e.g. ball, snow, smpte).
        pattern: String,
        /// audiotestsrc `wave` (e.g. sine, white-noise).
        wave: String,
        /// audiotestsrc frequency in Hz.
        freq: f64,
        /// Source frame size and rate (the encoder scales to the egress's video settings).
        width: u32,
        height: u32,
        fps: u32,
    },
    /// Anything GStreamer can open by URI.
    Uri { uri: String },
    /// A web page rendered by WPE WebKit (`wpesrc`) at the egress's video size.
    Web { url: String, audio: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestMedia {
    Video,
    Audio,
    Av,
}

impl Source {
    pub fn has_video(&self) -> Option<bool> {
        match self {
            Source::Test { media, .. } => Some(*media != TestMedia::Audio),
            Source::Web { .. } => Some(true),
            Source::Uri { .. } => None,
        }
    }
    pub fn has_audio(&self) -> Option<bool> {
        match self {
            Source::Test { media, .. } => Some(*media != TestMedia::Video),
            Source::Web { audio, .. } => Some(*audio),
            Source::Uri { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Container {
    Mp4,
    Mkv,
    Webm,
    Ogg,
}

impl Container {
    pub fn from_extension(ext: &str) -> Option<Container> {
        match ext.to_ascii_lowercase().as_str() {
            "mp4" => Some(Container::Mp4),
            "mkv" => Some(Container::Mkv),
            "webm" => Some(Container::Webm),
            "ogg" => Some(Container::Ogg),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioCodec {
    Aac,
    Opus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioSettings {
    pub codec: AudioCodec,
    pub bitrate_kbps: u32,
    /// False when the request said `"audio": false`: no audio is recorded.
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileOutput {
    /// As the client gave it (relative to the output directory).
    pub filename: String,
    /// Absolute path inside the output directory.
    pub path: PathBuf,
    pub container: Container,
}

/// A validated request: everything a handler needs to build its pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressSpec {
    pub egress_id: String,
    pub egress_type: EgressType,
    pub sources: Vec<Source>,
    pub video: VideoSettings,
    pub audio: AudioSettings,
    pub outputs: OutputsSpec,
    /// Where the handler writes its own end-of-run result, read by a restarted service.
    pub result_path: PathBuf,
    /// Where the final EgressInfo is written at the end: `{egress_id}.json` beside the outputs.
    pub manifest_path: PathBuf,
}

impl EgressSpec {
    /// The file output's container, when there is one.
    pub fn container(&self) -> Option<Container> {
        self.outputs.file.as_ref().map(|f| f.container)
    }
}

/// Node-wide pipeline settings a handler needs besides the spec (from the `pipeline` config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineOptions {
    /// x264 speed preset.
    pub x264_speed_preset: String,
    /// Hybrid MP4: fragment length while recording, in seconds (what a kill may lose).
    #[serde(default = "default_mp4_fragment_s")]
    pub mp4_fragment_s: f64,
    /// How long a failing stream URL is retried (with backoff) before it is marked failed.
    #[serde(default = "default_stream_retry_s")]
    pub stream_retry_s: f64,
    /// How long the sources may take to show their streams before the start fails, in seconds.
    #[serde(default = "default_start_timeout_s")]
    pub start_timeout_s: f64,
    /// A live source silent this long is stalled: the handler reconnects, in seconds.
    #[serde(default = "default_source_stall_s")]
    pub source_stall_s: f64,
    /// How long a stalled source may take to come back before the egress ends, in seconds.
    #[serde(default = "default_source_reconnect_s")]
    pub source_reconnect_s: f64,
    /// How long a source that announced video may take to send its first keyframe, in seconds.
    #[serde(default = "default_first_keyframe_s")]
    pub first_keyframe_s: f64,
    /// The thumbnail is taken at most this often, in seconds; 0: none.
    #[serde(default = "default_thumbnail_s")]
    pub thumbnail_s: f64,
    /// A black or frozen picture, or silent sound, this long becomes a warning, in seconds.
    #[serde(default = "default_health_window_s")]
    pub health_window_s: f64,
    /// `sources.allowed_web_hosts`: what a web page's requests may reach (its filter's list).
    #[serde(default)]
    pub allowed_web_hosts: Vec<String>,
}

fn default_mp4_fragment_s() -> f64 {
    1.0
}
fn default_stream_retry_s() -> f64 {
    30.0
}
fn default_start_timeout_s() -> f64 {
    20.0
}
fn default_source_stall_s() -> f64 {
    5.0
}
fn default_source_reconnect_s() -> f64 {
    10.0
}
fn default_first_keyframe_s() -> f64 {
    12.0
}
fn default_thumbnail_s() -> f64 {
    2.0
}
fn default_health_window_s() -> f64 {
    10.0
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            x264_speed_preset: "veryfast".into(),
            mp4_fragment_s: default_mp4_fragment_s(),
            stream_retry_s: default_stream_retry_s(),
            start_timeout_s: default_start_timeout_s(),
            source_stall_s: default_source_stall_s(),
            source_reconnect_s: default_source_reconnect_s(),
            first_keyframe_s: default_first_keyframe_s(),
            thumbnail_s: default_thumbnail_s(),
            health_window_s: default_health_window_s(),
            allowed_web_hosts: Vec::new(),
        }
    }
}

/// What a handler writes to `result_path` when it ends on its own terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerResult {
    /// True when the pipeline reached EOS and the output was finalized.
    pub finalized: bool,
    /// Why the handler stopped: "stop", "parent_gone", "signal", "source_eos", "error".
    pub cause: String,
    #[serde(default)]
    pub error: Option<String>,
    pub ended_at: u64,
    /// False when no media reached the output: the handler deleted the file.
    #[serde(default = "yes")]
    pub media: bool,
}

fn yes() -> bool {
    true
}

/// One output file, described after it was closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What happened, as events (SSE, webhooks) and `webhooks.events` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new egress id: `EG_` and 12 random alphanumerics.
pub fn new_egress_id() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let s: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(12)
        .map(char::from)
        .collect();
    format!("EG_{s}")
}

/// True for ids this engine issues; ids arrive in URLs, so anything else is refused early.
pub fn is_valid_egress_id(id: &str) -> bool {
    id.len() == 15 && id.starts_with("EG_") && id[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Node-level limits and defaults that validation needs.
pub struct ValidationContext<'a> {
    pub output_dir: &'a Path,
    pub state_dir: &'a Path,
    pub allowed_schemes: &'a [String],
    /// `sources.allowed_web_hosts`: hosts a `web` egress may record (`*` all, `*.example.com`).
    pub allowed_web_hosts: &'a [String],
    /// `storage.allowed_endpoints`: hosts a request's upload target may name as `endpoint`.
    pub allowed_endpoints: &'a [String],
}

const MAX_ROOM_SOURCES: usize = 16;

impl EgressRequest {
    /// Checks every field and resolves defaults. Errors name the field.
    pub fn validate(
        &self,
        egress_id: &str,
        ctx: &ValidationContext<'_>,
    ) -> Result<EgressSpec, RequestError> {
        let egress_type = EgressType::parse(&self.egress_type).ok_or_else(|| {
            RequestError::UnknownType(format!(
                "unknown type '{}': expected one of track, track_composite, participant, room_composite, web",
                self.egress_type
            ))
        })?;
        let audio_on = self.audio.as_ref().is_none_or(AudioField::enabled);
        let sources = if egress_type == EgressType::Web {
            if !self.sources.is_empty() {
                return Err(RequestError::invalid(
                    "sources",
                    "a web egress records its url and takes no sources",
                ));
            }
            let url = self
                .url
                .as_deref()
                .ok_or_else(|| RequestError::invalid("url", "a web egress needs the page's url"))?;
            vec![parse_web_url(url, ctx.allowed_web_hosts, audio_on)?]
        } else {
            if self.url.is_some() {
                return Err(RequestError::invalid(
                    "url",
                    "only a web egress takes a url; other types take sources",
                ));
            }
            self.sources
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    parse_source(&s.uri, ctx.allowed_schemes, &format!("sources[{i}].uri"))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        check_source_count(egress_type, &sources)?;

        let v = self.video.clone().unwrap_or_default();
        let video = VideoSettings {
            width: ranged("video.width", v.width.unwrap_or(1280), 16, 3840)? & !1,
            height: ranged("video.height", v.height.unwrap_or(720), 16, 2160)? & !1,
            fps: ranged("video.fps", v.fps.unwrap_or(30), 1, 60)?,
            bitrate_kbps: ranged(
                "video.bitrate_kbps",
                v.bitrate_kbps.unwrap_or(3000),
                100,
                50_000,
            )?,
        };
        let requested: Vec<OutputRequest> = match (&self.output, &self.outputs) {
            (Some(o), None) => vec![o.clone()],
            (None, Some(list)) => list.clone(),
            (Some(_), Some(_)) => {
                return Err(RequestError::invalid(
                    "outputs",
                    "give either output or outputs, not both",
                ));
            }
            (None, None) => {
                return Err(RequestError::invalid(
                    "outputs",
                    "an output is required: \"outputs\": [{\"file\": {\"filename\": \"name.mp4\"}}]",
                ));
            }
        };
        let values = TemplateValues {
            egress_id,
            egress_type,
            now_ms: now_ms(),
        };
        let outputs = outputs::resolve(
            &requested,
            ctx.output_dir,
            &values,
            (video.width, video.height),
        )
        .map_err(|e| match self.output {
            // Errors name the field as the client wrote it.
            Some(_) => e.reprefixed("outputs[0]", "output"),
            None => e,
        })?;
        let container = outputs.file.as_ref().map(|f| f.container);
        let a = self
            .audio
            .as_ref()
            .map(AudioField::settings)
            .unwrap_or_default();
        let default_codec = match container {
            Some(Container::Webm | Container::Ogg) => AudioCodec::Opus,
            _ => AudioCodec::Aac,
        };
        let codec = match a.codec.as_deref() {
            None => default_codec,
            Some("aac") => AudioCodec::Aac,
            Some("opus") => AudioCodec::Opus,
            Some(other) => {
                return Err(RequestError::invalid(
                    "audio.codec",
                    format!("unknown audio codec '{other}': expected aac or opus"),
                ));
            }
        };
        if matches!(container, Some(Container::Webm | Container::Ogg)) && codec == AudioCodec::Aac {
            return Err(RequestError::invalid(
                "audio.codec",
                "aac cannot be stored in webm or ogg: use opus",
            ));
        }
        let audio = AudioSettings {
            codec,
            bitrate_kbps: ranged("audio.bitrate_kbps", a.bitrate_kbps.unwrap_or(128), 8, 512)?,
            enabled: audio_on,
        };
        if let Some(d) = self.max_duration_s
            && !(d.is_finite() && d > 0.0 && d <= 7.0 * 86400.0)
        {
            return Err(RequestError::invalid(
                "max_duration_s",
                "must be a number of seconds in (0, 604800]",
            ));
        }
        if let Some(c) = self.estimated_cpu
            && !(c.is_finite() && (0.0..=256.0).contains(&c))
        {
            return Err(RequestError::invalid(
                "estimated_cpu",
                "must be a number of cores in [0, 256]",
            ));
        }
        if let Some(u) = &self.upload {
            u.validate().map_err(|(field, message)| {
                RequestError::invalid(&format!("upload.{field}"), message)
            })?;
            if let Some((field, endpoint)) = u.endpoint() {
                let host = hosts::host_port(endpoint)
                    .map(|(h, _)| h)
                    .unwrap_or_default();
                if hosts::listed(&host, ctx.allowed_endpoints) == hosts::Listed::No {
                    return Err(RequestError::invalid(
                        &format!("upload.{field}"),
                        format!(
                            "host '{host}' is not in storage.allowed_endpoints (a request's target may name only the endpoints the operator lists)"
                        ),
                    ));
                }
            }
        }
        Ok(EgressSpec {
            egress_id: egress_id.to_string(),
            egress_type,
            sources,
            video,
            audio,
            manifest_path: manifest_dir(&outputs, ctx.output_dir).join(format!("{egress_id}.json")),
            outputs,
            result_path: ctx
                .state_dir
                .join("egresses")
                .join(format!("{egress_id}.result.json")),
        })
    }
}

fn ranged(field: &str, v: u32, lo: u32, hi: u32) -> Result<u32, RequestError> {
    if v < lo || v > hi {
        return Err(RequestError::invalid(
            field,
            format!("must be in [{lo}, {hi}], got {v}"),
        ));
    }
    Ok(v)
}

fn check_source_count(t: EgressType, sources: &[Source]) -> Result<(), RequestError> {
    let n = sources.len();
    let ok = match t {
        EgressType::Track | EgressType::Participant => n == 1,
        EgressType::TrackComposite => n == 2 || n == 1,
        EgressType::RoomComposite => (1..=MAX_ROOM_SOURCES).contains(&n),
        EgressType::Web => n == 1,
    };
    if !ok {
        let want = match t {
            EgressType::Track | EgressType::Participant => "exactly 1 source".to_string(),
            EgressType::TrackComposite => "a video source and an audio source".to_string(),
            _ => format!("1 to {MAX_ROOM_SOURCES} sources"),
        };
        return Err(RequestError::invalid(
            "sources",
            format!("type {t} takes {want}, got {n}"),
        ));
    }
    if t == EgressType::TrackComposite {
        if n == 1 && sources[0].has_video() == Some(true) && sources[0].has_audio() == Some(false) {
            return Err(RequestError::invalid(
                "sources",
                "track_composite needs audio too: give a video source and an audio source",
            ));
        }
        if n == 2
            && (sources[0].has_video() == Some(false) || sources[1].has_audio() == Some(false))
        {
            return Err(RequestError::invalid(
                "sources",
                "track_composite takes the video source first and the audio source second",
            ));
        }
    }
    if t == EgressType::Participant
        && (sources[0].has_video() == Some(false) || sources[0].has_audio() == Some(false))
    {
        return Err(RequestError::invalid(
            "sources[0].uri",
            "participant needs a source with audio and video (e.g. test://av)",
        ));
    }
    Ok(())
}

/// Checks a web egress's URL: http or https, its host allowed by `sources.allowed_web_hosts`
/// (empty: web egress is off; `*`: any host; `*.example.com`: that domain and its subdomains).
/// The allow-list keeps the service from being pointed at internal addresses.
pub fn parse_web_url(url: &str, allowed: &[String], audio: bool) -> Result<Source, RequestError> {
    let field = "url";
    if url.len() > 4096 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RequestError::invalid(field, "not a valid URL"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(RequestError::invalid(
            field,
            format!("'{}' is not a URL", redact::url(url)),
        ));
    };
    if !["http", "https"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(RequestError::invalid(
            field,
            format!("a web egress records http:// or https:// pages, not {scheme}://"),
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    }
    .to_ascii_lowercase();
    if host.is_empty() {
        return Err(RequestError::invalid(
            field,
            format!("'{}' has no host", redact::url(url)),
        ));
    }
    if allowed.is_empty() {
        return Err(RequestError::invalid(
            field,
            "web egress is off on this node: list the hosts it may record in sources.allowed_web_hosts",
        ));
    }
    if hosts::listed(&host, allowed) == hosts::Listed::No {
        return Err(RequestError::invalid(
            field,
            format!("host '{host}' is not in sources.allowed_web_hosts"),
        ));
    }
    Ok(Source::Web {
        url: url.to_string(),
        audio,
    })
}

/// Parses and checks a source URI against the scheme allow-list.
pub fn parse_source(uri: &str, allowed: &[String], field: &str) -> Result<Source, RequestError> {
    if uri.len() > 4096 || uri.chars().any(|c| c.is_control()) {
        return Err(RequestError::invalid(field, "not a valid URI"));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(RequestError::invalid(
            field,
            format!("'{}' is not a URI (scheme://...)", redact::url(uri)),
        ));
    };
    let scheme_lc = scheme.to_ascii_lowercase();
    if scheme_lc.is_empty()
        || !scheme_lc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    {
        return Err(RequestError::invalid(
            field,
            format!("'{}' has no valid scheme", redact::url(uri)),
        ));
    }
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&scheme_lc)) {
        return Err(RequestError::SchemeNotAllowed(format!(
            "{field}: scheme '{scheme_lc}' is not allowed (allowed: {})",
            allowed.join(", ")
        )));
    }
    if scheme_lc != "test" {
        if rest.is_empty() {
            return Err(RequestError::invalid(
                field,
                format!("'{}' has nothing after the scheme", redact::url(uri)),
            ));
        }
        return Ok(Source::Uri {
            uri: uri.to_string(),
        });
    }
    let (kind, query) = rest.split_once('?').unwrap_or((rest, ""));
    let media = match kind.trim_end_matches('/') {
        "video" => TestMedia::Video,
        "audio" => TestMedia::Audio,
        "av" => TestMedia::Av,
        other => {
            return Err(RequestError::invalid(
                field,
                format!("unknown test source '{other}': expected video, audio or av"),
            ));
        }
    };
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(k.to_string(), v.to_string());
    }
    let word = |k: &str, default: &str, known: &[&str]| -> Result<String, RequestError> {
        let v = params.get(k).map(String::as_str).unwrap_or(default);
        if known.contains(&v) {
            Ok(v.to_string())
        } else {
            Err(RequestError::invalid(
                field,
                format!("test source {k}='{v}' is not one of {}", known.join(", ")),
            ))
        }
    };
    let num = |k: &str, default: u32, lo: u32, hi: u32| -> Result<u32, RequestError> {
        match params.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| {
                    RequestError::invalid(
                        field,
                        format!("test source {k}='{v}' must be in [{lo}, {hi}]"),
                    )
                }),
        }
    };
    for k in params.keys() {
        if !["pattern", "wave", "freq", "width", "height", "fps"].contains(&k.as_str()) {
            return Err(RequestError::invalid(
                field,
                format!("unknown test source parameter '{k}'"),
            ));
        }
    }
    let freq = match params.get("freq") {
        None => 440.0,
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && (1.0..=20_000.0).contains(f))
            .ok_or_else(|| {
                RequestError::invalid(
                    field,
                    format!("test source freq='{v}' must be in [1, 20000]"),
                )
            })?,
    };
    Ok(Source::Test {
        media,
        pattern: word("pattern", "ball", TEST_PATTERNS)?,
        wave: word("wave", "sine", TEST_WAVES)?,
        freq,
        width: num("width", 1280, 16, 3840)? & !1,
        height: num("height", 720, 16, 2160)? & !1,
        fps: num("fps", 30, 1, 60)?,
    })
}

/// videotestsrc patterns we accept (their GStreamer nicks).
pub const TEST_PATTERNS: &[&str] = &[
    "smpte",
    "snow",
    "black",
    "white",
    "red",
    "green",
    "blue",
    "checkers-1",
    "checkers-2",
    "checkers-4",
    "checkers-8",
    "circular",
    "blink",
    "smpte75",
    "zone-plate",
    "gamut",
    "chroma-zone-plate",
    "solid-color",
    "ball",
    "smpte100",
    "bar",
    "pinwheel",
    "spokes",
    "gradient",
    "colors",
];
/// audiotestsrc waves we accept (their GStreamer nicks).
pub const TEST_WAVES: &[&str] = &[
    "sine",
    "square",
    "saw",
    "triangle",
    "silence",
    "white-noise",
    "pink-noise",
    "sine-table",
    "ticks",
    "gaussian-noise",
    "red-noise",
    "blue-noise",
    "violet-noise",
];

/// Resolves a client filename inside `output_dir`, refusing anything that could escape it.
pub fn resolve_output_named(
    filename: &str,
    output_dir: &Path,
    field: &str,
) -> Result<FileOutput, RequestError> {
    let rel = outputs::relative(filename, field)?;
    let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("");
    let container = Container::from_extension(ext).ok_or_else(|| {
        RequestError::invalid(
            field,
            format!("'{filename}': extension must be mp4, mkv, webm or ogg"),
        )
    })?;
    Ok(FileOutput {
        filename: filename.to_string(),
        path: output_dir.join(rel),
        container,
    })
}

/// The directory of the first output that has one (file, playlist, images), else the output
/// directory: where the manifest goes.
fn manifest_dir(o: &OutputsSpec, output_dir: &Path) -> PathBuf {
    let first = o
        .file
        .as_ref()
        .and_then(|f| f.path.parent().map(Path::to_path_buf))
        .or_else(|| {
            o.segments
                .as_ref()
                .and_then(|s| s.playlist_path.parent().map(Path::to_path_buf))
        })
        .or_else(|| o.images.as_ref().map(|i| i.dir.clone()));
    first.unwrap_or_else(|| output_dir.to_path_buf())
}

impl EgressRequest {
    /// The request as EgressInfo echoes it: every URL redacted (`model::redact`), upload
    /// secrets hidden.
    pub fn redacted(&self) -> EgressRequest {
        let mut r = self.clone();
        for s in &mut r.sources {
            s.uri = redact::url(&s.uri);
        }
        r.url = r.url.map(|u| redact::url(&u));
        r.output = r
            .output
            .map(|o| outputs::redacted(std::slice::from_ref(&o)).remove(0));
        r.outputs = r.outputs.map(|l| outputs::redacted(&l));
        r.upload = r.upload.map(|u| u.redacted());
        r
    }
}

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
            sources: vec![SourceRequest {
                uri: "test://video".into(),
            }],
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
        streams_removed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_schemes() -> Vec<String> {
        ["test", "rtsp", "http"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn req(t: &str, uris: &[&str], filename: &str) -> EgressRequest {
        EgressRequest {
            egress_type: t.into(),
            sources: uris
                .iter()
                .map(|u| SourceRequest { uri: u.to_string() })
                .collect(),
            url: None,
            output: Some(OutputRequest::File(FileOutputRequest {
                filename: Some(filename.into()),
            })),
            outputs: None,
            video: None,
            audio: None,
            max_duration_s: None,
            estimated_cpu: None,
            upload: None,
        }
    }

    fn validate(r: &EgressRequest) -> Result<EgressSpec, RequestError> {
        let schemes = ctx_schemes();
        let ctx = ValidationContext {
            output_dir: Path::new("/rec"),
            state_dir: Path::new("/state"),
            allowed_schemes: &schemes,
            allowed_web_hosts: &[],
            allowed_endpoints: &[],
        };
        r.validate("EG_abcdefghijkl", &ctx)
    }

    #[test]
    fn valid_participant_resolves_defaults() {
        let s = validate(&req("participant", &["test://av?pattern=snow"], "a/b.mp4")).unwrap();
        let f = s.outputs.file.as_ref().unwrap();
        assert_eq!(f.path, Path::new("/rec/a/b.mp4"));
        assert_eq!(f.container, Container::Mp4);
        assert_eq!(s.manifest_path, Path::new("/rec/a/EG_abcdefghijkl.json"));
        assert_eq!(s.audio.codec, AudioCodec::Aac);
        assert_eq!(
            (s.video.width, s.video.height, s.video.fps),
            (1280, 720, 30)
        );
        assert!(matches!(&s.sources[0], Source::Test { pattern, .. } if pattern == "snow"));
    }

    #[test]
    fn rejects_escaping_paths_and_bad_extensions() {
        for f in ["../x.mp4", "/etc/x.mp4", "a/../../x.mp4", "x.avi", "", "x"] {
            let e = validate(&req("track", &["test://video"], f)).unwrap_err();
            assert_eq!(e.field(), Some("output.file.filename"), "{f}");
        }
    }

    #[test]
    fn rejects_schemes_not_allowed() {
        let e = validate(&req("track", &["file:///etc/passwd"], "x.mp4")).unwrap_err();
        assert!(matches!(e, RequestError::SchemeNotAllowed(_)));
        let e = validate(&req("track", &["nouri"], "x.mp4")).unwrap_err();
        assert_eq!(e.field(), Some("sources[0].uri"));
    }

    #[test]
    fn rejects_unknown_types_and_wrong_source_counts() {
        assert!(matches!(
            validate(&req("bogus", &["test://video"], "x.mp4")).unwrap_err(),
            RequestError::UnknownType(_)
        ));
        assert!(validate(&req("track", &[], "x.mp4")).is_err());
        assert!(validate(&req("participant", &["test://video"], "x.mp4")).is_err());
        let many: Vec<&str> = vec!["test://av"; 17];
        assert!(validate(&req("room_composite", &many, "x.mp4")).is_err());
        assert!(
            validate(&req(
                "track_composite",
                &["test://video", "test://audio"],
                "x.mkv"
            ))
            .is_ok()
        );
        assert!(
            validate(&req(
                "track_composite",
                &["test://audio", "test://video"],
                "x.mkv"
            ))
            .is_err()
        );
    }

    #[test]
    fn rejects_bad_test_parameters() {
        for u in [
            "test://video?pattern=nope",
            "test://video?width=0",
            "test://x",
            "test://audio?freq=abc",
            "test://video?foo=1",
        ] {
            assert!(validate(&req("track", &[u], "x.mp4")).is_err(), "{u}");
        }
    }

    #[test]
    fn aac_not_in_webm() {
        let mut r = req("participant", &["test://av"], "x.webm");
        r.audio = Some(AudioField::Settings(AudioRequest {
            codec: Some("aac".into()),
            bitrate_kbps: None,
        }));
        assert_eq!(validate(&r).unwrap_err().field(), Some("audio.codec"));
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        let v: VideoRequest = serde_json::from_str(r#"{"fps": 30.0, "width": 640}"#).unwrap();
        assert_eq!((v.fps, v.width, v.height), (Some(30), Some(640), None));
        for bad in [
            r#"{"fps": 30.5}"#,
            r#"{"fps": -1}"#,
            r#"{"fps": 1e20}"#,
            r#"{"fps": "30"}"#,
        ] {
            assert!(serde_json::from_str::<VideoRequest>(bad).is_err(), "{bad}");
        }
        let a: AudioRequest = serde_json::from_str(r#"{"bitrate_kbps": null}"#).unwrap();
        assert_eq!(a.bitrate_kbps, None);
    }

    #[test]
    fn egress_ids_round_trip() {
        let id = new_egress_id();
        assert!(is_valid_egress_id(&id), "{id}");
        assert!(!is_valid_egress_id("EG_../../etc"));
    }
}
