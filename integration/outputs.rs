//! Outputs end to end against real servers and an independent decoder: every output kind from
//! one encode (a file, HLS, RTMP into nginx-rtmp, SRT into an ffmpeg listener, JPEG images), a
//! killed handler and a dead service (hybrid MP4 and playlist repaired), an RTMP server killed
//! mid-recording, stream URLs added and removed while recording, name templates and confinement.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::*;

/// A small participant (320x240@15 from a live test source) with these outputs.
fn small(outputs: Value) -> Value {
    json!({
        "type": "participant",
        "sources": [{"uri": "test://av?pattern=ball&width=320&height=240&fps=15"}],
        "video": {"width": 320, "height": 240, "fps": 15, "bitrate_kbps": 800},
        "outputs": outputs,
    })
}

fn path_of(v: &Value) -> PathBuf {
    PathBuf::from(v.as_str().unwrap_or_else(|| panic!("not a path: {v}")))
}

/// Seconds of video ffprobe finds by decoding every frame (not from the header).
fn video_seconds(path: &Path) -> f64 {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "quiet", "-select_streams", "v:0", "-show_entries"])
        .args(["frame=best_effort_timestamp_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    let t: Vec<f64> = text
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    let lo = t.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = t.iter().cloned().fold(0.0, f64::max);
    if t.is_empty() { 0.0 } else { hi - lo }
}

/// The segments a playlist lists, with their durations; and whether it ended.
fn playlist(path: &Path) -> (Vec<(String, f64)>, bool) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut v = Vec::new();
    let mut d = None;
    for l in text.lines() {
        if let Some(x) = l.strip_prefix("#EXTINF:") {
            d = x.trim_end_matches(',').parse().ok();
        } else if !l.starts_with('#') && !l.is_empty() {
            v.push((l.to_string(), d.take().unwrap_or(0.0)));
        }
    }
    (v, text.contains("#EXT-X-ENDLIST"))
}

fn handler_log(dirs: &Dirs, id: &str) -> String {
    std::fs::read_to_string(dirs.state().join("logs").join(format!("{id}.log"))).unwrap_or_default()
}

