//! What the API refuses before any route runs (issue 11, section 4): cross-site requests (content
//! type, `Origin`), DNS rebinding (`Host`), claims taken by a GET, and the HTTP details (`Allow`,
//! the bearer scheme's case, non-object JSON bodies). Raw HTTP/1.1 over a socket, so a test sets
//! every header itself (`Host` included) and reads every header of the answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// An answer: status, headers (names lower-cased) and the body parsed as JSON (or as a string).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, self.body)
    }
}

/// Sends one request with exactly these headers (plus `Host` and the service's token unless
/// given, `Content-Length` when there is a body, and `Connection: close`).
fn send(svc: &Service, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let addr = svc.base.trim_start_matches("http://");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if let Some(t) = &svc.token
        && !has("authorization")
    {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(req.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    Answer {
        status,
        headers,
        body,
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn nothing_started(svc: &Service, dirs: &Dirs) {
    let (_, list) = svc.get("/v1/egress");
    assert_eq!(list["egresses"], json!([]), "{list}");
    let files: Vec<_> = std::fs::read_dir(dirs.output())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "{files:?}");
    assert_eq!(svc.get("/readyz").0, 200, "the node must not be draining");
}

#[test]
fn bodies_must_be_json_or_nothing_is_started() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let start = serde_json::to_vec(&request("track", &["test://video"], "x.mp4")).unwrap();
    // What an HTML form or a preflight-free fetch can send cross-site.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let a = send(&svc, "POST", "/v1/egress", &[("Content-Type", ct)], &start);
        assert_eq!(
            (a.status, a.code()),
            (415, "unsupported_media_type"),
            "{ct}: {a:?}"
        );
        let a = send(
            &svc,
            "POST",
            "/v1/node/drain",
            &[("Content-Type", ct)],
            b"{}",
        );
        assert_eq!(
            (a.status, a.code()),
            (415, "unsupported_media_type"),
            "{ct}: {a:?}"
        );
    }
    // The same route spelled with percent-escapes (the router decodes them) is checked alike.
    for path in ["/v1/%65gress", "/v1/egres%73", "/%761/egress"] {
        let a = send(
            &svc,
            "POST",
            path,
            &[("Content-Type", "text/plain")],
            &start,
        );
        assert_eq!(
            (a.status, a.code()),
            (415, "unsupported_media_type"),
            "{path}: {a:?}"
        );
        let a = send(&svc, "POST", path, &[JSON], b"[]");
        assert_eq!((a.status, a.code()), (400, "bad_json"), "{path}: {a:?}");
    }
    // A body with no content type at all.
    let a = send(&svc, "POST", "/v1/egress", &[], &start);
    assert_eq!(a.status, 415, "{a:?}");
    let a = send(&svc, "POST", "/v1/egress/EG_aaaaaaaaaaaa/kill", &[], b"x");
    assert_eq!(a.status, 415, "{a:?}");
    // A declared non-JSON type refuses even an empty body (an empty form).
    let a = send(
        &svc,
        "POST",
        "/v1/egress/EG_aaaaaaaaaaaa/stop",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"",
    );
    assert_eq!(a.status, 415, "{a:?}");
    nothing_started(&svc, &dirs);

    // An empty POST without a content type is how curl and the fleet call stop/kill: fine.
    let a = send(&svc, "POST", "/v1/egress/EG_aaaaaaaaaaaa/stop", &[], b"");
    assert_eq!((a.status, a.code()), (404, "not_found"), "{a:?}");
    let a = send(
        &svc,
        "POST",
        "/v1/egress",
        &[("Content-Type", "application/json; charset=utf-8")],
        &start,
    );
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.body["egress_id"].as_str().unwrap().to_string();
    svc.post(&format!("/v1/egress/{id}/kill"), &Value::Null);
    svc.wait_status(&id, &["aborted", "failed"], Duration::from_secs(20));
}

#[test]
fn foreign_origins_are_refused_unless_listed() {
    let dirs = Dirs::new();
    let allowed = "http://dash.example:8080";
    let svc = Service::start(
        &dirs,
        &format!("server: {{ listen: \"127.0.0.1:0\", allowed_origins: [\"{allowed}\"] }}"),
    );
    let start = serde_json::to_vec(&request("track", &["test://video"], "x.mp4")).unwrap();
    for origin in [
        "http://evil.example",
        "null",
        "http://dash.example:8081",
        "https://dash.example:8080",
    ] {
        let o = ("Origin", origin);
        let a = send(&svc, "POST", "/v1/egress", &[JSON, o], &start);
        assert_eq!(
            (a.status, a.code()),
            (403, "origin_not_allowed"),
            "{origin}: {a:?}"
        );
        assert!(a.header("access-control-allow-origin").is_none(), "{a:?}");
        let a = send(&svc, "POST", "/v1/node/drain", &[o], b"");
        assert_eq!(a.status, 403, "{origin}: {a:?}");
        let a = send(&svc, "GET", "/v1/egress", &[o], b"");
        assert_eq!(a.status, 403, "{origin}: {a:?}");
        let a = send(
            &svc,
            "OPTIONS",
            "/v1/egress",
            &[o, ("Access-Control-Request-Method", "POST")],
            b"",
        );
        assert_eq!(a.status, 403, "{origin}: {a:?}");
    }
    nothing_started(&svc, &dirs);

    // The service's own origin (a page it served, were it to serve one) is not cross-site.
    let own = svc.base.clone();
    let a = send(&svc, "GET", "/v1/node", &[("Origin", &own)], b"");
    assert_eq!(a.status, 200, "{a:?}");

    // A listed origin: its preflight is answered, then its requests, with CORS headers.
    let o = ("Origin", allowed);
    let a = send(
        &svc,
        "OPTIONS",
        "/v1/egress",
        &[
            o,
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    );
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(a.header("access-control-allow-origin"), Some(allowed));
    assert_eq!(a.header("access-control-allow-methods"), Some("POST, GET"));
    let a = send(&svc, "POST", "/v1/egress", &[JSON, o], &start);
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some(allowed),
        "{a:?}"
    );
    let id = a.body["egress_id"].as_str().unwrap().to_string();
    let a = send(&svc, "POST", &format!("/v1/egress/{id}/kill"), &[o], b"");
    assert_eq!(a.status, 200, "{a:?}");
    svc.wait_status(&id, &["aborted", "failed"], Duration::from_secs(20));
}

#[test]
fn a_foreign_host_is_refused_on_loopback() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let port = svc.base.rsplit(':').next().unwrap().to_string();
    let start = serde_json::to_vec(&request("track", &["test://video"], "x.mp4")).unwrap();
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        "localhost".to_string(),
        format!("localhost:{}", port.parse::<u16>().unwrap() ^ 1),
    ] {
        let h = ("Host", host.as_str());
        let a = send(&svc, "POST", "/v1/egress", &[h, JSON], &start);
        assert_eq!((a.status, a.code()), (403, "bad_host"), "{host}: {a:?}");
        let a = send(&svc, "GET", "/v1/egress", &[h], b"");
        assert_eq!((a.status, a.code()), (403, "bad_host"), "{host}: {a:?}");
        // Probes too: a rebinding page learns nothing.
        assert_eq!(
            send(&svc, "GET", "/healthz", &[h], b"").status,
            403,
            "{host}"
        );
    }
    nothing_started(&svc, &dirs);
    for host in ["localhost", "LocalHost", "127.0.0.1", "[::1]"] {
        let h = format!("{host}:{port}");
        let a = send(&svc, "GET", "/v1/node", &[("Host", &h)], b"");
        assert_eq!(a.status, 200, "{h}: {a:?}");
    }
}

