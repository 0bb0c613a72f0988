//! `scripts/bench-placement`: fleet placement under a burst. For each affinity mode it starts a
//! real redis-server and N nodes of the release binary, sends a burst of concurrent start
//! requests (equal cheap audio jobs) to random nodes, and prints jobs per node, max - min, nodes
//! used, and placement latency: what the client sees for the POST, and the placer's own decision
//! and total time (from the `Server-Timing` header of each 201).
//!
//! Usage: bench_placement [--nodes 8] [--jobs 64] [--concurrency 64] [--modes pack,spread,type_aware]
//!                        [--cpu 0.5] [--capacity 8] [--repeat 1] [--handler-nice N]
//!                        [--redis-nice 0]

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
    /// Bursts per mode, each on a fresh fleet; latencies are pooled.
    repeat: usize,
    /// `pipeline.handler_nice` of every node (None = the default).
    handler_nice: Option<i32>,
    /// Niceness of redis-server; below 0 (root or CAP_SYS_NICE) stands in for a Redis with CPU
    /// of its own, as in production, instead of sharing this machine's cores with every node.
    redis_nice: i32,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        nodes: 8,
        jobs: 64,
        concurrency: 0,
        modes: vec!["pack".into(), "spread".into(), "type_aware".into()],
        cpu: 0.5,
        capacity: 8.0,
        repeat: 1,
        handler_nice: None,
        redis_nice: 0,
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
            "--repeat" => a.repeat = v.parse::<usize>()?.max(1),
            "--handler-nice" => a.handler_nice = Some(v.parse()?),
            "--redis-nice" => a.redis_nice = v.parse()?,
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

fn start_redis(nice: i32) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let child = Command::new("nice")
        .args(["-n", &nice.to_string(), "redis-server"])
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

