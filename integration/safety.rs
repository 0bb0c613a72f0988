//! Hostile and careless use of a node: symlinks in the output directory, two services on one
//! state_dir, directories removed or broken under a running service, filenames that cannot be,
//! concurrent starts for one name, and what a kill answers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn assert_error(s: u16, v: &Value, status: u16, code: &str) {
    assert_eq!(s, status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
}

#[test]
fn a_symlink_in_the_output_dir_never_leads_a_recording_outside_it() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let elsewhere = dirs.root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = dirs.output();
    std::os::unix::fs::symlink(elsewhere.join("x.mp4"), out.join("d.mp4")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("away")).unwrap();
    for name in ["d.mp4", "away/y.mp4", "away/new/z.mp4"] {
        let (s, v) = svc.post("/v1/egress", &request("track", &["test://video"], name));
        assert_error(s, &v, 400, "invalid_field");
        assert_eq!(v["error"]["field"], "output.file.filename", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("symbolic link"),
            "{v}"
        );
    }
    // Nothing was written or created outside, and no egress was recorded.
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    let (_, list) = svc.get("/v1/egress");
    assert_eq!(list["egresses"].as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn a_second_service_on_one_state_dir_exits_with_a_clear_message() {
    let dirs = Dirs::new();
    let first = Service::start(&dirs, "");
    let cfg = dirs.root.path().join("second.yaml");
    std::fs::write(&cfg, test_config(&dirs, "")).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .expect("run a second service");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("state_dir") && stderr.contains(&first.pid().to_string()),
        "{stderr}"
    );
    // The first one is untouched.
    let (s, _) = first.get("/readyz");
    assert_eq!(s, 200);
}

#[test]
fn a_removed_state_dir_is_recreated_and_a_broken_output_dir_makes_readyz_fail() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let a = svc.start_egress(&request("track", &["test://video"], "a.mkv"));
    svc.wait_active(&a);
    std::fs::remove_dir_all(dirs.state()).unwrap();
    // New starts work and records are kept.
    let b = svc.start_egress(&request("track", &["test://video"], "b.mkv"));
    svc.wait_active(&b);
    for id in [&a, &b] {
        let (s, v) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        assert_eq!(s, 200, "{v}");
    }
    for id in [&a, &b] {
        let v = svc.wait_status(id, &["complete", "failed"], Duration::from_secs(30));
        assert_eq!(v["status"], "complete", "{v}");
    }
    let (s, _) = svc.get("/readyz");
    assert_eq!(s, 200);
    let stored = wait_for(Duration::from_secs(10), "records on disk again", || {
        let n = std::fs::read_dir(dirs.state().join("egresses"))
            .ok()?
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.ends_with(".json") && !n.ends_with(".result.json")
            })
            .count();
        (n == 2).then_some(n)
    });
    assert_eq!(stored, 2);

    // An output directory that cannot be written: not ready, with the reason.
    let out = dirs.output();
    std::fs::rename(&out, dirs.root.path().join("moved")).unwrap();
    std::fs::write(&out, b"not a directory").unwrap();
    let (s, v) = svc.get("/readyz");
    assert_error(s, &v, 503, "unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&out.display().to_string()),
        "{v}"
    );
    std::fs::remove_file(&out).unwrap();
    let (s, v) = svc.get("/readyz");
    assert_eq!(s, 200, "{v}");
}

#[test]
fn impossible_filenames_are_400_with_the_reason_and_leave_nothing() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    std::fs::write(dirs.output().join("taken.mp4"), b"x").unwrap();
    let long = format!("{}/x.mp4", "d".repeat(256));
    for (name, words) in [
        ("taken.mp4/under.mp4", "is a file, not a directory"),
        (long.as_str(), "longer than 255 bytes"),
    ] {
        let (s, v) = svc.post("/v1/egress", &request("track", &["test://video"], name));
        assert_error(s, &v, 400, "invalid_field");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(words),
            "{name}: {v}"
        );
    }
    let (s, v) = svc.post(
        "/v1/egress",
        &request("track", &["test://video"], "taken.mp4"),
    );
    assert_error(s, &v, 409, "output_exists");
    let names: Vec<String> = std::fs::read_dir(dirs.output())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["taken.mp4"]);
    let (_, list) = svc.get("/v1/egress");
    assert_eq!(list["egresses"].as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn concurrent_starts_for_one_filename_give_one_201_and_409_to_the_rest() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let body = request("track", &["test://video"], "same.mkv");
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..10)
            .map(|_| s.spawn(|| svc.post("/v1/egress", &body)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    for (s, v) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_error(*s, v, 409, "output_exists");
    }
    let id = created[0]["egress_id"].as_str().unwrap().to_string();
    svc.wait_active(&id);
    // The kill answer shows the killed status.
    let (s, v) = svc.post(&format!("/v1/egress/{id}/kill"), &Value::Null);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "aborted", "{v}");
    assert_eq!(v["end_reason"], "KillEgress API", "{v}");
    let (_, list) = svc.get("/v1/egress");
    assert_eq!(list["egresses"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn a_failed_start_leaves_no_empty_file_that_blocks_its_name() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "sources: { allowed_schemes: [test, http] }\npipeline: { start_timeout_s: 5 }",
    );
    // A closed port: the source cannot be opened.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("http://127.0.0.1:{port}/none.ts");
    let id = svc.start_egress(&request("track", &[&uri], "f.mkv"));
    let v = svc.wait_status(
        &id,
        &["failed", "aborted", "complete"],
        Duration::from_secs(30),
    );
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["files"].as_array().unwrap().is_empty(), "{v}");
    assert!(!Path::new(&dirs.output().join("f.mkv")).exists());
    // The name is free again.
    let again = svc.start_egress(&request("track", &["test://video"], "f.mkv"));
    svc.wait_active(&again);
}

/// Numbered outputs whose later names are taken (an earlier recording's `x_00001.jpg`) are
/// refused like a file that exists: images would skip the taken number and their count lie.
#[test]
fn a_prefix_whose_numbered_names_are_taken_is_refused() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    std::fs::create_dir_all(dirs.output().join("img")).unwrap();
    std::fs::write(dirs.output().join("img/x_00001.jpg"), b"earlier").unwrap();
    std::fs::create_dir_all(dirs.output().join("hls")).unwrap();
    std::fs::write(dirs.output().join("hls/y_00003.ts"), b"earlier").unwrap();
    for (outputs, field, taken) in [
        (
            serde_json::json!([{"images": {"prefix": "img/x", "interval_s": 1}}]),
            "images.prefix",
            "img/x_00001.jpg",
        ),
        (
            serde_json::json!([{"segments": {"prefix": "hls/y"}}]),
            "segments.prefix",
            "hls/y_00003.ts",
        ),
    ] {
        let mut body = request("track", &["test://video"], "unused.mp4");
        body.as_object_mut().unwrap().remove("output");
        body["outputs"] = outputs;
        let (s, v) = svc.post("/v1/egress", &body);
        assert_error(s, &v, 409, "output_exists");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(taken),
            "{field}: {v}"
        );
    }
    // Nothing of the refused starts is left, and the earlier files are untouched.
    assert!(!dirs.output().join("img/x_00000.jpg").exists());
    assert!(!dirs.output().join("hls/y_00000.ts").exists());
    assert!(!dirs.output().join("hls/y.m3u8").exists());
    assert_eq!(
        std::fs::read(dirs.output().join("img/x_00001.jpg")).unwrap(),
        b"earlier"
    );
}
