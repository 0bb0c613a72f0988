//! Recording end to end: each egress type from test sources, a killed handler, the session
//! limit, and records (and a finalizing handler) surviving a restart of the service.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn file_path(v: &Value) -> PathBuf {
    PathBuf::from(
        v["files"][0]["location"]
            .as_str()
            .unwrap_or_else(|| panic!("no file in {v}")),
    )
}

/// Records ~3 s, stops, and checks `complete`, the end reason, and the decoded duration.
fn record_and_check(egress_type: &str, uris: &[&str], filename: &str) {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let id = svc.start_egress(&request(egress_type, uris, filename));
    assert!(id.starts_with("EG_"));
    let active = svc.wait_status(&id, &["active"], Duration::from_secs(30));
    let started_at = active["started_at"].as_u64().expect("started_at");
    std::thread::sleep(Duration::from_secs(3));
    let stop_at = now_ms();
    let (s, v) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    assert_eq!(s, 200, "{v}");
    let done = svc.wait_status(
        &id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(40),
    );
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert_eq!(done["end_reason"], "StopEgress API");
    let recorded = (stop_at - started_at) as f64 / 1000.0;
    let path = file_path(&done);
    assert!(
        path.starts_with(dirs.output().canonicalize().unwrap()),
        "{path:?}"
    );
    let d = discovered_duration(&path);
    // `started_at` is when media reached the file: the capture before it (the encoders' and a
    // room compositor's latency, about 0.5 s) is in the file too.
    assert!(
        (d - recorded).abs() <= 0.75,
        "{egress_type}: file lasts {d:.2} s, recorded {recorded:.2} s"
    );
    let reported = done["files"][0]["duration_s"].as_f64().expect("duration_s");
    assert!((reported - d).abs() < 0.01);
    assert!(done["files"][0]["size_bytes"].as_u64().unwrap() > 1000);
    let report = decoded(&path);
    assert!(report.video_frames + report.audio_buffers > 0, "{report:?}");
}

#[test]
fn records_track() {
    record_and_check("track", &["test://video?pattern=ball"], "t/track.mp4");
}

#[test]
fn records_track_composite() {
    record_and_check(
        "track_composite",
        &[
            "test://video?pattern=smpte",
            "test://audio?wave=sine&freq=440",
        ],
        "tc.mkv",
    );
}

#[test]
fn records_participant() {
    record_and_check("participant", &["test://av?pattern=ball&freq=440"], "p.mp4");
}

#[test]
fn records_participant_webm() {
    record_and_check(
        "participant",
        &["test://av?pattern=ball&freq=440"],
        "p.webm",
    );
}

#[test]
fn records_room_composite() {
    record_and_check(
        "room_composite",
        &[
            "test://av?pattern=ball",
            "test://video?pattern=smpte",
            "test://av?pattern=snow&freq=220",
        ],
        "rooms/r.mp4",
    );
}

#[test]
fn killed_handler_fails_alone_and_its_file_still_decodes() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let a = svc.start_egress(&request("participant", &["test://av"], "a.mp4"));
    let b = svc.start_egress(&request("track", &["test://video"], "b.mkv"));
    svc.wait_active(&b);
    let active = svc.wait_status(&a, &["active"], Duration::from_secs(30));
    let started_at = active["started_at"].as_u64().unwrap();
    let pid = active["handler_pid"].as_u64().expect("handler_pid") as i32;
    // `ps` shows which process records what.
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains(&a), "{cmdline}");
    std::thread::sleep(Duration::from_secs(4));
    let killed_at = now_ms();
    // SAFETY: killing the handler the service launched for us.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let done = svc.wait_status(
        &a,
        &["failed", "complete", "aborted"],
        Duration::from_secs(20),
    );
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["end_reason"], "Process killed");
    assert!(
        done["error"].as_str().unwrap().contains("signal 9"),
        "{done}"
    );
    let elapsed = (killed_at - started_at) as f64 / 1000.0;
    let report = decoded(&file_path(&done));
    let last = report.last_pts_s.expect("decoded media");
    assert!(
        last >= elapsed - 2.0,
        "killed file decodes {last:.2} s of {elapsed:.2} s"
    );
    // The other egress records on.
    assert_eq!(svc.egress(&b)["status"], "active");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(svc.egress(&b)["status"], "active");
    svc.post(&format!("/v1/egress/{b}/stop"), &Value::Null);
    let b_done = svc.wait_status(&b, &["complete", "failed"], Duration::from_secs(30));
    assert_eq!(b_done["status"], "complete", "{b_done}");
    assert!(discovered_duration(&file_path(&b_done)) > 3.0);
}