/// EVALSHA in `INFO commandstats`: (calls, microseconds per call inside Redis).
fn script_stats(port: u16) -> Result<(u64, f64)> {
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?.get_connection()?;
    let text: String = redis::cmd("INFO").arg("commandstats").query(&mut con)?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or_default();
    let field = |k: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((field("calls") as u64, field("usec_per_call")))
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
    let capacity = a.capacity;
    let nice = a
        .handler_nice
        .map(|n| format!("pipeline: {{ handler_nice: {n} }}\n"))
        .unwrap_or_default();
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
             fleet: {{ redis_url: \"redis://127.0.0.1:{redis_port}/0\", heartbeat_ms: 200, node_ttl_ms: 1000 }}\n\
             overload: {{ soft_threshold: 10, hard_threshold: 10 }}\n{nice}",
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
    script_ms: Option<f64>,
    decide_ms: Option<f64>,
    total_ms: Option<f64>,
}

/// `decide;dur=0.840, total;dur=3.100` -> (0.84, 3.1).
/// `script;dur=0.21, decide;dur=0.84, total;dur=3.10` -> (script, decide, total) in ms.
fn server_timing(h: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let mut out = (None, None, None);
    for part in h.split(',') {
        let mut it = part.trim().split(";dur=");
        let (Some(name), Some(dur)) = (it.next(), it.next()) else {
            continue;
        };
        let v = dur.trim().parse::<f64>().ok();
        match name {
            "script" => out.0 = v,
            "decide" => out.1 = v,
            "total" => out.2 = v,
            _ => {}
        }
    }
    out
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
                            let (script_ms, decide_ms, total_ms) = resp
                                .headers()
                                .get("server-timing")
                                .and_then(|h| h.to_str().ok())
                                .map(server_timing)
                                .unwrap_or((None, None, None));
                            let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
                            if status != 201 {
                                eprintln!("  start answered {status}: {v}");
                            }
                            Outcome {
                                status,
                                node_id: v["node_id"].as_str().unwrap_or_default().to_string(),
                                egress_id: v["egress_id"].as_str().unwrap_or_default().to_string(),
                                client_ms,
                                script_ms,
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
                                script_ms: None,
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

/// What one burst gave.
struct Run {
    placed: usize,
    wall: Duration,
    /// Jobs per node, most first.
    counts: Vec<usize>,
    client_ms: Vec<f64>,
    script_ms: Vec<f64>,
    decide_ms: Vec<f64>,
    total_ms: Vec<f64>,
    script_calls: u64,
    script_us: f64,
}

/// A fresh redis-server and fleet, one burst, everything stopped again.
fn run_once(a: &Args, bin: &Path, mode: &str) -> Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("bench-placement-")
        .tempdir()?;
    let (_redis, port) = start_redis(a.redis_nice)?;
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
    let before = script_stats(port)?;
    let t0 = Instant::now();
    let outcomes = burst(a, &nodes);
    let wall = t0.elapsed();
    let after = script_stats(port)?;

    let placed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 201).collect();
    let mut per_node: BTreeMap<&str, usize> =
        nodes.iter().map(|n| (n.node_id.as_str(), 0)).collect();
    for o in &placed {
        *per_node.entry(o.node_id.as_str()).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_node.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let run = Run {
        placed: placed.len(),
        wall,
        counts,
        client_ms: placed.iter().map(|o| o.client_ms).collect(),
        script_ms: placed.iter().filter_map(|o| o.script_ms).collect(),
        decide_ms: placed.iter().filter_map(|o| o.decide_ms).collect(),
        total_ms: placed.iter().filter_map(|o| o.total_ms).collect(),
        script_calls: after.0 - before.0,
        script_us: after.1,
    };
    teardown(nodes, &outcomes);
    Ok(run)
}

fn run_mode(a: &Args, bin: &Path, mode: &str) -> Result<()> {
    let budget = a.capacity * 0.8;
    let per_node_cap = ((budget + 1e-9) / a.cpu).floor().max(1.0) as usize;
    println!("mode {mode}:");
    let (mut client, mut script, mut decide, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 1..=a.repeat {
        let run = run_once(a, bin, mode)?;
        let (max, min) = (
            run.counts.first().copied().unwrap_or(0),
            run.counts.last().copied().unwrap_or(0),
        );
        let used = run.counts.iter().filter(|c| **c > 0).count();
        let partly = run
            .counts
            .iter()
            .filter(|c| **c > 0 && **c < per_node_cap)
            .count();
        println!(
            "  burst {r}: {} of {} placed in {:.0} ms; jobs per node {:?} (max - min {}, nodes used {}/{}, \
             partly filled {}, fewest possible {}, {} fit per node); decide p50 {:.1} / p99 {:.1} ms; \
             {} Redis scripts, {:.1} µs each in Redis",
            run.placed,
            a.jobs,
            run.wall.as_secs_f64() * 1000.0,
            run.counts,
            max - min,
            used,
            a.nodes,
            partly,
            run.placed.div_ceil(per_node_cap),
            per_node_cap,
            percentile(&mut run.decide_ms.clone(), 0.5),
            percentile(&mut run.decide_ms.clone(), 0.99),
            run.script_calls,
            run.script_us,
        );
        if run.placed < a.jobs {
            println!("  {} requests were not placed", a.jobs - run.placed);
        }
        client.extend(run.client_ms);
        script.extend(run.script_ms);
        decide.extend(run.decide_ms);
        total.extend(run.total_ms);
    }
    println!("  {}", lat_line("client POST", client));
    println!("  {}", lat_line("placer decide", decide));
    println!("  {}", lat_line("  of it: script", script));
    println!("  {}", lat_line("placer total", total));
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
         to random nodes; {} cores on this machine; {} bursts per mode; redis-server nice {}, handlers nice {}",
        a.nodes,
        a.capacity,
        a.jobs,
        a.cpu,
        a.concurrency,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        a.repeat,
        a.redis_nice,
        a.handler_nice
            .map_or("as configured (default 10)".to_string(), |n| n.to_string()),
    );
    for mode in a.modes.clone() {
        run_mode(&a, &bin, &mode)?;
    }
    Ok(())
}
