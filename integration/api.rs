//! The admin API's contract: validation errors and their codes, auth, limits, the OpenAPI
//! document, metrics, and config errors at start.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

mod guard;

fn assert_error(status: u16, v: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["code"], want_code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

#[test]
fn bad_requests_get_clear_4xx_and_leave_nothing_behind() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let ok = request("track", &["test://video"], "x.mp4");

    let (s, t) = svc.raw(
        "POST",
        "/v1/egress",
        Some(b"{not json"),
        &[("content-type", "application/json")],
    );
    assert_error(s, &serde_json::from_str(&t).unwrap(), 400, "bad_json");
    let (s, t) = svc.raw("POST", "/v1/egress", Some(b""), &[]);
    assert_error(s, &serde_json::from_str(&t).unwrap(), 400, "bad_json");

    let mut unknown_field = ok.clone();
    unknown_field["colour"] = json!("red");
    let (s, v) = svc.post("/v1/egress", &unknown_field);
    assert_error(s, &v, 400, "bad_json");

    let mut bad_type = ok.clone();
    bad_type["type"] = json!("hologram");
    let (s, v) = svc.post("/v1/egress", &bad_type);
    assert_error(s, &v, 400, "unknown_type");

    let (s, v) = svc.post(
        "/v1/egress",
        &request("track", &["file:///etc/passwd"], "x.mp4"),
    );
    assert_error(s, &v, 400, "scheme_not_allowed");

    // One `stream` output holds every URL: 2,000 of them were accepted.
    let mut streams = ok.clone();
    let mut outputs = vec![json!({"file": {"filename": "s.mp4"}})];
    outputs.extend((0..2000).map(|_| json!({"stream": {"urls": []}})));
    streams["outputs"] = json!(outputs);
    streams.as_object_mut().map(|o| o.remove("output"));
    let (s, v) = svc.post("/v1/egress", &streams);
    assert_error(s, &v, 400, "invalid_field");
    assert!(
        v.to_string().contains("outputs[2]") && v.to_string().contains("at most one stream"),
        "{v}"
    );

    for name in [
        "../escape.mp4",
        "/tmp/abs.mp4",
        "a/../../b.mp4",
        "noext",
        "x.avi",
    ] {
        let (s, v) = svc.post("/v1/egress", &request("track", &["test://video"], name));
        assert_error(s, &v, 400, "invalid_field");
        assert_eq!(v["error"]["field"], "output.file.filename", "{name}: {v}");
    }
    let (s, v) = svc.post(
        "/v1/egress",
        &request("participant", &["test://video"], "x.mp4"),
    );
    assert_error(s, &v, 400, "invalid_field");
    let (s, v) = svc.post(
        "/v1/egress",
        &request("track", &["test://video?pattern=nope"], "x.mp4"),
    );
    assert_error(s, &v, 400, "invalid_field");
    let mut bad_video = ok.clone();
    bad_video["video"]["width"] = json!(100000);
    let (s, v) = svc.post("/v1/egress", &bad_video);
    assert_error(s, &v, 400, "invalid_field");
    let mut wrong_kind = ok.clone();
    wrong_kind["max_duration_s"] = json!("soon");
    let (s, v) = svc.post("/v1/egress", &wrong_kind);
    assert_error(s, &v, 400, "bad_json");

    let big = vec![b' '; 70 * 1024];
    let (s, t) = svc.raw(
        "POST",
        "/v1/egress",
        Some(&big),
        &[("content-type", "application/json")],
    );
    assert_error(
        s,
        &serde_json::from_str(&t).unwrap(),
        413,
        "payload_too_large",
    );

    let (s, v) = svc.get("/v1/egress/EG_doesnotexist");
    assert_error(s, &v, 404, "not_found");
    let (s, v) = svc.get("/v1/egress/../../etc/passwd");
    assert_error(s, &v, 404, "not_found");
    let (s, v) = svc.post("/v1/egress/EG_aaaaaaaaaaaa/stop", &Value::Null);
    assert_error(s, &v, 404, "not_found");
    let (s, v) = svc.get("/v1/nothing-here");
    assert_error(s, &v, 404, "not_found");
    let (s, t) = svc.raw("DELETE", "/v1/egress", None, &[]);
    assert_error(
        s,
        &serde_json::from_str(&t).unwrap(),
        405,
        "method_not_allowed",
    );
    let (s, v) = svc.get("/v1/egress?status=dancing");
    assert_error(s, &v, 400, "bad_query");

    // Malformed bodies of every shape: never a 5xx, and the service stays up.
    let junk: [&[u8]; 8] = [
        b"null",
        b"[]",
        b"42",
        b"\"s\"",
        b"{\"type\": null}",
        b"{\"sources\": {}}",
        b"\xff\xfe\x00",
        b"{\"type\":\"track\",\"sources\":[{\"uri\":\"test://video\"}],\"output\":{}}",
    ];
    for body in junk {
        let (s, _) = svc.raw(
            "POST",
            "/v1/egress",
            Some(body),
            &[("content-type", "application/json")],
        );
        assert!(
            (400..500).contains(&s),
            "{:?} -> {s}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(svc.get("/healthz").0, 200);

    // Nothing was left behind: no record, no file.
    let (_, list) = svc.get("/v1/egress");
    assert_eq!(list["egresses"].as_array().unwrap().len(), 0, "{list}");
    let files: Vec<_> = std::fs::read_dir(dirs.output())
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "{files:?}");
}

#[test]
fn token_protects_the_api_but_not_the_probes() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "server: { listen: \"127.0.0.1:0\", api_token: \"s3cret\" }",
    );
    let (s, t) = svc.raw(
        "GET",
        "/v1/egress",
        None,
        &[("authorization", "Bearer wrong")],
    );
    assert_error(s, &serde_json::from_str(&t).unwrap(), 401, "unauthorized");
    let (s, t) = svc.raw("GET", "/metrics", None, &[("authorization", "Basic x")]);
    assert_eq!(s, 401, "{t}");
    assert_eq!(svc.get("/v1/egress").0, 200);
    assert_eq!(
        svc.raw("GET", "/healthz", None, &[("authorization", "nope")])
            .0,
        200
    );
    assert_eq!(
        svc.raw("GET", "/readyz", None, &[("authorization", "nope")])
            .0,
        200
    );
}

