//! A real S3-compatible server for the delivery tests: the PyPI `moto` server
//! (`python3 -m moto.server`, installed by `scripts/setup`) on a free loopback port, read back
//! over plain path-style HTTP (moto without auth takes unsigned requests). `Moto::start_refusing`
//! runs one with IAM authentication on and no user: it refuses every access key, as a store
//! given wrong credentials does. `Throttle` is a loopback TCP relay that slows uploads down, so
//! a test can kill the service while one is in flight.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{free_port, wait_for};

pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    refusing: bool,
    log: std::path::PathBuf,
}

impl Moto {
    /// A moto server that takes any credentials, on a free port.
    pub fn start() -> Moto {
        Self::launch(free_port(), false)
    }

    /// A moto server that refuses every access key (403 InvalidAccessKeyId).
    pub fn start_refusing() -> Moto {
        Self::launch(free_port(), true)
    }

    fn launch(port: u16, refusing: bool) -> Moto {
        let log = std::env::temp_dir().join(format!("moto-{port}.log"));
        let mut m = Moto {
            child: None,
            port,
            refusing,
            log,
        };
        m.restart();
        m
    }

    /// (Re)starts the server on its port; moto keeps nothing across a restart (in memory).
    pub fn restart(&mut self) {
        self.stop();
        let out = std::fs::File::create(&self.log).expect("moto log");
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out));
        if self.refusing {
            // Authentication from the first request on, with no IAM user: every key is unknown.
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start the moto S3 server (scripts/setup installs it): {e}")
        });
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(30), "the moto server to listen", || {
            http("GET", port, "/", None).ok().map(|_| ())
        });
    }

    /// Stops the server (the store is down until `restart`).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let (s, body) = http("PUT", self.port, &format!("/{bucket}"), None).expect("create bucket");
        assert_eq!(s, 200, "create bucket {bucket}: {body}");
    }

    /// An object's bytes, or None when the bucket has no such key.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (s, body) = http_bytes("GET", self.port, &format!("/{bucket}/{key}")).ok()?;
        (s == 200).then_some(body)
    }

    /// Every key in the bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (_, body) =
            http("GET", self.port, &format!("/{bucket}?list-type=2"), None).expect("list objects");
        tags(&body, "Key")
    }

    /// Multipart uploads open (created, neither completed nor aborted) in the bucket.
    pub fn open_multipart_uploads(&self, bucket: &str) -> usize {
        let (_, body) =
            http("GET", self.port, &format!("/{bucket}?uploads"), None).expect("list uploads");
        tags(&body, "UploadId").len()
    }

    /// The S3 target JSON for this server (test credentials: never the real AWS chain).
    pub fn target(&self, bucket: &str, prefix: &str) -> serde_json::Value {
        serde_json::json!({"s3": {
            "bucket": bucket, "endpoint": self.endpoint(), "region": "us-east-1",
            "prefix": prefix, "force_path_style": true,
            "access_key": "AKIATESTKEY", "secret": "test-secret-never-shown"
        }})
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// moto (without auth) checks no signature, but answers an anonymous read of a private object
/// with 403: reads carry a well-formed, unchecked Authorization header.
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIATESTKEY/20260101/us-east-1/s3/aws4_request, \
                    SignedHeaders=host, Signature=0";

fn tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split(&close).next().map(str::to_string))
        .collect()
}

fn http(method: &str, port: u16, path: &str, body: Option<&[u8]>) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let r = match method {
        "PUT" => agent
            .put(&url)
            .header("authorization", AUTH)
            .send(body.unwrap_or(b"")),
        _ => agent.get(&url).header("authorization", AUTH).call(),
    };
    let mut resp = r.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string().unwrap_or_default()))
}

fn http_bytes(method: &str, port: u16, path: &str) -> Result<(u16, Vec<u8>), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let _ = method;
    let mut resp = agent
        .get(&url)
        .header("authorization", AUTH)
        .call()
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// A loopback TCP relay to `target_port` that passes at most `bytes_per_s` per connection
/// upstream (downstream unthrottled): a slow link to the store. Stops with the test.
pub struct Throttle {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    pub fn start(target_port: u16, bytes_per_s: usize) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(("127.0.0.1", target_port)) else {
                            continue;
                        };
                        let (d2, u2) = (
                            down.try_clone().expect("clone"),
                            up.try_clone().expect("clone"),
                        );
                        let s1 = s.clone();
                        std::thread::spawn(move || pipe(down, up, Some(bytes_per_s), s1));
                        let s2 = s.clone();
                        std::thread::spawn(move || pipe(u2, d2, None, s2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Throttle { port, stop }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, rate: Option<usize>, stop: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let chunk = rate.map(|r| (r / 20).max(1024)).unwrap_or(64 * 1024);
    let mut buf = vec![0u8; chunk];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if rate.is_some() {
                    // chunk = rate / 20: one chunk per 50 ms.
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
