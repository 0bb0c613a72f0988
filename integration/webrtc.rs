//! WHIP ingest, against two independent WebRTC stacks: `aiortc` (PyPI) publishes H.264 and
//! Opus through `scripts/whip-publish` as an encoder does (POST the offer with the egress's
//! token, play the answer, DELETE at the end), and Debian's headless Chromium publishes from a
//! page with nothing but `RTCPeerConnection` and `fetch` (`scripts/whip-browser`), cross-origin
//! as a web app does. The recording is checked stream by stream, and for sync.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::{av_offsets, codecs, ffmpeg_decodes_burst, ffprobe};

/// A publisher whose DTLS certificate is not the one its offer's fingerprint names is refused
/// (webrtcbin does not check it; the handler does): its session fails, the egress keeps
/// waiting, and the next, honest publisher is recorded.
#[test]
fn a_publisher_with_a_foreign_certificate_is_refused_and_the_next_one_recorded() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let (id, url, token) = whip_egress(&svc, "track", "honest.mp4");
    let impostor = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/whip-publish"))
        .args([
            url.as_str(),
            token.as_str(),
            "--seconds",
            "3",
            "--bad-fingerprint",
            "--no-delete",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scripts/whip-publish");
    let said = finished(impostor);
    assert!(said.contains("\"status\": 201"), "{said}");
    // Its session is over: the source is free again, and nothing was recorded.
    let waiting = svc.egress(&id);
    assert_eq!(waiting["status"], "starting", "{waiting}\n{}", svc.log());
    assert_eq!(waiting["whip"][0]["publishing"], false, "{waiting}");
    let honest = publisher(&url, &token, 4);
    svc.wait_active(&id);
    finished(honest);
    let file = stopped_file(&svc, &id);
    let probe = ffprobe(&file);
    both_streams_last(&file, &probe, 2.5..=5.0);
}

/// A publisher's streams copied as sent (nothing encoded again): H.264 and Opus into MP4 when
/// the file takes Opus (`audio.codec: opus`), VP8 and Opus into WebM.
#[test]
fn a_whip_track_copies_what_the_publisher_sends() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    for (video, filename, want) in [
        ("h264", "opus.mp4", ["h264", "opus"]),
        ("vp8", "vp8.webm", ["vp8", "opus"]),
    ] {
        let (s, eg) = svc.post(
            "/v1/egress",
            &json!({"type": "track", "sources": [{"whip": {}}], "audio": {"codec": "opus"},
                    "outputs": [{"file": {"filename": filename}}]}),
        );
        assert_eq!(s, 201, "{eg}");
        let id = eg["egress_id"].as_str().expect("id").to_string();
        let url = eg["whip"][0]["url"].as_str().expect("url");
        let token = eg["whip_token"].as_str().expect("token");
        let p = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/whip-publish"))
            .args([url, token, "--seconds", "6", "--video", video])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("scripts/whip-publish");
        svc.wait_active(&id);
        finished(p);
        let file = stopped_file(&svc, &id);
        let probe = ffprobe(&file);
        let (v, a) = codecs(&probe);
        assert_eq!([v.as_deref(), a.as_deref()], want.map(Some), "{probe}");
        both_streams_last(&file, &probe, 4.5..=7.5);
        ffmpeg_decodes_burst(&file);
        let log = std::fs::read_to_string(dirs.state().join("logs").join(format!("{id}.log")))
            .unwrap_or_default();
        for enc in ["opusenc", "x264enc", "vp8enc"] {
            assert!(
                !log.contains(enc),
                "{filename}: encoded again ({enc}):\n{log}"
            );
        }
    }
}

