//! The pure part: which graph an egress gets, decided from what its sources carry (known for
//! test sources, read from the caps of the pads one connection to a URI source exposed).
//!
//! Shapes (all encoders run in real time on live sources):
//! - `track`: one source; H.264 video and AAC audio are copied into MP4/Matroska, HLS and
//!   streams, H.265 into MP4/Matroska; anything else is encoded.
//! - `track_composite`: video of source 0 + audio of source 1 (or both from one source).
//! - `participant`: video and audio of one source, transcoded.
//! - `room_composite`: see `compose`.
//!
//! Every output hangs off one encode per codec (see `encode`): an egress with a file, HLS,
//! two streams and images runs one x264 and one AAC encoder.
//!
//! ```text
//!   sources (source_test | source_uri) ─► [compose] ─► raw tees ─► encoders ─► encoded tees
//!     ─► output_file | output_segments | output_stream taps;  raw video tee ─► output_images
//! ```

use super::encode::{AudioCodecKind, VideoCodec};
use super::graph::{Desc, Node, StreamKind, el};
use super::{
    compose, encode, output_file, output_images, output_segments, output_stream, output_thumb,
    source_test, source_web,
};
use crate::model::{
    AudioCodec, EgressSpec, EgressType, OutputsSpec, PipelineOptions, Source, TestMedia,
};

/// What one source carries, as the graph will consume it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStreams {
    /// `RawVideo`, `H264` or `H265`.
    pub video: Option<StreamKind>,
    /// `RawAudio` or `Aac`.
    pub audio: Option<StreamKind>,
}

impl SourceStreams {
    /// What a launch line assumes of a URI source.
    pub const AV_RAW: SourceStreams = SourceStreams {
        video: Some(StreamKind::RawVideo),
        audio: Some(StreamKind::RawAudio),
    };

    /// What a test source of this kind carries.
    pub fn of_test(media: TestMedia) -> SourceStreams {
        SourceStreams {
            video: (media != TestMedia::Audio).then_some(StreamKind::RawVideo),
            audio: (media != TestMedia::Video).then_some(StreamKind::RawAudio),
        }
    }

    /// What a web page gives: video, and audio (live silence at least) when asked for.
    pub fn of_web(audio: bool) -> SourceStreams {
        SourceStreams {
            video: Some(StreamKind::RawVideo),
            audio: audio.then_some(StreamKind::RawAudio),
        }
    }

    /// From the caps names of the pads one connection exposed (in pad order): the first video
    /// and the first audio pad are used; `kinds[k]` says what pad `k` becomes (`Unused` for the
    /// rest).
    pub fn from_pads(caps_names: &[&str]) -> (SourceStreams, Vec<StreamKind>) {
        let mut s = SourceStreams {
            video: None,
            audio: None,
        };
        let kinds = caps_names
            .iter()
            .map(|name| {
                let k = kind_of(name);
                let slot = match k {
                    k if k.is_video() => &mut s.video,
                    StreamKind::RawAudio | StreamKind::Aac | StreamKind::Opus => &mut s.audio,
                    _ => return StreamKind::Unused,
                };
                if slot.is_some() {
                    return StreamKind::Unused;
                }
                *slot = Some(k);
                k
            })
            .collect();
        (s, kinds)
    }

    pub fn is_empty(&self) -> bool {
        self.video.is_none() && self.audio.is_none()
    }
}

/// What a pad with caps named `name` is, given that only copyable codecs stay encoded (see
/// `copy_caps`).
pub fn kind_of(name: &str) -> StreamKind {
    match name {
        "video/x-raw" => StreamKind::RawVideo,
        "audio/x-raw" => StreamKind::RawAudio,
        "video/x-h264" => StreamKind::H264,
        "video/x-h265" => StreamKind::H265,
        "video/x-vp8" => StreamKind::Vp8,
        "video/x-vp9" => StreamKind::Vp9,
        "audio/mpeg" => StreamKind::Aac,
        "audio/x-opus" => StreamKind::Opus,
        _ => StreamKind::Unused,
    }
}

