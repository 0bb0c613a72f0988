//! GStreamer graphs per egress type, source kind and output, built element by element.
//!
//! ```text
//!   sources                      mixers (room)        encoders / copies        outputs
//!   source_test (videotestsrc) ┐                                                 ┌► output_file (mux ─► fdsink)
//!   source_uri (uridecodebin3) ┼─► compose (compositor, ─► encode (one x264enc, ─┼► output_segments (HLS)
//!     one connection, pads      │   audiomixer)           one voaacenc, ... via  ├► output_stream (taps ─► a
//!     decide the graph)        ┘                          tees; or copies)       │   pipeline per URL)
//!                                                                                └► output_images (JPEG)
//! ```
//!
//! `plan` decides the graph (a pure function of the spec and what the sources carry) as a
//! `graph::Desc`; the handler instantiates it (`graph::instantiate`) and links the sources' pads
//! to its entries. The same `Desc` renders the `gst-launch-1.0` line `scripts/bench` runs as its
//! baseline (`launch_line`), so the comparison is like for like. `errors` turns GStreamer errors
//! into texts for users.

pub mod announce;
pub mod compose;
pub mod connection;
pub mod decode_times;
pub mod encode;
pub mod errors;
pub mod graph;
pub mod output_file;
pub mod output_images;
pub mod output_segments;
pub mod output_stream;
pub mod output_thumb;
pub mod plan;
pub mod source_rtsp;
pub mod source_test;
pub mod source_uri;
pub mod source_web;
pub mod source_whep;
pub mod source_whip;

use crate::model::{EgressSpec, PipelineOptions, Source};

/// What a buffer probe returns to drop its buffer: `Drop`. (`Handled` would avoid the critical
/// below but did not drop the same way: recordings then held media from before the first
/// keyframe.)
pub const DROP_BUFFER: gstreamer::PadProbeReturn = gstreamer::PadProbeReturn::Drop;

/// The critical GStreamer 1.22 logs for every buffer a probe drops under gstreamer-rs 0.25
/// (the binding moves the buffer out of the probe's info and frees it itself; the core then
/// unrefs the emptied info). Harmless, but 30 lines a second from the thumbnail's gate alone.
const DROPPED_BUFFER_CRITICAL: &str =
    "gst_mini_object_unref: assertion 'mini_object != NULL' failed";

/// Keeps `DROPPED_BUFFER_CRITICAL` out of the log; every other GStreamer message goes to GLib's
/// default handler as before. Called once, after `gst::init`.
pub fn quiet_dropped_buffer_criticals() {
    use gstreamer::glib;
    glib::log_set_handler(
        Some("GStreamer"),
        glib::LogLevels::LEVEL_CRITICAL,
        false,
        false,
        |domain, level, message| {
            if message != DROPPED_BUFFER_CRITICAL {
                glib::log_default_handler(domain, level, Some(message));
            }
        },
    );
}

pub use graph::{Desc, StreamKind};
pub use plan::{SourceStreams, describe};

/// The graph for `spec` as a shell-quoted `gst-launch-1.0 -e` argument list (URI sources are
/// assumed to carry raw-decodable audio and video).
pub fn launch_line(spec: &EgressSpec, opts: &PipelineOptions) -> String {
    let streams: Vec<SourceStreams> = spec
        .sources
        .iter()
        .map(|s| match s {
            Source::Test { media, .. } => SourceStreams::of_test(*media),
            Source::Uri { .. } | Source::Whip | Source::Whep { .. } => SourceStreams::AV_RAW,
            Source::Web { audio, .. } => SourceStreams::of_web(*audio),
        })
        .collect();
    describe(spec, opts, &streams).launch()
}

/// Moves a buffer later by `by` (its presentation and decode times alike).
pub fn delay(b: &mut gstreamer::BufferRef, by: gstreamer::ClockTime) {
    if let Some(p) = b.pts() {
        b.set_pts(p + by);
    }
    if let Some(d) = b.dts() {
        b.set_dts(d + by);
    }
}

/// Raw audio buffer `buf` (of `caps`) without its first `ns`, timed from there: a sound that
/// starts with the picture keeps its onset. None for anything else (an encoded frame cannot be
/// cut) or when nothing would be left.
pub fn clip_front(
    caps: &gstreamer::CapsRef,
    buf: &gstreamer::BufferRef,
    ns: u64,
) -> Option<gstreamer::Buffer> {
    // AudioInfo takes encoded caps too (as "encoded", one byte a frame).
    if caps.structure(0).map(|s| s.name().as_str()) != Some("audio/x-raw") {
        return None;
    }
    let info = gstreamer_audio::AudioInfo::from_caps(caps).ok()?;
    // Planar sound (a decoder's, avdec_aac's) says where its planes are in its audio meta:
    // cut each there. Without one it cannot be cut.
    if info.layout() != gstreamer_audio::AudioLayout::Interleaved
        && buf.meta::<gstreamer_audio::AudioMeta>().is_none()
    {
        return None;
    }
    let rate = u64::from(info.rate());
    let frames = usize::try_from(ns * rate / 1_000_000_000).ok()?;
    if frames >= buf.size() / info.bpf() as usize {
        return None;
    }
    let cut = gstreamer::ClockTime::from_nseconds(frames as u64 * 1_000_000_000 / rate);
    let mut out = gstreamer_audio::audio_buffer_truncate(buf.to_owned(), info.bpf(), frames, None);
    let o = out.make_mut();
    o.set_pts(buf.pts().map(|p| p + cut));
    o.set_dts(buf.dts().map(|d| d + cut));
    o.set_duration(buf.duration().map(|d| d.saturating_sub(cut)));
    Some(out)
}