#[test]
fn every_output_kind_at_once_from_one_encode() {
    let dirs = Dirs::new();
    let rtmp = nginx_rtmp_recording(free_tcp_port());
    let srt_file = dirs.root.path().join("srt-received.ts");
    let srt = srt_receiver(&srt_file);
    let svc = Service::start(&dirs, "");
    let rtmp_url = format!("{}/sk_live_secret", rtmp.url);
    let id = svc.start_egress(&small(json!([
        {"file": {"filename": "rec/{egress_id}.mp4"}},
        {"segments": {"prefix": "hls/{egress_id}", "segment_duration_s": 2,
                      "live_playlist": {"length": 3}}},
        {"stream": {"urls": [rtmp_url, srt.url]}},
        {"images": {"prefix": "img/{egress_id}", "interval_s": 1, "width": 160, "height": 120}},
    ])));
    let t0 = svc.wait_active(&id);
    let v = svc.egress(&id);
    // Stream keys never leave the handler: not in the record, its request echo or the logs.
    assert!(!v.to_string().contains("sk_live_secret"), "{v}");
    assert_eq!(v["streams"][0]["url"], format!("{}/{{redacted}}", rtmp.url));
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = svc.egress(&id);
        let (flv, ts) = (size(&recorded(&rtmp, "sk_live_secret")), size(&srt_file));
        if v["segments"]["count"].as_u64() >= Some(3)
            && v["images"]["count"].as_u64() >= Some(4)
            && flv > 50_000
            && ts > 50_000
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outputs did not grow: flv {flv} B, srt {ts} B, {v}\n{}",
            handler_log(&dirs, &id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (s, _) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    let recorded_s = t0.elapsed().as_secs_f64();
    assert_eq!(s, 200);
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(40));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());

    // One encode feeds everything: one x264enc and one AAC encoder in the graph.
    let log = handler_log(&dirs, &id);
    let graph = log
        .lines()
        .find(|l| l.contains("graph decided"))
        .expect("graph line");
    assert_eq!(graph.matches("x264enc").count(), 1, "{graph}");
    assert_eq!(graph.matches("voaacenc").count(), 1, "{graph}");
    assert!(!log.contains("sk_live_secret") && !svc.log().contains("sk_live_secret"));
    let (_, metrics) = svc.raw("GET", "/metrics", None, &[]);
    assert!(!metrics.contains("sk_live_secret"));

    // The file: a normal progressive MP4 (no fragments left) with H.264 and AAC.
    let mp4 = path_of(&done["files"][0]["location"]);
    assert!(
        !egress_engine::repair::is_fragmented(&mp4).unwrap(),
        "{mp4:?}"
    );
    let probe = ffprobe(&mp4);
    assert_eq!(codecs(&probe), (Some("h264".into()), Some("aac".into())));
    assert!((duration(&probe) - recorded_s).abs() < 1.5, "{probe}");
    ffmpeg_decodes(&mp4);

    // HLS: an ended EVENT playlist of closed segments that decode, matching the record.
    let m3u8 = path_of(&done["segments"]["location"]);
    let (segs, ended) = playlist(&m3u8);
    assert!(ended && segs.len() >= 3, "{segs:?}");
    assert!(
        std::fs::read_to_string(&m3u8)
            .unwrap()
            .contains("#EXT-X-PLAYLIST-TYPE:EVENT")
    );
    let total: f64 = segs.iter().map(|s| s.1).sum();
    assert!((total - recorded_s).abs() < 2.5, "{total} vs {recorded_s}");
    assert_eq!(done["segments"]["count"].as_u64(), Some(segs.len() as u64));
    ffmpeg_decodes(&m3u8);
    let live = dirs
        .output()
        .join(done["segments"]["live_playlist"].as_str().unwrap());
    // Written (not just absent), a window of at most 3, ended like the EVENT playlist.
    let (window, ended) = playlist(&live);
    assert!(
        (1..=3).contains(&window.len()) && ended,
        "{window:?}, ended: {ended}"
    );

    // Images: JPEGs of the asked size, as many as the record says.
    let n = done["images"]["count"].as_u64().unwrap();
    assert!(n >= 4, "{done}");
    let img_dir = dirs.output().canonicalize().unwrap().join("img");
    let first = img_dir.join(format!("{id}_00000.jpg"));
    let p = ffprobe(&first);
    assert_eq!(p["streams"][0]["codec_name"], "mjpeg");
    assert_eq!(
        (
            p["streams"][0]["width"].as_u64(),
            p["streams"][0]["height"].as_u64()
        ),
        (Some(160), Some(120))
    );
    assert!(img_dir.join(format!("{id}_{:05}.jpg", n - 1)).exists());

    // What the servers received decodes: FLV over RTMP, MPEG-TS over SRT.
    drop(srt);
    let flv = recorded(&rtmp, "sk_live_secret");
    assert_eq!(
        codecs(&ffprobe(&flv)),
        (Some("h264".into()), Some("aac".into()))
    );
    assert!(video_seconds(&flv) > 3.0, "{flv:?}");
    assert_eq!(codecs(&ffprobe(&srt_file)).0, Some("h264".into()));
    assert!(video_seconds(&srt_file) > 3.0);
    for s in done["streams"].as_array().unwrap() {
        assert_eq!(s["status"], "ended", "{s}");
        assert!(s["started_at"].is_u64() && s["ended_at"].is_u64(), "{s}");
    }

    // The manifest: the final record, beside the file.
    let manifest = path_of(&done["manifest"]);
    assert_eq!(manifest, mp4.with_file_name(format!("{id}.json")));
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["status"], "complete");
    assert_eq!(m["egress_id"], id);
}

