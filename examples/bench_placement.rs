//! `scripts/bench-placement`: fleet placement under a burst. For each affinity mode it starts a
//! real redis-server and N nodes of the release binary, sends a burst of concurrent start
//! requests (equal cheap audio jobs) to random nodes, and prints jobs per node, max - min, nodes
//! used, and placement latency: what the client sees for the POST, and the placer's own decision
//! and total time (from the `Server-Timing` header of each 201).
//!
//! Usage: bench_placement [--nodes 8] [--jobs 64] [--concurrency 64] [--modes pack,spread,type_aware]
//!                        [--cpu 0.5] [--capacity 8] [--decision-lock-ms 1000]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::Rng;
use serde_json::{Value, json};

struct Args {
    nodes: usize,
    jobs: usize,
    concurrency: usize,
    modes: Vec<String>,
    cpu: f64,
    capacity: f64,
    /// `fleet.decision_lock_ms` of every node (0 = decisions overlap).
    decision_lock_ms: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        nodes: 8,
        jobs: 64,
        concurrency: 0,
        modes: vec!["pack".into(), "spread".into(), "type_aware".into()],
        cpu: 0.5,
        capacity: 8.0,
        decision_lock_ms: 1000,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--nodes" => a.nodes = v.parse()?,
            "--jobs" => a.jobs = v.parse()?,
            "--concurrency" => a.concurrency = v.parse()?,
            "--modes" => a.modes = v.split(',').map(str::to_string).collect(),
            "--cpu" => a.cpu = v.parse()?,
            "--capacity" => a.capacity = v.parse()?,
            "--decision-lock-ms" => a.decision_lock_ms = v.parse()?,
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    if a.concurrency == 0 {
        a.concurrency = a.jobs;
    }
    if a.nodes == 0 || a.jobs == 0 {
        bail!("--nodes and --jobs must be at least 1");
    }
    Ok(a)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills the child on drop (redis-server, or a node that did not exit in time).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start_redis() -> Result<(Proc, u16)> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start redis-server (is it installed? scripts/setup)")?;
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let mut buf = [0u8; 16];
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            if s.write_all(b"PING\r\n").is_ok()
                && s.read(&mut buf)
                    .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
            {
                return Ok((p, port));
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server on port {port} does not answer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Node {
    proc: Proc,
    base: String,
    node_id: String,
}

fn start_node(
    bin: &Path,
    dir: &Path,
    i: usize,
    mode: &str,
    redis_port: u16,
    a: &Args,
) -> Result<Node> {
    let (capacity, lock) = (a.capacity, a.decision_lock_ms);
    let d = dir.join(format!("node{i}"));
    std::fs::create_dir_all(&d)?;
    let cfg = d.join("node.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server: {{ listen: \"127.0.0.1:0\" }}\n\
             storage: {{ output_dir: \"{0}/out\", state_dir: \"{0}/state\" }}\n\
             log: {{ level: warning }}\n\
             cpu: {{ capacity: {capacity}, pending_hold_ms: 600000 }}\n\
             affinity: {{ mode: {mode} }}\n\
             fleet: {{ redis_url: \"redis://127.0.0.1:{redis_port}/0\", heartbeat_ms: 200, node_ttl_ms: 1000, decision_lock_ms: {lock} }}\n\
             overload: {{ soft_threshold: 10, hard_threshold: 10 }}\n",
            d.display()
        ),
    )?;
    let log = std::fs::File::create(d.join("node.log"))?;
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let proc = Proc(child);
    let v: Value = serde_json::from_str(&line).with_context(|| {
        format!(
            "node {i} did not start; see {}",
            d.join("node.log").display()
        )
    })?;
    Ok(Node {
        proc,
        base: format!("http://{}", v["listening"].as_str().unwrap_or_default()),
        node_id: v["node_id"].as_str().unwrap_or_default().to_string(),
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Value> {
    Ok(
        serde_json::from_str(&agent.get(url).call()?.body_mut().read_to_string()?)
            .unwrap_or(Value::Null),
    )
}

/// One start request as the client saw it.
struct Outcome {
    status: u16,
    node_id: String,
    egress_id: String,
    client_ms: f64,
    decide_ms: Option<f64>,
    total_ms: Option<f64>,
}

/// `decide;dur=0.840, total;dur=3.100` -> (0.84, 3.1).
fn server_timing(h: &str) -> (Option<f64>, Option<f64>) {
    let mut decide = None;
    let mut total = None;
    for part in h.split(',') {
        let mut it = part.trim().split(";dur=");
        let (Some(name), Some(dur)) = (it.next(), it.next()) else {
            continue;
        };
        let v = dur.trim().parse::<f64>().ok();
        match name {
            "decide" => decide = v,
            "total" => total = v,
            _ => {}
        }
    }
    (decide, total)
}

fn burst(a: &Args, nodes: &[Node]) -> Vec<Outcome> {
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.base.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(a.concurrency));
    let threads: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (bases, next, barrier) = (bases.clone(), next.clone(), barrier.clone());
            let (jobs, cpu) = (a.jobs, a.cpu);
            std::thread::spawn(move || {
                let agent = agent();
                let mut out = Vec::new();
                barrier.wait();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs {
                        return out;
                    }
                    let base = &bases[rand::rng().random_range(0..bases.len())];
                    let body = json!({
                        "type": "track",
                        "sources": [{"uri": "test://audio?wave=sine"}],
                        "output": {"file": {"filename": format!("job-{i}.ogg")}},
                        "estimated_cpu": cpu,
                    });
                    let t0 = Instant::now();
                    let r = agent.post(format!("{base}/v1/egress")).send_json(&body);
                    let client_ms = t0.elapsed().as_secs_f64() * 1000.0;
                    let o = match r {
                        Ok(mut resp) => {
                            let status = resp.status().as_u16();
                            let (decide_ms, total_ms) = resp
                                .headers()
                                .get("server-timing")
                                .and_then(|h| h.to_str().ok())
                                .map(server_timing)
                                .unwrap_or((None, None));
                            let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
                            if status != 201 {
                                eprintln!("  start answered {status}: {v}");
                            }
                            Outcome {
                                status,
                                node_id: v["node_id"].as_str().unwrap_or_default().to_string(),
                                egress_id: v["egress_id"].as_str().unwrap_or_default().to_string(),
                                client_ms,
                                decide_ms,
                                total_ms,
                            }
                        }
                        Err(e) => {
                            eprintln!("  start failed: {e}");
                            Outcome {
                                status: 0,
                                node_id: String::new(),
                                egress_id: String::new(),
                                client_ms,
                                decide_ms: None,
                                total_ms: None,
                            }
                        }
                    };
                    out.push(o);
                }
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).ceil() as usize;
    v[i.min(v.len() - 1)]
}

fn lat_line(name: &str, mut v: Vec<f64>) -> String {
    format!(
        "{name:<16} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   (n={})",
        percentile(&mut v, 0.5),
        percentile(&mut v, 0.99),
        percentile(&mut v, 1.0),
        v.len()
    )
}

/// Stops every job on the node that runs it, then interrupts the nodes (they exit when idle).
fn teardown(nodes: Vec<Node>, outcomes: &[Outcome]) {
    let agent = agent();
    let by_id: BTreeMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.base.as_str()))
        .collect();
    for o in outcomes.iter().filter(|o| o.status == 201) {
        if let Some(base) = by_id.get(o.node_id.as_str()) {
            let _ = agent
                .post(format!("{base}/v1/egress/{}/stop", o.egress_id))
                .send_json(json!({}));
        }
    }
    for n in &nodes {
        // SAFETY: interrupting our own child: it stops what still runs and exits.
        unsafe { libc::kill(n.proc.0.id() as i32, libc::SIGINT) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for mut n in nodes {
        while Instant::now() < deadline && matches!(n.proc.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Dropped here: killed if it has not exited by the deadline.
    }
}

fn run_mode(a: &Args, bin: &Path, mode: &str) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("bench-placement-")
        .tempdir()?;
    let (_redis, port) = start_redis()?;
    let mut nodes = Vec::new();
    for i in 0..a.nodes {
        nodes.push(start_node(bin, dir.path(), i, mode, port, a)?);
    }
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = get(&agent, &format!("{}/v1/fleet/nodes", nodes[0].base))?;
        if v["nodes"].as_array().is_some_and(|n| n.len() == a.nodes) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the fleet did not form: {v}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let t0 = Instant::now();
    let outcomes = burst(a, &nodes);
    let wall = t0.elapsed();

    let placed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 201).collect();
    let mut per_node: BTreeMap<&str, usize> =
        nodes.iter().map(|n| (n.node_id.as_str(), 0)).collect();
    for o in &placed {
        *per_node.entry(o.node_id.as_str()).or_default() += 1;
    }
    let counts: Vec<usize> = per_node.values().copied().collect();
    let (max, min) = (
        counts.iter().max().copied().unwrap_or(0),
        counts.iter().min().copied().unwrap_or(0),
    );
    let used = counts.iter().filter(|c| **c > 0).count();
    let budget = a.capacity * 0.8;
    let per_node_cap = ((budget + 1e-9) / a.cpu).floor().max(1.0) as usize;
    let partly = counts
        .iter()
        .filter(|c| **c > 0 && **c < per_node_cap)
        .count();
    let fewest = placed.len().div_ceil(per_node_cap);
    let mut sorted = counts.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));

