//! Outputs: what a request asks for (`OutputRequest`, one of file, segments, stream, images),
//! what validation resolves it to (`OutputsSpec`: absolute paths inside the output directory,
//! templates expanded), and what EgressInfo reports of each (`SegmentsInfo`, `StreamInfo`,
//! `ImagesInfo`). Stream URLs carry keys: `model::redact::url` is the only form that leaves the
//! handler and the Pipeline actor. Resolving requests into the spec is in `resolve`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Container, FileOutput};

/// One output: `{"file": {...}}`, `{"segments": {...}}`, `{"stream": {...}}` or `{"images": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputRequest {
    /// A recording file: mp4 (hybrid, kill-safe), mkv, webm or ogg.
    File(FileOutputRequest),
    /// HLS: MPEG-TS segments and an EVENT playlist rewritten as each segment closes.
    Segments(SegmentsRequest),
    /// Live restreams: FLV over RTMP(S), MPEG-TS over SRT.
    Stream(StreamRequest),
    /// JPEG snapshots every `interval_s`.
    Images(ImagesRequest),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileOutputRequest {
    /// Relative to `storage.output_dir` (no `..`, no leading `/`), templates `{egress_id}`,
    /// `{type}`, `{time}`, `{date}` expanded; the extension picks the container: mp4, mkv, webm
    /// or ogg. Default `{egress_id}.mp4`. An existing file is never overwritten (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 1024,
        pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*\\.([Mm][Pp]4|[Mm][Kk][Vv]|[Ww][Ee][Bb][Mm]|[Oo][Gg][Gg])$",
        example = "rec/{egress_id}.mp4"
    )]
    pub filename: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentsRequest {
    /// Path prefix of the segments, relative to the output directory (templates expanded):
    /// segments are `{prefix}_00000.ts`, `{prefix}_00001.ts`, ... Default `{egress_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 1024,
        pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub prefix: Option<String>,
    /// The EVENT playlist (`.m3u8`), relative to the output directory. Default `{prefix}.m3u8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 1024,
        pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*\\.m3u8$"
    )]
    pub playlist: Option<String>,
    /// Target segment length in seconds (segments split at keyframes). Default 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 60)]
    pub segment_duration_s: Option<f64>,
    /// An extra sliding-window playlist of the last `length` segments (for live players).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_playlist: Option<LivePlaylistRequest>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LivePlaylistRequest {
    /// Relative to the output directory. Default `{prefix}_live.m3u8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 1024,
        pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*\\.m3u8$"
    )]
    pub name: Option<String>,
    /// Segments in the window. Default 6.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::whole_u32"
    )]
    #[schema(minimum = 1, maximum = 1000)]
    pub length: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    /// `rtmp://`, `rtmps://` or `srt://` URLs (up to 8); may be empty and added to later with
    /// `POST /v1/egress/{id}/streams`.
    #[schema(max_items = 8)]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagesRequest {
    /// Path prefix of the images, relative to the output directory (templates expanded):
    /// `{prefix}_00000.jpg`, ... Default `{egress_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 1024,
        pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub prefix: Option<String>,
    /// Seconds between snapshots. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400)]
    pub interval_s: Option<f64>,
    /// Default: the egress's video width (even).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::whole_u32"
    )]
    #[schema(minimum = 16, maximum = 3840)]
    pub width: Option<u32>,
    /// Default: the egress's video height (even).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::whole_u32"
    )]
    #[schema(minimum = 16, maximum = 2160)]
    pub height: Option<u32>,
}

/// `POST /v1/egress/{id}/streams` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamsUpdate {
    /// URLs to start streaming to.
    #[serde(default)]
    #[schema(max_items = 8)]
    pub add_urls: Vec<String>,
    /// URLs to stop streaming to (as given when added).
    #[serde(default)]
    #[schema(max_items = 8)]
    pub remove_urls: Vec<String>,
}

/// HLS output after validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentsOutput {
    /// The prefix as resolved (relative to the output directory).
    pub prefix: String,
    /// Directory of the segments (absolute, inside the output directory).
    pub dir: PathBuf,
    /// File name stem of the segments: `{stem}_00000.ts`.
    pub stem: String,
    /// The EVENT playlist, relative and absolute.
    pub playlist: String,
    pub playlist_path: PathBuf,
    pub segment_duration_s: f64,
    /// The sliding playlist: (relative, absolute, length).
    pub live: Option<(String, PathBuf, u32)>,
}

/// Image output after validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesOutput {
    pub prefix: String,
    pub dir: PathBuf,
    pub stem: String,
    pub interval_s: f64,
    pub width: u32,
    pub height: u32,
}

/// Every output of an egress after validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputsSpec {
    pub file: Option<FileOutput>,
    pub segments: Option<SegmentsOutput>,
    /// Whether the request had a `stream` output (URLs may be added later even if empty).
    pub stream: bool,
    /// Stream URLs as given (with their keys: never logged or reported as they are).
    pub stream_urls: Vec<String>,
    pub images: Option<ImagesOutput>,
}

impl OutputsSpec {
    /// How many outputs (each stream URL counts as one).
    pub fn count(&self) -> usize {
        usize::from(self.file.is_some())
            + usize::from(self.segments.is_some())
            + usize::from(self.images.is_some())
            + self.stream_urls.len()
    }

    /// Whether any output carries H.264 video (MP4/Matroska file, HLS, streams).
    pub fn wants_h264(&self) -> bool {
        self.segments.is_some()
            || self.stream
            || self
                .file
                .as_ref()
                .is_some_and(|f| matches!(f.container, Container::Mp4 | Container::Mkv))
    }
}

/// What EgressInfo says of the HLS output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SegmentsInfo {
    /// The EVENT playlist, relative to the output directory.
    pub playlist: String,
    /// Its absolute path.
    pub location: String,
    /// The sliding playlist, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_playlist: Option<String>,
    /// Segments the sliding playlist holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_length: Option<u32>,
    /// The segments' prefix, relative to the output directory.
    pub prefix: String,
    /// Closed segments listed in the playlist.
    pub count: u32,
    pub duration_s: f64,
    pub size_bytes: u64,
    /// With an upload target: every segment and playlist `done`, one `failed`, else under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<crate::model::UploadState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    /// Connecting or sending.
    Active,
    /// Failed, retried with backoff for `pipeline.stream_retry_s`: `error` is the last failure.
    /// Back to `active` once it has sent for a while.
    Retrying,
    /// Gave up (or never connected before the egress ended): the error says why. The
    /// egress's other outputs go on.
    Failed,
    /// Removed, or the egress ended.
    Ended,
}

impl StreamStatus {
    /// Whether the URL is still being streamed to (or tried).
    pub fn is_live(self) -> bool {
        matches!(self, StreamStatus::Active | StreamStatus::Retrying)
    }
}

/// What EgressInfo says of one stream URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamInfo {
    /// The URL with its stream key redacted.
    pub url: String,
    pub status: StreamStatus,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub error: Option<String>,
}

/// What EgressInfo says of the image output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImagesInfo {
    /// Relative to the output directory: images are `{prefix}_00000.jpg`, ...
    pub prefix: String,
    /// Absolute path of the prefix.
    pub location: String,
    pub count: u32,
    /// With an upload target: every image `done`, one `failed`, else under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<crate::model::UploadState>,
}

mod resolve;

pub use resolve::{MAX_STREAMS, TemplateValues, check_stream_url, redacted, relative, resolve};