#[test]
fn a_killed_handler_leaves_mp4_and_segments_that_decode_and_are_repaired() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let id = svc.start_egress(&small(json!([
        {"file": {"filename": "k.mp4"}},
        {"segments": {"prefix": "k", "segment_duration_s": 4}},
    ])));
    let t0 = svc.wait_active(&id);
    let pid = svc.egress(&id)["handler_pid"].as_u64().unwrap() as i32;
    wait_for(Duration::from_secs(20), "6 s recorded", || {
        (t0.elapsed() >= Duration::from_secs(6)).then_some(())
    });
    let killed_at = t0.elapsed().as_secs_f64();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let done = svc.wait_status(&id, &["failed"], Duration::from_secs(60));
    assert_eq!(done["end_reason"], "Process killed", "{done}");
    // The MP4 was fragmented at the kill; the service remuxed it into a normal one whose
    // header has the duration, losing at most ~2 s.
    let mp4 = path_of(&done["files"][0]["location"]);
    assert!(!egress_engine::repair::is_fragmented(&mp4).unwrap());
    let d = duration(&ffprobe(&mp4));
    assert!(
        d >= killed_at - 2.0 && d <= killed_at + 0.5,
        "{d} vs killed at {killed_at}"
    );
    assert!((done["files"][0]["duration_s"].as_f64().unwrap() - d).abs() < 0.1);
    ffmpeg_decodes(&mp4);
    // The playlist lists the closed segments and the one cut by the kill, and is ended.
    let m3u8 = path_of(&done["segments"]["location"]);
    let (segs, ended) = playlist(&m3u8);
    assert!(ended, "{segs:?}");
    let total: f64 = segs.iter().map(|s| s.1).sum();
    assert!(
        total >= killed_at - 2.0,
        "{total} vs killed at {killed_at}: {segs:?}"
    );
    ffmpeg_decodes(&m3u8);
}

#[test]
fn outputs_left_by_a_dead_service_are_repaired_on_the_next_start() {
    let dirs = Dirs::new();
    let mut svc = Service::start(&dirs, "");
    let id = svc.start_egress(&small(json!([
        {"file": {"filename": "d.mp4"}},
        {"segments": {"prefix": "d", "segment_duration_s": 2}},
    ])));
    let t0 = svc.wait_active(&id);
    let pid = svc.egress(&id)["handler_pid"].as_u64().unwrap() as i32;
    wait_for(Duration::from_secs(20), "5 s recorded", || {
        (t0.elapsed() >= Duration::from_secs(5)).then_some(())
    });
    // Power cut: the service and its handler die at once; nothing finalizes.
    let killed_at = t0.elapsed().as_secs_f64();
    svc.signal(libc::SIGKILL);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    svc.wait_exit(Duration::from_secs(10));
    let mp4 = dirs.output().canonicalize().unwrap().join("d.mp4");
    assert!(
        egress_engine::repair::is_fragmented(&mp4).unwrap(),
        "left fragmented"
    );
    let svc = Service::start(&dirs, "");
    let done = svc.wait_status(&id, &["failed"], Duration::from_secs(60));
    assert_eq!(done["end_reason"], "Process killed", "{done}");
    assert!(
        !egress_engine::repair::is_fragmented(&mp4).unwrap(),
        "repaired at start"
    );
    let d = duration(&ffprobe(&mp4));
    assert!(d >= killed_at - 2.0, "{d} vs killed at {killed_at}");
    ffmpeg_decodes(&mp4);
    let (segs, ended) = playlist(&path_of(&done["segments"]["location"]));
    assert!(
        ended && segs.iter().map(|s| s.1).sum::<f64>() >= killed_at - 2.0,
        "{segs:?}"
    );
}