    println!(
        "mode {mode}: {} of {} placed in {:.0} ms",
        placed.len(),
        a.jobs,
        wall.as_secs_f64() * 1000.0
    );
    println!(
        "  jobs per node   {:?}  (max - min = {}, nodes used {}/{}, partly filled {}, fewest possible {}, {} fit per node)",
        sorted,
        max - min,
        used,
        a.nodes,
        partly,
        fewest,
        per_node_cap
    );
    println!(
        "  {}",
        lat_line("client POST", placed.iter().map(|o| o.client_ms).collect())
    );
    println!(
        "  {}",
        lat_line(
            "placer decide",
            placed.iter().filter_map(|o| o.decide_ms).collect()
        )
    );
    println!(
        "  {}",
        lat_line(
            "placer total",
            placed.iter().filter_map(|o| o.total_ms).collect()
        )
    );
    let refused = outcomes.len() - placed.len();
    if refused > 0 {
        println!("  {refused} requests were not placed");
    }
    teardown(nodes, &outcomes);
    Ok(())
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let bin = PathBuf::from(
        std::env::var("EGRESS_BIN").unwrap_or_else(|_| "target/release/egress-engine".into()),
    );
    if !bin.is_file() {
        bail!(
            "{} not found: build it with cargo build --release",
            bin.display()
        );
    }
    println!(
        "bench-placement: {} nodes (cpu.capacity {}), burst of {} track jobs (estimated_cpu {}) from {} concurrent clients \
         to random nodes; {} cores on this machine",
        a.nodes,
        a.capacity,
        a.jobs,
        a.cpu,
        a.concurrency,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    for mode in a.modes.clone() {
        run_mode(&a, &bin, &mode)?;
    }
    Ok(())
}
