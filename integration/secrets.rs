//! Secrets in URLs and config stay secret (issue 22, item 4): source credentials and tokens, SRT
//! passphrases, RTMP stream keys in every form, a web page's token, a webhook's token; nothing
//! of them in the API, the records, the manifest, the webhook queue or any log, and
//! `check-config` prints none of the config's secrets.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::{free_tcp_port, free_udp_port};

/// Every secret the test hands the service; none may show anywhere.
const SECRETS: &[&str] = &[
    "rtspPASS1",
    "srtPHRASE12345",
    "srtSTREAMID9",
    "rtmpKEY1",
    "rtmpKEY2",
    "pageTOKEN7",
    "pagePASS3",
    "hookTOKEN5",
];

/// Every readable file under `dir`, but the webhook receiver's own URL file (the service needs
/// it; its mode is checked separately).
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if !(p.file_name().is_some_and(|n| n == "url")
            && p.parent()
                .and_then(|d| d.parent())
                .is_some_and(|d| d.ends_with("webhooks")))
        {
            out.push(p);
        }
    }
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows '{s}':\n{text}");
    }
}

fn ended(svc: &Service, id: &str) -> Value {
    svc.wait_status(
        id,
        &["complete", "failed", "aborted", "limit_reached"],
        Duration::from_secs(30),
    )
}

#[test]
fn secrets_of_urls_never_show_in_api_records_manifest_queue_or_logs() {
    let dirs = Dirs::new();
    let hook = format!("http://127.0.0.1:{}/hook?token=hookTOKEN5", free_tcp_port());
    let svc = Service::start(
        &dirs,
        &format!(
            "sources: {{ allowed_web_hosts: [\"127.0.0.1\"] }}\n\
             webhooks: {{ urls: [\"{hook}\"], signing_key: \"0123456789abcdef\" }}"
        ),
    );
    let closed = free_tcp_port();
    let small = json!({"width": 320, "height": 240, "fps": 15, "bitrate_kbps": 300});
    // Sources that fail: their errors name the URL.
    let rtsp = format!("rtsp://admin:rtspPASS1@127.0.0.1:{closed}/cam?channel=1");
    let srt = format!(
        "srt://127.0.0.1:{}?streamid=srtSTREAMID9&passphrase=srtPHRASE12345&mode=caller",
        free_udp_port()
    );
    let page = format!("http://u:pagePASS3@127.0.0.1:{closed}/room?token=pageTOKEN7");
    let mut ids = Vec::new();
    for (n, uri) in [&rtsp, &srt].into_iter().enumerate() {
        ids.push(svc.start_egress(&json!({
            "type": "track", "sources": [{"uri": uri}],
            "output": {"file": {"filename": format!("src{n}.mp4")}}, "video": small,
        })));
    }
    ids.push(svc.start_egress(&json!({
        "type": "web", "url": page, "video": small,
        "output": {"file": {"filename": "page.mp4"}},
    })));
    // Stream keys in the less common forms, to receivers that refuse.
    let keys = [
        format!("rtmp://127.0.0.1:{closed}/live/rtmpKEY1/"),
        format!("rtmp://127.0.0.1:{closed}/rtmpKEY2"),
    ];
    let streaming = svc.start_egress(&json!({
        "type": "track", "sources": [{"uri": "test://av"}], "video": small,
        "outputs": [{"file": {"filename": "streamed.mp4"}}, {"stream": {"urls": keys}}],
    }));
    svc.wait_active(&streaming);
    let shown = wait_for(Duration::from_secs(20), "a stream error", || {
        let v = svc.egress(&streaming);
        v["streams"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["error"].is_string()))
            .then_some(v)
    });
    assert_eq!(
        shown["streams"][1]["url"],
        format!("rtmp://127.0.0.1:{closed}/{{redacted}}"),
        "{shown}"
    );
    let (s, _) = svc.post(&format!("/v1/egress/{streaming}/stop"), &json!({}));
    assert_eq!(s, 200);
    ids.push(streaming);
    for id in &ids {
        let v = ended(&svc, id);
        assert_no_secret(&format!("egress {id}"), &v.to_string());
    }
    for id in &ids[..3] {
        let v = svc.egress(id);
        assert_eq!(v["status"], "failed", "{v}");
        assert!(v["error"].as_str().unwrap().contains("{redacted}"), "{v}");
    }
    let (_, list) = svc.get("/v1/egress");
    assert_no_secret("the list", &list.to_string());
    // Every file the service wrote: records, manifests, the webhook queue, handler logs.
    wait_for(Duration::from_secs(10), "the manifest", || {
        dirs.output()
            .join(format!("{}.json", ids[3]))
            .exists()
            .then_some(())
    });
    let mut written = Vec::new();
    files(&dirs.state(), &mut written);
    files(&dirs.output(), &mut written);
    assert!(
        written
            .iter()
            .any(|p| p.to_string_lossy().contains("webhooks"))
    );
    for p in &written {
        let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        assert_no_secret(&p.display().to_string(), &text);
    }
    assert_no_secret("the service log", &svc.log());
    // The receiver's URL file keeps its token: the service's user alone reads it.
    let url_file = std::fs::read_dir(dirs.state().join("webhooks"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join("url"))
        .find(|p| p.exists())
        .expect("the receiver's url file");
    let mode = std::fs::metadata(&url_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", url_file.display());
}

#[test]
fn check_config_prints_no_secret() {
    let dirs = Dirs::new();
    let cfg = dirs.root.path().join("secret.yaml");
    std::fs::write(
        &cfg,
        test_config(
            &dirs,
            "server: { listen: \"127.0.0.1:0\", api_token: \"apiTOKEN-0123456789\" }\n\
             webhooks: { urls: [\"http://hooks.example.com/in?token=hookTOKEN5\"], signing_key: \"signKEY-0123456789abcdef\" }\n\
             fleet: { redis_url: \"redis://:redisPASS77@127.0.0.1:6390\" }",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("check-config");
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{printed}");
    for s in ["apiTOKEN", "signKEY", "redisPASS77", "hookTOKEN5"] {
        assert!(
            !printed.contains(s),
            "check-config prints '{s}':\n{printed}"
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["server"]["api_token"], "{redacted}");
    assert_eq!(v["fleet"]["redis_url"], "redis://{redacted}@127.0.0.1:6390");
}
