//! What every integration test needs: the real `egress-engine` binary started on a free loopback
//! port with a temp config and temp directories, a small HTTP client, polling with deadlines, a
//! throwaway redis-server, and checks that decode the outputs.
//!
//! The benches (`examples/bench*.rs`) include this file too (`#[path]`), so they start the
//! service, Redis and their HTTP calls exactly as the tests do.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test: the one Cargo built for this test run. Examples get no such path
/// from Cargo; for them it is the release build (see `bin`).
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_egress-engine") {
    Some(p) => p,
    None => "target/release/egress-engine",
};

/// The binary to start: `BIN` in the tests; in the benches `EGRESS_BIN` if set, else `BIN`.
pub fn bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_egress-engine") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("EGRESS_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from),
    }
}

/// Tests that load the CPU on purpose take this exclusively; every other service start shares it,
/// so a deliberate overload never skews another test's timing.
static CPU_LOCK: RwLock<()> = RwLock::new(());

/// A hold on CPU_LOCK, shared or exclusive; released on drop.
pub struct CpuGuard {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _exclusive: Option<RwLockWriteGuard<'static, ()>>,
}

thread_local! {
    /// Whether this test thread holds CPU_LOCK already: a second read on one thread could
    /// deadlock behind a waiting writer.
    static HOLDS_CPU: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A shared hold, unless this thread holds the lock already (then None).
pub fn cpu_shared() -> Option<CpuGuard> {
    if HOLDS_CPU.with(|h| h.get()) {
        return None;
    }
    let g = CPU_LOCK.read().unwrap_or_else(|e| e.into_inner());
    HOLDS_CPU.with(|h| h.set(true));
    Some(CpuGuard {
        _shared: Some(g),
        _exclusive: None,
    })
}

impl Drop for CpuGuard {
    fn drop(&mut self) {
        HOLDS_CPU.with(|h| h.set(false));
    }
}

pub fn cpu_exclusive() -> CpuGuard {
    let g = CPU_LOCK.write().unwrap_or_else(|e| e.into_inner());
    HOLDS_CPU.with(|h| h.set(true));
    CpuGuard {
        _shared: None,
        _exclusive: Some(g),
    }
}

/// Milliseconds since the Unix epoch (records' times are in these).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls `f` every 50 ms until it returns Some, or returns None once `timeout` has passed.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it returns Some or the deadline passes (then panics with `what`).
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// A free TCP port on the loopback interface (free when asked; bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Temp directories a service runs in; kept across restarts of the service.
pub struct Dirs {
    pub root: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        // EGRESS_IT_KEEP=1 keeps every test's files and logs, for reading a failure after it.
        let keep = std::env::var_os("EGRESS_IT_KEEP").is_some();
        Dirs {
            root: tempfile::Builder::new()
                .prefix("egress-it-")
                .disable_cleanup(keep)
                .tempdir()
                .expect("tempdir"),
        }
    }
    pub fn output(&self) -> PathBuf {
        self.root.path().join("out")
    }
    pub fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }
}

/// A running `egress-engine serve`.
pub struct Service {
    pub child: Child,
    pub base: String,
    pub node_id: String,
    pub token: Option<String>,
    pub log_path: PathBuf,
    agent: ureq::Agent,
    /// Held for the service's life (see CPU_LOCK); None when the test holds it itself.
    _cpu: Option<CpuGuard>,
}

/// A config for tests: loopback port 0, the given dirs, small defaults, plus `extra` YAML sections.
pub fn test_config(dirs: &Dirs, extra: &str) -> String {
    let mut cfg = format!(
        "storage: {{ output_dir: \"{}\", state_dir: \"{}\" }}\n",
        dirs.output().display(),
        dirs.state().display()
    );
    // Defaults for sections the test does not set itself. A test machine has 2 cores, so a
    // large nominal capacity keeps admission out of tests that are not about it, and overload is
    // off: the node load counts the whole host's CPU, and a busy machine (builds, other tests)
    // must not stop a test's egresses.
    let defaults = [
        ("server:", "server: { listen: \"127.0.0.1:0\" }"),
        ("log:", "log: { level: debug }"),
        ("cpu:", "cpu: { capacity: 64 }"),
        (
            "overload:",
            "overload: { soft_threshold: 10, hard_threshold: 10 }",
        ),
    ];
    for (key, line) in defaults {
        if !extra.lines().any(|l| l.starts_with(key)) {
            cfg.push_str(line);
            cfg.push('\n');
        }
    }
    cfg.push_str(extra);
    cfg.push('\n');
    cfg
}

impl Service {
    /// Starts the service with `test_config(dirs, extra)` and waits until it listens.
    pub fn start(dirs: &Dirs, extra: &str) -> Service {
        Self::start_with(dirs, &test_config(dirs, extra), &[])
    }

    pub fn start_with(dirs: &Dirs, config_yaml: &str, env: &[(&str, &str)]) -> Service {
        Self::launch(dirs, config_yaml, env, cpu_shared())
    }