/// The video codecs the outputs need, H.264 first: one encoder each, shared by every output
/// that takes it.
pub fn video_codecs(o: &OutputsSpec) -> Vec<VideoCodec> {
    let mut v = Vec::new();
    if o.wants_h264() {
        v.push(VideoCodec::H264);
    }
    if let Some(f) = &o.file {
        let c = output_file::video_codec(f.container);
        if !v.contains(&c) {
            v.push(c);
        }
    }
    v
}

/// The audio codecs the outputs need: the file's (`audio.codec`), and AAC for HLS and streams.
pub fn audio_codecs(spec: &EgressSpec) -> Vec<AudioCodecKind> {
    let mut a = Vec::new();
    if !spec.audio.enabled {
        return a;
    }
    if spec.outputs.file.is_some() {
        a.push(match spec.audio.codec {
            AudioCodec::Aac => AudioCodecKind::Aac,
            AudioCodec::Opus => AudioCodecKind::Opus,
        });
    }
    if (spec.outputs.segments.is_some() || spec.outputs.stream) && !a.contains(&AudioCodecKind::Aac)
    {
        a.push(AudioCodecKind::Aac);
    }
    a
}

/// Encoders beyond the first video one (what admission adds `cpu_cost.encode` for).
pub fn extra_encodes(o: &OutputsSpec) -> usize {
    video_codecs(o).len().saturating_sub(1)
}

/// The caps at which a URI source of `spec` stops decoding: raw, plus the codecs this egress
/// copies as they are (`track` whose outputs all take H.264, and AAC when they all take AAC;
/// H.265 when the only output is an MP4 or Matroska file; not with images, which need decoded
/// frames). None: the default (decode everything).
pub fn copy_caps(spec: &EgressSpec) -> Option<String> {
    let o = &spec.outputs;
    if spec.egress_type != EgressType::Track || o.images.is_some() {
        return None;
    }
    let mut caps = vec!["video/x-raw(ANY)", "audio/x-raw(ANY)"];
    match video_codecs(o).as_slice() {
        [VideoCodec::H264] => caps.push("video/x-h264"),
        // A WebM file alone: a WebRTC source's VP8 or VP9 is kept.
        [VideoCodec::Vp8] => caps.extend(["video/x-vp8", "video/x-vp9"]),
        _ => return None,
    }
    // HLS players (Safari, hls.js) take H.265 only in fMP4 segments, and RTMP not at all.
    if caps.contains(&"video/x-h264") && o.file.is_some() && o.segments.is_none() && !o.stream {
        caps.push("video/x-h265");
    }
    if audio_codecs(spec) == [AudioCodecKind::Aac] {
        // MPEG-4 AAC only: mp4mux takes nothing else, and MP3 is audio/mpeg too.
        caps.push("audio/mpeg,mpegversion=(int)4");
    }
    if audio_codecs(spec) == [AudioCodecKind::Opus] {
        // A WebRTC source's Opus, kept when the file takes Opus (`audio.codec: opus`).
        caps.push("audio/x-opus");
    }
    Some(caps.join(";"))
}

/// The caps at which a URI source at `uri` stops decoding: `copy_caps`, else, for an RTSP
/// camera's video, where it is encoded (decoded in the graph, `decoded_here`).
pub fn source_caps(spec: &EgressSpec, uri: &str) -> Option<String> {
    copy_caps(spec).or_else(|| {
        (decodes_here(spec.egress_type) && super::source_rtsp::is_rtsp(uri))
            .then(|| "video/x-raw(ANY);audio/x-raw(ANY);video/x-h264;video/x-h265".to_string())
    })
}