/// Gives every later caps event of the same media type on `pad` as the first one: for muxers
/// that cannot change caps mid-stream, when what changes (a resolution in an SPS repeated in
/// the stream, a frame rate `qtdemux` recomputes) does not matter to them. Caps of another
/// type still pass, to fail loudly.
pub fn keep_first_caps(pad: &gstreamer::Pad) {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    // The first caps event, given again in place of every later one of the same codec
    // (dropping a sticky event makes the pad resend it before every buffer).
    let first: std::sync::Mutex<Option<gst::Event>> = std::sync::Mutex::new(None);
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(ev)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let gst::EventView::Caps(c) = ev.view() else {
            return gst::PadProbeReturn::Ok;
        };
        let name = |caps: &gst::CapsRef| caps.structure(0).map(|s| s.name().to_string());
        let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
        let kept = first.as_ref().and_then(|f| match f.view() {
            gst::EventView::Caps(fc) => Some(fc.caps_owned()),
            _ => None,
        });
        match kept {
            // The first, or the same caps made more precise (a parser adds `codec_data` once
            // it has seen the stream's headers): that is what the muxer keeps.
            None => *first = Some(ev.clone()),
            Some(k) if c.caps().is_subset(&k) => *first = Some(ev.clone()),
            Some(k) if name(c.caps()) == name(&k) => {
                if let Some(f) = first.clone() {
                    info.data = Some(gst::PadProbeData::Event(f));
                }
            }
            Some(_) => {}
        }
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use gstreamer as gst;

    #[test]
    fn raw_sound_is_cut_at_an_instant_and_an_encoded_frame_is_not() {
        gst::init().unwrap();
        let raw: gst::Caps = "audio/x-raw,format=S16LE,rate=48000,channels=2,layout=interleaved"
            .parse()
            .unwrap();
        // 1024 frames of 4 bytes (21.33 ms) at 1 s.
        let mut buf = gst::Buffer::from_mut_slice(vec![0u8; 4096]);
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_seconds(1));
            b.set_duration(gst::ClockTime::from_nseconds(21_333_333));
        }
        let cut = super::clip_front(&raw, &buf, 10_000_000).expect("cut");
        assert_eq!(cut.size(), 4096 - 480 * 4);
        assert_eq!(
            cut.pts(),
            Some(gst::ClockTime::from_nseconds(1_010_000_000))
        );
        assert_eq!(
            cut.duration(),
            Some(gst::ClockTime::from_nseconds(11_333_333))
        );
        // Nothing left, or not raw sound: no cut.
        assert!(super::clip_front(&raw, &buf, 30_000_000).is_none());
        // Planar (a decoder's): each plane cut. 1024 frames of 2 planes of S16.
        let planar: gst::Caps =
            "audio/x-raw,format=S16LE,rate=48000,channels=2,layout=non-interleaved"
                .parse()
                .unwrap();
        let info = gstreamer_audio::AudioInfo::from_caps(&planar).unwrap();
        let mut data = vec![0u8; 2048];
        data.extend(vec![1u8; 2048]);
        let mut buf = gst::Buffer::from_mut_slice(data);
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_seconds(1));
            gstreamer_audio::AudioMeta::add(b, &info, 1024, &[]).unwrap();
        }
        let cut = super::clip_front(&planar, &buf, 10_000_000).expect("planar cut");
        let meta = cut
            .meta::<gstreamer_audio::AudioMeta>()
            .expect("audio meta");
        assert_eq!(meta.samples(), 1024 - 480);
        let map = cut.map_readable().unwrap();
        let planes: Vec<&[u8]> = meta
            .offsets()
            .iter()
            .map(|o| &map[*o..*o + (1024 - 480) * 2])
            .collect();
        assert!(planes[0].iter().all(|b| *b == 0) && planes[1].iter().all(|b| *b == 1));
        assert_eq!(
            cut.pts(),
            Some(gst::ClockTime::from_nseconds(1_010_000_000))
        );
        drop(map);
        let aac: gst::Caps = "audio/mpeg,mpegversion=4,rate=48000,channels=2"
            .parse()
            .unwrap();
        assert!(super::clip_front(&aac, &buf, 10_000_000).is_none());
    }
}
