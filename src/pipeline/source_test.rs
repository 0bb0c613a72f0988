//! Synthetic live sources (`test://video|audio|av`): the head of a chain, known before anything
//! runs, so they need no pads to be discovered.
//!
//! ```text
//!   videotestsrc (src0_video, is-live) ─► capsfilter (src0_video_caps: WxH@fps) ─► ...
//!   audiotestsrc (src0_audio, is-live) ─► capsfilter (src0_audio_caps: 48 kHz stereo) ─► ...
//! ```

use super::graph::{Node, caps, el};
use crate::model::Source;

/// The video head of test source `i`, or None when `source` is not a test source.
pub fn video_head(source: &Source, i: usize) -> Option<Vec<Node>> {
    let Source::Test {
        pattern,
        width,
        height,
        fps,
        ..
    } = source
    else {
        return None;
    };
    Some(vec![
        el("videotestsrc", format!("src{i}_video"))
            .p("is-live", "true")
            .p("pattern", pattern),
        caps(
            format!("src{i}_video_caps"),
            format!("video/x-raw,width={width},height={height},framerate={fps}/1"),
        ),
    ])
}

/// The audio head of test source `i`, or None when `source` is not a test source.
pub fn audio_head(source: &Source, i: usize) -> Option<Vec<Node>> {
    let Source::Test { wave, freq, .. } = source else {
        return None;
    };
    Some(vec![
        el("audiotestsrc", format!("src{i}_audio"))
            .p("is-live", "true")
            .p("wave", wave)
            .p("freq", freq),
        caps(
            format!("src{i}_audio_caps"),
            "audio/x-raw,rate=48000,channels=2",
        ),
    ])
}
