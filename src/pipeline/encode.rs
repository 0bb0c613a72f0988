//! One encode per codec, shared by every output through tees; and the copy chains that keep an
//! already encoded stream (H.264, AAC) as it is.
//!
//! ```text
//!   raw video: video_queue ─► video_convert ─► video_scale ─► video_rate ─► video_caps
//!              (I420, WxH@fps) ─► video_raw_tee ─┬─► video_h264_enc_queue ─► video_h264_enc ─► video_h264_tee ─► outputs
//!                                                ├─► video_vp8_enc_queue ─► video_vp8_enc ─► video_vp8_tee (webm only)
//!                                                └─► images (raw frames)
//!   raw audio: audio_queue ─► audio_convert ─► audio_resample ─► audio_caps (48 kHz stereo)
//!              ─► audio_raw_tee ─┬─► audio_aac_enc_queue ─► audio_aac_enc ─► audio_aac_tee ─► outputs
//!                                └─► audio_opus_enc_queue ─► audio_opus_enc ─► audio_opus_tee
//!   copy:      video_queue ─► video_parse (h264parse|h265parse) ─► video_h264_tee|video_h265_tee
//!              audio_queue ─► audio_parse (aacparse)  ─► audio_aac_tee
//! ```
//!
//! Each output parses for itself after the tee (`h264parse`/`aacparse` are cheap) because
//! muxers want different stream formats: MP4 and FLV take AVC, MPEG-TS byte-stream.

use super::graph::{Node, caps, el, from, tee};
use crate::model::{EgressSpec, PipelineOptions};

/// A video codec an output needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    /// Only copied (a `track` of an HEVC source into MP4 or Matroska), never encoded.
    H265,
    Vp8,
    /// Only copied (a WebRTC source's, into WebM), never encoded.
    Vp9,
    Theora,
}

impl VideoCodec {
    pub fn as_str(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::H265 => "h265",
            VideoCodec::Vp8 => "vp8",
            VideoCodec::Vp9 => "vp9",
            VideoCodec::Theora => "theora",
        }
    }

    /// The tee every consumer of this codec links from.
    pub fn tee(self) -> String {
        format!("video_{}_tee", self.as_str())
    }
}

/// An audio codec an output needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodecKind {
    Aac,
    Opus,
}

impl AudioCodecKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AudioCodecKind::Aac => "aac",
            AudioCodecKind::Opus => "opus",
        }
    }

    pub fn tee(self) -> String {
        format!("audio_{}_tee", self.as_str())
    }
}

pub const VIDEO_RAW_TEE: &str = "video_raw_tee";
pub const AUDIO_RAW_TEE: &str = "audio_raw_tee";

/// Raw video in -> scaled, converted, at the egress's rate -> `video_raw_tee`.
pub fn video_raw(spec: &EgressSpec) -> Vec<Node> {
    let v = &spec.video;
    // The video starts at its first frame, as the audio does (both from the first keyframe,
    // see `source_uri::gate`), instead of that frame repeated back to the segment's start: a
    // live source's first frame lands at the pipeline's running time when it connected (and a
    // page's after it loaded), so without this the file would open with seconds of a frozen
    // frame and the audio would lead the picture by as long.
    let rate = el("videorate", "video_rate").p("skip-to-first", true);
    vec![
        el("queue", "video_queue"),
        el("videoconvert", "video_convert"),
        el("videoscale", "video_scale"),
        rate,
        // I420 before x264enc: otherwise it picks a 4:4:4 profile few players decode.
        caps(
            "video_caps",
            format!(
                "video/x-raw,format=I420,width={},height={},framerate={}/1,pixel-aspect-ratio=1/1",
                v.width, v.height, v.fps
            ),
        ),
        tee(VIDEO_RAW_TEE),
    ]
}

/// Raw audio in -> 48 kHz stereo -> `audio_raw_tee`.
pub fn audio_raw() -> Vec<Node> {
    vec![
        el("queue", "audio_queue"),
        el("audioconvert", "audio_convert"),
        el("audioresample", "audio_resample"),
        caps("audio_caps", "audio/x-raw,rate=48000,channels=2"),
        tee(AUDIO_RAW_TEE),
    ]
}

