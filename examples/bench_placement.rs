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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use rand::Rng;
use serde_json::{Value, json};

// The benches use part of the test harness (no decoding here).
#[allow(dead_code)]
#[path = "../integration/common.rs"]
mod common;

use common::{Dirs, Redis, Service, wait_for};

/// Fleet placement under a burst of concurrent start requests, per affinity mode.
#[derive(Parser)]
struct Args {
    /// Nodes in the fleet (at least 1).
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Start requests in the burst (at least 1).
    #[arg(long, default_value_t = 64)]
    jobs: usize,
    /// Concurrent clients (0 = one per job).
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Affinity modes to run, one fleet each.
    #[arg(long, value_delimiter = ',', default_values_t = ["pack".to_string(), "spread".into(), "type_aware".into()])]
    modes: Vec<String>,
    /// `estimated_cpu` of every job.
    #[arg(long, default_value_t = 0.5)]
    cpu: f64,
    /// `cpu.capacity` of every node.
    #[arg(long, default_value_t = 8.0)]
    capacity: f64,
    /// Bursts per mode, each on a fresh fleet; latencies are pooled.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// `pipeline.handler_nice` of every node (default: the service's).
    #[arg(long, allow_negative_numbers = true)]
    handler_nice: Option<i32>,
    /// Niceness of redis-server; below 0 (root or CAP_SYS_NICE) stands in for a Redis with CPU
    /// of its own, as in production, instead of sharing this machine's cores with every node.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    redis_nice: i32,
}

impl Args {
    fn concurrency(&self) -> usize {
        if self.concurrency == 0 {
            self.jobs
        } else {
            self.concurrency
        }
    }
}

/// EVALSHA in `INFO commandstats`: (calls, microseconds per call inside Redis).
fn script_stats(redis: &Redis) -> Result<(u64, f64)> {
    let mut con = redis.connect();
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

/// One node of the release binary in the fleet: quiet, overload off, quick heartbeats.
/// Returns the node first, so that it is dropped (killed if still running) before its directories.
fn start_node(mode: &str, redis: &Redis, a: &Args) -> (Service, Dirs) {
    let dirs = Dirs::new();
    let pipeline = a.handler_nice.map_or("pipeline: {}".to_string(), |n| {
        format!("pipeline: {{ handler_nice: {n} }}")
    });
    let node = Service::start(
        &dirs,
        &format!(
            "log: {{ level: warning }}\n\
             cpu: {{ capacity: {}, pending_hold_ms: 600000 }}\n\
             affinity: {{ mode: {mode} }}\n\
             fleet: {{ redis_url: \"{}\", heartbeat_ms: 200, node_ttl_ms: 1000 }}\n\
             overload: {{ soft_threshold: 10, hard_threshold: 10 }}\n{pipeline}",
            a.capacity,
            redis.url()
        ),
    );
    (node, dirs)
}

/// A client of its own per burst thread, as a real client would have.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
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

/// The burst: every client thread takes the next job and POSTs it to a random node with its own
/// HTTP client, timing the call and reading the placer's `Server-Timing` (what is measured, so
/// not the harness's `Service::post`).
fn burst(a: &Args, nodes: &[&Service]) -> Vec<Outcome> {
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.base.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(a.concurrency()));
    let threads: Vec<_> = (0..a.concurrency())
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
fn teardown(nodes: Vec<(Service, Dirs)>, outcomes: &[Outcome]) {
    let by_id: BTreeMap<&str, &Service> =
        nodes.iter().map(|(n, _)| (n.node_id.as_str(), n)).collect();
    for o in outcomes.iter().filter(|o| o.status == 201) {
        if let Some(node) = by_id.get(o.node_id.as_str()) {
            node.post(&format!("/v1/egress/{}/stop", o.egress_id), &json!({}));
        }
    }
    for (n, _) in &nodes {
        // It stops what still runs and exits.
        n.signal(libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (mut n, _dirs) in nodes {
        n.exited_within(deadline.saturating_duration_since(Instant::now()));
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
fn run_once(a: &Args, mode: &str) -> Result<Run> {
    let redis = Redis::start_niced(a.redis_nice);
    let nodes: Vec<(Service, Dirs)> = (0..a.nodes).map(|_| start_node(mode, &redis, a)).collect();
    wait_for(Duration::from_secs(20), "the fleet to form", || {
        let (_, v) = nodes[0].0.get("/v1/fleet/nodes");
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == a.nodes)
            .then_some(())
    });
    let services: Vec<&Service> = nodes.iter().map(|(n, _)| n).collect();
    let before = script_stats(&redis)?;
    let t0 = Instant::now();
    let outcomes = burst(a, &services);
    let wall = t0.elapsed();
    let after = script_stats(&redis)?;

    let placed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 201).collect();
    let mut per_node: BTreeMap<&str, usize> =
        services.iter().map(|n| (n.node_id.as_str(), 0)).collect();
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

fn run_mode(a: &Args, mode: &str) -> Result<()> {
    let budget = a.capacity * 0.8;
    let per_node_cap = ((budget + 1e-9) / a.cpu).floor().max(1.0) as usize;
    println!("mode {mode}:");
    let (mut client, mut script, mut decide, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 1..=a.repeat {
        let run = run_once(a, mode)?;
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
    let a = Args::parse();
    if a.nodes == 0 || a.jobs == 0 {
        bail!("--nodes and --jobs must be at least 1");
    }
    let bin = common::bin();
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
        a.concurrency(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        a.repeat,
        a.redis_nice,
        a.handler_nice
            .map_or("as configured (default 10)".to_string(), |n| n.to_string()),
    );
    for mode in a.modes.clone() {
        run_mode(&a, &mode)?;
    }
    Ok(())
}
