//! Real live producers on free loopback ports, from Debian packages `scripts/setup` installs:
//! ffmpeg as an SRT listener and as an HLS origin (served by `python3 -m http.server`), nginx
//! with `libnginx-mod-rtmp` fed by ffmpeg, and a gst-rtsp-server (a small `/usr/bin/python3` gi
//! script). Every producer is killed on drop. Plus ffprobe/ffmpeg checks of recorded files.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::wait_for;

/// A free loopback TCP port.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A free loopback UDP port (SRT).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Whether something listens on this UDP port (from /proc/net/udp).
fn udp_bound(port: u16) -> bool {
    let hex = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&hex))
            })
        })
        .unwrap_or(false)
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A producer process, killed (SIGKILL) on drop.
pub struct Producer {
    pub child: Child,
    /// Kept alive as long as the producer (HLS segments, nginx config).
    pub _dir: Option<tempfile::TempDir>,
    /// Other processes serving it (the HLS HTTP server), killed with it.
    pub helpers: Vec<Child>,
    pub url: String,
}

impl Producer {
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        for c in self
            .helpers
            .iter_mut()
            .chain(std::iter::once(&mut self.child))
        {
            // A stopped process must be continued to die promptly on SIGKILL's delivery.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// ffmpeg arguments for 320x240@15 test video and a tone: small enough for tests on 2 cores.
fn ffmpeg_av() -> Vec<String> {
    ffmpeg_av_sized("320x240", 15)
}

/// ffmpeg arguments for `size`@`fps` test video (H.264, a keyframe every second) and a 440 Hz AAC
/// tone, in real time.
fn ffmpeg_av_sized(size: &str, fps: u32) -> Vec<String> {
    ffmpeg_lavfi(
        &format!("testsrc=size={size}:rate={fps}"),
        "sine=frequency=440:sample_rate=48000",
        fps,
    )
}

/// ffmpeg arguments for lavfi `video` and `audio` in real time: H.264 with a keyframe every
/// `gop` frames, AAC.
pub fn ffmpeg_lavfi(video: &str, audio: &str, gop: u32) -> Vec<String> {
    let gop = gop.to_string();
    [
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        video,
        "-f",
        "lavfi",
        "-i",
        audio,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        &gop,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
    ]
    .map(|a| a.to_string())
    .to_vec()
}

fn spawn(cmd: &mut Command, what: &str) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} must be installed (scripts/setup): {e}"))
}

/// ffmpeg as an SRT listener that takes exactly one caller (the egress).
pub fn srt_listener() -> Producer {
    srt_listener_sized("320x240", 15)
}

/// `srt_listener` sending `size`@`fps` (the benchmark sends camera-sized video).
pub fn srt_listener_sized(size: &str, fps: u32) -> Producer {
    srt_listener_of(ffmpeg_av_sized(size, fps))
}

/// An SRT listener sending one plain colour (a room's tiles are told apart by it) and a tone.
pub fn srt_colour(colour: &str) -> Producer {
    srt_listener_of(ffmpeg_lavfi(
        &format!("color=c={colour}:size=320x240:rate=15"),
        "sine=frequency=440:sample_rate=48000",
        15,
    ))
}

/// ffmpeg with `args` (input and codecs) as an SRT listener sending MPEG-TS.
fn srt_listener_of(args: Vec<String>) -> Producer {
    let port = free_udp_port();
    let url = format!("srt://127.0.0.1:{port}");
    let child = spawn(
        Command::new("ffmpeg")
            .args(args)
            .args(["-f", "mpegts"])
            .arg(format!("{url}?mode=listener")),
        "ffmpeg",
    );
    // Polled in /proc, not by connecting: the listener takes one caller only.
    wait_for(Duration::from_secs(20), "the SRT listener to bind", || {
        udp_bound(port).then_some(())
    });
    Producer {
        child,
        _dir: None,
        helpers: Vec::new(),
        url,
    }
}

