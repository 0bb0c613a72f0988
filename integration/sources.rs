//! Live sources end to end, from real producers (`producers.rs`): SRT from a single-connection
//! ffmpeg listener, HLS stopped gracefully, RTMP through nginx, RTSP from gst-rtsp-server; a
//! sender paused and resumed, one killed for good; the errors a user sees for sources that are
//! not there; and a stop before the first frame. Files are checked with ffprobe and ffmpeg.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::*;

/// Short deadlines so failures and losses show within seconds.
const FAST: &str = "pipeline: { start_timeout_s: 6, source_stall_s: 2, source_reconnect_s: 3 }\n\
                    sources: { allowed_schemes: [test, srt, rtmp, rtsp, http] }";

fn body(egress_type: &str, uri: &str, filename: &str) -> Value {
    request(egress_type, &[uri], filename)
}

fn stop(svc: &Service, id: &str) {
    let (s, v) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    assert_eq!(s, 200, "{v}");
}

/// The handler's own log (stderr), for failure messages.
fn handler_log(dirs: &Dirs, id: &str) -> String {
    std::fs::read_to_string(dirs.state().join("logs").join(format!("{id}.log"))).unwrap_or_default()
}

fn finished(svc: &Service, id: &str, within: Duration) -> Value {
    svc.wait_status(
        id,
        &["complete", "failed", "aborted", "limit_reached"],
        within,
    )
}

/// Records `secs` of `uri`, stops, and checks: complete within a few seconds of the stop, a
/// file ffmpeg decodes with video and audio. Returns the record, the file's probe, and the time
/// from the request to `active`.
fn record(
    svc: &Service,
    egress_type: &str,
    uri: &str,
    filename: &str,
    secs: u64,
) -> (Value, Value, Duration) {
    let t0 = Instant::now();
    let id = svc.start_egress(&body(egress_type, uri, filename));
    svc.wait_status(&id, &["active"], Duration::from_secs(20));
    let to_active = t0.elapsed();
    std::thread::sleep(Duration::from_secs(secs));
    let stopped = Instant::now();
    stop(svc, &id);
    let done = finished(svc, &id, Duration::from_secs(15));
    let took = stopped.elapsed();
    assert_eq!(
        (done["status"].as_str(), done["end_reason"].as_str()),
        (Some("complete"), Some("StopEgress API")),
        "{done}\n{}",
        svc.log()
    );
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    let path = output(&done);
    ffmpeg_decodes(&path);
    let probe = ffprobe(&path);
    let (v, a) = codecs(&probe);
    assert!(v.is_some() && a.is_some(), "{probe}");
    (done, probe, to_active)
}

/// SRT from an ffmpeg listener that takes one caller: a `track` copies H.264 and AAC (no
/// re-encode), starts at a keyframe with audio aligned, and is active fast.
#[test]
fn srt_listener_track_copies_h264_and_aac_from_a_keyframe() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, FAST);
    let srt = srt_listener();
    let (done, probe, to_active) = record(&svc, "track", &srt.url, "srt.mp4", 3);
    eprintln!("srt: active {} ms after the request", to_active.as_millis());
    assert!(to_active < Duration::from_secs(5), "{to_active:?}");
    assert_eq!(codecs(&probe), (Some("h264".into()), Some("aac".into())));
    let path = output(&done);
    let (v0, key) = first_frame(&path, "v");
    let (a0, _) = first_frame(&path, "a");
    assert!(key, "the first video frame is not a keyframe");
    assert!(v0.abs() < 0.1, "video starts at {v0}");
    assert!(
        (a0 - v0).abs() <= 0.1,
        "audio starts at {a0}, video at {v0}"
    );
    // Copied: the handler built no encoder.
    let id = done["egress_id"].as_str().unwrap();
    let log = std::fs::read_to_string(dirs.state().join("logs").join(format!("{id}.log")))
        .unwrap_or_default();
    assert!(
        !log.contains("x264enc") && !log.contains("voaacenc"),
        "{log}"
    );
}

/// HLS (ffmpeg -f hls over HTTP) stops within seconds, not at the EOS timeout.
#[test]
fn hls_source_stops_gracefully() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, FAST);
    let hls = hls_origin();
    let (_, probe, _) = record(&svc, "participant", &hls.url, "hls.mp4", 3);
    assert!(duration(&probe) > 1.0, "{probe}");
}

/// RTMP through nginx-rtmp, into Matroska.
#[test]
fn rtmp_through_nginx() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, FAST);
    let nginx = nginx_rtmp();
    let url = format!("{}/cam", nginx.url);
    let _publisher = rtmp_publisher(&url);
    let (_, probe, to_active) = record(&svc, "track", &url, "rtmp.mkv", 3);
    eprintln!(
        "rtmp: active {} ms after the request",
        to_active.as_millis()
    );
    assert_eq!(codecs(&probe).0.as_deref(), Some("h264"));
}

