//! Producers as people configure them (issue 21): Debian's ffmpeg sending the way OBS and
//! hardware encoders do (x264 with B-frames, keyframes every 2-8 s, HEVC, Opus, MP2, one stream
//! only), over RTMP (nginx-rtmp) and SRT, recorded as `track` and `participant` from wherever
//! the sender is in its GOP. Every stream of every output is checked with ffprobe against the
//! time recorded; the A/V offset is measured (`scripts/av-offset`) against `ffmpeg -c copy` of
//! the same stream in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::*;

pub(crate) const SOURCES: &str = "sources: { allowed_schemes: [test, srt, rtmp] }";
/// The producers here are synthetic (a black picture that flashes, silence that beeps): health
/// warnings, true of them, are tested in `health.rs`, not here.
pub(crate) const CONFIG: &str =
    "sources: { allowed_schemes: [test, srt, rtmp] }\npipeline: { health_window_s: 3600 }";

/// What an encoder sends.
#[derive(Clone, Copy)]
pub(crate) struct Profile {
    /// (ffmpeg encoder, keyframe interval in s, B-frames); None: audio only.
    pub video: Option<(&'static str, u32, u32)>,
    /// ffmpeg audio encoder; None: video only.
    pub audio: Option<&'static str>,
    /// Video flashes white and audio beeps at the same instant, once a second.
    pub sync: bool,
}

pub(crate) const FPS: u32 = 30;

/// As OBS sends by default: x264 with 2 B-frames, a keyframe every 2 s, AAC; the sync picture
/// and sound (a flash and a beep each second).
const OBS: Profile = Profile {
    video: Some(("libx264", 2, 2)),
    audio: Some("aac"),
    sync: true,
};

impl Profile {
    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-hide_banner", "-loglevel", "error", "-re"]
            .map(String::from)
            .to_vec();
        if self.video.is_some() {
            let src = if self.sync {
                format!(
                    "color=c=black:s=320x240:r={FPS},drawbox=c=white:t=fill:enable='lt(mod(n,{FPS}),1)'"
                )
            } else {
                format!("testsrc=size=320x240:rate={FPS}")
            };
            a.extend(["-f".into(), "lavfi".into(), "-i".into(), src]);
        }
        if self.audio.is_some() {
            let src = if self.sync {
                "aevalsrc='if(lt(mod(t,1),0.1),0.5*sin(2*PI*1000*t),0)|if(lt(mod(t,1),0.1),0.5*sin(2*PI*1000*t),0)':s=48000"
                    .to_string()
            } else {
                "sine=frequency=440:sample_rate=48000".to_string()
            };
            a.extend(["-f".into(), "lavfi".into(), "-i".into(), src]);
        }
        if let Some((codec, gop_s, bframes)) = self.video {
            a.extend(
                [
                    "-c:v",
                    codec,
                    "-preset",
                    "veryfast",
                    "-pix_fmt",
                    "yuv420p",
                    "-g",
                    &(gop_s * FPS).to_string(),
                    "-bf",
                    &bframes.to_string(),
                ]
                .map(String::from),
            );
            if codec == "libx265" {
                a.extend(["-x265-params".into(), "log-level=error".into()]);
            }
        }
        if let Some(codec) = self.audio {
            a.extend(["-c:a", codec, "-b:a", "96k", "-ar", "48000"].map(String::from));
        }
        a
    }
}

fn spawn_ffmpeg(args: &[String], url: String) -> Producer {
    let child = Command::new("ffmpeg")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg must be installed (scripts/setup)");
    Producer {
        child,
        _dir: None,
        helpers: Vec::new(),
        url,
    }
}

/// `profile` published to `nginx` as stream `key`; waits until the server relays it (a
/// subscriber gets its metadata).
fn publish(nginx: &Producer, key: &str, profile: Profile) -> Producer {
    publish_for(nginx, key, profile, None)
}

/// `publish`, ending the stream after `secs` when given (as a sender that stops cleanly).
fn publish_for(nginx: &Producer, key: &str, profile: Profile, secs: Option<u32>) -> Producer {
    let mut args = profile.args();
    if let Some(secs) = secs {
        args.extend(["-t".into(), secs.to_string()]);
    }
    publish_args(nginx, key, args)
}

/// ffmpeg sending what `args` (its input and codec options) say to `nginx` as stream `key`;
/// waits until the server relays it.
fn publish_args(nginx: &Producer, key: &str, mut args: Vec<String>) -> Producer {
    let url = format!("{}/{key}", nginx.url);
    args.extend(["-f".into(), "flv".into(), url.clone()]);
    let p = spawn_ffmpeg(&args, url.clone());
    wait_for(
        Duration::from_secs(20),
        "the RTMP stream to be relayed",
        || {
            let out = Command::new("ffprobe")
                .args([
                    "-v",
                    "error",
                    "-rw_timeout",
                    "3000000",
                    "-show_entries",
                    "stream=codec_type",
                    "-of",
                    "csv=p=0",
                ])
                .arg(&url)
                .output()
                .ok()?;
            (out.status.success() && !out.stdout.is_empty()).then_some(())
        },
    );
    p
}

