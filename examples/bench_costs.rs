//! `scripts/bench-costs`: static vs learned costs on this machine.
//!
//! 1. Calibration: `egress-engine calibrate` on a fresh state_dir for every type (`--types`),
//!    timed; its table (learned p50/p95/max and price per class) is printed.
//! 2. The learned-cost case: a node of `--capacity` cores gets a burst of `--jobs` participants
//!    (the class calibrate measured: `test://av` at 1280x720@30) priced at a configured cost well
//!    below their real CPU (`--cost`), each left to run `--run-seconds`. Once with
//!    `cpu.cost_mode: static` (on a state_dir of its own), once with `learned` on the calibrated
//!    state_dir. For each: jobs
//!    admitted, refused (503 cpu), overload stops and CPU kills.
//!
//! Overload acts on node CPU over capacity (soft 1.2, hard 1.5, kill grace 5 s): thresholds above
//! 1 are out of reach of the host's busy fraction, so other load on this machine cannot trigger
//! it; only the node's own recordings can.
//!
//! Usage: bench_costs [--jobs 6] [--capacity 0.8] [--cost 0.1] [--run-seconds 10]
//!                    [--seconds 5] [--types track,track_composite,participant,room_composite]

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use serde_json::{Value, json};

#[allow(dead_code)]
#[path = "../integration/common.rs"]
mod common;

use common::{Dirs, Service, test_config, wait_for};

#[derive(Parser)]
struct Args {
    /// Jobs in the burst.
    #[arg(long, default_value_t = 6)]
    jobs: usize,
    /// `cpu.capacity` of the node (all of it committable).
    #[arg(long, default_value_t = 0.8)]
    capacity: f64,
    /// Configured `cpu_cost.participant` (the static price).
    #[arg(long, default_value_t = 0.1)]
    cost: f64,
    /// How long each admitted job runs after becoming active.
    #[arg(long, default_value_t = 10.0)]
    run_seconds: f64,
    /// Calibration: seconds measured per type.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Calibration: types.
    #[arg(
        long,
        default_value = "track,track_composite,participant,room_composite"
    )]
    types: String,
}

fn node_config(dirs: &Dirs, a: &Args, mode: &str) -> String {
    test_config(
        dirs,
        &format!(
            "log: {{ level: info }}\n\
             cpu: {{ capacity: {}, max_utilization: 1, sample_interval_ms: 250, pending_hold_ms: 2000, cost_mode: {mode} }}\n\
             cpu_cost: {{ participant: {} }}\n\
             overload: {{ soft_threshold: 1.2, hard_threshold: 1.5, sustain_samples: 3, kill_grace_s: 5 }}",
            a.capacity, a.cost
        ),
    )
}

/// One run of the burst: (admitted, refused for cpu, overload stops, CPU kills, price).
fn burst(svc: &Service, a: &Args, tag: &str) -> Result<(usize, usize, usize, usize, f64)> {
    let mut admitted = Vec::new();
    let mut refused = 0;
    let (_, costs) = svc.get("/v1/node/costs");
    let price = costs["classes"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["class"] == "participant 1280x720@30"))
        .and_then(|c| c["price"].as_f64())
        .unwrap_or(f64::NAN);
    for i in 0..a.jobs {
        let (s, v) = svc.post(
            "/v1/egress",
            &json!({
                "type": "participant",
                "sources": [{"uri": "test://av"}],
                "output": {"file": {"filename": format!("{tag}{i}.mp4")}},
            }),
        );
        match s {
            201 => {
                admitted.push(v["egress_id"].as_str().unwrap_or_default().to_string());
            }
            503 if v["error"]["reason"] == "cpu" => refused += 1,
            _ => bail!("unexpected answer {s}: {v}"),
        }
    }
    let until = Instant::now() + Duration::from_secs_f64(a.run_seconds + 2.0);
    let mut records = Vec::new();
    for id in &admitted {
        wait_for(Duration::from_secs(120), "the job's time", || {
            let v = svc.egress(id);
            let running = ["starting", "active", "ending"].contains(&v["status"].as_str()?);
            (Instant::now() >= until || !running).then_some(())
        });
        if svc.egress(id)["status"] == "active" {
            svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        }
    }
    for id in &admitted {
        records.push(svc.wait_status(
            id,
            &["complete", "failed", "aborted"],
            Duration::from_secs(120),
        ));
    }
    let count = |why: &str| records.iter().filter(|r| r["end_reason"] == why).count();
    Ok((
        admitted.len(),
        refused,
        count("CPU limit reached"),
        count("CPU exhausted"),
        price,
    ))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let bin = common::bin();
    if !bin.is_file() {
        bail!("{} not found: build it first", bin.display());
    }
    let dirs = Dirs::new();
    println!(
        "bench-costs: {} on {} cores; calibration {} s per type; burst of {} participants (test://av, 1280x720@30) \
         priced {} cores each on a node of {} cores, each run {} s",
        bin.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        a.seconds,
        a.jobs,
        a.cost,
        a.capacity,
        a.run_seconds
    );

    // 1. Calibration.
    let cfg = dirs.root.path().join("calibrate.yaml");
    std::fs::write(&cfg, node_config(&dirs, &a, "learned"))?;
    let t0 = Instant::now();
    let out = std::process::Command::new(&bin)
        .arg("calibrate")
        .arg("--config")
        .arg(&cfg)
        .args(["--types", &a.types, "--seconds", &a.seconds.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("calibrate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "\ncalibration ({:.1} s wall):\n{}",
        t0.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout)
    );

    // 2. The same burst, static then learned.
    println!(
        "| cost mode | price (cores) | admitted | refused (503 cpu) | overload stops | CPU kills |"
    );
    println!("|---|---|---|---|---|---|");
    // The static node runs on directories of its own: what its jobs teach does not reach the
    // learned run, which prices by the calibration alone.
    let fresh = Dirs::new();
    for (mode, dirs) in [("static", &fresh), ("learned", &dirs)] {
        let mut svc = Service::start_with(dirs, &node_config(dirs, &a, mode), &[]);
        let (admitted, refused, stops, kills, price) = burst(&svc, &a, mode)?;
        println!("| {mode} | {price:.2} | {admitted} | {refused} | {stops} | {kills} |");
        svc.signal(libc::SIGTERM);
        svc.wait_exit(Duration::from_secs(60));
    }
    Ok(())
}