/// ffmpeg writing a live HLS playlist (1 s segments) into a temp dir served over HTTP.
pub fn hls_origin() -> Producer {
    let dir = tempfile::Builder::new()
        .prefix("egress-hls-")
        .tempdir()
        .expect("tempdir");
    let playlist = dir.path().join("live.m3u8");
    let child = spawn(
        Command::new("ffmpeg")
            .args(ffmpeg_av())
            .args([
                "-f",
                "hls",
                "-hls_time",
                "1",
                "-hls_list_size",
                "6",
                "-hls_flags",
                "delete_segments",
            ])
            .arg(&playlist),
        "ffmpeg",
    );
    let port = free_tcp_port();
    let http = spawn(
        Command::new("/usr/bin/python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir.path()),
        "python3",
    );
    wait_for(
        Duration::from_secs(20),
        "an HLS playlist with 2 segments",
        || {
            let text = std::fs::read_to_string(&playlist).ok()?;
            (text.matches("#EXTINF").count() >= 2 && listening(port)).then_some(())
        },
    );
    Producer {
        child,
        _dir: Some(dir),
        helpers: vec![http],
        url: format!("http://127.0.0.1:{port}/live.m3u8"),
    }
}

/// nginx with the RTMP module on a free port (`live` application), no publisher yet.
pub fn nginx_rtmp() -> Producer {
    nginx_rtmp_on(free_tcp_port(), false)
}

/// nginx-rtmp on `port` that records every stream it receives to `{dir}/{key}.flv` (what an
/// RTMP output really delivered), in its temp dir: `recorded(&producer, key)`.
pub fn nginx_rtmp_recording(port: u16) -> Producer {
    nginx_rtmp_on(port, true)
}

/// Where `nginx_rtmp_recording` wrote stream `key`.
pub fn recorded(p: &Producer, key: &str) -> PathBuf {
    p._dir
        .as_ref()
        .expect("nginx dir")
        .path()
        .join(format!("{key}.flv"))
}

fn nginx_rtmp_on(port: u16, record: bool) -> Producer {
    let dir = tempfile::Builder::new()
        .prefix("egress-nginx-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path().display();
    let rec = if record {
        format!("record all; record_path {d}; record_unique off;")
    } else {
        String::new()
    };
    let conf = format!(
        "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
         daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{}}\n\
         rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; {rec} }} }} }}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).expect("nginx.conf");
    let child = spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path()),
        "nginx",
    );
    wait_for(Duration::from_secs(10), "nginx to listen", || {
        listening(port).then_some(())
    });
    Producer {
        child,
        _dir: Some(dir),
        helpers: Vec::new(),
        url: format!("rtmp://127.0.0.1:{port}/live"),
    }
}

/// ffmpeg publishing to `rtmp_url` (e.g. `rtmp://127.0.0.1:P/live/name`) until dropped.
pub fn rtmp_publisher(rtmp_url: &str) -> Producer {
    let child = spawn(
        Command::new("ffmpeg")
            .args(ffmpeg_av())
            .args(["-f", "flv", rtmp_url]),
        "ffmpeg",
    );
    Producer {
        child,
        _dir: None,
        helpers: Vec::new(),
        url: rtmp_url.to_string(),
    }
}

/// A gst-rtsp-server at `rtsp://127.0.0.1:P/cam` (P: the first argument) that plays the
/// launch line given second, shared by its clients.
const RTSP_SERVER: &str = r#"
import sys, gi
gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')
from gi.repository import Gst, GstRtspServer, GLib
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address('127.0.0.1'); server.set_service(sys.argv[1])
f = GstRtspServer.RTSPMediaFactory()
f.set_launch(sys.argv[2])
f.set_shared(True)
server.get_mount_points().add_factory('/cam', f)
server.attach(None)
print('ready', flush=True)
GLib.MainLoop().run()
"#;

/// An RTSP camera whose stream is the MP4 file at `path` (its B-frames included), paced to
/// its clock, from its start for the first client.
pub fn rtsp_file(path: &Path) -> Producer {
    gst_rtsp_server(&format!(
        "( filesrc location=\"{}\" ! qtdemux name=d \
         d.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 \
         d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )",
        path.display()
    ))
}