/// `profile` from an ffmpeg SRT listener (MPEG-TS) that takes one caller.
pub(crate) fn srt_sender(profile: Profile) -> Producer {
    srt_listener(profile.args())
}

/// An ffmpeg SRT listener (MPEG-TS) sending what `args` (its input and codec options) say; it
/// starts when the one caller it takes connects.
pub(crate) fn srt_listener(mut args: Vec<String>) -> Producer {
    let port = free_udp_port();
    let url = format!("srt://127.0.0.1:{port}");
    args.extend(["-f".into(), "mpegts".into(), format!("{url}?mode=listener")]);
    let p = spawn_ffmpeg(&args, url);
    wait_for(Duration::from_secs(20), "the SRT listener to bind", || {
        let t = std::fs::read_to_string("/proc/net/udp").ok()?;
        let hex = format!(":{port:04X} ");
        t.lines()
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&hex))
            })
            .then_some(())
    });
    p
}

/// A request for `egress_type` of `uri` into `{name}.mp4` and HLS `{name}`.
pub(crate) fn body(egress_type: &str, uri: &str, name: &str) -> Value {
    json!({
        "type": egress_type,
        "sources": [{"uri": uri}],
        "outputs": [{"file": {"filename": format!("{name}.mp4")}},
                    {"segments": {"prefix": name, "segment_duration_s": 2}}],
        "video": {"width": 320, "height": 240, "fps": FPS, "bitrate_kbps": 500},
        "estimated_cpu": 0.3,
    })
}

/// A request for `egress_type` of `uri` into one file, `filename`, and nothing else.
fn file_body(egress_type: &str, uri: &str, filename: &str) -> Value {
    json!({
        "type": egress_type,
        "sources": [{"uri": uri}],
        "outputs": [{"file": {"filename": filename}}],
        "estimated_cpu": 0.3,
    })
}

/// One egress under test: its id and when the test asked it to stop.
pub(crate) struct Run {
    id: String,
    stopped_ms: u64,
}

pub(crate) fn stop(svc: &Service, id: &str) -> Run {
    let stopped_ms = now_ms();
    let (s, v) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    assert_eq!(s, 200, "{v}");
    Run {
        id: id.to_string(),
        stopped_ms,
    }
}

/// How far each stream of an output may last from the time recorded (issue 21: +/- 0.2 s).
pub(crate) const DURATION_SLACK: f64 = 0.2;

/// The ended record of `run`, checked: `complete` with no warning, its file and every HLS
/// segment decoding with the streams `want` (video, audio), each lasting the time recorded
/// (from `active` to the stop) within `slack` s. Returns the record and the recorded time.
pub(crate) fn check(svc: &Service, run: &Run, want: (bool, bool), slack: f64) -> (Value, f64) {
    check_with(svc, run, want, slack, ffmpeg_decodes)
}

/// `check`, decoding each file and segment with `decodes`.
fn check_with(
    svc: &Service,
    run: &Run,
    want: (bool, bool),
    slack: f64,
    decodes: fn(&Path),
) -> (Value, f64) {
    let done = svc.wait_status(
        &run.id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(20),
    );
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert!(done["warnings"].is_null(), "warnings: {done}");
    // A graceful stop finishes within 2 s (the handler has finalized and exited).
    let took = done["ended_at"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(run.stopped_ms);
    assert!(took <= 2_000, "the stop took {took} ms: {done}");
    let started = done["started_at"].as_u64().expect("started_at");
    let recorded = run.stopped_ms.saturating_sub(started) as f64 / 1000.0;
    let path = output(&done);
    decodes(&path);
    let (v, a) = stream_durations(&path);
    eprintln!(
        "{}: recorded {recorded:.3} s, video {v:?} s, audio {a:?} s, stop {took} ms",
        path.display()
    );
    for (kind, wanted, got) in [("video", want.0, v), ("audio", want.1, a)] {
        match (wanted, got) {
            (true, Some(d)) => assert!(
                (d - recorded).abs() <= slack,
                "{kind} of {} lasts {d} s, recorded {recorded} s: {done}",
                path.display()
            ),
            (true, None) => panic!("no {kind} in {}: {done}", path.display()),
            (false, Some(_)) => panic!("{kind} in {} though the source has none", path.display()),
            (false, None) => {}
        }
    }
    // The record says what the file holds.
    let f = &done["files"][0];
    assert_eq!(f["video_s"].is_number(), want.0, "{f}");
    assert_eq!(f["audio_s"].is_number(), want.1, "{f}");
    // Every segment decodes and holds what the file holds.
    let seg = &done["segments"];
    if seg.is_null() {
        return (done, recorded);
    }
    let playlist = PathBuf::from(seg["location"].as_str().expect("playlist"));
    let dir = playlist.parent().expect("dir").to_path_buf();
    let text = std::fs::read_to_string(&playlist).expect("playlist");
    let segments: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
    assert!(!segments.is_empty(), "{text}");
    for s in &segments {
        let p = dir.join(s);
        decodes(&p);
        let probe = ffprobe(&p);
        let (sv, sa) = codecs(&probe);
        assert_eq!(
            (sv.is_some(), sa.is_some()),
            want,
            "{}: {probe}",
            p.display()
        );
    }
    let hls = seg["duration_s"].as_f64().expect("segments duration");
    eprintln!("{}: HLS {hls:.3} s of {recorded:.3} s", playlist.display());
    // A playlist lists whole fragments, each timed by its muxer: a frame more either side.
    assert!(
        (hls - recorded).abs() <= slack + 0.1,
        "HLS holds {hls} s, recorded {recorded} s: {done}"
    );
    (done, recorded)
}

/// `scripts/av-offset` on a file: the median offset of beeps against flashes, in ms.
fn av_offset(path: &Path) -> f64 {
    av_offsets(path)["median_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no offset in {}", path.display()))
}

