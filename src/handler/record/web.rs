//! A web source on the handler's side: frames are held back until the page has loaded and
//! painted, the page's audio pads are mixed into the egress's audio, and the workarounds this
//! machine's wpesrc (GStreamer 1.22, Debian 12) needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::page_time;
use crate::error::PipelineError;
use crate::pipeline::source_web;

/// What the first frame's time is until it has passed.
const NOT_PAINTED: u64 = u64::MAX;

/// Longest the first paint is waited for after the load event.
const FIRST_PAINT: std::time::Duration = std::time::Duration::from_secs(3);

/// How far a page's picture and its mixed sound have gone: the running time (ns) where the
/// last buffer of each ended, as it went into the next element. A stop waits until both pass
/// its instant (`Recording::past_cut`): wpesrc pushes a frame two and a half frames after its
/// content was drawn (`page_time`), and the mixer puts sound out up to its latency late, so
/// what the page showed and played before the stop would otherwise be cut off (the video 0.1 s
/// short of the time recorded at 15 fps). Followed on the next element's sink pad: there a
/// buffer is past the EOS check, so one counted is in before the stop's EOS.
#[derive(Clone, Default)]
pub struct Reached {
    video: Arc<AtomicU64>,
    audio: Arc<AtomicU64>,
}

impl Reached {
    /// Whether both have gone past running time `rt` (ns).
    pub fn past(&self, rt: i64) -> bool {
        let rt = u64::try_from(rt).unwrap_or(0);
        self.video.load(Ordering::Relaxed) >= rt && self.audio.load(Ordering::Relaxed) >= rt
    }

    /// A probe on `pad` that keeps `to` at the end of the last buffer through it.
    fn follow(pad: &gst::Pad, to: &Arc<AtomicU64>) {
        let to = to.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(end) = info.buffer().and_then(end_of) {
                to.fetch_max(end.nseconds(), Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// Where a buffer ends: its time and its length.
fn end_of(b: &gst::Buffer) -> Option<gst::ClockTime> {
    Some(b.pts()? + b.duration().unwrap_or_default())
}

/// Drops the page's frames until `loaded`; links page audio pads into the mixer (or discards
/// them when the egress records no audio). Returns how far the page's media has gone.
pub fn attach(
    pipeline: &gst::Pipeline,
    i: usize,
    loaded: Arc<AtomicBool>,
) -> Result<Reached, PipelineError> {
    let caps = pipeline
        .by_name(&source_web::caps_name(i))
        .and_then(|c| c.static_pad("src"))
        .ok_or_else(|| PipelineError::Build("no web caps".into()))?;
    let mixed = pipeline
        .by_name(&source_web::mixer_name(i))
        .and_then(|m| m.static_pad("src"));
    let held = pipeline
        .by_name(&source_web::hold_name(i))
        .and_then(|m| m.static_pad("src"));
    let web = pipeline
        .by_name(&source_web::element_name(i))
        .ok_or_else(|| PipelineError::Build("no wpesrc".into()))?;
    // First, so that it sees every frame wpesrc pushes, and the gate their new times.
    page_time::stamp_at_drawing(&web, &caps);
    // The first paint follows the load event: frames identical to the background the view
    // showed before it loaded are held back too (for at most FIRST_PAINT), so the recording's
    // first frame is the page. The sound is dropped until it reaches the first frame's time
    // (`NOT_PAINTED` until that frame passes); the hold before its gate keeps the sound of
    // that time from going by meanwhile.
    let painted = Arc::new(AtomicU64::new(NOT_PAINTED));
    // The background's hash, and when the first frame after the load came.
    let seen: std::sync::Mutex<(Option<u64>, Option<std::time::Instant>)> = Default::default();
    let p = painted.clone();
    caps.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buf) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        // Hashed only while it decides something: the first frame, then frames after the load.
        let hash = || {
            buf.map_readable().ok().map(|m| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                m.as_slice().hash(&mut h);
                h.finish()
            })
        };
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let (background, since) = &mut *seen;
        if !loaded.load(Ordering::Relaxed) {
            if background.is_none() {
                *background = hash();
            }
            return crate::pipeline::DROP_BUFFER;
        }
        let first = *since.get_or_insert_with(std::time::Instant::now);
        // The view's own white counts as the background too: a page starting WebAudio opened
        // its recording white in 1 of 2 runs, so the background compared (the first frame
        // before the load) was not that white, or there was none.
        let unpainted = || {
            buf.map_readable()
                .is_ok_and(|m| m.as_slice().iter().all(|&b| b == 0xff))
        };
        if first.elapsed() < FIRST_PAINT
            && ((background.is_some() && hash() == *background) || unpainted())
        {
            return crate::pipeline::DROP_BUFFER;
        }
        p.store(
            buf.pts().map_or(0, gst::ClockTime::nseconds),
            Ordering::Relaxed,
        );
        gst::PadProbeReturn::Remove
    });
    let reached = Reached::default();
    match caps.peer() {
        Some(pad) => Reached::follow(&pad, &reached.video),
        None => reached.video.store(u64::MAX, Ordering::Relaxed),
    }
    match mixed.as_ref().and_then(|p| p.peer()) {
        Some(pad) => Reached::follow(&pad, &reached.audio),
        None => reached.audio.store(u64::MAX, Ordering::Relaxed),
    }
    // The gate after the hold, so that the first frame's time is known before the sound of
    // that time comes (`source_web::hold`).
    if let Some(pad) = held {
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let first = painted.load(Ordering::Relaxed);
            let end = info.buffer().and_then(end_of);
            if first == NOT_PAINTED || end.is_some_and(|e| e.nseconds() <= first) {
                crate::pipeline::DROP_BUFFER
            } else {
                gst::PadProbeReturn::Remove
            }
        });
    }
    watch_audio(pipeline, &web, i);
    Ok(reached)
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
        pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &mut info.data
                && !mend_audio_meta(b)
            {
                return crate::pipeline::DROP_BUFFER;
            }
            gst::PadProbeReturn::Ok
        });
        page_time::stamp_sound(pad);
        let _ = link_audio(&p, pad, &mixer);
    });
}