    /// A full config, for a test that holds `cpu_exclusive()` itself (`cpu` None).
    pub fn start_with_cpu(dirs: &Dirs, config_yaml: &str, cpu: Option<CpuGuard>) -> Service {
        Self::launch(dirs, config_yaml, &[], cpu)
    }

    /// For a test that holds `cpu_exclusive()` itself.
    pub fn start_alone(dirs: &Dirs, extra: &str) -> Service {
        Self::launch(dirs, &test_config(dirs, extra), &[], None)
    }

    fn launch(
        dirs: &Dirs,
        config_yaml: &str,
        env: &[(&str, &str)],
        cpu: Option<CpuGuard>,
    ) -> Service {
        let n = std::fs::read_dir(dirs.root.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let cfg_path = dirs.root.path().join(format!("config-{n}.yaml"));
        std::fs::write(&cfg_path, config_yaml).expect("write config");
        let log_path = dirs.root.path().join(format!("service-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn egress-engine");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "service did not start: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        let v: Value = serde_json::from_str(&line).expect("listening line");
        let token = config_yaml
            .lines()
            .find_map(|l| l.split("api_token:").nth(1))
            .map(|s| {
                s.trim()
                    .trim_matches(|c| c == '"' || c == '}' || c == ' ')
                    .to_string()
            })
            .filter(|s| !s.is_empty());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Service {
            child,
            base: format!("http://{}", v["listening"].as_str().expect("addr")),
            node_id: v["node_id"].as_str().unwrap_or_default().to_string(),
            token,
            log_path,
            agent,
            _cpu: cpu,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn auth(&self, mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
        if let Some(t) = &self.token
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        headers
    }

    /// Any request; returns status and body text.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let url = format!("{}{}", self.base, path);
        let headers = self.auth(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let result = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                for (k, v) in &headers {
                    r = r.header(k, v);
                }
                r.call()
            }
            "DELETE" => {
                let mut r = self.agent.delete(&url);
                for (k, v) in &headers {
                    r = r.header(k, v);
                }
                r.call()
            }
            "OPTIONS" => {
                let mut r = self.agent.options(&url);
                for (k, v) in &headers {
                    r = r.header(k, v);
                }
                r.call()
            }
            _ => {
                let mut r = match method {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                for (k, v) in &headers {
                    r = r.header(k, v);
                }
                r.send(body.unwrap_or(b""))
            }
        };
        match result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                (status, text)
            }
            // The service is gone: its log says why.
            Err(e) => panic!("{method} {url}: {e}\n--- service log ---\n{}", self.log()),
        }
    }

    /// GET `path` as bytes: (status, content type, body).
    pub fn get_bytes(&self, path: &str) -> (u16, String, Vec<u8>) {
        let url = format!("{}{}", self.base, path);
        let mut r = self.agent.get(&url);
        for (k, v) in self.auth(Vec::new()) {
            r = r.header(&k, &v);
        }
        match r.call() {
            Ok(mut resp) => {
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let body = resp.body_mut().read_to_vec().unwrap_or_default();
                (resp.status().as_u16(), ct, body)
            }
            Err(e) => panic!("GET {url}: {e}\n--- service log ---\n{}", self.log()),
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, t) = self.raw("GET", path, None, &[]);
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let (s, t) = self.raw(
            "POST",
            path,
            Some(&bytes),
            &[("content-type", "application/json")],
        );
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    /// Starts an egress and returns its id; panics unless the answer is 201.
    pub fn start_egress(&self, body: &Value) -> String {
        let (s, v) = self.post("/v1/egress", body);
        assert_eq!(s, 201, "start failed: {v}\n{}", self.log());
        v["egress_id"].as_str().expect("egress_id").to_string()
    }

    pub fn egress(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/v1/egress/{id}"));
        assert_eq!(s, 200, "get {id}: {v}");
        v
    }

    /// Waits until the egress has one of `statuses`; returns its record.
    pub fn wait_status(&self, id: &str, statuses: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.egress(id);
            if statuses.iter().any(|s| v["status"] == *s) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "egress {id} not in {statuses:?} after {timeout:?}: {v}\n--- service log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `active`; returns the instant it was seen.
    pub fn wait_active(&self, id: &str) -> Instant {
        self.wait_status(id, &["active"], Duration::from_secs(30));
        Instant::now()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit; returns its exit status, or None if it still runs after
    /// `timeout`.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = &mut self.child;
        poll_until(timeout, || child.try_wait().ok().flatten())
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.exited_within(timeout)
            .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for service exit"))
            .code()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `node`'s fleet-wide list (not partial) holds each of `ids` exactly once, with
/// status `status`; returns how many times each id was listed.
pub fn wait_listed_once(
    node: &Service,
    ids: &[&str],
    status: &str,
) -> std::collections::HashMap<String, usize> {
    wait_for(
        Duration::from_secs(20),
        "every egress fleet-wide, once each, with its final status",
        || {
            let (s, v) = node.get("/v1/egress");
            if s != 200 || !v["partial"].is_null() {
                return None;
            }
            let mut count: std::collections::HashMap<String, usize> = Default::default();
            let mut statuses: std::collections::HashMap<String, String> = Default::default();
            for e in v["egresses"].as_array()? {
                let id = e["egress_id"].as_str()?.to_string();
                statuses.insert(id.clone(), e["status"].as_str()?.to_string());
                *count.entry(id).or_default() += 1;
            }
            ids.iter()
                .all(|id| count.get(*id) == Some(&1) && statuses[*id] == status)
                .then_some(count)
        },
    )
}

/// A request body for `type` from test sources at a small size (tests share 2 cores).
pub fn request(egress_type: &str, uris: &[&str], filename: &str) -> Value {
    json!({
        "type": egress_type,
        "sources": uris.iter().map(|u| json!({"uri": u})).collect::<Vec<_>>(),
        "output": {"file": {"filename": filename}},
        "video": {"width": 320, "height": 240, "fps": 15, "bitrate_kbps": 500},
    })
}

/// The file's Discoverer duration in seconds (panics if it does not decode).
pub fn discovered_duration(path: &Path) -> f64 {
    let info = egress_engine::media::discover(path, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    info.duration_s
        .unwrap_or_else(|| panic!("{} has no duration", path.display()))
}

/// Decodes the whole file; returns the report (panics if it does not decode).
pub fn decoded(path: &Path) -> egress_engine::media::DecodeReport {
    egress_engine::media::decode(path, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
}

/// A throwaway `redis-server` on a free loopback port, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_niced(0)
    }

    /// A redis-server at niceness `nice` (a bench below 0 stands in for a Redis with CPU of its
    /// own; that takes root or CAP_SYS_NICE).
    pub fn start_niced(nice: i32) -> Redis {
        Self::launch(nice, free_port(), &["--save", "", "--appendonly", "no"])
    }

    /// A redis-server that keeps its data in `dir` (append-only file, fsync on every write), on
    /// `port` (0: a free one): killed and started again on the same port and directory, it
    /// comes back with what it had, as a production Redis would.
    pub fn start_persistent(dir: &Path, port: u16) -> Redis {
        let port = if port == 0 { free_port() } else { port };
        let dir = dir.to_string_lossy().to_string();
        Self::launch(
            0,
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &dir,
            ],
        )
    }

    /// A redis-server on a free port with these extra arguments (e.g. `--replicaof`).
    pub fn start_args(args: &[&str]) -> Redis {
        Self::launch(0, free_port(), args)
    }

    fn launch(nice: i32, port: u16, args: &[&str]) -> Redis {
        let mut cmd = Command::new("redis-server");
        if nice != 0 {
            cmd = Command::new("nice");
            cmd.args(["-n", &nice.to_string(), "redis-server"]);
        }
        let child = cmd
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup)");
        let r = Redis { child, port };
        wait_for(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || r.ping().then_some(()),
        );
        r
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A plain connection, for tests that look at or set up keys themselves.
    pub fn connect(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis-server")
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }
}

/// A `redis-sentinel` on a free loopback port watching the primary at `primary_port` as
/// `mymaster` (quorum 1, down after 1 s), killed on drop.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(primary_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 3000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .expect("sentinel.conf");
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (scripts/setup)");
        let s = Sentinel {
            child,
            port,
            _dir: dir,
        };
        wait_for(Duration::from_secs(10), "redis-sentinel to answer", || {
            s.connect().ok().map(|_| ())
        });
        s
    }

    pub fn connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()
    }

    /// The port of the primary it names now.
    pub fn primary_port(&self) -> Option<u16> {
        let mut c = self.connect().ok()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut c)
            .ok()?;
        addr.get(1)?.parse().ok()
    }