/// Whether an egress of type `t` decodes an RTSP camera's video in the graph: every type that
/// transcodes (`track` copies). A room's joiner gets the same (`room::attach`).
pub fn decodes_here(t: EgressType) -> bool {
    t != EgressType::Track
}

/// The elements that decode source `i`'s video in the graph (`decoded_here`), in order.
pub fn decode_elements(i: usize) -> [String; 2] {
    ["decode_queue", "decode"].map(|e| format!("src{i}_video_{e}"))
}

/// An encoded video entry decoded in the graph: an RTSP camera's, after its decode times are
/// derived (`decode_times`) and from its first keyframe (`source_uri::gate`). Decoded inside
/// the source, its B-frames came without them, the decoder placed its pictures 20-34 ms early
/// against the sound, and a room showed its grey concealment frames until the next keyframe.
pub fn decoded_here(i: usize, kind: StreamKind) -> Vec<Node> {
    let dec = match kind {
        StreamKind::H264 => "avdec_h264",
        StreamKind::H265 => "avdec_h265",
        _ => return Vec::new(),
    };
    let [queue, decode] = decode_elements(i);
    vec![el("queue", queue), el(dec, decode)]
}

/// Which sources' video and audio the egress records.
fn used(spec: &EgressSpec, streams: &[SourceStreams]) -> (Vec<usize>, Vec<usize>) {
    let n = spec.sources.len();
    let (video, audio): (Vec<usize>, Vec<usize>) = match spec.egress_type {
        EgressType::TrackComposite if n == 2 => (vec![0], vec![1]),
        EgressType::RoomComposite => ((0..n).collect(), (0..n).collect()),
        _ => (vec![0], vec![0]),
    };
    let wants_audio = !audio_codecs(spec).is_empty();
    (
        video
            .into_iter()
            .filter(|&i| streams[i].video.is_some())
            .collect(),
        audio
            .into_iter()
            .filter(|&i| wants_audio && streams[i].audio.is_some())
            .collect(),
    )
}

/// Whether source `i`'s video (`video`) or audio is recorded: other pads go to a fakesink.
pub fn records(spec: &EgressSpec, streams: &[SourceStreams], i: usize, video: bool) -> bool {
    let (v, a) = used(spec, streams);
    if video {
        v.contains(&i)
    } else {
        a.contains(&i)
    }
}

fn entry(source: usize, kind: StreamKind) -> Vec<Node> {
    vec![Node::Entry { source, kind }]
}