/// Writes `seconds` of the sync picture and sound to MP4 `path` as a camera encodes them
/// (x264 with 2 B-frames, 15 fps, a keyframe every 4 s, AAC): the picture flashes white while
/// the sound beeps, once a second; its own A/V offset is 0.
pub fn flash_beep_file(path: &Path, seconds: u32) {
    flash_beep_at(path, seconds, 15);
}

/// `flash_beep_file` at `fps` frames a second: the flash lasts `fps / 10` frames (at least one).
pub fn flash_beep_at(path: &Path, seconds: u32, fps: u32) {
    let flash = (fps / 10).max(1);
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "color=c=black:s=320x240:r={fps},drawbox=c=white:t=fill:enable='lt(mod(n,{fps}),{flash})'"
        ))
        .args(["-f", "lavfi", "-i"])
        .arg("aevalsrc='if(lt(mod(t,1),0.1),0.5*sin(2*PI*1000*t),0)|if(lt(mod(t,1),0.1),0.5*sin(2*PI*1000*t),0)':s=48000")
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"])
        .args(["-g", "60", "-bf", "2", "-c:a", "aac"])
        .arg(path)
        .status()
        .expect("ffmpeg");
    assert!(made.success(), "ffmpeg could not write {}", path.display());
}

/// A gst-rtsp-server encoding MP4 file `path` live, as a camera does (decoded and paced to the
/// clock, then x264 with 2 B-frames in its high profile, a keyframe every 4 s at 15 fps, and
/// AAC): unlike `rtsp_file`, which sends the file's frames in decode order at their decode
/// times, a live encoder sends each keyframe after the sound of its instant.
pub fn rtsp_live_file(path: &Path) -> Producer {
    gst_rtsp_server(&format!(
        "( filesrc location=\"{}\" ! qtdemux name=d \
         d.video_0 ! queue ! h264parse ! avdec_h264 ! identity sync=true ! {LIVE_VIDEO} \
         ! rtph264pay name=pay0 pt=96 \
         d.audio_0 ! queue ! aacparse ! avdec_aac ! identity sync=true ! {LIVE_AUDIO} \
         ! rtpmp4gpay name=pay1 pt=97 )",
        path.display()
    ))
}

/// The encoders of `rtsp_live_file`.
const LIVE_VIDEO: &str = "videoconvert ! x264enc speed-preset=ultrafast bframes=2 \
    key-int-max=60 ! video/x-h264,profile=high";
const LIVE_AUDIO: &str = "audioconvert ! voaacenc";

/// What `rtsp_live_file`'s encoders make of MP4 file `path`, written to MP4 `out` as fast as
/// they go: the live camera's own A/V offset (voaacenc's start, which no header says, puts
/// its sound about 33 ms late).
pub fn live_encoded(path: &Path, out: &Path) {
    let ok = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(
            format!(
                "filesrc location={} ! qtdemux name=d \
                 d.video_0 ! queue ! h264parse ! avdec_h264 ! {LIVE_VIDEO} ! h264parse \
                 ! mp4mux name=m ! filesink location={} \
                 d.audio_0 ! queue ! aacparse ! avdec_aac ! {LIVE_AUDIO} ! aacparse ! m.",
                path.display(),
                out.display()
            )
            .split_whitespace(),
        )
        .status()
        .expect("gst-launch-1.0");
    assert!(
        ok.success(),
        "the live encoders could not write {}",
        out.display()
    );
}

/// Another viewer of stream `url` (ffmpeg copying it to nowhere) until dropped: a camera one
/// joins is already streaming, mid-GOP.
pub fn viewer(url: &str) -> Producer {
    let child = spawn(
        Command::new("ffmpeg").args(["-v", "quiet", "-i", url, "-c", "copy", "-f", "null", "-"]),
        "ffmpeg",
    );
    Producer {
        child,
        _dir: None,
        helpers: Vec::new(),
        url: url.to_string(),
    }
}