/// `video_raw_tee` -> one encoder -> its tee.
pub fn video_encoder(c: VideoCodec, spec: &EgressSpec, opts: &PipelineOptions) -> Vec<Node> {
    let v = &spec.video;
    // A keyframe every 2 s; every second with HLS, whose splitter holds a GOP before writing
    // it (so a kill loses less, and live players join sooner).
    let gop = if spec.outputs.segments.is_some() {
        v.fps
    } else {
        v.fps * 2
    };
    let name = format!("video_{}_enc", c.as_str());
    let enc = match c {
        // Never asked for: H.265 is only copied (`plan::copy_caps`).
        VideoCodec::H264 | VideoCodec::H265 => el("x264enc", &name)
            .p("speed-preset", &opts.x264_speed_preset)
            .p("tune", "zerolatency")
            .p("key-int-max", gop)
            .p("bitrate", v.bitrate_kbps),
        // Never asked for: VP9 is only copied (into WebM).
        VideoCodec::Vp8 | VideoCodec::Vp9 => el("vp8enc", &name)
            .p("deadline", 1)
            .p("cpu-used", 8)
            .p("keyframe-max-dist", gop)
            .p("target-bitrate", v.bitrate_kbps * 1000),
        VideoCodec::Theora => el("theoraenc", &name).p("bitrate", v.bitrate_kbps),
    };
    vec![
        from(VIDEO_RAW_TEE),
        el("queue", format!("{name}_queue")),
        enc,
        tee(&c.tee()),
    ]
}

/// `audio_raw_tee` -> one encoder -> its tee.
pub fn audio_encoder(c: AudioCodecKind, spec: &EgressSpec) -> Vec<Node> {
    let name = format!("audio_{}_enc", c.as_str());
    let bitrate = spec.audio.bitrate_kbps * 1000;
    let enc = match c {
        AudioCodecKind::Aac => el("voaacenc", &name).p("bitrate", bitrate),
        AudioCodecKind::Opus => el("opusenc", &name).p("bitrate", bitrate),
    };
    vec![
        from(AUDIO_RAW_TEE),
        el("queue", format!("{name}_queue")),
        enc,
        tee(&c.tee()),
    ]
}

/// H.264 or H.265 kept as is -> `video_h264_tee` / `video_h265_tee`.
pub fn video_copy(c: VideoCodec) -> Vec<Node> {
    let mut chain = vec![el("queue", "video_queue")];
    // No VP8 parser in GStreamer 1.22: the depayloader's frames go as they are.
    if c != VideoCodec::Vp8 {
        chain.push(el(&format!("{}parse", c.as_str()), "video_parse"));
    }
    chain.push(tee(&c.tee()));
    chain
}

/// A source's encoded audio, copied: AAC (ADTS from MPEG-TS/HLS sources, raw from RTMP/MP4) ->
/// `audio_aac_tee`, or Opus (from WebRTC, into a file that takes it) -> `audio_opus_tee`.
pub fn audio_copy(c: AudioCodecKind) -> Vec<Node> {
    let parser = match c {
        AudioCodecKind::Aac => "aacparse",
        AudioCodecKind::Opus => "opusparse",
    };
    vec![
        el("queue", "audio_queue"),
        el(parser, "audio_parse"),
        tee(&c.tee()),
    ]
}

/// An output's branch off an encoded tee: its own queue and parser (for the stream format its
/// muxer wants), ending where the caller links it.
pub fn branch(prefix: &str, video: bool, tee_name: &str, codec: &str) -> Vec<Node> {
    let kind = if video { "video" } else { "audio" };
    let mut chain = vec![
        from(tee_name),
        el("queue", format!("{prefix}_{kind}_queue")),
    ];
    match codec {
        "h264" | "h265" => chain.push(
            el(&format!("{codec}parse"), format!("{prefix}_{kind}_parse")).p("config-interval", -1),
        ),
        "aac" => chain.push(el("aacparse", format!("{prefix}_{kind}_parse"))),
        _ => {}
    }
    chain
}
