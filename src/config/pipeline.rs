//! `pipeline`: how handlers record (timeouts, encoder preset, fragments, sources' stalls).

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// How long a graceful stop waits for EOS before the handler is killed.
    #[serde(default = "default_eos_timeout")]
    pub eos_timeout_s: f64,
    /// How long a handler may take to reach PLAYING before its egress fails.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_s: f64,
    /// x264 speed preset (ultrafast .. veryslow): the main CPU/quality dial.
    #[serde(default = "default_x264_preset")]
    pub x264_speed_preset: X264Preset,
    /// Hybrid MP4 fragment length while recording: a kill loses about this much media (the
    /// file is fragmented until a graceful end rewrites it as a normal MP4).
    #[serde(default = "default_mp4_fragment")]
    pub mp4_fragment_s: f64,
    /// How long a failing stream URL is retried, with backoff, before it is marked failed.
    #[serde(default = "default_stream_retry")]
    pub stream_retry_s: f64,
    /// Niceness of handler processes (0-19): above 0, the service's API, placement and overload
    /// supervision keep answering promptly while recordings saturate the CPU.
    #[serde(default = "default_handler_nice")]
    pub handler_nice: i32,
    /// A live source that sends nothing for this long is stalled: the handler reconnects.
    #[serde(default = "default_source_stall")]
    pub source_stall_s: f64,
    /// How long a stalled source may take to come back; then the egress ends "Source lost".
    #[serde(default = "default_source_reconnect")]
    pub source_reconnect_s: f64,
    /// How long a source that announced video may take to send its first keyframe (encoders
    /// send one every 2-8 s); then the egress fails "no keyframe from source".
    #[serde(default = "default_first_keyframe")]
    pub first_keyframe_s: f64,
    /// A running egress's latest picture (`GET /v1/egress/{id}/thumbnail.jpg`) is taken at most
    /// this often, in seconds (copied video: from a keyframe, decoded once); 0 turns it off.
    #[serde(default = "default_thumbnail")]
    pub thumbnail_s: f64,
    /// A picture that stays black or frozen, or sound that stays silent, this long becomes a
    /// warning on the egress (raised and cleared live); the picture is judged on every encoded
    /// frame, and copied video on the thumbnail's keyframes (`thumbnail_s` 0 turns that off).
    #[serde(default = "default_health_window")]
    pub health_window_s: f64,
    /// What a `room_composite` shows in the tile of a source it lost while others still send,
    /// until the source is removed: `last_frame` (frozen) or `black`.
    #[serde(default)]
    pub lost_tile: crate::model::LostTile,
}

/// The x264 speed presets a handler may encode with (`pipeline.x264_speed_preset`), fastest
/// first; x264's own `placebo` is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum X264Preset {
    Ultrafast,
    Superfast,
    Veryfast,
    Faster,
    Fast,
    Medium,
    Slow,
    Slower,
    Veryslow,
}

impl X264Preset {
    /// The name `x264enc`'s `speed-preset` property takes.
    pub fn as_str(self) -> &'static str {
        match self {
            X264Preset::Ultrafast => "ultrafast",
            X264Preset::Superfast => "superfast",
            X264Preset::Veryfast => "veryfast",
            X264Preset::Faster => "faster",
            X264Preset::Fast => "fast",
            X264Preset::Medium => "medium",
            X264Preset::Slow => "slow",
            X264Preset::Slower => "slower",
            X264Preset::Veryslow => "veryslow",
        }
    }
}

fn default_eos_timeout() -> f64 {
    30.0
}

fn default_start_timeout() -> f64 {
    20.0
}

fn default_x264_preset() -> X264Preset {
    X264Preset::Veryfast
}

fn default_mp4_fragment() -> f64 {
    1.0
}

fn default_stream_retry() -> f64 {
    30.0
}

fn default_handler_nice() -> i32 {
    10
}

fn default_source_stall() -> f64 {
    5.0
}

fn default_source_reconnect() -> f64 {
    10.0
}

fn default_first_keyframe() -> f64 {
    12.0
}

fn default_thumbnail() -> f64 {
    2.0
}

fn default_health_window() -> f64 {
    10.0
}

impl From<&PipelineConfig> for crate::model::PipelineOptions {
    fn from(p: &PipelineConfig) -> Self {
        crate::model::PipelineOptions {
            x264_speed_preset: p.x264_speed_preset.as_str().into(),
            mp4_fragment_s: p.mp4_fragment_s,
            stream_retry_s: p.stream_retry_s,
            start_timeout_s: p.start_timeout_s,
            source_stall_s: p.source_stall_s,
            source_reconnect_s: p.source_reconnect_s,
            first_keyframe_s: p.first_keyframe_s,
            thumbnail_s: p.thumbnail_s,
            health_window_s: p.health_window_s,
            allowed_web_hosts: Vec::new(),
            webrtc: Default::default(),
            lost_tile: p.lost_tile,
        }
    }
}

impl PipelineConfig {
    /// The `pipeline` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("pipeline.eos_timeout_s", self.eos_timeout_s, 3600.0)?;
        positive("pipeline.start_timeout_s", self.start_timeout_s, 3600.0)?;
        positive("pipeline.mp4_fragment_s", self.mp4_fragment_s, 60.0)?;
        positive("pipeline.stream_retry_s", self.stream_retry_s, 86400.0)?;
        positive("pipeline.source_stall_s", self.source_stall_s, 3600.0)?;
        // 0 is allowed: a stalled source then ends the egress at once.
        if !(self.source_reconnect_s.is_finite()
            && (0.0..=86400.0).contains(&self.source_reconnect_s))
        {
            return Err(invalid(
                "pipeline.source_reconnect_s",
                "must be a number of seconds in [0, 86400]",
            ));
        }
        positive("pipeline.first_keyframe_s", self.first_keyframe_s, 600.0)?;
        positive("pipeline.health_window_s", self.health_window_s, 3600.0)?;
        let t = self.thumbnail_s;
        if !(t == 0.0 || (0.5..=3600.0).contains(&t)) {
            return Err(invalid(
                "pipeline.thumbnail_s",
                "must be 0 (off) or a number of seconds in [0.5, 3600]",
            ));
        }
        if !(0..=19).contains(&self.handler_nice) {
            return Err(invalid("pipeline.handler_nice", "must be in [0, 19]"));
        }
        Ok(())
    }
}
