//! `room_composite`: every source's video scaled into a grid cell of one `compositor`, every
//! source's audio into one `audiomixer`, then encoded once.
//!
//! ```text
//!   src0 video ─► src0_video_queue ─► src0_video_convert ─► src0_video_scale ─► src0_video_caps ─┐
//!   src1 video ─► ...                                                          comp.sink_N ◄───┤
//!                                                 comp (compositor) ─► raw video (encode.rs) ─► encoders ─► outputs
//!   src0 audio ─► src0_audio_queue ─► src0_audio_convert ─► src0_audio_resample ─► src0_audio_caps ─┐
//!                                                 amix (audiomixer) ─► raw audio (encode.rs) ─► encoders ─► outputs
//! ```

use super::encode;
use super::graph::{Desc, Node, caps, el, link};
use crate::model::EgressSpec;

/// Grid cell size for `n` tiles in a `w`x`h` frame: (columns, cell width, cell height), even sizes.
pub fn grid(n: usize, w: u32, h: u32) -> (u32, u32, u32) {
    let n = n.max(1) as u32;
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = n.div_ceil(cols);
    (cols, (w / cols) & !1, (h / rows) & !1)
}

/// Adds the mixers, feeding the raw tees; `video`/`audio` are (source index, head chain) pairs.
pub fn room(
    d: &mut Desc,
    spec: &EgressSpec,
    video: Vec<(usize, Vec<Node>)>,
    audio: Vec<(usize, Vec<Node>)>,
) {
    let v = &spec.video;
    if !video.is_empty() {
        let (cols, cw, ch) = grid(video.len(), v.width, v.height);
        let mut comp = el("compositor", "comp").p("background", "black");
        for (slot, _) in video.iter().enumerate() {
            let (x, y) = ((slot as u32 % cols) * cw, (slot as u32 / cols) * ch);
            comp = comp
                .p(&format!("sink_{slot}::xpos"), x)
                .p(&format!("sink_{slot}::ypos"), y);
        }
        let mut chain = vec![comp];
        chain.extend(encode::video_raw(spec));
        d.push(chain);
        for (slot, (i, mut head)) in video.into_iter().enumerate() {
            head.extend([
                el("queue", format!("src{i}_video_queue")),
                el("videoconvert", format!("src{i}_video_convert")),
                el("videoscale", format!("src{i}_video_scale")),
                caps(
                    format!("src{i}_video_cell"),
                    format!(
                        "video/x-raw,format=I420,width={cw},height={ch},pixel-aspect-ratio=1/1"
                    ),
                ),
                Node::Link {
                    target: "comp".into(),
                    pad: Some(format!("sink_{slot}")),
                },
            ]);
            d.push(head);
        }
    }
    if !audio.is_empty() {
        let mut chain = vec![el("audiomixer", "amix")];
        chain.extend(encode::audio_raw());
        d.push(chain);
        for (i, mut head) in audio {
            head.extend([
                el("queue", format!("src{i}_audio_queue")),
                el("audioconvert", format!("src{i}_audio_convert")),
                el("audioresample", format!("src{i}_audio_resample")),
                caps(
                    format!("src{i}_audio_fmt"),
                    "audio/x-raw,rate=48000,channels=2",
                ),
                link("amix"),
            ]);
            d.push(head);
        }
    }
}