/// Mends the audio meta of a page's sound buffer where it claims more samples than the buffer
/// holds; false when the buffer cannot be used. Why: WebAudio's buffers (a page's
/// `AudioContext`) come from WPE 1.22 with a meta whose sample count is their size in bytes, and
/// `audioconvert` maps them by it: a critical, then an allocation of petabytes, and the handler
/// died (SIGTRAP) 0.3 s into the page. Interleaved sound needs no meta, so it goes; planar sound
/// with a wrong one cannot be read, and is dropped.
fn mend_audio_meta(buffer: &mut gst::Buffer) -> bool {
    use gstreamer_audio::{AudioLayout, AudioMeta};
    let bad = buffer.meta::<AudioMeta>().and_then(|m| {
        let bpf = m.info().bpf() as usize;
        (bpf == 0 || m.samples() > buffer.size() / bpf).then(|| m.info().layout())
    });
    match bad {
        None => true,
        Some(AudioLayout::Interleaved) => buffer
            .make_mut()
            .meta_mut::<AudioMeta>()
            .is_some_and(|m| m.remove().is_ok()),
        Some(_) => false,
    }
}

/// Iterates GLib's global default main context on a thread of its own, for the life of the
/// process. Why: in GStreamer 1.22's wpesrc, `WPEContextThread::threading.ready` has no
/// initializer, so its constructor can skip waiting for the WPE thread, and the job that
/// creates the page's view is then attached to a null context, which is the default one. The
/// service starts web handlers with a zeroed `malloc` so that this does not happen
/// (`actors::pipeline::web_tunables`); should it still, the page loads here instead of never
/// (its frames may then freeze: the view lives on this thread, wpesrc drives it from its own).
pub fn serve_default_context() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("glib-default".into())
            .spawn(|| gst::glib::MainLoop::new(None, false).run());
    });
}

/// Unlinks and removes source `i`'s wpesrc from the pipeline and leaks it, so the pipeline's
/// Null never reaches it; the process exits soon after and the OS takes it back. Why: when the
/// page's view was made on the default context's thread (`serve_default_context`), wpesrc
/// destroys it on its own thread at Null, and WebKit aborts the process (seen: SIGABRT in
/// `g_object_unref` of the view); and wpesrc can hang going to Null anyway. After EOS every
/// output is written, and a failed recording needs nothing more from the page.
pub fn detach(pipeline: &gst::Pipeline, i: usize) {
    let Some(web) = pipeline.by_name(&source_web::element_name(i)) else {
        return;
    };
    if let Some(caps) = pipeline.by_name(&source_web::caps_name(i)) {
        web.unlink(&caps);
    }
    let _ = pipeline.remove(&web);
    std::mem::forget(web);
}

