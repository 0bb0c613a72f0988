//! What a request becomes once validated: the sources, encodings and outputs a handler records
//! (`EgressSpec`), the node's options for it, and what a handler leaves when it ends.

use super::*;

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
    /// A WebRTC publisher that sends its media over WHIP (`webrtcbin` in the handler).
    Whip,
    /// A WebRTC stream the handler plays from a WHEP endpoint (`url`, `http(s)://`), showing
    /// `token` as a bearer token.
    Whep { url: String, token: Option<String> },
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
            Source::Uri { .. } | Source::Whip | Source::Whep { .. } => None,
        }
    }
    pub fn has_audio(&self) -> Option<bool> {
        match self {
            Source::Test { media, .. } => Some(*media != TestMedia::Video),
            Source::Web { audio, .. } => Some(*audio),
            Source::Uri { .. } | Source::Whip | Source::Whep { .. } => None,
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
    /// `webrtc.*`: how WHIP sources are received.
    #[serde(default)]
    pub webrtc: WebrtcOptions,
    /// What a room shows in the tile of a source it lost (until the source is removed).
    #[serde(default)]
    pub lost_tile: LostTile,
}

/// What a room shows in the tile of a source it lost while others still send
/// (`pipeline.lost_tile`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostTile {
    /// The last frame it sent, frozen.
    #[default]
    LastFrame,
    /// The background (black): the tile stays in the grid, empty.
    Black,
}

/// What a handler needs of `webrtc.*` (checked at the service's start).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebrtcOptions {
    /// ICE's UDP port range; None for any.
    #[serde(default)]
    pub udp_ports: Option<(u16, u16)>,
    /// Also offer host candidates with this address (1:1 NAT).
    #[serde(default)]
    pub public_ip: Option<String>,
    #[serde(default)]
    pub stun_server: Option<String>,
    #[serde(default)]
    pub turn_server: Option<String>,
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
            webrtc: WebrtcOptions::default(),
            lost_tile: LostTile::default(),
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
