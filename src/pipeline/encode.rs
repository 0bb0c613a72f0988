//! Encoders: raw video or audio in, encoded stream into the muxer; and the copy chains that keep
//! an already encoded stream (H.264, AAC) as it is.
//!
//! ```text
//!   video: video_queue ─► video_convert ─► video_scale ─► video_rate ─► video_caps (I420, WxH@fps)
//!          ─► video_enc (x264enc | vp8enc | theoraenc) ─► [video_parse] ─► video_mux_queue ─► mux
//!   audio: audio_queue ─► audio_convert ─► audio_resample ─► audio_caps (48 kHz stereo)
//!          ─► audio_enc (voaacenc | opusenc) ─► [audio_parse] ─► audio_mux_queue ─► mux
//!   copy:  video_queue ─► video_parse (h264parse) ─► video_mux_queue ─► mux
//!          audio_queue ─► audio_parse (aacparse)  ─► audio_mux_queue ─► mux
//! ```

use super::graph::{Node, caps, el, link};
use crate::model::{AudioCodec, Container, EgressSpec, PipelineOptions};

/// Raw video in -> encoded video into `mux`.
pub fn video_tail(spec: &EgressSpec, opts: &PipelineOptions) -> Vec<Node> {
    let v = &spec.video;
    let mut chain = vec![
        el("queue", "video_queue"),
        el("videoconvert", "video_convert"),
        el("videoscale", "video_scale"),
        el("videorate", "video_rate"),
        // I420 before x264enc: otherwise it picks a 4:4:4 profile few players decode.
        caps(
            "video_caps",
            format!(
                "video/x-raw,format=I420,width={},height={},framerate={}/1,pixel-aspect-ratio=1/1",
                v.width, v.height, v.fps
            ),
        ),
    ];
    match spec.file.container {
        Container::Mp4 | Container::Mkv => {
            chain.push(
                el("x264enc", "video_enc")
                    .p("speed-preset", &opts.x264_speed_preset)
                    .p("tune", "zerolatency")
                    .p("key-int-max", v.fps * 2)
                    .p("bitrate", v.bitrate_kbps),
            );
            chain.push(el("h264parse", "video_parse"));
        }
        Container::Webm => chain.push(
            el("vp8enc", "video_enc")
                .p("deadline", 1)
                .p("cpu-used", 8)
                .p("keyframe-max-dist", v.fps * 2)
                .p("target-bitrate", v.bitrate_kbps * 1000),
        ),
        Container::Ogg => chain.push(el("theoraenc", "video_enc").p("bitrate", v.bitrate_kbps)),
    }
    chain.push(el("queue", "video_mux_queue"));
    chain.push(link("mux"));
    chain
}

/// Raw audio in -> encoded audio into `mux`.
pub fn audio_tail(spec: &EgressSpec) -> Vec<Node> {
    let a = &spec.audio;
    let mut chain = vec![
        el("queue", "audio_queue"),
        el("audioconvert", "audio_convert"),
        el("audioresample", "audio_resample"),
        caps("audio_caps", "audio/x-raw,rate=48000,channels=2"),
    ];
    match a.codec {
        AudioCodec::Aac => {
            chain.push(el("voaacenc", "audio_enc").p("bitrate", a.bitrate_kbps * 1000));
            chain.push(el("aacparse", "audio_parse"));
        }
        AudioCodec::Opus => {
            chain.push(el("opusenc", "audio_enc").p("bitrate", a.bitrate_kbps * 1000))
        }
    }
    chain.push(el("queue", "audio_mux_queue"));
    chain.push(link("mux"));
    chain
}

/// H.264 kept as is: parsed into the form the muxer wants.
pub fn h264_copy() -> Vec<Node> {
    vec![
        el("queue", "video_queue"),
        el("h264parse", "video_parse"),
        el("queue", "video_mux_queue"),
        link("mux"),
    ]
}

/// AAC kept as is: ADTS (as MPEG-TS and HLS carry it) turned raw for MP4/Matroska.
pub fn aac_copy() -> Vec<Node> {
    vec![
        el("queue", "audio_queue"),
        el("aacparse", "audio_parse"),
        el("queue", "audio_mux_queue"),
        link("mux"),
    ]
}