#[test]
fn get_affinity_takes_no_claim_post_does() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "limits: { max_concurrent_track: 1, max_concurrent_participant: 1 }",
    );
    // What an <img src> on any page can make a browser send, however often.
    for _ in 0..3 {
        let (s, a) = svc.get("/v1/affinity?type=track");
        assert_eq!(s, 200, "{a}");
        assert!(a["score"].as_f64().unwrap() >= 0.0, "{a}");
        assert_eq!(a["claim_id"], Value::Null, "{a}");
    }
    let (_, node) = svc.get("/v1/node");
    assert_eq!(node["types"]["track"]["pending_claims"], 0, "{node}");
    // So the next start is not refused.
    let id = svc.start_egress(&request("track", &["test://video"], "t.mkv"));
    svc.post(&format!("/v1/egress/{id}/kill"), &Value::Null);

    // POST takes the claim: it holds the only participant slot until released.
    let (s, a) = svc.post(
        "/v1/affinity",
        &json!({"type": "participant", "estimated_cpu": 0.5}),
    );
    assert_eq!(s, 200, "{a}");
    let claim = a["claim_id"].as_str().expect("claim_id").to_string();
    let (s, v) = svc.post(
        "/v1/egress",
        &request("participant", &["test://av"], "p.mkv"),
    );
    assert_eq!(
        (s, v["error"]["reason"].as_str()),
        (503, Some("type_limit")),
        "{v}"
    );
    let (s, _) = svc.post("/v1/affinity/release", &json!({ "claim_id": claim }));
    assert_eq!(s, 204);
    let (_, node) = svc.get("/v1/node");
    assert_eq!(node["types"]["participant"]["pending_claims"], 0, "{node}");
    let (s, v) = svc.post(
        "/v1/affinity",
        &json!({"type": "track", "estimated_cpu": 300}),
    );
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("estimated_cpu")),
        "{v}"
    );
    svc.wait_status(&id, &["aborted", "failed"], Duration::from_secs(20));
}