/// Loads the wpe plugin so that it finds its web extension, which hands the page's audio to
/// wpesrc as `audio_%u` pads. Why: Debian's gstreamer1.0-wpe 1.22 was built to look for it in
/// `/usr/lib/x86_64-1-gnu/...` (`linux` is a C macro, stringified as 1), so its pages played
/// their sound to no device and wpesrc gave no audio pads. The plugin looks beside its own file
/// first (`<dir>/wpe-extension`), so it is loaded through `state_dir/wpe/`: a link to the
/// plugin and a link to where the package put the extension. Returns whether it did so (false
/// where the plugin finds its extension already, or none is installed).
pub fn load_plugin(state_dir: &std::path::Path) -> Result<bool, String> {
    let plugin = gst::Registry::get()
        .find_plugin("wpe")
        .ok_or("the wpe plugin (gstreamer1.0-wpe) is not installed")?;
    let Some(file) = plugin.filename() else {
        return Ok(false);
    };
    let Some(dir) = file.parent() else {
        return Ok(false);
    };
    if dir.join("wpe-extension").is_dir() {
        return Ok(false);
    }
    let Some(ext) = dir
        .parent()
        .map(|d| d.join("gst-plugins-bad").join("wpe-extension"))
        .filter(|e| e.is_dir())
    else {
        return Ok(false);
    };
    let links = state_dir.join("wpe");
    std::fs::create_dir_all(&links).map_err(|e| format!("{}: {e}", links.display()))?;
    let lib = links.join(file.file_name().unwrap_or_default());
    link(&file, &lib)?;
    link(&ext, &links.join("wpe-extension"))?;
    gst::Plugin::load_file(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    Ok(true)
}

/// Makes `at` a symbolic link to `target`, replacing another one atomically (handlers starting
/// at once make the same links).
fn link(target: &std::path::Path, at: &std::path::Path) -> Result<(), String> {
    if std::fs::read_link(at).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = at.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, at))
        .map_err(|e| format!("{}: {e}", at.display()))
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

/// Whether WebKit finds the GL elements its video sink is made of. Why: without them (Debian's
/// gstreamer1.0-gl), WebKit 2.38's fallback for a `<video>` element unrefs its frames once too
/// often (a critical per frame), and the handler died (SIGSEGV, in wpesrc copying the page's
/// frame) 7-14 s into such a page in 5 of 6 runs; with them, in none of over 50.
pub fn has_gl_video_sink() -> bool {
    ["glupload", "glcolorconvert"]
        .iter()
        .all(|f| gst::ElementFactory::find(f).is_some())
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

#[cfg(test)]
mod tests {
    use super::*;
    use gstreamer_audio::{AudioFormat, AudioInfo, AudioLayout, AudioMeta};

    /// A buffer of `frames` stereo F32 frames whose audio meta says `samples`, as WPE sends
    /// WebAudio (its meta made for a larger buffer).
    fn page_buffer(layout: AudioLayout, frames: usize, samples: usize) -> gst::Buffer {
        gst::init().unwrap();
        let info = AudioInfo::builder(AudioFormat::F32le, 44_100, 2)
            .layout(layout)
            .build()
            .unwrap();
        let mut b = gst::Buffer::with_size(samples * 8).unwrap();
        let offsets = [0, samples * 4];
        let planes: &[usize] = if layout == AudioLayout::Interleaved {
            &[]
        } else {
            &offsets
        };
        AudioMeta::add(b.get_mut().unwrap(), &info, samples, planes).unwrap();
        b.get_mut().unwrap().set_size(frames * 8);
        b
    }

    #[test]
    fn a_webaudio_buffer_loses_the_meta_that_counts_its_bytes() {
        let mut b = page_buffer(AudioLayout::Interleaved, 441, 3528);
        assert!(mend_audio_meta(&mut b));
        assert!(b.meta::<AudioMeta>().is_none());
        assert_eq!(b.size(), 3528);
    }

    #[test]
    fn a_right_meta_is_kept_and_a_wrong_planar_one_dropped() {
        let mut right = page_buffer(AudioLayout::Interleaved, 441, 441);
        assert!(mend_audio_meta(&mut right));
        assert_eq!(right.meta::<AudioMeta>().map(|m| m.samples()), Some(441));
        let mut planar = page_buffer(AudioLayout::NonInterleaved, 441, 3528);
        assert!(!mend_audio_meta(&mut planar));
    }
}