#[test]
fn a_stream_server_killed_mid_recording_fails_that_stream_only() {
    let dirs = Dirs::new();
    let rtmp = nginx_rtmp();
    let svc = Service::start(&dirs, "pipeline: { stream_retry_s: 3 }");
    let id = svc.start_egress(&small(json!([
        {"file": {"filename": "s.mp4"}},
        {"segments": {"prefix": "s", "segment_duration_s": 2}},
        {"stream": {"urls": [format!("{}/key1", rtmp.url)]}},
    ])));
    let t0 = svc.wait_active(&id);
    wait_for(Duration::from_secs(10), "the stream to start", || {
        svc.egress(&id)["streams"][0]["started_at"].as_u64()
    });
    std::thread::sleep(Duration::from_secs(2));
    drop(rtmp);
    let failed = wait_for(
        Duration::from_secs(30),
        "the stream to be marked failed",
        || {
            let v = svc.egress(&id);
            (v["streams"][0]["status"] == "failed").then_some(v)
        },
    );
    assert_eq!(
        failed["status"], "active",
        "the recording goes on: {failed}"
    );
    let err = failed["streams"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("retried for 3 s"), "{err}");
    assert!(!err.contains("key1"), "{err}");
    let before = failed["segments"]["count"].as_u64().unwrap();
    wait_for(
        Duration::from_secs(10),
        "more segments after the failure",
        || (svc.egress(&id)["segments"]["count"].as_u64() > Some(before)).then_some(()),
    );
    svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    let recorded_s = t0.elapsed().as_secs_f64();
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(40));
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(done["streams"][0]["status"], "failed");
    let mp4 = path_of(&done["files"][0]["location"]);
    assert!((duration(&ffprobe(&mp4)) - recorded_s).abs() < 1.5);
    ffmpeg_decodes(&mp4);
    let (segs, ended) = playlist(&path_of(&done["segments"]["location"]));
    assert!(ended && (segs.iter().map(|s| s.1).sum::<f64>() - recorded_s).abs() < 2.5);
}

