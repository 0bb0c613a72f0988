//! `room_composite`: every source's video scaled into a grid cell of one `compositor`, every
//! source's audio into one `audiomixer`, then encoded once.
//!
//! ```text
//!   src0 video ─► [src0_video_decode_queue ─► src0_video_decode] (an RTSP camera's, in the graph)
//!              ─► src0_video_queue ─► _convert ─► _scale ─► _cell ─► _hold (up to 5 s) ─┐
//!   src1 video ─► ...                                                     comp.sink_N ◄─┤
//!                                                 comp (compositor) ─► raw video (encode.rs) ─► encoders ─► outputs
//!   src0 audio ─► src0_audio_queue ─► src0_audio_convert ─► src0_audio_resample ─► src0_audio_caps ─┐
//!                                                 amix (audiomixer) ─► raw audio (encode.rs) ─► encoders ─► outputs
//! ```

use super::encode;
use super::graph::{Desc, Node, caps, el, link};
use crate::model::EgressSpec;

/// Grid cell size for `n` tiles in a `w`x`h` frame: (columns, cell width, cell height), even
/// sizes. The grids hold 1, 2 (side by side), 4, 9 and 16 tiles: a count in between takes the
/// next one, so tiles keep their size as people join until the grid is full.
pub fn grid(n: usize, w: u32, h: u32) -> (u32, u32, u32) {
    let n = n.max(1) as u32;
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = if n == 2 { 1 } else { cols };
    (cols, (w / cols) & !1, (h / rows) & !1)
}

/// Where each tile goes: (source index, x, y, cell width, cell height) for the video
/// sources `tiles`, in their order, on a `w`x`h` grid.
pub fn layout(tiles: &[usize], w: u32, h: u32) -> Vec<(usize, u32, u32, u32, u32)> {
    let (cols, cw, ch) = grid(tiles.len(), w, h);
    tiles
        .iter()
        .enumerate()
        .map(|(slot, &i)| {
            let slot = slot as u32;
            (i, (slot % cols) * cw, (slot / cols) * ch, cw, ch)
        })
        .collect()
}

/// The compositor's pad of source `i` (named by source, so it keeps its name as tiles move).
pub fn tile_pad(i: usize) -> String {
    format!("sink_{i}")
}

/// The caps of a `cw`x`ch` cell (the source scaled into it, its aspect kept with borders).
pub fn cell_caps(cw: u32, ch: u32) -> String {
    format!("video/x-raw,format=I420,width={cw},height={ch},pixel-aspect-ratio=1/1")
}

/// The elements between source `i`'s video and its compositor pad, and its audio and the
/// mixer, in order (a source leaving the room takes them out).
pub fn video_elements(i: usize) -> [String; 5] {
    ["queue", "convert", "scale", "cell", "hold"].map(|e| format!("src{i}_video_{e}"))
}

pub fn audio_elements(i: usize) -> [String; 4] {
    ["queue", "convert", "resample", "fmt"].map(|e| format!("src{i}_audio_{e}"))
}

/// The queue before a mixer's input: it may hold as long as the slowest source's latency (an
/// RTSP camera's jitterbuffer, 2 s). With a queue's default second, the mixer could not
/// configure its latency ("max < min") and timed its output as if none had been reported. A
/// tile's holds frames of the tile's size (after scaling), not the source's.
fn mixer_queue(name: String) -> Node {
    el("queue", name)
        .p("max-size-time", 5_000_000_000u64)
        .p("max-size-buffers", 0u32)
        .p("max-size-bytes", 0u32)
}

/// Source `i`'s video from `head` into its `cw`x`ch` tile.
pub fn video_tile(i: usize, mut head: Vec<Node>, cw: u32, ch: u32) -> Vec<Node> {
    let [q, convert, scale, cell, hold] = video_elements(i);
    head.extend([
        el("queue", q),
        el("videoconvert", convert),
        el("videoscale", scale),
        caps(cell, cell_caps(cw, ch)),
        mixer_queue(hold),
        Node::Link {
            target: "comp".into(),
            pad: Some(tile_pad(i)),
        },
    ]);
    head
}

/// Source `i`'s audio from `head` into the mixer.
pub fn audio_input(i: usize, mut head: Vec<Node>) -> Vec<Node> {
    let [q, convert, resample, fmt] = audio_elements(i);
    head.extend([
        mixer_queue(q),
        el("audioconvert", convert),
        el("audioresample", resample),
        caps(fmt, "audio/x-raw,rate=48000,channels=2"),
        link("amix"),
    ]);
    head
}

/// How long a mixer waits for sound beyond the latency its inputs report. Why: a mixer drops
/// what reaches it after its latency, which was reckoned when the graph started. A page's
/// sound that a busy node held back 35 ms was dropped for good (in a simulation of the mixer).
/// A room's senders who joined later (SRT, beside a WHIP publisher) were silent in the file in
/// 2 full test runs on a loaded node, for the 7 s after the louder publisher left; taken for
/// sound that came late, not confirmed (it did not happen in runs of that test alone).
pub const SOUND_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Half an output frame of `spec`'s video.
pub fn half_frame(spec: &EgressSpec) -> gstreamer::ClockTime {
    gstreamer::ClockTime::from_nseconds(500_000_000 / u64::from(spec.video.fps.max(1)))
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
        let tiles: Vec<usize> = video.iter().map(|(i, _)| *i).collect();
        let cells = layout(&tiles, v.width, v.height);
        // Output starts with the first frame in: the graph of a room whose sources show late (a
        // WHIP publisher) is built seconds after the pipeline started, and from zero the mixers
        // would first fill those seconds with a burst of stale frames and silence.
        // Tiles come half an output frame late (`room::nearest_slot`): waited for.
        let mut comp = el("compositor", "comp")
            .p("background", "black")
            .p("start-time-selection", "first")
            .p("latency", half_frame(spec).nseconds());
        for &(i, x, y, _, _) in &cells {
            comp = comp
                .p(&format!("{}::xpos", tile_pad(i)), x)
                .p(&format!("{}::ypos", tile_pad(i)), y);
        }
        let mut chain = vec![comp];
        chain.extend(encode::video_raw(spec));
        d.push(chain);
        for ((i, head), (_, _, _, cw, ch)) in video.into_iter().zip(cells) {
            d.push(video_tile(i, head, cw, ch));
        }
    }
    if !audio.is_empty() {
        let mut chain = vec![
            el("audiomixer", "amix")
                .p("start-time-selection", "first")
                .p("latency", SOUND_WAIT.as_nanos() as u64),
        ];
        chain.extend(encode::audio_raw());
        d.push(chain);
        for (i, head) in audio {
            d.push(audio_input(i, head));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fill_one_two_four_nine_and_sixteen_grids() {
        assert_eq!(layout(&[3], 1280, 720), vec![(3, 0, 0, 1280, 720)]);
        assert_eq!(
            layout(&[0, 2], 1280, 720),
            vec![(0, 0, 0, 640, 720), (2, 640, 0, 640, 720)]
        );
        let three = layout(&[0, 1, 2], 1280, 720);
        assert_eq!(three[2], (2, 0, 360, 640, 360));
        assert_eq!(grid(5, 1280, 720), (3, 426, 240));
        assert_eq!(grid(9, 1280, 720), (3, 426, 240));
        assert_eq!(grid(16, 1280, 720), (4, 320, 180));
    }
}
