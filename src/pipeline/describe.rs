//! The launch description of an egress's graph, per type and container.
//!
//! Shapes (all encoders run in real time on live sources):
//! - `track`: one source; H.264 input from a URI is remuxed (mp4/mkv), anything raw is encoded.
//! - `track_composite`: video of source 0 + audio of source 1 (or both from one source).
//! - `participant`: video and audio of one source, transcoded.
//! - `room_composite`: every source's video scaled into a grid cell of one `compositor`, every
//!   source's audio into one `audiomixer`, then encoded once.

use crate::model::{
    AudioCodec, Container, EgressSpec, EgressType, PipelineOptions, Source, TestMedia,
};

/// How a source's video arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoInput {
    /// Decodable to raw frames.
    Raw,
    /// Already H.264: `track` remuxes it.
    H264,
}

/// What one source carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceStreams {
    pub video: Option<VideoInput>,
    pub audio: bool,
}

impl SourceStreams {
    pub const AV_RAW: SourceStreams = SourceStreams {
        video: Some(VideoInput::Raw),
        audio: true,
    };

    /// What a test source of this kind carries.
    pub fn of_test(media: TestMedia) -> SourceStreams {
        SourceStreams {
            video: (media != TestMedia::Audio).then_some(VideoInput::Raw),
            audio: media != TestMedia::Video,
        }
    }
}

/// One element (or pad reference, or caps) of a chain, with its properties.
#[derive(Debug, Clone)]
struct Elem {
    name: String,
    props: Vec<(String, String)>,
}

fn el(name: impl Into<String>) -> Elem {
    Elem {
        name: name.into(),
        props: Vec::new(),
    }
}

impl Elem {
    fn p(mut self, k: &str, v: impl ToString) -> Elem {
        self.props.push((k.to_string(), v.to_string()));
        self
    }
    /// A pad reference (`mux.`) or caps (`video/x-raw,...`), not a factory.
    fn is_factory(&self) -> bool {
        // Factory names have neither; caps have a '/', pad references a '.'.
        !self.name.contains('/') && !self.name.contains('.')
    }
}

/// A launch description: chains of elements joined by `!`.
#[derive(Debug, Clone, Default)]
pub struct Desc {
    chains: Vec<Vec<Elem>>,
}

impl Desc {
    fn push(&mut self, chain: Vec<Elem>) {
        self.chains.push(chain);
    }

    /// For `gst::parse::launch`.
    pub fn gst(&self) -> String {
        self.render(gst_quote)
    }

    /// For a shell running `gst-launch-1.0 -e <this>`.
    pub fn shell(&self) -> String {
        self.render(shell_quote)
    }

    /// Every element factory the graph uses, once each.
    pub fn factories(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.chains.iter().flatten().filter(|e| e.is_factory()) {
            if !out.contains(&e.name) {
                out.push(e.name.clone());
            }
        }
        out
    }

    fn render(&self, quote: fn(&str) -> String) -> String {
        let chains: Vec<String> = self
            .chains
            .iter()
            .map(|chain| {
                let elems: Vec<String> = chain
                    .iter()
                    .map(|e| {
                        let mut words = vec![quote(&e.name)];
                        words.extend(e.props.iter().map(|(k, v)| quote(&format!("{k}={v}"))));
                        words.join(" ")
                    })
                    .collect();
                elems.join(" ! ")
            })
            .collect();
        chains.join("  ")
    }
}

fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_./:-+=,".contains(&b))
}

/// `key=value` with the value double-quoted when it needs it (gst_parse syntax).
fn gst_quote(word: &str) -> String {
    if plain(word) {
        return word.to_string();
    }
    match word.split_once('=') {
        Some((k, v)) if plain(k) => {
            format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
        }
        _ => word.to_string(),
    }
}