#[test]
fn stream_urls_are_added_and_removed_while_recording() {
    let dirs = Dirs::new();
    let rtmp = nginx_rtmp_recording(free_tcp_port());
    let svc = Service::start(&dirs, "");
    let id = svc.start_egress(&small(json!([
        {"file": {"filename": "a.mp4"}},
        {"stream": {"urls": []}},
    ])));
    svc.wait_active(&id);
    let path = format!("/v1/egress/{id}/streams");
    let (s, v) = svc.post(&path, &json!({"add_urls": [format!("{}/first", rtmp.url)]}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["streams"][0]["url"], format!("{}/{{redacted}}", rtmp.url));
    let (s, v) = svc.post(
        &path,
        &json!({"add_urls": [format!("{}/second", rtmp.url)]}),
    );
    assert_eq!(s, 200, "{v}");
    wait_for(
        Duration::from_secs(20),
        "both streams to reach nginx",
        || {
            let big = |k| std::fs::metadata(recorded(&rtmp, k)).is_ok_and(|m| m.len() > 30_000);
            (big("first") && big("second")).then_some(())
        },
    );
    // Mistakes are named; nothing changes.
    for (body, field) in [
        (
            json!({"remove_urls": ["rtmp://127.0.0.1:1/live/none"]}),
            "remove_urls[0]",
        ),
        (json!({"add_urls": ["http://h/app/key"]}), "add_urls[0]"),
        (
            json!({"add_urls": [format!("{}/first", rtmp.url)]}),
            "add_urls[0]",
        ),
    ] {
        let (s, v) = svc.post(&path, &body);
        assert_eq!((s, v["error"]["field"].as_str()), (400, Some(field)), "{v}");
    }
    let (s, v) = svc.post(
        &path,
        &json!({"remove_urls": [format!("{}/first", rtmp.url)]}),
    );
    assert_eq!(s, 200, "{v}");
    // A removed URL leaves the record; a count stays.
    assert_eq!(v["streams"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["streams"][0]["status"], "active");
    assert_eq!(v["streams_removed"], 1, "{v}");
    let size = |k| {
        std::fs::metadata(recorded(&rtmp, k))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let second_before = size("second");
    wait_for(
        Duration::from_secs(10),
        "the second stream to go on",
        || (size("second") > second_before + 20_000).then_some(()),
    );
    svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    let done = svc.wait_status(&id, &["complete"], Duration::from_secs(40));
    assert_eq!(done["streams"][0]["status"], "ended");
    let (s, v) = svc.post(&path, &json!({"add_urls": [format!("{}/late", rtmp.url)]}));
    assert_eq!(s, 409, "{v}");
    for k in ["first", "second"] {
        let flv = recorded(&rtmp, k);
        assert_eq!(codecs(&ffprobe(&flv)).0, Some("h264".into()), "{k}");
        assert!(video_seconds(&flv) > 1.0, "{k}");
    }
}

#[test]
fn templates_expand_and_outputs_stay_inside_the_output_dir() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let out = dirs.output().canonicalize().unwrap();
    let outside = dirs.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("escape")).unwrap();
    let bad = |outputs: Value| svc.post("/v1/egress", &small(outputs));
    for (outputs, field) in [
        (
            json!([{"file": {"filename": "{room}.mp4"}}]),
            "outputs[0].file.filename",
        ),
        (
            json!([{"segments": {"prefix": "../x"}}]),
            "outputs[0].segments.prefix",
        ),
        (
            json!([{"images": {"prefix": "/abs/x"}}]),
            "outputs[0].images.prefix",
        ),
        (
            json!([{"file": {}}, {"file": {"filename": "b.mkv"}}]),
            "outputs[1]",
        ),
        (
            json!([{"stream": {"urls": ["rtmp://h"]}}]),
            "outputs[0].stream.urls[0]",
        ),
    ] {
        let (s, v) = bad(outputs.clone());
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{outputs}: {v}"
        );
    }
    // A symlink leading outside is never followed, for segments and images too.
    for (outputs, field) in [
        (
            json!([{"segments": {"prefix": "escape/seg"}}]),
            "segments.prefix",
        ),
        (
            json!([{"images": {"prefix": "escape/img"}}]),
            "images.prefix",
        ),
    ] {
        let (s, v) = bad(outputs.clone());
        assert_eq!(s, 400, "{outputs}: {v}");
        // Named as what it is (it used to say output.file.filename).
        assert_eq!(v["error"]["field"], field, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("outside"),
            "{v}"
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // `output` and `outputs` together, or neither: 400.
    let mut both = small(json!([{"file": {}}]));
    both["output"] = json!({"file": {"filename": "x.mp4"}});
    assert_eq!(svc.post("/v1/egress", &both).0, 400);

    let id = svc.start_egress(&small(json!([
        {"file": {"filename": "{type}/{date}/{egress_id}-{time}.mp4"}},
        {"segments": {"prefix": "live/{egress_id}"}},
    ])));
    let v = svc.egress(&id);
    let name = v["files"][0]["filename"].as_str().unwrap();
    let parts: Vec<&str> = name.split('/').collect();
    assert_eq!(parts[0], "participant");
    assert!(
        parts[1].len() == 10 && parts[1].as_bytes()[4] == b'-',
        "{name}"
    );
    assert!(
        parts[2].starts_with(&format!("{id}-")) && parts[2].ends_with("Z.mp4"),
        "{name}"
    );
    assert!(path_of(&v["files"][0]["location"]).starts_with(&out));
    // The HLS prefix is taken: a second egress asking for it gets 409, and makes nothing.
    let (s, e) = svc.post(
        "/v1/egress",
        &small(json!([{"segments": {"prefix": format!("live/{id}")}}])),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("output_exists")),
        "{e}"
    );
    svc.wait_active(&id);
    // The old single `output` keeps working, defaulting to {egress_id}.mp4.
    let old = svc.start_egress(&json!({"type": "participant",
        "sources": [{"uri": "test://av?width=320&height=240&fps=15"}],
        "video": {"width": 320, "height": 240, "fps": 15}, "output": {"file": {}}}));
    let v = svc.egress(&old);
    assert_eq!(v["files"][0]["filename"], format!("{old}.mp4"));
    for e in [&id, &old] {
        svc.wait_active(e);
        svc.post(&format!("/v1/egress/{e}/stop"), &Value::Null);
    }
    for e in [&id, &old] {
        let done = svc.wait_status(e, &["complete"], Duration::from_secs(40));
        ffmpeg_decodes(&path_of(&done["files"][0]["location"]));
    }
}

/// Stops that leave a last HLS segment of a fraction of a second (0.1 to 0.5 s past a cut):
/// every segment on disk is in the playlist and in `segments.count` (no empty or unlisted
/// `.ts` left beside them), and the playlist lasts as long as the MP4.
#[test]
fn a_short_last_segment_is_in_the_playlist() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let ids: Vec<(String, u64)> = [100u64, 250, 400, 500]
        .iter()
        .enumerate()
        .map(|(k, ms)| {
            let body = small(json!([{"file": {"filename": format!("short{k}.mp4")}},
                {"segments": {"prefix": format!("short{k}"), "segment_duration_s": 1}}]));
            (svc.start_egress(&body), *ms)
        })
        .collect();
    for (id, _) in &ids {
        svc.wait_active(id);
    }
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    for (id, ms) in &ids {
        // Past the third segment by about `ms` (keyframes every second at 15 fps).
        let at = Duration::from_millis(3000 + ms);
        std::thread::sleep(at.saturating_sub(t0.elapsed()));
        svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    }
    for (k, (id, _)) in ids.iter().enumerate() {
        let v = svc.wait_status(id, &["complete"], Duration::from_secs(20));
        let pl = path_of(&v["segments"]["location"]);
        let (listed, ended) = playlist(&pl);
        assert!(ended, "{v}");
        let dir = pl.parent().expect("dir");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("short{k}_")) && n.ends_with(".ts"))
            .collect();
        on_disk.sort();
        let names: Vec<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, on_disk, "{v}");
        assert_eq!(
            v["segments"]["count"].as_u64(),
            Some(on_disk.len() as u64),
            "{v}"
        );
        let hls: f64 = listed.iter().map(|(_, d)| d).sum();
        let mp4 = v["files"][0]["duration_s"].as_f64().unwrap_or(0.0);
        assert!((hls - mp4).abs() < 0.3, "HLS {hls} s, MP4 {mp4} s: {v}");
    }
}