/// RTSP from gst-rtsp-server, transcoded.
#[test]
fn rtsp_from_gst_rtsp_server() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, FAST);
    let rtsp = rtsp_server();
    record(&svc, "participant", &rtsp.url, "rtsp.webm", 3);
}

/// A sender paused (SIGSTOP) for 3 s and resumed: one file, decodable, as long as the wall
/// clock says, complete after the stop.
#[test]
fn a_paused_sender_gives_one_continuous_file() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "pipeline: { source_stall_s: 5 }\n\
         sources: { allowed_schemes: [srt] }",
    );
    let srt = srt_listener();
    let id = svc.start_egress(&body("track", &srt.url, "paused.mp4"));
    let active = svc.wait_status(&id, &["active"], Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    srt.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    srt.signal(libc::SIGCONT);
    let now = svc.egress(&id);
    assert_eq!(
        now["status"],
        "active",
        "{now}\n{}",
        handler_log(&dirs, &id)
    );
    std::thread::sleep(Duration::from_secs(2));
    // Recorded from the first frame to the stop: the time the file is finalized in (longer on a
    // loaded machine) is not part of it.
    let stopped_at = egress_engine::model::now_ms();
    stop(&svc, &id);
    let done = finished(&svc, &id, Duration::from_secs(15));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    let wall = (stopped_at - active["started_at"].as_u64().unwrap()) as f64 / 1000.0;
    let path = output(&done);
    ffmpeg_decodes_burst(&path);
    let d = duration(&ffprobe(&path));
    // Nothing cut: at least the wall-clock time. The sender's 3 s backlog, sent in a burst on
    // resume, comes after the pause it arrived after (SRT timestamps are arrival times).
    assert!(
        d > wall - 1.0 && d < wall + 3.5,
        "file lasts {d:.2} s for {wall:.2} s recorded"
    );
}

/// A sender killed for good: "Source lost" within stall + reconnect + 2 s, complete, and the
/// file decodes.
#[test]
fn a_killed_sender_ends_source_lost() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, FAST);
    let srt = srt_listener();
    let id = svc.start_egress(&body("participant", &srt.url, "lost.mkv"));
    svc.wait_status(&id, &["active"], Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    srt.signal(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2 + 3 + 2 + 5);
    let done = loop {
        let v = svc.egress(&id);
        if ["complete", "failed", "aborted"]
            .iter()
            .any(|s| v["status"] == *s)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "{v}\n{}",
            handler_log(&dirs, &id)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = killed.elapsed();
    assert_eq!(
        (done["status"].as_str(), done["end_reason"].as_str()),
        (Some("complete"), Some("Source lost")),
        "{done}\n{}\n--- handler ---\n{}",
        svc.log(),
        handler_log(&dirs, &id)
    );
    assert!(
        took <= Duration::from_secs(2 + 3 + 2),
        "source lost after {took:?}"
    );
    ffmpeg_decodes(&output(&done));
}

/// Sources that are not there fail fast with what happened, and leave no file.
#[test]
fn missing_sources_fail_fast_with_clear_errors() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, FAST);
    let nginx = nginx_rtmp();
    let closed_http = format!("http://127.0.0.1:{}/live.m3u8", free_tcp_port());
    let no_srt = format!("srt://127.0.0.1:{}", free_udp_port());
    let cases = [
        (format!("{}/nobody", nginx.url), "source not found"),
        (no_srt, "connection refused"),
        (closed_http, "connection refused"),
    ];
    for (n, (uri, want)) in cases.iter().enumerate() {
        let t0 = Instant::now();
        let id = svc.start_egress(&body("track", uri, &format!("missing{n}.mp4")));
        let done = finished(&svc, &id, Duration::from_secs(20));
        let error = done["error"].as_str().unwrap_or("");
        assert_eq!(done["status"], "failed", "{done}");
        assert!(error.starts_with(want), "{uri}: {error}");
        assert!(!error.starts_with(": ") && !error.contains("Internal data stream error"));
        assert!(
            t0.elapsed() < Duration::from_secs(6 + 3),
            "{uri}: {:?}",
            t0.elapsed()
        );
        assert!(
            !dirs.output().join(format!("missing{n}.mp4")).exists(),
            "{uri}"
        );
    }
}

/// A stop before the first frame ends `aborted` "Stopped before start" with no file.
#[test]
fn a_stop_before_the_first_frame_leaves_no_file() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, FAST);
    let nginx = nginx_rtmp();
    // Nobody publishes: the connection is up, no media comes.
    let id = svc.start_egress(&body("track", &format!("{}/later", nginx.url), "early.mp4"));
    std::thread::sleep(Duration::from_millis(500));
    stop(&svc, &id);
    let done = finished(&svc, &id, Duration::from_secs(10));
    assert_eq!(
        (done["status"].as_str(), done["end_reason"].as_str()),
        (Some("aborted"), Some("Stopped before start")),
        "{done}"
    );
    assert_eq!(done["files"], json!([]));
    assert!(!dirs.output().join("early.mp4").exists());
}
