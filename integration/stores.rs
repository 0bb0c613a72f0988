//! Azure against its emulator, as S3 is against moto (issue 22, item 10): Azurite (npm) on a
//! free loopback port. Every output arrives, decodes from the store, and the record's locations
//! are where the objects are. (GCS against gcp-storage-emulator cannot complete: the emulator
//! answers object_store's XML-API PUT without the ETag object_store requires.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::free_tcp_port;

/// Azurite's well-known development account.
const AZ_ACCOUNT: &str = "devstoreaccount1";
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Emulator {
    child: Child,
    port: u16,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening(port: u16, what: &str) {
    wait_for(Duration::from_secs(30), what, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

fn azurite(dir: &Path) -> Emulator {
    let port = free_tcp_port();
    let child = Command::new("azurite-blob")
        .args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--silent",
        ])
        .args(["--skipApiVersionCheck", "--location"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("azurite-blob (scripts/setup installs it)");
    let emu = Emulator { child, port };
    listening(port, "azurite");
    emu
}

/// Creates a container whose blobs anyone may read (Shared Key signed, as the SDKs do).
fn az_container(port: u16, name: &str) {
    let script = r#"
import base64, hashlib, hmac, sys, urllib.request
from email.utils import formatdate
port, account, key, name = sys.argv[1:5]
date = formatdate(usegmt=True)
headers = {"x-ms-date": date, "x-ms-version": "2021-08-06", "x-ms-blob-public-access": "container"}
canon = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
to_sign = "PUT\n\n\n\n\n\n\n\n\n\n\n\n" + canon + f"/{account}/{account}/{name}\nrestype:container"
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/{account}/{name}?restype=container", method="PUT",
                             data=None, headers={**headers, "Authorization": f"SharedKey {account}:{sig}",
                                                "Content-Length": "0"})
print(urllib.request.urlopen(req).status)
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), AZ_ACCOUNT, AZ_KEY, name])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "201",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn http_get(url: &str) -> Option<Vec<u8>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().ok()?;
    (r.status() == 200).then(|| r.body_mut().read_to_vec().ok())?
}

fn store_config(dirs: &Dirs, target: &Value) -> String {
    format!(
        "storage: {{ output_dir: \"{}\", state_dir: \"{}\", upload: {target}, upload_retry_s: 20 }}\n\
         server: {{ listen: \"127.0.0.1:0\" }}\nlog: {{ level: debug }}\ncpu: {{ capacity: 64 }}\n\
         overload: {{ soft_threshold: 10, hard_threshold: 10 }}\n",
        dirs.output().display(),
        dirs.state().display()
    )
}

/// Records a file and images for 2 s; returns the final record.
fn record_file_and_images(svc: &Service) -> Value {
    let mut body = request("track", &["test://video?pattern=ball"], "a.mp4");
    body.as_object_mut().unwrap().remove("output");
    body["outputs"] = json!([{"file": {"filename": "a.mp4"}},
                             {"images": {"prefix": "img/a", "interval_s": 1, "width": 160, "height": 120}}]);
    let id = svc.start_egress(&body);
    svc.wait_active(&id);
    std::thread::sleep(Duration::from_secs(2)); // media for the file, not sync
    let (s, _) = svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    assert_eq!(s, 200);
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert_eq!(done["files"][0]["upload"], "done", "{done}");
    assert_eq!(done["images"]["upload"], "done", "{done}");
    done
}

fn decodes(bytes: &[u8], dir: &Path, name: &str) -> u64 {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    decoded(&p).video_frames
}

#[test]
fn azure_uploads_land_where_the_record_says() {
    let dirs = Dirs::new();
    let blobs = dirs.root.path().join("azurite");
    std::fs::create_dir_all(&blobs).unwrap();
    let emu = azurite(&blobs);
    az_container(emu.port, "rec");
    let account_url = format!("http://127.0.0.1:{}/{AZ_ACCOUNT}", emu.port);
    let target = json!({"azure": {"account_name": AZ_ACCOUNT, "account_key": AZ_KEY,
                                  "container_name": "rec", "endpoint": account_url, "prefix": "az"}});
    let svc = Service::start_with(&dirs, &store_config(&dirs, &target), &[]);
    let done = record_file_and_images(&svc);
    // The account once: the endpoint is the account's URL.
    let file = format!("{account_url}/rec/az/a.mp4");
    assert_eq!(done["files"][0]["location"], file, "{done}");
    assert_eq!(
        done["images"]["location"],
        format!("{account_url}/rec/az/img/a"),
        "{done}"
    );
    let bytes = http_get(&file).expect("the file in the container");
    assert!(decodes(&bytes, dirs.root.path(), "az.mp4") > 10);
    let n = done["images"]["count"].as_u64().unwrap();
    assert!(n >= 2, "{done}");
    for k in 0..n {
        let img = format!("{account_url}/rec/az/img/a_{k:05}.jpg");
        assert!(
            http_get(&img).is_some_and(|b| b.starts_with(&[0xff, 0xd8])),
            "{img}"
        );
    }
    assert!(!svc.log().contains(AZ_KEY));
}