/// A gst-rtsp-server at `rtsp://127.0.0.1:P/cam` (H.264 + AAC).
pub fn rtsp_server() -> Producer {
    rtsp_camera("x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15")
}

/// `rtsp_server` whose 320x240@15 video is encoded by `encoder` (a launch fragment ending in
/// an H.264 encoder), as a camera is configured.
pub fn rtsp_camera(encoder: &str) -> Producer {
    gst_rtsp_server(&format!(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 \
         ! {encoder} ! rtph264pay name=pay0 pt=96 \
         audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! voaacenc \
         ! rtpmp4gpay name=pay1 pt=97 )"
    ))
}

/// `RTSP_SERVER` on a free port, playing `launch`; returns once it listens.
fn gst_rtsp_server(launch: &str) -> Producer {
    let port = free_tcp_port();
    let child = spawn(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(RTSP_SERVER)
            .arg(port.to_string())
            .arg(launch),
        "python3-gi and gir1.2-gst-rtsp-server-1.0",
    );
    wait_for(Duration::from_secs(20), "the RTSP server to listen", || {
        listening(port).then_some(())
    });
    Producer {
        child,
        _dir: None,
        helpers: Vec::new(),
        url: format!("rtsp://127.0.0.1:{port}/cam"),
    }
}

/// ffmpeg as an SRT listener that receives one caller's MPEG-TS into `path` (what an SRT output
/// really delivered). Returns once it listens.
pub fn srt_receiver(path: &Path) -> Producer {
    let port = free_udp_port();
    let child = spawn(
        Command::new("ffmpeg").args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            &format!("srt://127.0.0.1:{port}?mode=listener"),
            "-c",
            "copy",
            "-f",
            "mpegts",
            "-y",
            &path.display().to_string(),
        ]),
        "ffmpeg",
    );
    wait_for(
        Duration::from_secs(10),
        "the SRT receiver to listen",
        || udp_bound(port).then_some(()),
    );
    Producer {
        child,
        _dir: None,
        helpers: Vec::new(),
        url: format!("srt://127.0.0.1:{port}"),
    }
}

/// `ffprobe -show_streams -show_format` as JSON.
/// The container of an HLS segment, told as a player knows it from the playlist: ffmpeg's
/// probe takes a short segment (a few TS packets, the frame or two before a stop) for MPEG-PS
/// and then fails to decode it.
fn container(path: &Path) -> Vec<&'static str> {
    if path.extension().is_some_and(|e| e == "ts") {
        vec!["-f", "mpegts"]
    } else {
        Vec::new()
    }
}

pub fn ffprobe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .args(container(path))
        .arg(path)
        .output()
        .expect("ffprobe must be installed (scripts/setup)");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

/// Decodes the whole file with ffmpeg; panics on any decode error.
pub fn ffmpeg_decodes(path: &Path) {
    decodes_except(path, &[]);
}

/// Decodes the whole file with ffmpeg; panics on any decode error, allowing only ffmpeg's own
/// null muxer refusing equal timestamps (frames a sender delivered in one burst, stamped at
/// arrival, fall in one tick of its frame-rate clock: each still decodes).
pub fn ffmpeg_decodes_burst(path: &Path) {
    decodes_except(path, &["non monotonically increasing dts to muxer"]);
}

fn decodes_except(path: &Path, allowed: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error"])
        .args(container(path))
        .arg("-i")
        .arg(path)
        // Frames keep the file's own time base: rounded to the frame rate (ffmpeg's default),
        // a file whose sound starts a fraction of a frame before its picture had two frames
        // put in one tick ("non monotonically increasing dts") though its times all differ.
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .expect("ffmpeg must be installed (scripts/setup)");
    let err = String::from_utf8_lossy(&out.stderr);
    // ffmpeg folds a message it repeats into "Last message repeated N times": that stands for
    // the message before it.
    let mut other = 0;
    let mut last_allowed = false;
    for l in err.lines().filter(|l| !l.trim().is_empty()) {
        if l.contains("Last message repeated") {
            other += usize::from(!last_allowed);
            continue;
        }
        last_allowed = allowed.iter().any(|a| l.contains(a));
        other += usize::from(!last_allowed);
    }
    assert!(
        out.status.success() && other == 0,
        "ffmpeg cannot decode {} cleanly: {err}",
        path.display()
    );
}

