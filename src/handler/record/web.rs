//! A web source on the handler's side: frames are held back until the page has loaded and
//! painted, and
//! the page's audio pads (when WPE gives them) are mixed into the egress's audio.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::error::PipelineError;

/// Longest the first paint is waited for after the load event.
const FIRST_PAINT: std::time::Duration = std::time::Duration::from_secs(3);
use crate::pipeline::source_web;

/// Drops the page's frames until `loaded`; links page audio pads into the mixer (or discards
/// them when the egress records no audio).
pub fn attach(
    pipeline: &gst::Pipeline,
    i: usize,
    loaded: Arc<AtomicBool>,
) -> Result<(), PipelineError> {
    let caps = pipeline
        .by_name(&source_web::caps_name(i))
        .and_then(|c| c.static_pad("src"))
        .ok_or_else(|| PipelineError::Build("no web caps".into()))?;
    let mixed = pipeline
        .by_name(&source_web::mixer_name(i))
        .and_then(|m| m.static_pad("src"));
    // The first paint follows the load event: frames identical to the background the view
    // showed before it loaded are held back too (for at most FIRST_PAINT), so the recording's
    // first frame is the page. Audio is held back until the first frame passes.
    let painted = Arc::new(AtomicBool::new(false));
    let background: Arc<std::sync::Mutex<Option<u64>>> = Arc::default();
    let since: Arc<std::sync::Mutex<Option<std::time::Instant>>> = Arc::default();
    let p = painted.clone();
    caps.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buf) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let hash = buf.map_readable().ok().map(|m| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            m.as_slice().hash(&mut h);
            h.finish()
        });
        let mut bg = background.lock().unwrap_or_else(|e| e.into_inner());
        if !loaded.load(Ordering::Relaxed) {
            if bg.is_none() {
                *bg = hash;
            }
            return gst::PadProbeReturn::Drop;
        }
        let mut t = since.lock().unwrap_or_else(|e| e.into_inner());
        let first = *t.get_or_insert_with(std::time::Instant::now);
        if hash.is_some() && hash == *bg && first.elapsed() < FIRST_PAINT {
            return gst::PadProbeReturn::Drop;
        }
        p.store(true, Ordering::Relaxed);
        gst::PadProbeReturn::Remove
    });
    if let Some(pad) = mixed {
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if painted.load(Ordering::Relaxed) {
                gst::PadProbeReturn::Remove
            } else {
                gst::PadProbeReturn::Drop
            }
        });
    }
    let web = pipeline
        .by_name(&source_web::element_name(i))
        .ok_or_else(|| PipelineError::Build("no wpesrc".into()))?;
    watch_audio(pipeline, &web, i);
    Ok(())
}

/// Links the page's audio pads, as they come, into the mixer.
fn watch_audio(pipeline: &gst::Pipeline, web: &gst::Element, i: usize) {
    let weak = pipeline.downgrade();
    let mixer = source_web::mixer_name(i);
    web.connect_pad_added(move |_, pad| {
        if !pad.name().starts_with("audio") {
            return;
        }
        let Some(p) = weak.upgrade() else { return };
        let _ = link_audio(&p, pad, &mixer);
    });
}

/// Replaces source `i`'s page renderer with a new one (attempt `n`): WPE WebKit here sometimes
/// never launches its web process, and a renderer made again loads. The old one goes to Null
/// on a thread of its own (it may hang there).
pub fn restart(pipeline: &gst::Pipeline, i: usize, url: &str, n: u32) -> Result<(), PipelineError> {
    let caps = pipeline
        .by_name(&source_web::caps_name(i))
        .ok_or_else(|| PipelineError::Build("no web caps".into()))?;
    let names = [source_web::element_name(i)]
        .into_iter()
        .chain((1..n).map(|k| format!("{}_r{k}", source_web::element_name(i))));
    for name in names {
        if let Some(old) = pipeline.by_name(&name) {
            old.unlink(&caps);
            let _ = pipeline.remove(&old);
            std::thread::spawn(move || {
                let _ = old.set_state(gst::State::Null);
            });
        }
    }
    let web = gst::ElementFactory::make("wpesrc")
        .name(format!("{}_r{n}", source_web::element_name(i)))
        .property("location", url)
        .property("draw-background", true)
        .build()
        .map_err(|_| PipelineError::MissingElement("wpesrc".into()))?;
    pipeline.add(&web)?;
    web.link(&caps)
        .map_err(|_| PipelineError::Build("cannot link the new page renderer".into()))?;
    watch_audio(pipeline, &web, i);
    web.sync_state_with_parent()?;
    Ok(())
}

fn link_audio(p: &gst::Pipeline, pad: &gst::Pad, mixer: &str) -> Option<()> {
    let make = |f: &str| gst::ElementFactory::make(f).build().ok();
    let Some(mix) = p.by_name(mixer) else {
        // No audio recorded: the pad is discarded.
        let sink = make("fakesink")?;
        sink.set_property("sync", false);
        p.add(&sink).ok()?;
        sink.sync_state_with_parent().ok()?;
        return pad.link(&sink.static_pad("sink")?).ok().map(|_| ());
    };
    let (conv, res, q) = (
        make("audioconvert")?,
        make("audioresample")?,
        make("queue")?,
    );
    p.add_many([&conv, &res, &q]).ok()?;
    gst::Element::link_many([&conv, &res, &q]).ok()?;
    let mp = mix.request_pad_simple("sink_%u")?;
    q.static_pad("src")?.link(&mp).ok()?;
    for e in [&q, &res, &conv] {
        e.sync_state_with_parent().ok()?;
    }
    pad.link(&conv.static_pad("sink")?).ok().map(|_| ())
}

/// Whether a bus message says the page finished loading.
pub fn is_loaded(msg: &gst::Message) -> bool {
    match msg.view() {
        gst::MessageView::Element(e) => e.structure().is_some_and(|s| {
            s.name() == "wpe-stats"
                && s.get::<f64>("estimated-load-progress")
                    .is_ok_and(|p| p >= 100.0)
        }),
        _ => false,
    }
}