/// The graph of `spec` given what each source carries (`streams[i]`). URI sources appear as
/// `Entry` nodes: the handler links the pads of its one connection to them.
pub fn describe(spec: &EgressSpec, opts: &PipelineOptions, streams: &[SourceStreams]) -> Desc {
    let mut d = Desc::default();
    for (i, s) in spec.sources.iter().enumerate() {
        if let Source::Uri { uri } = s {
            d.uri_sources.push((i, uri.clone()));
        }
    }
    let (video_from, audio_from) = used(spec, streams);
    let video_head = |i: usize| {
        source_test::video_head(&spec.sources[i], i)
            .or_else(|| source_web::video_head(spec, &spec.sources[i], i))
            .unwrap_or_else(|| {
                let kind = streams[i].video.unwrap_or(StreamKind::RawVideo);
                let mut chain = entry(i, kind);
                if decodes_here(spec.egress_type) {
                    chain.extend(decoded_here(i, kind));
                }
                chain
            })
    };
    let mut beds = Vec::new();
    let mut audio_head = |i: usize| {
        if let Some((head, bed)) = source_web::audio_head(&spec.sources[i], i, spec.video.fps) {
            beds.push(bed);
            return head;
        }
        source_test::audio_head(&spec.sources[i], i)
            .unwrap_or_else(|| entry(i, streams[i].audio.unwrap_or(StreamKind::RawAudio)))
    };
    let has_video = !video_from.is_empty();
    let has_audio = !audio_from.is_empty();
    // Sources into the raw tees (or, copied, straight into the encoded ones).
    let mut video_copied: Option<VideoCodec> = None;
    let mut audio_copied = false;
    if spec.egress_type == EgressType::RoomComposite {
        let video = video_from.iter().map(|&i| (i, video_head(i))).collect();
        let audio = audio_from.iter().map(|&i| (i, audio_head(i))).collect();
        compose::room(&mut d, spec, video, audio);
    } else {
        if let Some(&i) = video_from.first() {
            let mut chain = video_head(i);
            video_copied = match streams[i].video {
                // Encoded video is copied by `track` alone (others decode it, `decoded_here`).
                _ if spec.egress_type != EgressType::Track => None,
                Some(StreamKind::H264) => Some(VideoCodec::H264),
                Some(StreamKind::H265) => Some(VideoCodec::H265),
                Some(StreamKind::Vp8) => Some(VideoCodec::Vp8),
                Some(StreamKind::Vp9) => Some(VideoCodec::Vp9),
                _ => None,
            };
            chain.extend(match video_copied {
                Some(c) => encode::video_copy(c),
                None => encode::video_raw(spec),
            });
            d.push(chain);
        }
        if let Some(&i) = audio_from.first() {
            let mut chain = audio_head(i);
            let copy = match streams[i].audio {
                Some(StreamKind::Aac) => Some(AudioCodecKind::Aac),
                Some(StreamKind::Opus) => Some(AudioCodecKind::Opus),
                _ => None,
            };
            audio_copied = copy.is_some();
            chain.extend(match copy {
                Some(c) => encode::audio_copy(c),
                None => encode::audio_raw(),
            });
            d.push(chain);
        }
    }
    for bed in beds {
        d.push(bed);
    }
    // One encoder per codec the outputs need.
    if has_video && video_copied.is_none() {
        for c in video_codecs(&spec.outputs) {
            d.push(encode::video_encoder(c, spec, opts));
        }
    }
    let audio_codecs = audio_codecs(spec);
    if has_audio && !audio_copied {
        for &c in &audio_codecs {
            d.push(encode::audio_encoder(c, spec));
        }
    }
    let o = &spec.outputs;
    if let Some(f) = &o.file {
        let a = has_audio.then(|| audio_codecs[0]);
        let v = has_video.then(|| video_copied.unwrap_or(output_file::video_codec(f.container)));
        output_file::add(&mut d, f, opts, v, a);
    }
    if let Some(s) = &o.segments {
        output_segments::add(&mut d, s, has_video, has_audio);
    }
    if o.stream {
        output_stream::add(&mut d, has_video, has_audio, &o.stream_urls);
    }
    if let Some(im) = &o.images
        && has_video
        && video_copied.is_none()
    {
        output_images::add(&mut d, im);
    }
    if has_video && opts.thumbnail_s > 0.0 {
        output_thumb::add(&mut d, video_copied);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EgressRequest, ValidationContext};

    fn spec(json: serde_json::Value) -> EgressSpec {
        let req: EgressRequest = serde_json::from_value(json).unwrap();
        let schemes = vec!["test".to_string(), "rtsp".to_string(), "srt".to_string()];
        let dir = std::path::Path::new("/rec");
        let ctx = ValidationContext {
            output_dir: dir,
            state_dir: dir,
            allowed_schemes: &schemes,
            allowed_web_hosts: &[],
            allowed_endpoints: &[],
        };
        req.validate("EG_test", &ctx).unwrap()
    }

    pub(crate) fn opts() -> PipelineOptions {
        PipelineOptions {
            x264_speed_preset: "veryfast".into(),
            ..PipelineOptions::default()
        }
    }

    fn track(filename: &str) -> EgressSpec {
        spec(
            serde_json::json!({"type": "track", "sources": [{"uri": "srt://h:1"}],
            "output": {"file": {"filename": filename}}}),
        )
    }

    #[test]
    fn pads_decide_the_streams_first_video_and_first_audio_win() {
        let (s, kinds) =
            SourceStreams::from_pads(&["video/x-h264", "audio/mpeg", "audio/x-raw", "text/x-raw"]);
        assert_eq!(s.video, Some(StreamKind::H264));
        assert_eq!(s.audio, Some(StreamKind::Aac));
        assert_eq!(
            kinds,
            vec![
                StreamKind::H264,
                StreamKind::Aac,
                StreamKind::Unused,
                StreamKind::Unused
            ]
        );
        let (s, _) = SourceStreams::from_pads(&["audio/x-raw"]);
        assert_eq!((s.video, s.audio), (None, Some(StreamKind::RawAudio)));
        assert!(SourceStreams::from_pads(&["text/x-raw"]).0.is_empty());
    }

    #[test]
    fn track_copies_h264_and_aac_into_mp4_and_mkv_and_vp8_vp9_opus_into_webm() {
        let c = copy_caps(&track("t.mp4")).unwrap();
        assert!(
            c.contains("video/x-h264") && c.contains("mpegversion=(int)4"),
            "{c}"
        );
        assert!(copy_caps(&track("t.mkv")).is_some());
        // WebM: what a WebRTC source sends (VP8 or VP9, Opus), never H.264.
        let webm = copy_caps(&track("t.webm")).unwrap();
        assert!(
            webm.contains("video/x-vp8") && webm.contains("video/x-vp9"),
            "{webm}"
        );
        assert!(
            webm.contains("audio/x-opus") && !webm.contains("x-h264"),
            "{webm}"
        );
        let p = spec(
            serde_json::json!({"type": "participant", "sources": [{"uri": "srt://h:1"}],
            "output": {"file": {"filename": "p.mp4"}}}),
        );
        assert_eq!(copy_caps(&p), None);
        let mut opus = track("t.mkv");
        opus.audio.codec = AudioCodec::Opus;
        assert!(!copy_caps(&opus).unwrap().contains("audio/mpeg"));

        let copied = SourceStreams {
            video: Some(StreamKind::H264),
            audio: Some(StreamKind::Aac),
        };
        let d = describe(&track("t.mp4"), &opts(), &[copied]);
        let f = d.factories();
        assert!(f.contains(&"h264parse".to_string()) && f.contains(&"aacparse".to_string()));
        assert!(!f.contains(&"x264enc".to_string()) && !f.contains(&"voaacenc".to_string()));
        // Raw from the same source: both encoded.
        let d = describe(&track("t.mp4"), &opts(), &[SourceStreams::AV_RAW]);
        let f = d.factories();
        assert!(f.contains(&"x264enc".to_string()) && f.contains(&"voaacenc".to_string()));
    }

    #[test]
    fn an_rtsp_camera_is_decoded_in_the_graph_unless_copied() {
        let participant = spec(serde_json::json!({"type": "participant",
            "sources": [{"uri": "rtsp://cam/1"}], "output": {"file": {"filename": "p.mp4"}}}));
        let caps = source_caps(&participant, "rtsp://cam/1").unwrap();
        assert!(
            caps.contains("video/x-h264") && caps.contains("audio/x-raw"),
            "{caps}"
        );
        assert_eq!(source_caps(&participant, "srt://cam:9000"), None);
        let h264 = SourceStreams {
            video: Some(StreamKind::H264),
            audio: Some(StreamKind::RawAudio),
        };
        let d = describe(&participant, &opts(), &[h264]);
        assert!(
            d.launch().contains("avdec_h264 name=src0_video_decode"),
            "{}",
            d.launch()
        );
        let f = d.factories();
        assert!(f.contains(&"x264enc".to_string()), "{f:?}");
        // `track` copies it as before (its thumbnail decodes keyframes of its own).
        let launch = describe(&track("t.mp4"), &opts(), &[h264]).launch();
        assert!(!launch.contains("src0_video_decode"), "{launch}");
        assert_eq!(
            source_caps(&track("t.mp4"), "rtsp://cam/1"),
            copy_caps(&track("t.mp4"))
        );
    }

    #[test]
    fn every_element_is_named_by_its_role_once() {
        let s = spec(serde_json::json!({"type": "room_composite",
            "sources": [{"uri": "test://av"}, {"uri": "srt://h:1"}, {"uri": "test://audio"}],
            "output": {"file": {"filename": "r.mp4"}}}));
        let streams = [
            SourceStreams::of_test(TestMedia::Av),
            SourceStreams::AV_RAW,
            SourceStreams::of_test(TestMedia::Audio),
        ];
        let d = describe(&s, &opts(), &streams);
        let names = d.names();
        for role in [
            "file_mux",
            "file_sink",
            "comp",
            "amix",
            "video_h264_enc",
            "audio_aac_enc",
        ] {
            assert!(names.contains(&role), "{role} in {names:?}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        let l = d.launch();
        assert!(
            l.contains("uridecodebin3 name=src1 uri=srt://h:1")
                && l.contains("src1. ! video/x-raw")
                && l.contains("sink_1::xpos=640")
                && l.contains("comp.sink_1")
                && !l.contains("comp.sink_2"),
            "{l}"
        );
        assert_eq!(l.matches("amix.").count(), 3, "{l}");
    }

    #[test]
    fn participant_launch_line_is_i420_h264_aac_hybrid_mp4_quoted() {
        let s = spec(
            serde_json::json!({"type": "participant", "sources": [{"uri": "test://av"}],
            "output": {"file": {"filename": "a b.mp4"}}}),
        );
        let l = describe(&s, &opts(), &[SourceStreams::of_test(TestMedia::Av)]).launch();
        assert!(
            l.contains("format=I420") && l.contains("x264enc") && l.contains("voaacenc"),
            "{l}"
        );
        assert!(
            l.contains("mp4mux name=file_mux fragment-duration=1000"),
            "{l}"
        );
        assert!(!l.contains("reserved"), "{l}");
        assert!(l.contains("'location=/rec/a b.mp4'"), "{l}");
    }

    #[test]
    fn every_output_shares_one_encode_and_webm_gets_its_own() {
        let s = spec(
            serde_json::json!({"type": "participant", "sources": [{"uri": "test://av"}],
            "outputs": [{"file": {"filename": "a.mp4"}}, {"segments": {"prefix": "h/a"}},
                {"stream": {"urls": ["rtmp://h/app/key", "srt://h:9000"]}}, {"images": {}}]}),
        );
        let d = describe(&s, &opts(), &[SourceStreams::of_test(TestMedia::Av)]);
        let count = |f: &str| {
            d.chains
                .iter()
                .flatten()
                .filter(|n| {
                    matches!(n,
            Node::Element { factory, .. } if factory == f)
                })
                .count()
        };
        // Two JPEG encoders: the images output's and the thumbnail's.
        assert_eq!(
            (count("x264enc"), count("voaacenc"), count("jpegenc")),
            (1, 1, 2)
        );
        assert_eq!(count("splitmuxsink"), 1);
        let l = d.launch();
        assert!(
            l.contains("rtmp2sink 'location=rtmp://h/app/key'") && l.contains("srtsink"),
            "{l}"
        );
        // Two outputs needing other codecs: a second video encoder, only then.
        let w = spec(
            serde_json::json!({"type": "participant", "sources": [{"uri": "test://av"}],
            "outputs": [{"file": {"filename": "a.webm"}}, {"segments": {}}]}),
        );
        let d = describe(&w, &opts(), &[SourceStreams::of_test(TestMedia::Av)]);
        let f = d.factories();
        assert!(
            f.contains(&"x264enc".into()) && f.contains(&"vp8enc".into()),
            "{f:?}"
        );
        assert!(
            f.contains(&"opusenc".into()) && f.contains(&"voaacenc".into()),
            "{f:?}"
        );
        assert_eq!(extra_encodes(&w.outputs), 1);
        assert_eq!(extra_encodes(&s.outputs), 0);
        // Images need decoded frames: a track with images is not copied.
        let t = spec(
            serde_json::json!({"type": "track", "sources": [{"uri": "srt://h:1"}],
            "outputs": [{"file": {}}, {"images": {}}]}),
        );
        assert_eq!(copy_caps(&t), None);
        let t = spec(
            serde_json::json!({"type": "track", "sources": [{"uri": "srt://h:1"}],
            "outputs": [{"file": {}}, {"segments": {}}, {"stream": {"urls": []}}]}),
        );
        let c = copy_caps(&t).unwrap();
        assert!(
            !c.contains("video/x-h265"),
            "HLS and RTMP take no HEVC here: {c}"
        );
    }

    #[test]
    fn a_thumbnail_comes_off_the_raw_frames_or_a_decoder_of_the_copy() {
        let copied = SourceStreams {
            video: Some(StreamKind::H264),
            audio: Some(StreamKind::Aac),
        };
        let f = describe(&track("t.mp4"), &opts(), &[copied]).factories();
        assert!(f.contains(&"avdec_h264".to_string()) && f.contains(&"jpegenc".to_string()));
        let f = describe(&track("t.mp4"), &opts(), &[SourceStreams::AV_RAW]).factories();
        assert!(!f.contains(&"avdec_h264".to_string()) && f.contains(&"jpegenc".to_string()));
        let off = PipelineOptions {
            thumbnail_s: 0.0,
            ..opts()
        };
        assert!(
            !describe(&track("t.mp4"), &off, &[copied])
                .factories()
                .contains(&"jpegenc".to_string())
        );
        let audio_only = SourceStreams {
            video: None,
            audio: Some(StreamKind::Aac),
        };
        assert!(
            !describe(&track("t.mp4"), &opts(), &[audio_only])
                .factories()
                .contains(&"jpegenc".to_string())
        );
    }

    #[test]
    fn track_copies_hevc_into_a_file_only() {
        assert!(copy_caps(&track("t.mp4")).unwrap().contains("video/x-h265"));
        assert!(copy_caps(&track("t.mkv")).unwrap().contains("video/x-h265"));
        let (s, kinds) = SourceStreams::from_pads(&["video/x-h265", "audio/mpeg"]);
        assert_eq!(s.video, Some(StreamKind::H265));
        assert_eq!(kinds[0], StreamKind::H265);
        let d = describe(&track("t.mp4"), &opts(), &[s]);
        let f = d.factories();
        assert!(f.contains(&"h265parse".to_string()), "{f:?}");
        assert!(!f.contains(&"x264enc".to_string()) && !f.contains(&"h264parse".to_string()));
    }

    #[test]
    fn track_composite_records_video_of_the_first_audio_of_the_second() {
        let s = spec(serde_json::json!({"type": "track_composite",
            "sources": [{"uri": "srt://a:1"}, {"uri": "srt://b:1"}],
            "output": {"file": {"filename": "t.mp4"}}}));
        let st = [SourceStreams::AV_RAW, SourceStreams::AV_RAW];
        assert!(records(&s, &st, 0, true) && !records(&s, &st, 0, false));
        assert!(!records(&s, &st, 1, true) && records(&s, &st, 1, false));
    }

    #[test]
    fn grid_cells_cover_the_frame() {
        use super::compose::grid;
        assert_eq!(grid(1, 1280, 720), (1, 1280, 720));
        assert_eq!(grid(4, 1280, 720), (2, 640, 360));
        assert_eq!(grid(5, 1280, 720), (3, 426, 240));
        assert_eq!(grid(16, 1280, 720), (4, 320, 180));
    }
}
