//! What a source says it will send, before it sends it: the graph is decided from this, not
//! from a timer.
//!
//! - MPEG-TS (SRT, UDP, HLS), MP4 and Matroska list every stream at once (the PMT, the header):
//!   `decodebin3`'s first stream collection is the whole set.
//! - FLV (RTMP) creates a stream when its first tag comes, and an RTMP server sends video from
//!   the next keyframe (2-8 s away with encoders as people configure them), so the collection
//!   grows. What an RTMP stream will carry is in its `onMetaData` script tag
//!   (`videocodecid`, `audiocodecid`), which servers send first: it is read here from the bytes
//!   the source element produces (the FLV header's own flags are not: `rtmp2src` writes them
//!   without knowing).
//! - RTSP exposes a pad per stream as its RTP flows; its SDP lists them all, and `rtspsrc`
//!   asks `select-stream` for each before any data.
//!
//! ```text
//!   rtmp2src ─[probe: FLV script tags until onMetaData]─► flvdemux ...
//!      └─► bus: Application "egress-announced" {source, video, audio}
//! ```

use gstreamer as gst;
use gstreamer::prelude::*;

/// Application message posted when a source's metadata says which streams it carries.
pub const ANNOUNCED_MESSAGE: &str = "egress-announced";

/// How many buffers of a source are searched for its metadata before giving up.
const SEARCH_BUFFERS: u32 = 64;

/// The streams a source announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Announced {
    pub video: bool,
    pub audio: bool,
}

/// From FLV bytes (a script tag, or a buffer holding one): which codecs `onMetaData` names.
/// None when there is no `onMetaData` here. A codec id of 0 (or an empty string) is no stream:
/// nginx-rtmp writes both keys, 0 for a stream the publisher does not send.
pub fn flv_metadata(bytes: &[u8]) -> Option<Announced> {
    find(bytes, b"onMetaData")?;
    Some(Announced {
        video: codec_present(bytes, "videocodecid"),
        audio: codec_present(bytes, "audiocodecid"),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether the AMF0 property `key` is present with a non-zero number or a non-empty string.
fn codec_present(bytes: &[u8], key: &str) -> bool {
    let key = key.as_bytes();
    // An AMF0 property name: u16 length, then the bytes.
    let mut name = (key.len() as u16).to_be_bytes().to_vec();
    name.extend_from_slice(key);
    let Some(at) = find(bytes, &name) else {
        return false;
    };
    let value = &bytes[at + name.len()..];
    match value.first() {
        // Number: an IEEE-754 double.
        Some(0x00) if value.len() >= 9 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&value[1..9]);
            f64::from_be_bytes(b) != 0.0
        }
        // String (enhanced RTMP's "avc1", "hvc1", "Opus"...).
        Some(0x02) if value.len() >= 3 => u16::from_be_bytes([value[1], value[2]]) > 0,
        _ => false,
    }
}

/// Posts `ANNOUNCED_MESSAGE` for source `index` from its `uridecodebin3`.
pub fn post(bin: &gst::Element, index: usize, a: Announced) {
    let s = gst::Structure::builder(ANNOUNCED_MESSAGE)
        .field("source", index as u32)
        .field("video", a.video)
        .field("audio", a.audio)
        .build();
    let _ = bin.post_message(gst::message::Application::builder(s).src(bin).build());
}

/// Reads the metadata of FLV bytes leaving `element`'s src pad (the element `uridecodebin3`
/// made for an `rtmp://` URI) and posts `ANNOUNCED_MESSAGE` for source `index` from `bin`.
pub fn watch_flv(element: &gst::Element, bin: &gst::Element, index: usize) {
    let Some(pad) = element.static_pad("src") else {
        return;
    };
    let bin = bin.downgrade();
    let seen = std::sync::atomic::AtomicU32::new(0);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let seen = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let found = info
            .buffer()
            .and_then(|b| b.map_readable().ok())
            .and_then(|m| flv_metadata(m.as_slice()));
        if let Some(a) = found {
            if let Some(bin) = bin.upgrade() {
                post(&bin, index, a);
            }
            return gst::PadProbeReturn::Remove;
        }
        if seen >= SEARCH_BUFFERS {
            gst::PadProbeReturn::Remove
        } else {
            gst::PadProbeReturn::Ok
        }
    });
}