fn shell_quote(word: &str) -> String {
    if plain(word) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Where a branch's media comes from: the head of a chain.
fn video_head(spec: &EgressSpec, i: usize) -> Vec<Elem> {
    match &spec.sources[i] {
        Source::Test {
            pattern,
            width,
            height,
            fps,
            ..
        } => vec![
            el("videotestsrc")
                .p("is-live", "true")
                .p("pattern", pattern),
            el(format!(
                "video/x-raw,width={width},height={height},framerate={fps}/1"
            )),
        ],
        Source::Uri { .. } => vec![el(format!("s{i}.")), el("video/x-raw")],
    }
}

fn audio_head(spec: &EgressSpec, i: usize) -> Vec<Elem> {
    match &spec.sources[i] {
        Source::Test { wave, freq, .. } => vec![
            el("audiotestsrc")
                .p("is-live", "true")
                .p("wave", wave)
                .p("freq", freq),
            el("audio/x-raw,rate=48000,channels=2"),
        ],
        Source::Uri { .. } => vec![el(format!("s{i}.")), el("audio/x-raw")],
    }
}

/// Raw video in -> encoded video into the muxer.
fn video_tail(spec: &EgressSpec, opts: &PipelineOptions) -> Vec<Elem> {
    let v = &spec.video;
    let mut chain = vec![
        el("queue"),
        el("videoconvert"),
        el("videoscale"),
        el("videorate"),
        // I420 before x264enc: otherwise it picks a 4:4:4 profile few players decode.
        el(format!(
            "video/x-raw,format=I420,width={},height={},framerate={}/1,pixel-aspect-ratio=1/1",
            v.width, v.height, v.fps
        )),
    ];
    match spec.file.container {
        Container::Mp4 | Container::Mkv => {
            chain.push(
                el("x264enc")
                    .p("speed-preset", &opts.x264_speed_preset)
                    .p("tune", "zerolatency")
                    .p("key-int-max", v.fps * 2)
                    .p("bitrate", v.bitrate_kbps),
            );
            chain.push(el("h264parse"));
        }
        Container::Webm => chain.push(
            el("vp8enc")
                .p("deadline", 1)
                .p("cpu-used", 8)
                .p("keyframe-max-dist", v.fps * 2)
                .p("target-bitrate", v.bitrate_kbps * 1000),
        ),
        Container::Ogg => chain.push(el("theoraenc").p("bitrate", v.bitrate_kbps)),
    }
    chain.push(el("queue"));
    chain.push(el("mux."));
    chain
}

/// Raw audio in -> encoded audio into the muxer.
fn audio_tail(spec: &EgressSpec) -> Vec<Elem> {
    let a = &spec.audio;
    let mut chain = vec![
        el("queue"),
        el("audioconvert"),
        el("audioresample"),
        el("audio/x-raw,rate=48000,channels=2"),
    ];
    match a.codec {
        AudioCodec::Aac => {
            chain.push(el("voaacenc").p("bitrate", a.bitrate_kbps * 1000));
            chain.push(el("aacparse"));
        }
        AudioCodec::Opus => chain.push(el("opusenc").p("bitrate", a.bitrate_kbps * 1000)),
    }
    chain.push(el("queue"));
    chain.push(el("mux."));
    chain
}

fn muxer(spec: &EgressSpec, opts: &PipelineOptions) -> Vec<Elem> {
    let ns = |s: f64| (s * 1e9).round() as u64;
    let mux = match spec.file.container {
        // Robust mode: the index is rewritten every period into reserved space, so a killed
        // recording stays playable up to the last update.
        Container::Mp4 => el("mp4mux")
            .p("name", "mux")
            .p(
                "reserved-max-duration",
                ns(opts.mp4_reserved_max_duration_s),
            )
            .p(
                "reserved-moov-update-period",
                ns(opts.mp4_moov_update_period_s),
            ),
        Container::Mkv => el("matroskamux").p("name", "mux"),
        Container::Webm => el("webmmux").p("name", "mux"),
        Container::Ogg => el("oggmux").p("name", "mux"),
    };
    // Unbuffered: what the muxer wrote is on disk at once, so a killed process loses nothing
    // beyond the muxer's own index period.
    vec![
        mux,
        el("filesink")
            .p("location", spec.file.path.display())
            .p("buffer-mode", "unbuffered"),
    ]
}

fn concat(mut a: Vec<Elem>, b: Vec<Elem>) -> Vec<Elem> {
    a.extend(b);
    a
}

/// The description of `spec`'s graph given what each source carries (`streams[i]`).
pub fn describe(spec: &EgressSpec, opts: &PipelineOptions, streams: &[SourceStreams]) -> Desc {
    let mut d = Desc::default();
    d.push(muxer(spec, opts));
    let n = spec.sources.len();
    let remux_h264 = spec.egress_type == EgressType::Track
        && matches!(spec.file.container, Container::Mp4 | Container::Mkv)
        && streams.first().and_then(|s| s.video) == Some(VideoInput::H264);
    // Which source's video and audio each single-stream type uses.
    let (video_from, audio_from): (Vec<usize>, Vec<usize>) = match spec.egress_type {
        EgressType::TrackComposite if n == 2 => (vec![0], vec![1]),
        EgressType::RoomComposite => ((0..n).collect(), (0..n).collect()),
        _ => (vec![0], vec![0]),
    };
    let video_from: Vec<usize> = video_from
        .into_iter()
        .filter(|&i| streams[i].video.is_some())
        .collect();
    let audio_from: Vec<usize> = audio_from
        .into_iter()
        .filter(|&i| streams[i].audio)
        .collect();

    for (i, s) in spec.sources.iter().enumerate() {
        if let Source::Uri { uri } = s {
            let mut decode = el("uridecodebin").p("uri", uri).p("name", format!("s{i}"));
            if remux_h264 && i == 0 {
                decode = decode.p("caps", "video/x-h264;audio/x-raw");
            }
            d.push(vec![decode]);
            // Streams this graph does not record still need a sink, or they stall the source.
            let st = streams[i];
            if st.video.is_some() && !video_from.contains(&i) {
                d.push(vec![
                    el(format!("s{i}.")),
                    el("video/x-raw"),
                    el("queue"),
                    el("fakesink").p("sync", "false"),
                ]);
            }
            if st.audio && !audio_from.contains(&i) {
                d.push(vec![
                    el(format!("s{i}.")),
                    el("audio/x-raw"),
                    el("queue"),
                    el("fakesink").p("sync", "false"),
                ]);
            }
        }
    }

    if spec.egress_type == EgressType::RoomComposite {
        room_composite(&mut d, spec, opts, &video_from, &audio_from);
        return d;
    }
    if let Some(&i) = video_from.first() {
        if remux_h264 {
            d.push(vec![
                el("s0."),
                el("video/x-h264"),
                el("queue"),
                el("h264parse"),
                el("queue"),
                el("mux."),
            ]);
        } else {
            d.push(concat(video_head(spec, i), video_tail(spec, opts)));
        }
    }
    if let Some(&i) = audio_from.first() {
        d.push(concat(audio_head(spec, i), audio_tail(spec)));
    }
    d
}

/// Grid cell size for `n` tiles in a `w`x`h` frame: (columns, cell width, cell height), even sizes.
pub fn grid(n: usize, w: u32, h: u32) -> (u32, u32, u32) {
    let n = n.max(1) as u32;
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = n.div_ceil(cols);
    (cols, (w / cols) & !1, (h / rows) & !1)
}

fn room_composite(
    d: &mut Desc,
    spec: &EgressSpec,
    opts: &PipelineOptions,
    video: &[usize],
    audio: &[usize],
) {
    let v = &spec.video;
    if !video.is_empty() {
        let (cols, cw, ch) = grid(video.len(), v.width, v.height);
        let mut comp = el("compositor").p("name", "comp").p("background", "black");
        for (slot, _) in video.iter().enumerate() {
            let (x, y) = ((slot as u32 % cols) * cw, (slot as u32 / cols) * ch);
            comp = comp
                .p(&format!("sink_{slot}::xpos"), x)
                .p(&format!("sink_{slot}::ypos"), y);
        }
        d.push(concat(vec![comp], video_tail(spec, opts)));
        for (slot, &i) in video.iter().enumerate() {
            let cell =
                format!("video/x-raw,format=I420,width={cw},height={ch},pixel-aspect-ratio=1/1");
            let chain = concat(
                video_head(spec, i),
                vec![
                    el("queue"),
                    el("videoconvert"),
                    el("videoscale"),
                    el(cell),
                    el(format!("comp.sink_{slot}")),
                ],
            );
            d.push(chain);
        }
    }
    if !audio.is_empty() {
        d.push(concat(
            vec![el("audiomixer").p("name", "amix")],
            audio_tail(spec),
        ));
        for &i in audio {
            let chain = concat(
                audio_head(spec, i),
                vec![
                    el("queue"),
                    el("audioconvert"),
                    el("audioresample"),
                    el("audio/x-raw,rate=48000,channels=2"),
                    el("amix."),
                ],
            );
            d.push(chain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EgressRequest, ValidationContext};

    fn spec(json: serde_json::Value) -> EgressSpec {
        let req: EgressRequest = serde_json::from_value(json).unwrap();
        let schemes = vec!["test".to_string(), "rtsp".to_string()];
        let dir = std::path::Path::new("/rec");
        let ctx = ValidationContext {
            output_dir: dir,
            state_dir: dir,
            allowed_schemes: &schemes,
        };
        req.validate("EG_test", &ctx).unwrap()
    }

    fn opts() -> PipelineOptions {
        PipelineOptions {
            x264_speed_preset: "veryfast".into(),
            mp4_moov_update_period_s: 1.0,
            mp4_reserved_max_duration_s: 60.0,
        }
    }

    fn line(j: serde_json::Value, streams: &[SourceStreams]) -> String {
        describe(&spec(j), &opts(), streams).gst()
    }

    #[test]
    fn participant_mp4_is_i420_h264_and_aac_in_robust_mp4() {
        let s = spec(
            serde_json::json!({"type": "participant", "sources": [{"uri": "test://av"}],
            "output": {"file": {"filename": "a b.mp4"}}}),
        );
        let l = describe(&s, &opts(), &[SourceStreams::AV_RAW]).gst();
        assert!(
            l.contains("format=I420") && l.contains("x264enc") && l.contains("voaacenc"),
            "{l}"
        );
        assert!(l.contains("reserved-moov-update-period=1000000000"), "{l}");
        assert!(l.contains("location=\"/rec/a b.mp4\""), "{l}");
        assert!(
            describe(&s, &opts(), &[SourceStreams::AV_RAW])
                .shell()
                .contains("'location=/rec/a b.mp4'")
        );
    }

    #[test]
    fn track_remuxes_h264_from_a_uri_but_encodes_raw() {
        let j = serde_json::json!({"type": "track", "sources": [{"uri": "rtsp://cam/1"}],
            "output": {"file": {"filename": "t.mkv"}}});
        let h264 = SourceStreams {
            video: Some(VideoInput::H264),
            audio: false,
        };
        let l = line(j.clone(), &[h264]);
        assert!(
            l.contains("caps=\"video/x-h264;audio/x-raw\"") && !l.contains("x264enc"),
            "{l}"
        );
        let raw = SourceStreams {
            video: Some(VideoInput::Raw),
            audio: false,
        };
        let l = line(j, &[raw]);
        assert!(l.contains("x264enc") && !l.contains("audio"), "{l}");
    }

    #[test]
    fn room_composite_lays_out_a_grid_and_mixes_audio() {
        let j = serde_json::json!({"type": "room_composite",
            "sources": [{"uri": "test://av"}, {"uri": "test://video"}, {"uri": "test://audio"}],
            "output": {"file": {"filename": "r.webm"}}});
        let s = spec(j);
        let Ok(streams) =
            crate::pipeline::streams_of::<std::convert::Infallible>(&s, |_| unreachable!());
        let l = describe(&s, &opts(), &streams).gst();
        assert!(
            l.contains("sink_1::xpos=640")
                && l.contains("comp.sink_1")
                && !l.contains("comp.sink_2"),
            "{l}"
        );
        assert_eq!(l.matches("amix.").count(), 2, "{l}");
        assert!(
            l.contains("vp8enc") && l.contains("opusenc") && l.contains("webmmux"),
            "{l}"
        );
    }

    #[test]
    fn grid_cells_cover_the_frame() {
        assert_eq!(grid(1, 1280, 720), (1, 1280, 720));
        assert_eq!(grid(4, 1280, 720), (2, 640, 360));
        assert_eq!(grid(5, 1280, 720), (3, 426, 360));
        assert_eq!(grid(16, 1280, 720), (4, 320, 180));
    }

    #[test]
    fn unused_uri_streams_go_to_a_fakesink() {
        let j = serde_json::json!({"type": "track_composite",
            "sources": [{"uri": "rtsp://a"}, {"uri": "rtsp://b"}],
            "output": {"file": {"filename": "t.mp4"}}});
        let l = line(j, &[SourceStreams::AV_RAW, SourceStreams::AV_RAW]);
        assert_eq!(l.matches("fakesink").count(), 2, "{l}");
    }
}