/// A pause of 0-`max_ms` ms: the egress starts at another point of the sender's GOP each run.
pub(crate) fn somewhere_in_the_gop(max_ms: u64) {
    let ms = now_ms() % max_ms.max(1);
    std::thread::sleep(Duration::from_millis(ms));
}

/// The field's most common case (OBS to an RTMP server: x264 with B-frames, a keyframe every
/// 2 s, AAC), recorded as `track` and `participant` mid-GOP: both record video and audio for the
/// whole time, and their A/V offset is that of `ffmpeg -c copy` of the same stream within 20 ms,
/// in the MP4 and in the HLS segments.
#[test]
fn rtmp_as_obs_sends_it_is_recorded_whole_and_in_sync() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let nginx = nginx_rtmp();
    let sender = publish(&nginx, "obs", OBS);
    somewhere_in_the_gop(2000);
    recorded_in_sync(&svc, &dirs, &sender.url);
}

/// `track` and `participant` of RTMP stream `url`, recorded for 10 s beside `ffmpeg -c copy` of
/// it: both whole (`check`), starting with a keyframe, their MP4 and HLS within 20 ms of the
/// copy's A/V offset. Returns their ended records.
fn recorded_in_sync(svc: &Service, dirs: &Dirs, url: &str) -> Vec<Value> {
    let reference = dirs.root.path().join("reference.mp4");
    let mut copy = Command::new("ffmpeg")
        .args(["-v", "error", "-i", url, "-c", "copy", "-t", "16", "-y"])
        .arg(&reference)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let ids: Vec<String> = ["track", "participant"]
        .iter()
        .map(|t| svc.start_egress(&body(t, url, t)))
        .collect();
    for id in &ids {
        svc.wait_status(id, &["active"], Duration::from_secs(15));
    }
    std::thread::sleep(Duration::from_secs(10));
    let runs: Vec<Run> = ids.iter().map(|id| stop(svc, id)).collect();
    let _ = copy.wait();
    let want = av_offset(&reference);
    let mut records = Vec::new();
    for run in &runs {
        let (done, _) = check(svc, run, (true, true), DURATION_SLACK);
        let file = output(&done);
        let (first_pts, key) = first_frame(&file, "v");
        assert!(
            key,
            "{} starts with a keyframe (pts {first_pts})",
            file.display()
        );
        for path in [file, joined_segments(&done)] {
            let got = av_offset(&path);
            eprintln!(
                "{}: A/V offset {got} ms, ffmpeg -c copy {want} ms",
                path.display()
            );
            assert!(
                (got - want).abs() <= 20.0,
                "{}: A/V offset {got} ms, ffmpeg -c copy {want} ms",
                path.display()
            );
        }
        records.push(done);
    }
    records
}