/// A stream URL that never connects (a refused port) is `retrying` with the last error from
/// its first failure on, not `active` with no error; when the egress stops first it ends
/// `failed` with that cause, not `ended` (issue 22 item 12).
#[test]
fn a_stream_url_that_never_connects_says_so() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "pipeline: { stream_retry_s: 120 }");
    let port = free_tcp_port();
    let id = svc.start_egress(&small(json!([
        {"file": {"filename": "nowhere.mp4"}},
        {"stream": {"urls": [format!("rtmp://127.0.0.1:{port}/live/secretkey"),
                             "srt://no-such-host.invalid:9000".to_string()]}},
    ])));
    svc.wait_active(&id);
    let v = wait_for(
        Duration::from_secs(15),
        "the streams to be retrying",
        || {
            let v = svc.egress(&id);
            (v["streams"][0]["status"] == "retrying" && v["streams"][1]["status"] == "retrying")
                .then_some(v)
        },
    );
    let err = v["streams"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!err.is_empty() && !err.contains("secretkey"), "{v}");
    // srtsink says only "Could not open resource for writing": the host is named.
    let err = v["streams"][1]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("cannot resolve host no-such-host.invalid"),
        "{v}"
    );
    svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(30));
    assert_eq!(
        done["status"], "complete",
        "the recording itself is whole: {done}"
    );
    let s = &done["streams"][0];
    assert_eq!(s["status"], "failed", "{done}");
    assert!(
        !s["error"].as_str().unwrap_or_default().is_empty(),
        "{done}"
    );
}