#[test]
fn max_duration_ends_as_limit_reached() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let mut req = request("track", &["test://video"], "limited.mp4");
    req["max_duration_s"] = Value::from(2.0);
    let id = svc.start_egress(&req);
    let done = svc.wait_status(
        &id,
        &["limit_reached", "complete", "failed"],
        Duration::from_secs(30),
    );
    assert_eq!(done["status"], "limit_reached", "{done}");
    assert_eq!(done["end_reason"], "Session limit reached");
    let d = discovered_duration(&file_path(&done));
    assert!((d - 2.0).abs() <= 0.5, "lasts {d}");
    // Stopping it now is a conflict, not an error of the server.
    let (s, v) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "conflict");
}

#[test]
fn records_survive_a_restart_and_a_killed_service_loses_nothing() {
    let dirs = Dirs::new();
    let mut svc = Service::start(&dirs, "");
    let done_id = svc.start_egress(&request("track", &["test://video"], "done.mp4"));
    svc.wait_active(&done_id);
    svc.post(&format!("/v1/egress/{done_id}/stop"), &Value::Null);
    svc.wait_status(&done_id, &["complete"], Duration::from_secs(30));

    let live_id = svc.start_egress(&request("participant", &["test://av"], "live.mp4"));
    let active = svc.wait_status(&live_id, &["active"], Duration::from_secs(30));
    let started_at = active["started_at"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = now_ms();
    svc.signal(libc::SIGKILL);
    svc.wait_exit(Duration::from_secs(10));

    let svc2 = Service::start(&dirs, "");
    assert_eq!(
        svc2.node_id, svc.node_id,
        "the node keeps its id across restarts"
    );
    let done = svc2.egress(&done_id);
    assert_eq!(done["status"], "complete");
    assert_eq!(done["end_reason"], "StopEgress API");
    let live = svc2.wait_status(&live_id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(live["status"], "complete", "{live}");
    assert_eq!(live["end_reason"], "Service stopped");
    let d = discovered_duration(&file_path(&live));
    let elapsed = (killed_at - started_at) as f64 / 1000.0;
    assert!(
        d >= elapsed - 0.5,
        "finalized file lasts {d:.2} s of {elapsed:.2} s"
    );
    let (_, list) = svc2.get("/v1/egress");
    assert_eq!(list["egresses"].as_array().unwrap().len(), 2);
    let (_, active) = svc2.get("/v1/egress?status=active");
    assert_eq!(active["egresses"].as_array().unwrap().len(), 0);
}

/// URI sources: a file recorded by the engine is the source of a `track` (H.264 remuxed, not
/// re-encoded) and of a `participant` (transcoded); both end on their own with the source
/// ("Source closed"), as long as it. A source that cannot be opened fails with the reason.
#[test]
fn uri_sources_remux_h264_and_end_with_the_source() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "sources: { allowed_schemes: [test, file] }");
    let mut req = request("participant", &["test://av"], "src.mkv");
    req["max_duration_s"] = serde_json::json!(2.0);
    let id = svc.start_egress(&req);
    let src = svc.wait_status(
        &id,
        &["limit_reached", "complete", "failed"],
        Duration::from_secs(40),
    );
    assert_eq!(src["status"], "limit_reached", "{src}");
    let src_path = file_path(&src);
    let src_d = discovered_duration(&src_path);
    let uri = format!("file://{}", src_path.display());

    let remux = svc.start_egress(&request("track", &[&uri], "remux.mp4"));
    let transcode = svc.start_egress(&request("participant", &[&uri], "transcode.webm"));
    for (id, name) in [(&remux, "remux"), (&transcode, "transcode")] {
        let done = svc.wait_status(
            id,
            &["complete", "failed", "aborted"],
            Duration::from_secs(60),
        );
        assert_eq!(
            (done["status"].as_str(), done["end_reason"].as_str()),
            (Some("complete"), Some("Source closed")),
            "{done}"
        );
        let d = discovered_duration(&file_path(&done));
        assert!(
            (d - src_d).abs() <= 0.3,
            "{name}: {d:.2} s from a {src_d:.2} s source"
        );
        let r = decoded(&file_path(&done));
        assert!(r.video_frames > 0 && r.audio_samples > 0, "{name}: {r:?}");
    }
    // The handler's log shows the graph it ran: the track copied the H.264 stream.
    let log =
        std::fs::read_to_string(dirs.state().join("logs").join(format!("{remux}.log"))).unwrap();
    assert!(
        log.contains("video/x-h264") && !log.contains("x264enc"),
        "{log}"
    );

    let missing = format!("file://{}/nope.mkv", dirs.output().display());
    let id = svc.start_egress(&request("track", &[&missing], "never.mkv"));
    let done = svc.wait_status(
        &id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(40),
    );
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("source not found: file://"),
        "{done}"
    );
}