/// Reads the streams an RTSP server's SDP lists (`rtspsrc` asks `select-stream` for each,
/// before any data) and posts `ANNOUNCED_MESSAGE` with what was listed so far. Other elements
/// are left alone.
pub fn watch_sdp(element: &gst::Element, bin: &gst::Element, index: usize) {
    if element.factory().map(|f| f.name()) != Some("rtspsrc".into()) {
        return;
    }
    let bin = bin.downgrade();
    let seen = std::sync::Mutex::new(Announced::default());
    element.connect("select-stream", false, move |args| {
        let media = args
            .get(2)
            .and_then(|v| v.get::<gst::Caps>().ok())
            .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("media").ok()))
            .unwrap_or_default();
        let mut a = seen.lock().unwrap_or_else(|p| p.into_inner());
        a.video |= media == "video";
        a.audio |= media == "audio";
        if let Some(bin) = bin.upgrade() {
            post(&bin, index, *a);
        }
        Some(true.to_value())
    });
}

/// Whether a source's streams appear one by one (FLV tag by tag, RTSP stream by stream), so
/// that `decodebin3`'s stream collection is not the whole set until the last one came.
pub fn is_incremental(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    is_flv(uri) || lower.starts_with("rtsp://") || lower.starts_with("rtsps://")
}

/// Whether a URI is carried as FLV (its streams appear tag by tag).
pub fn is_flv(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    lower.starts_with("rtmp://")
        || lower.starts_with("rtmps://")
        || lower
            .split(['?', '#'])
            .next()
            .is_some_and(|p| p.ends_with(".flv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AMF0 property: name, then a number.
    fn num(key: &str, v: f64) -> Vec<u8> {
        let mut b = (key.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(key.as_bytes());
        b.push(0);
        b.extend_from_slice(&v.to_be_bytes());
        b
    }

    fn meta(props: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 10];
        b.extend_from_slice(b"onMetaData");
        b.push(0x08);
        b.extend_from_slice(&[0, 0, 0, props.len() as u8]);
        for p in props {
            b.extend_from_slice(p);
        }
        b
    }

    #[test]
    fn metadata_names_the_streams_an_rtmp_publisher_sends() {
        // ffmpeg/OBS with both, as nginx-rtmp relays it (7 = AVC, 10 = AAC).
        let both = meta(&[
            num("width", 1280.0),
            num("videocodecid", 7.0),
            num("audiocodecid", 10.0),
        ]);
        assert_eq!(
            flv_metadata(&both),
            Some(Announced {
                video: true,
                audio: true
            })
        );
        // nginx-rtmp writes 0 for a stream the publisher does not send.
        let audio_only = meta(&[num("videocodecid", 0.0), num("audiocodecid", 10.0)]);
        assert_eq!(
            flv_metadata(&audio_only),
            Some(Announced {
                video: false,
                audio: true
            })
        );
        // ffmpeg leaves the key out.
        let video_only = meta(&[num("videocodecid", 7.0)]);
        assert_eq!(
            flv_metadata(&video_only),
            Some(Announced {
                video: true,
                audio: false
            })
        );
        // Enhanced RTMP names codecs by FourCC strings.
        let mut hevc = meta(&[]);
        hevc.extend_from_slice(&[0, 12]);
        hevc.extend_from_slice(b"videocodecid");
        hevc.extend_from_slice(&[0x02, 0, 4]);
        hevc.extend_from_slice(b"hvc1");
        assert!(flv_metadata(&hevc).unwrap().video);
        // An audio tag is no announcement.
        assert_eq!(flv_metadata(&[0x08, 0, 0, 4, 0xaf, 0x01]), None);
    }

    #[test]
    fn rtmp_and_flv_files_are_flv() {
        assert!(is_flv("rtmp://h/app/key"));
        assert!(is_flv("RTMPS://h/app/key"));
        assert!(is_flv("http://h/live.flv?token=1"));
        assert!(!is_flv("srt://h:1"));
        assert!(!is_flv("http://h/live.m3u8"));
    }
}