/// A sender whose frame rate varies, as a phone's in low light or a screen capture sends
/// (OBS's sync picture and sound, 30 fps one second and 5 the next, encoded as phones do:
/// without B-frames or lookahead, which would hold a 5-fps picture back for seconds):
/// `track` keeps the sender's frames, `participant` makes them 30 fps; both play at real speed
/// (every stream lasts the time recorded) and in sync in every second, at 30 fps or at 5.
#[test]
fn a_variable_rate_sender_is_recorded_at_real_speed_and_in_sync() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let nginx = nginx_rtmp();
    let phone = Profile {
        video: Some(("libx264", 2, 0)),
        ..OBS
    };
    let mut args = phone.args();
    let picture = args
        .iter_mut()
        .find(|a| a.starts_with("color="))
        .expect("the sync picture");
    // Every frame in even seconds, every sixth (5 fps) in odd ones; the flashes are kept.
    picture.push_str(",select='lt(mod(t,2),1)+not(mod(n,6))'");
    args.extend(["-fps_mode", "vfr", "-tune", "zerolatency"].map(String::from));
    let sender = publish_args(&nginx, "vfr", args);
    somewhere_in_the_gop(2000);
    let done = recorded_in_sync(&svc, &dirs, &sender.url);
    let (track, participant) = (
        decoded_fps(&output(&done[0])),
        decoded_fps(&output(&done[1])),
    );
    eprintln!("variable-rate sender: track {track:.2} fps, participant {participant:.2} fps");
    assert!((14.0..=21.0).contains(&track), "track at {track} fps");
    assert!(
        (participant - FPS as f64).abs() < 1.0,
        "participant at {participant} fps"
    );
}

/// A phone as camera apps stream: portrait 360x640, H.264 without B-frames and a keyframe every
/// second, AAC at 44.1 kHz mono (every other sender here is 48 kHz stereo). `track` and
/// `participant` record it whole and in sync (`recorded_in_sync`); `track` keeps the phone's
/// picture and sound as sent, `participant` its own size and 48 kHz stereo.
#[test]
fn a_phone_in_portrait_with_44_khz_mono_sound_is_recorded_whole_and_in_sync() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let nginx = nginx_rtmp();
    let phone = Profile {
        video: Some(("libx264", 1, 0)),
        ..OBS
    };
    let mut args: Vec<String> = phone
        .args()
        .into_iter()
        .map(|a| {
            a.replace("s=320x240", "s=360x640")
                .replace(":s=48000", ":s=44100")
        })
        .collect();
    let rate = args.iter().position(|a| a == "-ar").expect("-ar") + 1;
    args[rate] = "44100".into();
    args.extend(["-ac", "1", "-profile:v", "main"].map(String::from));
    let sender = publish_args(&nginx, "phone", args);
    somewhere_in_the_gop(1000);
    let done = recorded_in_sync(&svc, &dirs, &sender.url);
    // Each stream's picture size or sample rate and channels, as ffprobe reads them.
    let streams = |d: &Value| {
        let probe = ffprobe(&output(d));
        let mut s: Vec<String> = probe["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|st| match st["codec_type"].as_str() {
                Some("video") => format!("{},{}", st["width"], st["height"]),
                _ => format!(
                    "{},{}",
                    st["sample_rate"].as_str().unwrap_or(""),
                    st["channels"]
                ),
            })
            .collect();
        s.sort();
        s
    };
    assert_eq!(streams(&done[0]), ["360,640", "44100,1"], "{}", done[0]);
    assert_eq!(streams(&done[1]), ["320,240", "48000,2"], "{}", done[1]);
    // `participant` keeps the portrait's shape: at a flash, a white pillar 135 px of 320 wide
    // (34 columns of 80), black beside it, not a picture stretched to the width.
    let frames = crate::producers::gray_frames(&output(&done[1]));
    let flash = frames
        .iter()
        .max_by_key(|f| f.iter().map(|&y| u32::from(y)).sum::<u32>())
        .expect("frames");
    let white = (0..80)
        .filter(|&c| (0..60).all(|r| flash[r * 80 + c] > 128))
        .count();
    assert!(
        (30..=38).contains(&white),
        "a pillar {white} columns of 80 wide"
    );
}

/// Keyframes every 4 and every 8 s (hardware encoders, OBS set for bandwidth): the egress waits
/// for the first keyframe (video starts there, audio with it) and records both streams; before,
/// it decided its graph 1 s after the audio and recorded audio only, reported `complete`.
#[test]
fn rtmp_with_long_keyframe_intervals_records_video_from_the_first_keyframe() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let nginx = nginx_rtmp();
    let mut runs = Vec::new();
    let senders: Vec<Producer> = [4, 8]
        .iter()
        .map(|gop| {
            let p = Profile {
                video: Some(("libx264", *gop, 3)),
                audio: Some("aac"),
                sync: false,
            };
            publish(&nginx, &format!("gop{gop}"), p)
        })
        .collect();
    somewhere_in_the_gop(4000);
    let mut ids = Vec::new();
    for (s, gop) in senders.iter().zip([4, 8]) {
        for t in ["track", "participant"] {
            let id = svc.start_egress(&body(t, &s.url, &format!("{t}_gop{gop}")));
            ids.push(id);
        }
    }
    for id in &ids {
        svc.wait_status(id, &["active"], Duration::from_secs(15));
    }
    std::thread::sleep(Duration::from_secs(6));
    for id in &ids {
        runs.push(stop(&svc, id));
    }
    for run in &runs {
        let (done, _) = check(&svc, run, (true, true), DURATION_SLACK);
        let (_, key) = first_frame(&output(&done), "v");
        assert!(key, "starts with a keyframe: {done}");
    }
}