pub fn publisher(url: &str, token: &str, secs: u32) -> std::process::Child {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/whip-publish"))
        .args([url, token, "--seconds", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scripts/whip-publish (aiortc: scripts/setup installs it)")
}

/// A headless Chromium publishing a page through WHIP for `secs` s, then DELETE; `args` pick
/// the page (`--sync`: flash and beep once a second; none: the fake camera and microphone).
pub fn browser(url: &str, token: &str, secs: u32, args: &[&str]) -> std::process::Child {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/whip-browser"))
        .args([url, token, "--seconds", &secs.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scripts/whip-browser (chromium: scripts/setup installs it)")
}

/// A publisher showing another token than the egress's is 401 at `path`.
fn refused_without_its_token(svc: &Service, path: &str) {
    let (s, body) = svc.raw(
        "POST",
        path,
        Some(b"v=0\r\n"),
        &[
            ("content-type", "application/sdp"),
            ("authorization", "Bearer wt_wrong"),
        ],
    );
    assert_eq!(s, 401, "{body}");
}

/// What a publisher script printed, once it exited (successfully).
fn finished(mut p: std::process::Child) -> String {
    let status = p.wait().expect("publisher");
    let mut out = String::new();
    use std::io::Read;
    p.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .ok();
    assert!(status.success(), "publisher: {out}");
    out
}

/// A WHIP egress of `egress_type` into `filename`: (id, WHIP URL, token).
fn whip_egress(svc: &Service, egress_type: &str, filename: &str) -> (String, String, String) {
    let (s, eg) = svc.post(
        "/v1/egress",
        &json!({"type": egress_type, "sources": [{"whip": {}}],
                "outputs": [{"file": {"filename": filename}}]}),
    );
    assert_eq!(s, 201, "{eg}");
    let id = eg["egress_id"].as_str().expect("id").to_string();
    let url = eg["whip"][0]["url"].as_str().expect("whip url").to_string();
    let token = eg["whip_token"].as_str().expect("whip token").to_string();
    (id, url, token)
}

/// Stops egress `id` and returns its file once `complete`.
fn stopped_file(svc: &Service, id: &str) -> PathBuf {
    let (s, stopped) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    assert_eq!(s, 200, "{stopped}");
    let done = svc.wait_status(
        id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(30),
    );
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    // Warnings are left out when there are none.
    assert!(done.get("warnings").is_none(), "{done}");
    PathBuf::from(done["files"][0]["location"].as_str().expect("file"))
}

/// Both streams of `file` last within `secs` (a Matroska stream without a duration of its own
/// takes the file's).
fn both_streams_last(file: &Path, probe: &Value, secs: std::ops::RangeInclusive<f64>) {
    for kind in ["video", "audio"] {
        let got = stream_secs(probe, kind)
            .or_else(|| probe["format"]["duration"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} in {}: {probe}", file.display()));
        assert!(
            secs.contains(&got),
            "{kind} lasts {got} s, not {secs:?}: {probe}"
        );
    }
}

/// A browser's flash-and-beep page published for 20 s and recorded as `track`: H.264 copied
/// (Chromium offers it; the answer picks it for a copy), video and audio for 19-21 s, the A/V
/// offset within 40 ms. A wrong token is 401 for the browser's URL.
#[test]
fn a_browser_publishes_through_whip_and_is_recorded_in_sync() {
    // Alone: a loaded machine delays the browser's canvas frames against its audio clock.
    let _alone = cpu_exclusive();
    let dirs = Dirs::new();
    let svc = Service::start_alone(&dirs, "");
    let (id, url, token) = whip_egress(&svc, "track", "browser.mp4");
    let path = format!("/v1/whip/{id}/0");
    refused_without_its_token(&svc, &path);
    let page = browser(&url, &token, 20, &["--sync"]);
    let active = svc.wait_status(&id, &["active", "failed"], Duration::from_secs(40));
    assert_eq!(active["status"], "active", "{active}\n{}", svc.log());
    let said = finished(page);
    assert!(said.contains("\"deleted\": 200"), "{said}");
    let file = stopped_file(&svc, &id);
    let probe = ffprobe(&file);
    assert_eq!(codecs(&probe).0.as_deref(), Some("h264"), "{probe}");
    both_streams_last(&file, &probe, 19.0..=21.0);
    ffmpeg_decodes_burst(&file);
    let sync = av_offsets(&file);
    eprintln!("browser WHIP track: {sync}");
    assert!(sync["flashes"].as_u64() >= Some(18), "{sync}");
    // The offset (the median) within 40 ms; each flash within two frames of its beep: the
    // page draws at the display's rate and its canvas is captured at 30 fps, so a flash shows
    // up to a frame after the instant it was drawn for (seen: -36.5 to +6.7 ms alone).
    let median = sync["median_ms"].as_f64().expect("median");
    assert!(median.abs() <= 40.0, "A/V offset {median} ms: {sync}");
    let offsets = sync["offsets_ms"].as_array().expect("offsets");
    assert!(
        offsets
            .iter()
            .all(|o| o.as_f64().is_some_and(|o| o.abs() <= 70.0)),
        "a beep more than two frames from its flash: {sync}"
    );
}

/// The browser's fake camera and microphone recorded as `participant` (decoded, encoded
/// again): video and audio for 19-21 s, every frame decodes.
#[test]
fn a_browser_camera_is_recorded_as_participant() {
    // Alone: a browser encoding takes a core, which would slow other tests' recordings.
    let _alone = cpu_exclusive();
    let dirs = Dirs::new();
    let svc = Service::start_alone(&dirs, "");
    let (id, url, token) = whip_egress(&svc, "participant", "camera.mp4");
    let page = browser(&url, &token, 20, &[]);
    let active = svc.wait_status(&id, &["active", "failed"], Duration::from_secs(40));
    assert_eq!(active["status"], "active", "{active}\n{}", svc.log());
    let said = finished(page);
    assert!(said.contains("\"deleted\": 200"), "{said}");
    let file = stopped_file(&svc, &id);
    let probe = ffprobe(&file);
    both_streams_last(&file, &probe, 19.0..=21.0);
    ffmpeg_decodes_burst(&file);
}

/// `scripts/whep-serve` (aiortc) on a free port with `token`: the endpoint's URL and the process
/// (its stdout lines: sessions, deletions).
fn whep_endpoint(
    token: &str,
) -> (
    String,
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut p = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/whep-serve"))
        .args(["--token", token])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scripts/whep-serve (aiortc: scripts/setup installs it)");
    let mut out = std::io::BufReader::new(p.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("whep-serve");
    let v: Value = serde_json::from_str(&line).expect("listening line");
    let url = v["listening"].as_str().expect("url").to_string();
    (url, p, out)
}

/// A WHEP pull from an aiortc endpoint (as an SFU serves one) recorded as `track`: the token is
/// sent (and redacted in the record), H.264 copied, both streams for the time recorded, the
/// session DELETEd at the stop. A wrong token fails the egress, saying so.
#[test]
fn a_whep_stream_is_pulled_and_its_session_ended() {
    use std::io::BufRead;
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let (url, mut server, mut lines) = whep_endpoint("s3cret");
    let (s, eg) = svc.post(
        "/v1/egress",
        &json!({"type": "track", "sources": [{"whep": {"url": url, "token": "s3cret"}}],
                "outputs": [{"file": {"filename": "whep.mp4"}}]}),
    );
    assert_eq!(s, 201, "{eg}");
    assert_eq!(
        eg["request"]["sources"][0]["whep"]["token"], "[redacted]",
        "{eg}"
    );
    let id = eg["egress_id"].as_str().expect("id").to_string();
    svc.wait_active(&id);
    std::thread::sleep(Duration::from_secs(8));
    let file = stopped_file(&svc, &id);
    let probe = ffprobe(&file);
    both_streams_last(&file, &probe, 7.0..=9.5);
    assert_eq!(codecs(&probe).0.as_deref(), Some("h264"), "{probe}");
    ffmpeg_decodes_burst(&file);
    // The endpoint saw one session, offered H.264 first, and its DELETE.
    let mut said = Vec::new();
    wait_for(Duration::from_secs(10), "the session's DELETE", || {
        let mut line = String::new();
        lines.read_line(&mut line).ok()?;
        said.push(line.clone());
        line.contains("deleted").then_some(())
    });
    assert!(said[0].contains("\"status\": 201"), "{said:?}");
    assert!(said[0].contains("H264"), "{said:?}");

    // A wrong token: the egress fails and says why.
    let (s, eg) = svc.post(
        "/v1/egress",
        &json!({"type": "track", "sources": [{"uri": format!("whep+{url}")}],
                "outputs": [{"file": {"filename": "refused.mp4"}}]}),
    );
    assert_eq!(s, 201, "{eg}");
    let id = eg["egress_id"].as_str().expect("id").to_string();
    let failed = svc.wait_status(&id, &["failed", "complete"], Duration::from_secs(30));
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("not authorized"), "{failed}");
    let _ = server.kill();
    let _ = server.wait();
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
    refused_without_its_token(&svc, &path);
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
    let file = stopped_file(&svc, &id);
    let probe = ffprobe(&file);
    eprintln!(
        "WHIP track: video {:?} s, audio {:?} s",
        stream_secs(&probe, "video"),
        stream_secs(&probe, "audio")
    );
    both_streams_last(&file, &probe, 6.5..=9.5);
    ffmpeg_decodes_burst(&file);
    // After the end, the URL takes no publisher.
    let (s, _) = svc.raw(
        "POST",
        &path,
        Some(b"v=0\r\n"),
        &[sdp[0], ("authorization", bearer.as_str())],
    );
    assert_eq!(s, 409);
}
