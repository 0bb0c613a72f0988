//! A request's own upload target (issue 22, item 3): it names only endpoints the operator
//! lists (`storage.allowed_endpoints`, internal addresses only by their own name), it is signed
//! with the credentials it carries and never with the node's (environment), and what the store
//! answers comes back summarised (status and code), never as its body.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// A store that records each request's head and refuses it with a 403 whose body carries text
/// no user should see.
struct Refusing(TinyServer);

const BODY_TEXT: &str = "ECHOED_RECEIVER_BODY";

fn refuse(_: &str, _: u16) -> Answer {
    let xml = format!(
        "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>{BODY_TEXT}</Message></Error>"
    );
    ("403 Forbidden", String::new(), "application/xml", xml)
}

impl Refusing {
    fn start() -> Refusing {
        Refusing(TinyServer::start(refuse, 0))
    }

    fn target(&self, creds: Option<(&str, &str)>) -> Value {
        let mut t = json!({"bucket": "rec", "endpoint": format!("http://127.0.0.1:{}", self.0.port),
                           "region": "us-east-1", "force_path_style": true});
        if let Some((k, s)) = creds {
            t["access_key"] = json!(k);
            t["secret"] = json!(s);
        }
        json!({ "s3": t })
    }
}

/// The node runs with credentials of its own in its environment.
const NODE_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIANODEOWNKEY"),
    ("AWS_SECRET_ACCESS_KEY", "node-own-secret"),
    ("AWS_SESSION_TOKEN", "NODESESSIONTOKEN"),
];

fn service(dirs: &Dirs, endpoints: &str) -> Service {
    let cfg = format!(
        "storage: {{ output_dir: \"{}\", state_dir: \"{}\", upload_retry_s: 2{endpoints} }}\n\
         server: {{ listen: \"127.0.0.1:0\" }}\nlog: {{ level: debug }}\ncpu: {{ capacity: 64 }}\n\
         overload: {{ soft_threshold: 10, hard_threshold: 10 }}\n",
        dirs.output().display(),
        dirs.state().display()
    );
    Service::start_with(dirs, &cfg, NODE_ENV)
}

fn with_upload(target: Value, name: &str) -> Value {
    let mut body = request("track", &["test://video"], name);
    body["upload"] = target;
    body
}

#[test]
fn a_request_names_only_listed_endpoints_and_internal_ones_by_name() {
    let store = Refusing::start();
    for (endpoints, want) in [
        ("", "storage.allowed_endpoints"),
        (", allowed_endpoints: [\"*\"]", "internal address"),
        (
            ", allowed_endpoints: [\"*.example.com\"]",
            "storage.allowed_endpoints",
        ),
    ] {
        let dirs = Dirs::new();
        let svc = service(&dirs, endpoints);
        let (s, v) = svc.post("/v1/egress", &with_upload(store.target(None), "a.mp4"));
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (400, Some("upload.s3.endpoint")),
            "{endpoints}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{endpoints}: {v}"
        );
        assert!(!dirs.output().join("a.mp4").exists());
    }
    assert!(store.0.heads().is_empty(), "the store was contacted");
}

#[test]
fn a_request_s_target_is_signed_with_its_own_credentials_never_the_node_s() {
    let store = Refusing::start();
    let dirs = Dirs::new();
    let svc = service(&dirs, ", allowed_endpoints: [\"127.0.0.1\"]");
    let mut ids = Vec::new();
    for (n, creds) in [None, Some(("AKIAREQUESTKEY", "request-secret"))]
        .into_iter()
        .enumerate()
    {
        let id = svc.start_egress(&with_upload(store.target(creds), &format!("r{n}.mp4")));
        svc.wait_active(&id);
        ids.push(id);
    }
    std::thread::sleep(Duration::from_secs(2)); // media for the files, not sync
    for id in &ids {
        let (s, _) = svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
        assert_eq!(s, 200);
    }
    for (n, id) in ids.iter().enumerate() {
        let done = svc.wait_status(id, &["complete", "failed"], Duration::from_secs(60));
        assert_eq!(done["files"][0]["upload"], "failed", "{done}");
        let err = done["error"].as_str().unwrap_or_default();
        assert!(
            err.contains("HTTP 403") && err.contains("AccessDenied"),
            "{err}"
        );
        assert!(
            !err.contains(BODY_TEXT),
            "the store's body came back: {err}"
        );
        // The local copy stays and decodes.
        assert!(decoded(&dirs.output().join(format!("r{n}.mp4"))).video_frames > 5);
    }
    let heads = store.0.heads();
    assert!(!heads.is_empty());
    for h in &heads {
        assert!(
            !h.contains("AKIANODEOWNKEY") && !h.contains("NODESESSIONTOKEN"),
            "the node's credentials signed a request's target:\n{h}"
        );
    }
    // The target with credentials was signed with them; the one without was not signed.
    assert!(
        heads
            .iter()
            .any(|h| h.contains("Credential=AKIAREQUESTKEY/")),
        "{heads:?}"
    );
    assert!(
        heads
            .iter()
            .any(|h| !h.to_ascii_lowercase().contains("authorization:")),
        "{heads:?}"
    );
    assert!(!svc.log().contains(BODY_TEXT));
}