    /// How many replicas of the primary it knows.
    pub fn replicas(&self) -> usize {
        let Ok(mut c) = self.connect() else { return 0 };
        redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("mymaster")
            .query::<Vec<redis::Value>>(&mut c)
            .map(|v| v.len())
            .unwrap_or(0)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a `TinyServer` answers a request with: status line text, extra header lines (each
/// ending `\r\n`), content type, body.
pub type Answer = (&'static str, String, &'static str, String);

/// A tiny HTTP/1.1 server on 127.0.0.1 for tests that play a store or a web server: every
/// request's head is kept, its body read, and `route(first line, other port)` answers it
/// (keep-alive: one connection may carry several requests).
pub struct TinyServer {
    pub port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TinyServer {
    pub fn start(route: fn(&str, u16) -> Answer, other_port: u16) -> TinyServer {
        use std::io::{BufRead, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let heads: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let seen = heads.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let first = head.lines().next().unwrap_or("").to_string();
                        seen.lock().unwrap().push(head);
                        let (status, headers, ctype, body) = route(&first, other_port);
                        let _ = write!(
                            conn,
                            "HTTP/1.1 {status}\r\n{headers}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                });
            }
        });
        TinyServer { port, heads }
    }

    /// Every request's head so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The path of every request so far.
    pub fn paths(&self) -> Vec<String> {
        self.heads()
            .iter()
            .filter_map(|h| h.split(' ').nth(1).map(str::to_string))
            .collect()
    }
}
