//! WHIP ingest, against an independent WebRTC stack: `aiortc` (PyPI) publishes H.264 and Opus
//! through `scripts/whip-publish` as an encoder does (POST the offer with the egress's token,
//! play the answer, DELETE at the end). The recording is checked stream by stream.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::ffprobe;

fn publisher(url: &str, token: &str, secs: u32) -> std::process::Child {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/whip-publish"))
        .args([url, token, "--seconds", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scripts/whip-publish (aiortc: scripts/setup installs it)")
}

/// Seconds of the first `kind` stream of a file, by ffprobe.
fn stream_secs(probe: &Value, kind: &str) -> Option<f64> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)?["duration"]
        .as_str()?
        .parse()
        .ok()
}

#[test]
fn a_whip_publisher_is_recorded_with_video_and_audio() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let (s, eg) = svc.post(
        "/v1/egress",
        &json!({"type": "track", "sources": [{"whip": {}}],
                "outputs": [{"file": {"filename": "whip.mp4"}}]}),
    );
    assert_eq!(s, 201, "{eg}");
    let id = eg["egress_id"].as_str().expect("id").to_string();
    let url = eg["whip"][0]["url"].as_str().expect("whip url").to_string();
    let token = eg["whip_token"].as_str().expect("whip token").to_string();
    assert_eq!(url, format!("{}/v1/whip/{id}/0", svc.base));
    // Lists show no token.
    let (_, list) = svc.get("/v1/egress");
    let listed = &list["egresses"][0];
    assert_eq!(listed["whip_token"], "[redacted]", "{listed}");

    let path = format!("/v1/whip/{id}/0");
    let sdp = [("content-type", "application/sdp")];
    // A wrong token, a body that is not SDP, a JSON body: refused, with the API's errors.
    let (s, body) = svc.raw(
        "POST",
        &path,
        Some(b"v=0\r\n"),
        &[
            ("content-type", "application/sdp"),
            ("authorization", "Bearer wt_wrong"),
        ],
    );
    assert_eq!(s, 401, "{body}");
    let bearer = format!("Bearer {token}");
    let (s, body) = svc.raw(
        "POST",
        &path,
        Some(b"hello"),
        &[sdp[0], ("authorization", bearer.as_str())],
    );
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("invalid_field"), "{body}");
    let (s, body) = svc.raw(
        "POST",
        &path,
        Some(b"{}"),
        &[
            ("content-type", "application/json"),
            ("authorization", bearer.as_str()),
        ],
    );
    assert_eq!(s, 415, "{body}");
    let (s, _) = svc.raw(
        "POST",
        &format!("/v1/whip/{id}/7"),
        Some(b"v=0\r\n"),
        &[sdp[0], ("authorization", bearer.as_str())],
    );
    assert_eq!(s, 404);

    // The publisher: 8 s of H.264 + Opus.
    let t0 = Instant::now();
    let mut first = publisher(&url, &token, 8);
    let active = svc.wait_status(&id, &["active", "failed"], Duration::from_secs(30));
    assert_eq!(active["status"], "active", "{active}\n{}", svc.log());
    assert_eq!(active["whip"][0]["publishing"], true, "{active}");
    eprintln!("WHIP POST to recording: {:?}", t0.elapsed());
    // A second publisher for the same source while the first publishes: 409.
    let second = publisher(&url, &token, 1)
        .wait_with_output()
        .expect("second");
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(said.contains("\"status\": 409"), "{said}");
    // The first one ends its session with DELETE (200) after its 8 s.
    let status = first.wait().expect("publisher");
    assert!(status.success());
    let mut out = String::new();
    use std::io::Read;
    first
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .ok();
    assert!(out.contains("\"deleted\": 200"), "{out}");
    let (s, stopped) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    assert_eq!(s, 200, "{stopped}");
    let done = svc.wait_status(
        &id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(30),
    );
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    let file = PathBuf::from(done["files"][0]["location"].as_str().expect("file"));
    let probe = ffprobe(&file);
    let (v, a) = (stream_secs(&probe, "video"), stream_secs(&probe, "audio"));
    eprintln!("WHIP track: video {v:?} s, audio {a:?} s");
    for (kind, secs) in [("video", v), ("audio", a)] {
        let secs = secs.unwrap_or_else(|| panic!("no {kind} in {}: {probe}", file.display()));
        assert!(
            (6.5..=9.5).contains(&secs),
            "{kind} lasts {secs} s of 8: {probe}"
        );
    }
    // Every frame decodes.
    let dec = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    // After the end, the URL takes no publisher.
    let (s, _) = svc.raw(
        "POST",
        &path,
        Some(b"v=0\r\n"),
        &[sdp[0], ("authorization", bearer.as_str())],
    );
    assert_eq!(s, 409);
}