#[test]
fn invalid_config_fails_at_start_naming_the_key() {
    let dirs = Dirs::new();
    let cfg = dirs.root.path().join("bad.yaml");
    for (yaml, key) in [
        ("server: { listen: \"0.0.0.0:7980\" }", "server.api_token"),
        ("server: { api_token: \"   \" }", "server.api_token"),
        (
            "server: { listen: \"0.0.0.0:7980\", api_token: \"\\t\" }",
            "server.api_token",
        ),
        (
            "server: { allowed_origins: [\"https://x.example/\"] }",
            "server.allowed_origins",
        ),
        ("cpu: { max_utilization: 3 }", "cpu.max_utilization"),
        ("affinity: { mode: roundrobin }", "affinity.mode"),
        ("storage: { output_dirr: x }", "output_dirr"),
    ] {
        std::fs::write(&cfg, yaml).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{yaml}: {err}");
    }
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("EGRESS__STORAGE__OUTPUT_DIRR", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::write(&cfg, "limits: { max_concurrent_track: 3 }").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("EGRESS__SERVER__LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"]["listen"], "127.0.0.1:9999");
    assert_eq!(v["limits"]["max_concurrent_track"], 3);
}

#[test]
fn openapi_lists_every_route_and_metrics_count_egresses() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let (s, doc) = svc.get("/v1/openapi.json");
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Every documented operation is served: walked from the document the service itself serves.
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (p, item) in paths {
        let concrete = p.replace("{id}", "EG_aaaaaaaaaaaa");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            if (method.as_str(), p.as_str()) == ("POST", "/v1/node/drain") {
                continue; // answering it would drain this node; guard.rs checks it is routed
            }
            operations += 1;
            let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
            let (s, t) = svc.raw(
                &method,
                &concrete,
                Some(body),
                &[("content-type", "application/json")],
            );
            assert!(
                s != 405 && !(s == 404 && t.contains("no route")) && s < 500,
                "{method} {p} -> {s} {t}"
            );
        }
    }
    assert_eq!(operations + 1, egress_engine::api::ROUTES.len());
    // And every route the service serves is documented, with the methods it takes and no other.
    for route in egress_engine::api::ROUTES {
        let item = &paths[route.path];
        assert!(
            item.get(route.method.to_ascii_lowercase()).is_some(),
            "{} {} is served but not documented",
            route.method,
            route.path
        );
        let concrete = route.path.replace("{id}", "EG_aaaaaaaaaaaa");
        for method in ["GET", "POST", "PUT", "DELETE"] {
            if item.get(method.to_ascii_lowercase()).is_none() {
                let (s, t) = svc.raw(method, &concrete, None, &[]);
                assert_eq!(s, 405, "{method} {concrete}: {t}");
            }
        }
    }

    let id = svc.start_egress(&request("track", &["test://video"], "m.mkv"));
    // Nothing recorded is overwritten: the same filename again is a conflict.
    let (s, v) = svc.post("/v1/egress", &request("track", &["test://video"], "m.mkv"));
    assert_error(s, &v, 409, "output_exists");
    svc.wait_active(&id);
    // Let some media reach the file first: a kill keeps what was written.
    let path = dirs.output().join("m.mkv");
    wait_for(Duration::from_secs(20), "media in the file", || {
        (std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 20_000).then_some(())
    });
    let (s, _) = svc.post(&format!("/v1/egress/{id}/kill"), &Value::Null);
    assert_eq!(s, 200);
    let done = svc.wait_status(&id, &["aborted", "failed"], Duration::from_secs(20));
    assert_eq!(done["status"], "aborted");
    assert_eq!(done["end_reason"], "KillEgress API");
    assert!(
        decoded(std::path::Path::new(
            done["files"][0]["location"].as_str().unwrap()
        ))
        .video_frames
            > 0
    );
    let (s, text) = svc.raw("GET", "/metrics", None, &[]);
    assert_eq!(s, 200);
    assert!(
        text.contains("egress_egresses{status=\"aborted\",type=\"track\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("egress_results_total{reason=\"KillEgress API\",type=\"track\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("egress_process_memory_bytes{process=\"service\"}"),
        "{text}"
    );
}