/// One stream only: an RTMP sender with audio only (its metadata says so: the graph is decided
/// at once) and an SRT sender with video only; recorded as what they are, no warnings.
#[test]
fn one_stream_only_is_recorded_as_it_is() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let nginx = nginx_rtmp();
    let audio = publish(
        &nginx,
        "radio",
        Profile {
            video: None,
            audio: Some("aac"),
            sync: false,
        },
    );
    let video = srt_sender(Profile {
        video: Some(("libx264", 2, 2)),
        audio: None,
        sync: false,
    });
    let to_active = record_each(
        &svc,
        &[
            ("track", &audio.url, "radio", (false, true)),
            ("participant", &video.url, "camera", (true, false)),
        ],
    );
    // Audio only: no wait for a video stream that never comes.
    assert!(
        to_active < Duration::from_secs(5),
        "active after {to_active:?}"
    );
}

/// Starts an egress per (type, source, name, streams wanted), records 6 s, stops them and
/// checks each (`check`); returns how long they took to be active.
fn record_each(svc: &Service, cases: &[(&str, &str, &str, (bool, bool))]) -> Duration {
    let bodies: Vec<(Value, (bool, bool))> = cases
        .iter()
        .map(|(t, uri, name, want)| (body(t, uri, name), *want))
        .collect();
    record_bodies(svc, &bodies, Duration::from_secs(6)).0
}

/// Starts an egress per (request, streams wanted), records `secs` once all are active, stops
/// them and checks each (`check`); returns how long they took to be active, and the records.
fn record_bodies(
    svc: &Service,
    cases: &[(Value, (bool, bool))],
    secs: Duration,
) -> (Duration, Vec<Value>) {
    record_bodies_with(svc, cases, secs, ffmpeg_decodes)
}

/// `record_bodies`, decoding each output with `decodes`.
fn record_bodies_with(
    svc: &Service,
    cases: &[(Value, (bool, bool))],
    secs: Duration,
    decodes: fn(&Path),
) -> (Duration, Vec<Value>) {
    let t0 = Instant::now();
    let ids: Vec<String> = cases.iter().map(|(b, _)| svc.start_egress(b)).collect();
    for id in &ids {
        svc.wait_status(id, &["active"], Duration::from_secs(15));
    }
    let to_active = t0.elapsed();
    std::thread::sleep(secs);
    let runs: Vec<Run> = ids.iter().map(|id| stop(svc, id)).collect();
    let done = runs
        .iter()
        .zip(cases)
        .map(|(run, case)| check_with(svc, run, case.1, DURATION_SLACK, decodes).0)
        .collect();
    (to_active, done)
}

/// The frame sizes a file's video decodes to, in order, each once per run of equal ones.
fn frame_sizes(path: &Path) -> Vec<String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    let mut sizes: Vec<String> = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let size = l.split(',').take(2).collect::<Vec<_>>().join("x");
        if !size.is_empty() && sizes.last() != Some(&size) {
            sizes.push(size);
        }
    }
    sizes
}

/// Codecs encoders send besides H.264 + AAC: HEVC with B-frames and MP2 audio; H.264 with
/// Opus. Recorded with both streams, for the whole time; a `track` of HEVC into an MP4 alone
/// copies it (HEVC in the file, no encoder), with HLS it is encoded to H.264 (players take HEVC
/// only in fMP4 segments).
#[test]
fn hevc_mp2_and_opus_senders_are_recorded_with_both_streams() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let hevc_profile = Profile {
        video: Some(("libx265", 2, 2)),
        audio: Some("mp2"),
        sync: false,
    };
    let hevc = srt_sender(hevc_profile);
    let hevc_file = srt_sender(hevc_profile);
    let opus = srt_sender(Profile {
        video: Some(("libx264", 2, 2)),
        audio: Some("libopus"),
        sync: false,
    });
    let (_, done) = record_bodies(
        &svc,
        &[
            (body("track", &hevc.url, "hevc"), (true, true)),
            (
                file_body("track", &hevc_file.url, "hevc_copy.mp4"),
                (true, true),
            ),
            (body("participant", &opus.url, "opus"), (true, true)),
        ],
        Duration::from_secs(6),
    );
    let video_codec = |d: &Value| codecs(&ffprobe(&output(d))).0;
    assert_eq!(video_codec(&done[0]), Some("h264".into()), "{}", done[0]);
    assert_eq!(video_codec(&done[1]), Some("hevc".into()), "{}", done[1]);
}