/// The first frame of the `v` or `a` stream: (pts in seconds, key frame).
pub fn first_frame(path: &Path, stream: &str) -> (f64, bool) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json", "-select_streams", stream])
        .args([
            "-read_intervals",
            "%+#1",
            "-show_entries",
            "frame=pts_time,key_frame",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let f = &v["frames"][0];
    let pts = f["pts_time"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no first {stream} frame in {}: {v}", path.display()));
    (pts, f["key_frame"] == 1)
}

/// The codec names of a probed file's streams, video first.
pub fn codecs(probe: &Value) -> (Option<String>, Option<String>) {
    let of = |t: &str| {
        probe["streams"].as_array().and_then(|s| {
            s.iter()
                .find(|s| s["codec_type"] == t)
                .and_then(|s| s["codec_name"].as_str().map(String::from))
        })
    };
    (of("video"), of("audio"))
}

/// The file's duration as ffprobe reads its container.
pub fn duration(probe: &Value) -> f64 {
    probe["format"]["duration"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {probe}"))
}

/// The output file of a finished egress record.
pub fn output(v: &Value) -> PathBuf {
    PathBuf::from(
        v["files"][0]["location"]
            .as_str()
            .unwrap_or_else(|| panic!("no file in {v}")),
    )
}

/// The HLS segments of a record joined into one MPEG-TS file (as a player plays them).
pub fn joined_segments(done: &Value) -> PathBuf {
    let playlist = PathBuf::from(done["segments"]["location"].as_str().expect("playlist"));
    let dir = playlist.parent().expect("dir");
    let text = std::fs::read_to_string(&playlist).expect("playlist");
    let mut all = Vec::new();
    for s in text.lines().filter(|l| l.ends_with(".ts")) {
        all.extend(std::fs::read(dir.join(s)).expect("segment"));
    }
    let out = playlist.with_extension("joined.ts");
    std::fs::write(&out, all).expect("joined segments");
    out
}

/// The durations (s) of each stream of a file: (video, audio).
pub fn stream_durations(path: &Path) -> (Option<f64>, Option<f64>) {
    let probe = ffprobe(path);
    let of = |t: &str| {
        probe["streams"].as_array().and_then(|s| {
            s.iter().find(|s| s["codec_type"] == t).and_then(|s| {
                s["duration"]
                    .as_str()
                    .and_then(|d| d.parse().ok())
                    .or_else(|| s["tags"]["DURATION"].as_str().and_then(hms))
                    // GStreamer's Matroska has no per-track duration: the file's.
                    .or_else(|| {
                        probe["format"]["duration"]
                            .as_str()
                            .and_then(|d| d.parse().ok())
                    })
            })
        })
    };
    (of("video"), of("audio"))
}

/// Seconds of a Matroska `DURATION` tag ("00:00:07.833000000").
fn hms(t: &str) -> Option<f64> {
    let mut secs = 0.0;
    for part in t.split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(secs)
}

/// What `scripts/av-offset` measured in a file (at least 5 flashes found).
pub fn av_offsets(path: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/av-offset");
    let out = Command::new(script)
        .arg(path)
        .output()
        .expect("scripts/av-offset");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "av-offset {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(v["flashes"].as_u64() >= Some(5), "{v}");
    v
}

/// Gray 80x60 frames of a file, decoded by ffmpeg.
pub fn gray_frames(path: &std::path::Path) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-vf",
            "scale=80:60",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ])
        .output()
        .expect("ffmpeg");
    out.stdout.chunks(80 * 60).map(<[u8]>::to_vec).collect()
}
