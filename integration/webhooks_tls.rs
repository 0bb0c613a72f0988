//! Webhooks as the ecosystem sends them (issue 22, item 9): an `https://` receiver with a
//! certificate of a private CA (`webhooks.ca_file`) verifies every request with the stock
//! `standardwebhooks` library (PyPI), and the same library refuses a tampered body and a
//! replay (the request as sent, checked ten minutes later).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::free_tcp_port;

/// The receiver: verifies each request three ways and writes one JSON line per request.
const RECEIVER: &str = r#"
import json, ssl, sys
from datetime import datetime, timedelta, timezone
from http.server import HTTPServer, BaseHTTPRequestHandler
from unittest import mock
import standardwebhooks.webhooks as sw

port, cert, key, secret, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
hook = sw.Webhook(secret)

def refused(body, headers, later=None):
    try:
        if later is None:
            hook.verify(body, headers)
        else:
            class Later(datetime):
                @classmethod
                def now(cls, tz=None):
                    return datetime.now(tz) + later
            with mock.patch.object(sw, "datetime", Later):
                hook.verify(body, headers)
        return None
    except sw.WebhookVerificationError as e:
        return str(e)

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k: v for k, v in self.headers.items()}
        line = {
            "event": json.loads(body)["event"],
            "id": headers.get("webhook-id"),
            "verified": refused(body, headers),
            "tampered": refused(body.replace(b'"event"', b'"event" '), headers),
            "replayed": refused(body, headers, later=timedelta(minutes=10)),
        }
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = HTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

struct Receiver {
    child: Child,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA and a certificate it signed for 127.0.0.1: (CA certificate, server
/// certificate, server key).
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(ok.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=egress-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A Standard Webhooks secret: whsec_ + base64 of the key.
const SECRET: &str = "whsec_ZWdyZXNzLWVuZ2luZS13ZWJob29rLWtleS0wMQ==";

/// The receiver, listening on a free port with a certificate of a private CA: (it, its port,
/// the CA's certificate, the file it writes a line to per request).
fn start_receiver(dirs: &Dirs) -> (Receiver, u16, std::path::PathBuf, std::path::PathBuf) {
    let (ca, cert, key) = certificate(dirs.root.path());
    let port = free_tcp_port();
    let script = dirs.root.path().join("receiver.py");
    std::fs::write(&script, RECEIVER).unwrap();
    let out = dirs.root.path().join("received.jsonl");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .arg(SECRET)
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let receiver = Receiver { child };
    assert_eq!(
        ready.trim(),
        "ready",
        "the receiver (is standardwebhooks installed?)"
    );
    (receiver, port, ca, out)
}

#[test]
fn an_https_receiver_verifies_every_webhook_with_the_standard_library() {
    let dirs = Dirs::new();
    let (_receiver, port, ca, out) = start_receiver(&dirs);
    let svc = Service::start(
        &dirs,
        &format!(
            "webhooks: {{ urls: [\"https://127.0.0.1:{port}/hook\"], signing_key: \"{SECRET}\", \
             ca_file: \"{}\", events: [egress_started, egress_ended] }}",
            ca.display()
        ),
    );
    let id = svc.start_egress(&request("track", &["test://video"], "a.mp4"));
    svc.wait_active(&id);
    let (s, _) = svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    assert_eq!(s, 200);
    let got = poll_until(Duration::from_secs(30), || {
        let l = lines(&out);
        l.iter().any(|v| v["event"] == "egress_ended").then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "no egress_ended at the receiver: {:?}\n{}",
            lines(&out),
            svc.log()
        )
    });
    for v in &got {
        assert_eq!(v["verified"], Value::Null, "refused by the library: {v}");
        assert_eq!(v["tampered"], "No matching signature found", "{v}");
        assert_eq!(v["replayed"], "Message timestamp too old", "{v}");
        assert!(v["id"].as_str().is_some_and(|i| !i.is_empty()), "{v}");
    }
    let events: Vec<&str> = got.iter().filter_map(|v| v["event"].as_str()).collect();
    assert_eq!(events, ["egress_started", "egress_ended"], "{got:?}");
}

#[test]
fn an_https_receiver_the_node_cannot_trust_gets_nothing() {
    let dirs = Dirs::new();
    let (_receiver, port, _, out) = start_receiver(&dirs);
    // No ca_file: the private CA's certificate is not trusted.
    let svc = Service::start(
        &dirs,
        &format!(
            "webhooks: {{ urls: [\"https://127.0.0.1:{port}/hook\"], signing_key: \"{SECRET}\", \
             events: [egress_started], backoff_initial_ms: 100 }}"
        ),
    );
    let id = svc.start_egress(&request("track", &["test://video"], "a.mp4"));
    svc.wait_active(&id);
    wait_for(Duration::from_secs(20), "a failed delivery", || {
        let (_, _, body) = svc.get_bytes("/metrics");
        let text = String::from_utf8_lossy(&body).into_owned();
        text.lines()
            .any(|l| l.starts_with("egress_webhook_failures_total") && !l.ends_with(" 0"))
            .then_some(())
    });
    assert!(lines(&out).is_empty());
}
