//! The thumbnail: the latest picture of a running egress as a small JPEG, at most one every
//! `pipeline.thumbnail_s`, written by the handler beside the egress's record
//! (`state_dir/egresses/EG_x.jpg`, replaced atomically) and served by
//! `GET /v1/egress/{id}/thumbnail.jpg`.
//!
//! ```text
//!   encoded:  video_raw_tee ─► thumb_queue ─► thumb_convert ─► thumb_scale ─► thumb_caps
//!             ─► thumb_enc (jpegenc) ─► thumb_sink (appsink)
//!   copied:   video_h264_tee ─► thumb_queue (keyframes only) ─► thumb_dec (avdec_h264) ─► ...
//! ```
//!
//! A gate on the queue's input lets one frame through per interval (and, for copied video,
//! keyframes only, so the decoder runs once per interval at most); the queue is leaky, so a
//! slow JPEG never holds the recording up.

use super::encode::{VIDEO_RAW_TEE, VideoCodec};
use super::graph::{Desc, Node, caps, el, from};

pub const SINK: &str = "thumb_sink";
pub const QUEUE: &str = "thumb_queue";
/// Thumbnail width in pixels; the height keeps the picture's aspect.
pub const WIDTH: u32 = 320;

/// Adds the thumbnail branch: off the raw tee, or, for copied video (`copied`), off its tee
/// through a decoder.
pub fn add(d: &mut Desc, copied: Option<VideoCodec>) {
    let mut chain = match copied {
        Some(c) => vec![
            from(&c.tee()),
            queue(),
            el(&format!("avdec_{}", c.as_str()), "thumb_dec"),
        ],
        None => vec![from(VIDEO_RAW_TEE), queue()],
    };
    chain.extend([
        el("videoconvert", "thumb_convert"),
        el("videoscale", "thumb_scale"),
        caps(
            "thumb_caps",
            format!("video/x-raw,format=I420,width={WIDTH},pixel-aspect-ratio=1/1"),
        ),
        el("jpegenc", "thumb_enc").p("quality", 75),
        Node::AppSink {
            name: SINK.into(),
            launch: format!("fakesink name={SINK}"),
        },
    ]);
    d.push(chain);
}

fn queue() -> Node {
    el("queue", QUEUE)
        .p("leaky", "downstream")
        .p("max-size-buffers", 1)
        .p("max-size-bytes", 0)
        .p("max-size-time", 0)
}