#[test]
fn http_details_allow_bearer_case_and_object_bodies() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "server: { listen: \"127.0.0.1:0\", api_token: \"s3cret\" }",
    );
    for (method, path, allow) in [
        ("DELETE", "/v1/egress", "POST, GET"),
        ("PUT", "/v1/egress/EG_aaaaaaaaaaaa", "GET"),
        ("GET", "/v1/node/drain", "POST"),
        ("POST", "/healthz", "GET"),
        ("PATCH", "/metrics", "GET"),
        ("DELETE", "/v1/affinity", "GET, POST"),
    ] {
        let a = send(&svc, method, path, &[], b"");
        assert_eq!(
            (a.status, a.code()),
            (405, "method_not_allowed"),
            "{method} {path}: {a:?}"
        );
        assert_eq!(a.header("allow"), Some(allow), "{method} {path}: {a:?}");
    }
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} s3cret");
        let a = send(&svc, "GET", "/v1/node", &[("Authorization", &auth)], b"");
        assert_eq!(a.status, 200, "{auth}: {a:?}");
    }
    let a = send(
        &svc,
        "GET",
        "/v1/node",
        &[("Authorization", "bearer wrong")],
        b"",
    );
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));

    // serde reads a struct from an array too: `["track", [...], {...}]` must not start anything.
    let positional = br#"["track", [{"uri": "test://video"}], {"file": {"filename": "a.mp4"}}, null, null, null, null]"#;
    for (path, body) in [
        ("/v1/egress", &positional[..]),
        ("/v1/egress", b"[]"),
        ("/v1/affinity", b"[\"track\"]"),
        ("/v1/affinity/release", b"[\"c\"]"),
        ("/v1/node/egress", b"42"),
    ] {
        let a = send(&svc, "POST", path, &[JSON], body);
        assert_eq!((a.status, a.code()), (400, "bad_json"), "{path}: {a:?}");
        let m = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(m.contains("must be a JSON object"), "{m}");
    }
    nothing_started(&svc, &dirs);
}
