//! `scripts/bench-fleet-scale`: how fleet placement scales with the number of nodes. For each
//! fleet size it publishes N simulated nodes straight into a real redis-server, each with the
//! registration a real node writes (`fleet::registry::publish` of a `Ledger`'s `NodeState`:
//! mixed capacities and a few running jobs), then runs a burst of placements through the real
//! placement script (`fleet::reservations`), no handlers and no HTTP. A window of the latest
//! placements stays reserved, as starting jobs would be; older ones are dropped as if their
//! nodes had reported them.
//!
//! Prints, per N: decisions per second (one client, round trip included), the script's own time
//! inside Redis (p50 / p99 / max, from SLOWLOG), and the capacity that time allows
//! (1 / mean script time: what Redis could decide per second with every client it takes).
//!
//! Usage: bench_fleet_scale [--nodes 1,10,100,1000,5000] [--decisions 2000] [--in-flight 64]
//!                          [--mode spread] [--seed 1]

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use egress_engine::config::{AffinityMode, Config, LimitsConfig};
use egress_engine::fleet::keys::Keys;
use egress_engine::fleet::registry::publish;
use egress_engine::fleet::reservations::{self, Ask, Decision};
use egress_engine::model::{EgressType, now_ms};
use egress_engine::rules::admission::Ledger;
use egress_engine::rules::scoring::curve;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// The bench uses the harness's redis-server.
#[allow(dead_code)]
#[path = "../integration/common.rs"]
mod common;

/// Placement decisions against simulated fleets of growing size.
#[derive(Parser)]
struct Args {
    /// Fleet sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,5000")]
    nodes: Vec<usize>,
    /// Placements per fleet size.
    #[arg(long, default_value_t = 2000)]
    decisions: usize,
    /// Placements kept reserved at a time (jobs still starting).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Affinity mode of the placer: spread, pack or type_aware.
    #[arg(long, default_value = "spread")]
    mode: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A node as the fleet sees it: capacity 4 to 32 cores, 0 to 6 running jobs.
pub fn simulated_node(rng: &mut StdRng, i: usize, now: u64) -> Ledger {
    let cfg = Config::default();
    let capacity = [4.0, 8.0, 16.0, 32.0][rng.random_range(0..4)];
    let mut l = Ledger::new(
        format!("ND_{i:05}"),
        capacity,
        &cfg.cpu,
        &cfg.cpu_cost,
        &LimitsConfig::default(),
        600_000,
    );
    for j in 0..rng.random_range(0..7) {
        let t = EgressType::ALL[rng.random_range(0..4)];
        let _ = l.admit(
            now,
            &format!("EG_{i}_{j}"),
            t,
            rng.random_range(0.1..1.5),
            None,
        );
    }
    l
}

struct Row {
    nodes: usize,
    decisions: usize,
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    capacity_per_s: f64,
}

fn run(con: &mut redis::Connection, args: &Args, mode: AffinityMode, n: usize) -> Result<Row> {
    let () = redis::cmd("FLUSHDB").query(con)?;
    let keys = Keys::default();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let now = now_ms();
    for i in 0..n {
        let l = simulated_node(&mut rng, i, now);
        let id = l.node_id().to_string();
        let _: i64 = publish(
            &keys,
            &id,
            &format!("http://{id}.invalid"),
            &l.state(now),
            600_000,
        )
        .invoke(con)?;
    }
    let decisions = args.decisions;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .query(con)?;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(decisions + 1000)
        .query(con)?;
    let () = redis::cmd("SLOWLOG").arg("RESET").query(con)?;
    let mut in_flight: std::collections::VecDeque<(String, String)> = Default::default();
    let t = EgressType::Track;
    // A small fleet cannot hold a large window of starting jobs (4 cores a node at least).
    let window = args.in_flight.min(6 * n);
    let t0 = Instant::now();
    for k in 0..decisions {
        let egress_id = format!("EG_{k:012}");
        let ask = Ask {
            keys: &keys,
            egress_id: &egress_id,
            egress_type: t.as_str(),
            cost: Some(0.5),
            curve: curve(mode, t),
            seed: rng.random(),
            ttl_ms: 60_000,
            excluded: &[],
        };
        let reply: Vec<String> = ask.invocation().invoke(con)?;
        match reservations::parse(&reply)
            .context("unreadable answer")?
            .decision
        {
            Decision::Reserved(c) => in_flight.push_back((c.node_id, egress_id)),
            Decision::Nobody(_) => anyhow::bail!("a fleet of {n} nodes placed nothing at {k}"),
        }
        if in_flight.len() > window
            && let Some((node, id)) = in_flight.pop_front()
        {
            let _: i64 = reservations::drop_reservation(&keys, &node, &id).invoke(con)?;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // SLOWLOG entries: [id, timestamp, duration_us, [command, args...], ...].
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query(con)?;
    let mut script_us: Vec<u64> = log
        .iter()
        .filter_map(|e| match e {
            redis::Value::Array(f) if f.len() >= 4 => {
                let cmd = match &f[3] {
                    redis::Value::Array(a) => a.first().and_then(|c| match c {
                        redis::Value::BulkString(b) => {
                            Some(String::from_utf8_lossy(b).to_lowercase())
                        }
                        _ => None,
                    }),
                    _ => None,
                };
                match (&f[2], cmd.as_deref()) {
                    (redis::Value::Int(us), Some("evalsha" | "eval")) => Some(*us as u64),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    script_us.sort_unstable();
    let pct = |p: f64| {
        script_us
            .get(((script_us.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let mean = script_us.iter().sum::<u64>() as f64 / script_us.len().max(1) as f64;
    Ok(Row {
        nodes: n,
        decisions,
        per_s: decisions as f64 / elapsed,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        max_us: script_us.last().copied().unwrap_or(0),
        capacity_per_s: if mean > 0.0 { 1e6 / mean } else { 0.0 },
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mode = AffinityMode::parse(&args.mode).context("--mode: spread, pack or type_aware")?;
    let redis = common::Redis::start();
    let mut con = redis.connect();
    println!(
        "placement scale, mode {}, track jobs of 0.5 cores, {} in flight",
        args.mode, args.in_flight
    );
    println!(
        "| nodes | decisions | decisions/s (1 client) | script p50 | script p99 | script max | Redis capacity (1/mean) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut first: Option<f64> = None;
    for &n in &args.nodes {
        let r = run(&mut con, &args, mode, n)?;
        let base = *first.get_or_insert(r.p50_us.max(1) as f64);
        println!(
            "| {} | {} | {:.0} | {} µs | {} µs | {} µs | {:.0}/s (p50 x{:.1} vs 1 node) |",
            r.nodes,
            r.decisions,
            r.per_s,
            r.p50_us,
            r.p99_us,
            r.max_us,
            r.capacity_per_s,
            r.p50_us as f64 / base
        );
    }
    Ok(())
}