/// A sender whose keyframes are further apart than `pipeline.first_keyframe_s`: the egress
/// fails with a message that says so, instead of recording audio and calling it complete.
#[test]
fn no_keyframe_in_time_fails_clearly() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        &format!("{SOURCES}\npipeline: {{ first_keyframe_s: 3, health_window_s: 3600 }}"),
    );
    let nginx = nginx_rtmp();
    let sender = publish(
        &nginx,
        "sparse",
        Profile {
            video: Some(("libx264", 60, 2)),
            audio: Some("aac"),
            sync: false,
        },
    );
    let id = svc.start_egress(&body("track", &sender.url, "sparse"));
    let done = svc.wait_status(
        &id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(20),
    );
    assert_eq!(done["status"], "failed", "{done}");
    let err = done["error"].as_str().unwrap_or_default();
    assert!(err.contains("no keyframe from source"), "{done}");
    assert!(
        !err.contains("STREAM_KEY") && err.contains("first_keyframe_s"),
        "{err}"
    );
}

/// A live HLS source (ffmpeg's, MPEG-TS segments) remuxed by `track`: its pads say what they
/// carry only after they appear; it used to fail at once, "carries neither audio nor video".
#[test]
fn a_live_hls_source_is_remuxed_by_track() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "sources: { allowed_schemes: [test, http] }");
    let hls = hls_origin();
    let id = svc.start_egress(&body("track", &hls.url, "hls"));
    svc.wait_status(&id, &["active"], Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4));
    let run = stop(&svc, &id);
    let done = svc.wait_status(
        &id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(20),
    );
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    let path = output(&done);
    ffmpeg_decodes(&path);
    let probe = ffprobe(&path);
    assert_eq!(
        codecs(&probe),
        (Some("h264".into()), Some("aac".into())),
        "{probe}"
    );
    let (v, a) = stream_durations(&path);
    assert!(
        v.is_some_and(|d| d > 2.0) && a.is_some_and(|d| d > 2.0),
        "{probe}"
    );
    drop(run);
}

/// A file an encoder would send if it changed resolution after 4 s (OBS rescaling, a camera
/// adapting): 320x240 then 640x360, one stream with continuous timestamps, a new SPS at the
/// change.
fn resolution_change(dir: &Path) -> PathBuf {
    let part = |size: &str, offset: &str, name: &str, secs: &str| {
        let path = dir.join(name);
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-f", "lavfi", "-i"])
            .arg(format!("testsrc=size={size}:rate={FPS}"))
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(["-t", secs, "-c:v", "libx264", "-preset", "veryfast"])
            .args(["-pix_fmt", "yuv420p", "-g", "60", "-bf", "2", "-c:a", "aac"])
            // Past the first part's last decode time (B-frames start it earlier).
            .args(["-output_ts_offset", offset, "-f", "mpegts", "-y"])
            .arg(&path)
            .status()
            .expect("ffmpeg");
        assert!(status.success());
        std::fs::read(&path).expect("part")
    };
    let mut all = part("320x240", "0", "small.ts", "4");
    all.extend(part("640x360", "4.1", "large.ts", "8"));
    let path = dir.join("resolution-change.ts");
    std::fs::write(&path, all).expect("joined");
    path
}

/// A resolution change mid-stream: `track` keeps both sizes in its MP4, its Matroska file and
/// its HLS segments (before, the fragmented MP4 came out broken and Matroska failed on the new
/// caps); `participant` scales the second part to its output size. Every stream lasts the time
/// recorded.
#[test]
fn a_resolution_change_is_copied_by_track_and_scaled_by_participant() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let file = resolution_change(dirs.root.path());
    let sender = || {
        let mut args: Vec<String> = ["-hide_banner", "-loglevel", "error", "-re", "-i"]
            .map(String::from)
            .to_vec();
        args.push(file.display().to_string());
        args.extend(["-c".into(), "copy".into()]);
        srt_listener(args)
    };
    let (a, b, c) = (sender(), sender(), sender());
    let (_, done) = record_bodies(
        &svc,
        &[
            (body("track", &a.url, "res_track"), (true, true)),
            (file_body("track", &b.url, "res.mkv"), (true, true)),
            (body("participant", &c.url, "res_part"), (true, true)),
        ],
        Duration::from_secs(7),
    );
    let both = vec!["320x240".to_string(), "640x360".to_string()];
    assert_eq!(frame_sizes(&output(&done[0])), both, "track MP4");
    assert_eq!(frame_sizes(&joined_segments(&done[0])), both, "track HLS");
    assert_eq!(frame_sizes(&output(&done[1])), both, "track Matroska");
    assert_eq!(
        frame_sizes(&output(&done[2])),
        vec!["320x240".to_string()],
        "participant MP4"
    );
}

