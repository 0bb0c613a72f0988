//! Web pages: `wpesrc` renders the page headless with WPE WebKit (no X server, no browser
//! process) at the egress's size and rate. Its frames are held back until the page has loaded
//! (the handler opens the gate on `wpe-stats` `estimated-load-progress` 100), so the first
//! frame of a recording is the page, not a blank background. Audio: the page's `audio_%u` pads
//! (the handler makes the plugin find the web extension that gives them: `web::load_plugin`) are
//! mixed with live silence, so an audio track is there from the first frame whether or not the
//! page plays anything.
//!
//! ```text
//!   src0_web (wpesrc) ─► src0_web_caps (BGRA WxH@fps) ─► [gate: drops until loaded] ─► video
//!   src0_web_silence (audiotestsrc, silence) ─► src0_web_silence_caps ─┐
//!   src0_web.audio_N ─► convert ─► resample ─► (handler links them) ──┴► src0_web_amix
//!     ─► src0_web_hold (queue, holds `hold` of sound) ─► [gate: from the first frame] ─► audio
//! ```

use std::time::Duration;

use super::graph::{Node, caps, el, link};
use crate::error::PipelineError;
use crate::model::{EgressSpec, Source};

/// How long the page mixer waits for the page's sound (`compose::SOUND_WAIT`): the handler
/// stamps it with when it was played (`handler::record::page_time`), and on a busy node it
/// reaches the mixer later.
pub const MIX_LATENCY: Duration = super::compose::SOUND_WAIT;

/// The audio mixer page audio pads are linked into.
pub fn mixer_name(i: usize) -> String {
    format!("src{i}_web_amix")
}

/// The wpesrc element of source `i`.
pub fn element_name(i: usize) -> String {
    format!("src{i}_web")
}

/// The queue after the mixer: its src pad carries the sound's gate.
pub fn hold_name(i: usize) -> String {
    format!("src{i}_web_hold")
}

/// How long after its time a page's frame may be pushed, at `fps`: two and a half frames (its
/// content was drawn then, `handler::record::page_time`), and a margin for a late push.
pub fn frame_lag(fps: u32) -> Duration {
    Duration::from_millis(100) + Duration::from_secs(3) / fps.max(1)
}

/// How much of the page's mixed sound is held back before its gate, at `fps`. Why: the gate
/// lets the sound through from the first frame's time, which is known only when that frame is
/// pushed (`frame_lag`). Without it, the sound of those frames had gone by (dropped) when the
/// gate learned where to open: the recording's sound began 0.10-0.15 s after its picture at
/// 15 fps. At most `MAX_HOLD`. The queue reports it as latency.
pub fn hold(fps: u32) -> Duration {
    frame_lag(fps).min(MAX_HOLD)
}

/// The longest hold: the muxer waits as long for the sound, while the picture waits in queues
/// of about a second. Below 6 fps the sound of the first frames can still go by.
const MAX_HOLD: Duration = Duration::from_millis(600);

/// The capsfilter after wpesrc: its src pad carries the gate.
pub fn caps_name(i: usize) -> String {
    format!("src{i}_web_caps")
}

/// The video head of web source `i`.
pub fn video_head(spec: &EgressSpec, source: &Source, i: usize) -> Option<Vec<Node>> {
    let Source::Web { url, .. } = source else {
        return None;
    };
    let v = &spec.video;
    Some(vec![
        el("wpesrc", element_name(i))
            .p("location", url)
            .p("draw-background", true),
        caps(
            caps_name(i),
            format!(
                "video/x-raw,format=BGRA,width={},height={},framerate={}/1",
                v.width, v.height, v.fps
            ),
        ),
    ])
}

/// The audio head of web source `i` (the mixer and its hold, for a picture at `fps`), plus the
/// silent bed as a chain of its own.
pub fn audio_head(source: &Source, i: usize, fps: u32) -> Option<(Vec<Node>, Vec<Node>)> {
    let Source::Web { audio: true, .. } = source else {
        return None;
    };
    let amix = mixer_name(i);
    let silence = vec![
        el("audiotestsrc", format!("src{i}_web_silence"))
            .p("is-live", true)
            .p("wave", "silence"),
        caps(
            format!("src{i}_web_silence_caps"),
            "audio/x-raw,format=S16LE,rate=48000,channels=2",
        ),
        link(&amix),
    ];
    let hold = hold(fps).as_nanos() as u64;
    Some((
        vec![
            el("audiomixer", amix).p("latency", MIX_LATENCY.as_nanos() as u64),
            el("queue", hold_name(i))
                .p("min-threshold-time", hold)
                .p("max-size-time", hold + 1_000_000_000)
                .p("max-size-buffers", 0)
                .p("max-size-bytes", 0),
        ],
        silence,
    ))
}

/// Checks that the page answers before anything renders it: WebKit shows an error page for a
/// 404 or a refused connection as if it were content, so the status is read here. Returns the
/// reason a user reads.
/// `proxy` (`http://host:port`) is the page's request filter: redirects are followed through
/// it, so each hop is checked as the page's own requests are.
pub fn preflight(url: &str, proxy: &str, timeout: Duration) -> Result<(), PipelineError> {
    let proxy = ureq::Proxy::new(proxy).map_err(|e| PipelineError::Build(e.to_string()))?;
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(Some(proxy))
        .build()
        .new_agent();
    let fail = |message: String| PipelineError::Bus {
        element: String::new(),
        message,
        debug: String::new(),
    };
    // The page's URL may hold a token or a password: errors show it redacted.
    let shown = crate::model::redact::url(url);
    match agent.get(url).call() {
        Ok(r) if r.status().as_u16() < 400 => Ok(()),
        Ok(r) => Err(fail(format!(
            "the page answered HTTP {}: {shown}",
            r.status()
        ))),
        Err(e) => {
            let e = crate::model::redact::in_text(&e.to_string(), [url]);
            Err(fail(format!("the page cannot be loaded: {e}: {shown}")))
        }
    }
}