/// A sender that stops and starts again (OBS "Stop Streaming" then "Start Streaming", an
/// encoder rebooting): its second stream's timestamps start from zero. The egress waits for it
/// (`pipeline.source_reconnect_s`), goes on in the same files (one `complete` recording, no
/// warning), and after the restart the sound is again within a frame of the picture.
#[test]
fn a_sender_restart_continues_the_recording_in_sync() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let nginx = nginx_rtmp();
    let mut first = publish_for(&nginx, "restart", OBS, Some(7));
    somewhere_in_the_gop(2000);
    let ids: Vec<String> = ["track", "participant"]
        .iter()
        .map(|t| svc.start_egress(&body(t, &first.url, &format!("restart_{t}"))))
        .collect();
    for id in &ids {
        svc.wait_status(id, &["active"], Duration::from_secs(15));
    }
    // The sender ends its stream on its own, as OBS does.
    let ended = first.child.wait().expect("first sender");
    assert!(ended.success(), "{ended:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let _second = publish(&nginx, "restart", OBS);
    std::thread::sleep(Duration::from_secs(5));
    let runs: Vec<Run> = ids.iter().map(|id| stop(&svc, id)).collect();
    for run in &runs {
        // What the server relays at a reconnection comes in a burst: frames stamped at
        // arrival may share one tick of ffmpeg's frame clock, each still decoding.
        let (done, recorded) = check_with(
            &svc,
            run,
            (true, true),
            DURATION_SLACK,
            ffmpeg_decodes_burst,
        );
        let file = output(&done);
        let v = av_offsets(&file);
        eprintln!("{}: {v}", file.display());
        let offsets: Vec<f64> = numbers(&v["offsets_ms"]);
        let at: Vec<f64> = numbers(&v["offsets_at_s"]);
        // Flashes from both senders: the last 4 s of the recording are the second's.
        let late = at.iter().filter(|t| **t > recorded - 4.0).count();
        assert!(late >= 3, "flashes after the restart: {v}");
        // The restarted sender's first beep starts with its first keyframe, where the audio
        // before that keyframe is cut: its onset is not the sender's, so it is left out.
        let gap =
            (1..at.len()).max_by(|&a, &b| (at[a] - at[a - 1]).total_cmp(&(at[b] - at[b - 1])));
        let offsets: Vec<f64> = offsets
            .iter()
            .enumerate()
            .filter(|(k, _)| Some(*k) != gap)
            .map(|(_, o)| *o)
            .collect();
        let (lo, hi) = offsets
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), o| (l.min(*o), h.max(*o)));
        assert!(
            hi - lo <= 34.0,
            "{}: offsets {offsets:?} spread over more than a frame",
            file.display()
        );
    }
}

/// Asserts that a copy of a source with B-frames keeps them in display order: a B-frame's
/// presentation time comes before its P frame's (more than a quarter of the frames go back:
/// one in three with two B-frames, two in three with x264's pyramid).
fn assert_in_display_order(path: &Path) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v"])
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let pts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    let back = pts.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(
        back > pts.len() / 4,
        "{}: {back} of {} frames shown before the one decoded before them",
        path.display(),
        pts.len()
    );
}

/// The numbers of a JSON array (none if it is not one).
fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The median of `values` (NaN if none).
fn numbers_median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The frames per second a file's video decodes to.
fn decoded_fps(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-count_frames"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.trim().split(',');
    let duration: f64 = f.next().and_then(|d| d.parse().ok()).unwrap_or(0.0);
    let frames: f64 = f.next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
    frames / duration.max(0.001)
}

/// An RTSP camera as they are set up (15 fps, a keyframe every 4 s, B-frames: x264 in its high
/// profile; left to negotiate with the payloader it picks constrained-baseline, which has
/// none), joined anywhere in its GOP, copied by `track` at its own 15 fps in display order;
/// and a 15-fps sender made 30 fps by `participant`, as is the camera. All play at real speed
/// (every stream lasts the time recorded) with both streams.
#[test]
fn a_15_fps_camera_is_recorded_at_real_speed() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "sources: { allowed_schemes: [test, rtsp, srt] }\npipeline: { health_window_s: 3600 }",
    );
    let cam = rtsp_camera(
        "x264enc speed-preset=ultrafast key-int-max=60 bframes=2 ! video/x-h264,profile=high",
    );
    let slow = srt_listener(ffmpeg_lavfi(
        "testsrc=size=320x240:rate=15",
        "sine=frequency=440:sample_rate=48000",
        30,
    ));
    somewhere_in_the_gop(4000);
    let (_, done) = record_bodies(
        &svc,
        &[
            (body("track", &cam.url, "cam_track"), (true, true)),
            (
                body("participant", &cam.url, "cam_participant"),
                (true, true),
            ),
            (
                body("participant", &slow.url, "slow_participant"),
                (true, true),
            ),
        ],
        Duration::from_secs(8),
    );
    assert_in_display_order(&output(&done[0]));
    let (track, camera, participant) = (
        decoded_fps(&output(&done[0])),
        decoded_fps(&output(&done[1])),
        decoded_fps(&output(&done[2])),
    );
    eprintln!(
        "15 fps sources: track {track:.2} fps, participant {camera:.2} and {participant:.2} fps"
    );
    assert!((track - 15.0).abs() < 1.0, "track at {track} fps");
    for p in [camera, participant] {
        assert!((p - FPS as f64).abs() < 1.0, "participant at {p} fps");
    }
}

/// An RTSP camera that sends B-frames (x264 `-bf 2`, 15 fps, a keyframe every 4 s; its
/// picture flashes while its sound beeps): `track` copies it in display order (its decode
/// times derived, as RTP carries none) and in sync, and `participant` records it in sync; as
/// does a `participant` of a camera encoding live (its keyframes sent after their sound),
/// against that camera's own offset.
/// Before, every B-frame was shown after its P frame and the sound was off by -68 to -134 ms;
/// a `participant` was off by 20-91 ms for the whole file.
#[test]
fn an_rtsp_camera_with_b_frames_is_copied_in_display_order_and_in_sync() {
    let dirs = Dirs::new();
    let file = dirs.root.path().join("camera.mp4");
    flash_beep_file(&file, 30);
    let svc = Service::start(
        &dirs,
        "sources: { allowed_schemes: [test, rtsp] }\npipeline: { health_window_s: 3600 }",
    );
    let cam = rtsp_file(&file);
    let live = rtsp_live_file(&file);
    let (_, done) = record_bodies(
        &svc,
        &[
            (body("track", &cam.url, "rtsp_bframes"), (true, true)),
            (
                body("participant", &cam.url, "rtsp_bframes_p"),
                (true, true),
            ),
            (body("participant", &live.url, "rtsp_live_p"), (true, true)),
        ],
        Duration::from_secs(10),
    );
    assert_in_display_order(&output(&done[0]));
    // The live camera's own offset: its encoders' output, muxed here.
    let own = dirs.root.path().join("live_own.mp4");
    live_encoded(&file, &own);
    let live_own = av_offsets(&own)["median_ms"].as_f64().expect("median");
    eprintln!("the live camera's own offset: {live_own} ms");
    for (k, done) in done.iter().enumerate() {
        let path = output(done);
        let v = av_offsets(&path);
        eprintln!("{}: {v}", path.display());
        let own = if k == 2 { live_own } else { 0.0 };
        let offsets: Vec<f64> = numbers(&v["offsets_ms"]).iter().map(|o| o - own).collect();
        assert!(offsets.len() >= 6, "{v}");
        // The file's own offset is 0. The camera's own timestamps are kept (estimating its
        // clock from arrival times, thrown off by the B-frames, put the first seconds 0.25 s
        // off), and its video waits for its RTCP reports, which line its streams up (before
        // them, the picture led by up to a frame). Every flash within 20 ms; the first one,
        // whose beep starts the file's sound, within an AAC frame (21.3 ms) of the others: a
        // decoder fades a stream's first frame in. (Held to 21.4 ms of zero, it failed in a
        // full run where a `participant` was 13.3 ms throughout and 22.3 at its first flash.)
        assert!(offsets.iter().skip(1).all(|o| o.abs() <= 20.0), "{v}");
        let rest = numbers_median(&offsets[1..]);
        assert!(
            (offsets[0] - rest).abs() <= 21.4 && offsets[0].abs() <= 41.4,
            "{v}"
        );
    }
}

/// A room of two senders as they come (x264 with B-frames, keyframes every 2 s and every 4 s,
/// one joined mid-GOP): `room_composite` records both pictures side by side and their mixed
/// sound for the whole time, from the first keyframe on.
#[test]
fn a_room_of_two_senders_is_composited_for_the_whole_time() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let a = srt_sender(Profile {
        video: Some(("libx264", 2, 2)),
        audio: Some("aac"),
        sync: false,
    });
    let b = srt_sender(Profile {
        video: Some(("libx264", 4, 2)),
        audio: Some("libopus"),
        sync: false,
    });
    let room = json!({
        "type": "room_composite",
        "sources": [{"uri": a.url}, {"uri": b.url}],
        "outputs": [{"file": {"filename": "room.mp4"}},
                    {"segments": {"prefix": "room", "segment_duration_s": 2}}],
        "video": {"width": 640, "height": 240, "fps": FPS, "bitrate_kbps": 800},
        "estimated_cpu": 0.3,
    });
    record_bodies(&svc, &[(room, (true, true))], Duration::from_secs(7));
}
