//! `scripts/bench`: N concurrent recordings of one type through the real service, against the
//! same pipelines run by `gst-launch-1.0` side by side. Prints start latency (POST to `active`)
//! and CPU and RSS of the engine's processes (service + handlers) against the baseline's, as ratios.
//!
//! Usage: bench [--type participant] [--n 1,4,8] [--seconds 10] [--width 1280 --height 720] [--repeat 3]
//!        bench --source-start srt [--repeat 10]
//!        bench --outputs [--seconds 10] [--repeat 3]
//!
//! `--outputs` measures what several outputs of one egress cost: one participant egress with a
//! file, HLS, an RTMP stream (into a local nginx-rtmp) and images against the same egress with a
//! file only, and against three egresses with one output each (file, HLS, RTMP); then the MP4's
//! size against the media it holds, and how many seconds a SIGKILL loses.
//!
//! `--source-start srt` measures instead how long a network source takes from the request to
//! `active` when its sender is up: an ffmpeg SRT listener (one caller only, as a real sender),
//! a fresh one per egress, recorded as a `track`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use egress_engine::model::{EgressRequest, PipelineOptions, ValidationContext};
use serde_json::{Value, json};

// The benches use part of the test harness (no Redis, no decoding here).
#[allow(dead_code)]
#[path = "../integration/common.rs"]
mod common;

use common::{Dirs, Service};

// The SRT sender of `--source-start` (the tests' live producers, at camera size here).
#[allow(dead_code)]
#[path = "../integration/producers.rs"]
mod producers;

/// N concurrent recordings through the service against the same pipelines under gst-launch-1.0.
#[derive(Clone, Parser)]
struct Args {
    /// Egress type to record.
    #[arg(long = "type", default_value = "participant")]
    egress_type: String,
    /// Concurrent recordings, one measured round per value.
    #[arg(long = "n", value_delimiter = ',', default_values_t = vec![1, 4, 8])]
    ns: Vec<usize>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1280)]
    width: u32,
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// Measured engine/baseline pairs per N (medians are printed).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// `srt`: measure a network source's start (request -> active) instead.
    #[arg(long)]
    source_start: Option<String>,
    /// Measure the outputs case instead (see the module doc).
    #[arg(long)]
    outputs: bool,
}

fn sources(t: &str) -> Vec<&'static str> {
    match t {
        "track" => vec!["test://video?pattern=ball"],
        "track_composite" => vec!["test://video?pattern=ball", "test://audio?wave=sine"],
        "room_composite" => vec![
            "test://av?pattern=ball",
            "test://av?pattern=smpte",
            "test://av?pattern=snow",
        ],
        _ => vec!["test://av?pattern=ball"],
    }
}

fn request(a: &Args, filename: &str) -> Value {
    json!({
        "type": a.egress_type,
        "sources": sources(&a.egress_type).iter().map(|u| json!({"uri": u})).collect::<Vec<_>>(),
        "output": {"file": {"filename": filename}},
        "video": {"width": a.width, "height": a.height, "fps": 30},
    })
}

/// CPU seconds (user + system) of one process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf is a plain query.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Cores used and mean RSS of `pids` over `secs`, sampling RSS every 250 ms.
fn measure(pids: &[u32], secs: u64) -> (f64, f64) {
    let c0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        rss.push(pids.iter().map(|p| rss_bytes(*p)).sum::<u64>() as f64);
        std::thread::sleep(Duration::from_millis(250));
    }
    let c1: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let cores = (c1 - c0) / t0.elapsed().as_secs_f64();
    (cores, rss.iter().sum::<f64>() / rss.len().max(1) as f64)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// The service as the bench runs it: quiet, out of admission's and overload's way, with the
/// service's own pipeline defaults (the baseline uses the same).
const ENGINE_CONFIG: &str = "log: { level: warning }\ncpu: { capacity: 64 }\n\
                             overload: { soft_threshold: 10, hard_threshold: 10 }\npipeline: {}";

/// Runs N egresses in the engine: (start latencies in ms, cores, rss bytes).
fn run_engine(a: &Args, n: usize) -> Result<(Vec<f64>, f64, f64)> {
    let dirs = Dirs::new();
    let eng = Service::start(&dirs, ENGINE_CONFIG);
    let latencies: Vec<Result<(String, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let eng = &eng;
                s.spawn(move || -> Result<(String, f64)> {
                    let t0 = Instant::now();
                    let (st, v) = eng.post("/v1/egress", &request(a, &format!("e{i}.mp4")));
                    if st != 201 {
                        bail!("start answered {st}: {v}");
                    }
                    let id = v["egress_id"].as_str().unwrap_or_default().to_string();
                    // Polled every 5 ms (not the harness's 50): this loop is the measurement.
                    loop {
                        let v = eng.egress(&id);
                        if v["status"] == "active" {
                            return Ok((id, t0.elapsed().as_secs_f64() * 1000.0));
                        }
                        if v["status"] != "starting" || t0.elapsed() > Duration::from_secs(30) {
                            bail!("egress did not become active: {v}");
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("thread panicked")))
            .collect()
    });
    let mut ids = Vec::new();
    let mut lat = Vec::new();
    for r in latencies {
        let (id, ms) = r?;
        ids.push(id);
        lat.push(ms);
    }
    // Settle before measuring: the first seconds of a pipeline (start-up, encoder ramp) are not
    // its steady cost. Time passing by design, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(2));
    let mut pids = vec![eng.child.id()];
    for id in &ids {
        let v = eng.egress(id);
        pids.push(v["handler_pid"].as_u64().context("handler_pid")? as u32);
    }
    let (cores, rss) = measure(&pids, a.seconds);
    for id in &ids {
        eng.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    }
    Ok((lat, cores, rss))
}

/// Runs the same pipelines under `gst-launch-1.0 -e`: (cores, rss bytes).
fn run_baseline(a: &Args, n: usize) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let schemes = vec!["test".to_string()];
    let ctx = ValidationContext {
        output_dir: dir.path(),
        state_dir: dir.path(),
        allowed_schemes: &schemes,
        allowed_web_hosts: &[],
        allowed_endpoints: &[],
    };
    let opts = PipelineOptions {
        x264_speed_preset: "veryfast".into(),
        ..PipelineOptions::default()
    };
    let mut children = Vec::new();
    for i in 0..n {
        let req: EgressRequest = serde_json::from_value(request(a, &format!("g{i}.mp4")))?;
        let spec = req
            .validate("EG_benchbaseline", &ctx)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let line = egress_engine::pipeline::launch_line(&spec, &opts);
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec gst-launch-1.0 -q -e {line}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        children.push(child);
    }
    // The same settling time as the engine's runs.
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let (cores, rss) = measure(&pids, a.seconds);
    for c in &children {
        // SAFETY: interrupting our own children; -e turns SIGINT into EOS.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    }
    for mut c in children {
        let _ = c.wait();
    }
    Ok((cores, rss))
}

/// Request to `active` for an SRT source whose sender (an ffmpeg listener) is up, `repeat` times.
fn run_source_start(kind: &str, repeat: usize) -> Result<()> {
    if kind != "srt" {
        bail!("--source-start takes srt");
    }
    let dirs = Dirs::new();
    let eng = Service::start(
        &dirs,
        &format!("{ENGINE_CONFIG}\nsources: {{ allowed_schemes: [srt] }}"),
    );
    let mut ms = Vec::new();
    for i in 0..repeat {
        // Camera-sized, a fresh sender per run (an SRT listener takes one caller).
        let sender = producers::srt_listener_sized("1280x720", 30);
        // The sender has been sending for a moment, as a live sender would have.
        std::thread::sleep(Duration::from_millis(500));
        let body = json!({"type": "track", "sources": [{"uri": &sender.url}],
            "output": {"file": {"filename": format!("s{i}.mp4")}}});
        let t0 = Instant::now();
        let (st, v) = eng.post("/v1/egress", &body);
        if st != 201 {
            bail!("start answered {st}: {v}");
        }
        let id = v["egress_id"].as_str().unwrap_or_default().to_string();
        loop {
            let (_, v) = eng.get(&format!("/v1/egress/{id}"));
            if v["status"] == "active" {
                ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if v["status"] != "starting" || t0.elapsed() > Duration::from_secs(30) {
                bail!("egress did not become active: {v}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eng.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        loop {
            let (_, v) = eng.get(&format!("/v1/egress/{id}"));
            if v["status"] != "ending" && v["status"] != "active" {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(sender);
    }
    let max = ms.iter().cloned().fold(0.0, f64::max);
    println!(
        "{kind} source, request -> active ({repeat} runs, 1280x720@30 H.264 + AAC, track): p50 {:.0} ms, p95 {:.0} ms, max {max:.0} ms",
        percentile(&mut ms, 0.5),
        percentile(&mut ms, 0.95),
    );
    Ok(())
}

/// A participant egress at the bench's size with these outputs.
fn with_outputs(a: &Args, outputs: Value) -> Value {
    json!({"type": "participant", "sources": [{"uri": "test://av?pattern=ball"}],
        "video": {"width": a.width, "height": a.height}, "outputs": outputs})
}

/// Starts `bodies` at once, settles, measures cores of the service and their handlers.
fn outputs_cpu(a: &Args, bodies: &[Value]) -> Result<f64> {
    let dirs = Dirs::new();
    let eng = Service::start(&dirs, ENGINE_CONFIG);
    let mut ids = Vec::new();
    for b in bodies {
        let (st, v) = eng.post("/v1/egress", b);
        if st != 201 {
            bail!("start answered {st}: {v}");
        }
        ids.push(v["egress_id"].as_str().unwrap_or_default().to_string());
    }
    for id in &ids {
        eng.wait_active(id);
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut pids = vec![eng.child.id()];
    for id in &ids {
        pids.push(
            eng.egress(id)["handler_pid"]
                .as_u64()
                .context("handler_pid")? as u32,
        );
    }
    let (cores, _) = measure(&pids, a.seconds);
    for id in &ids {
        eng.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    }
    for id in &ids {
        eng.wait_status(id, &["complete", "failed"], Duration::from_secs(60));
    }
    Ok(cores)
}

/// Bytes of media packets in a file (ffprobe), against its size on disk.
fn media_bytes(path: &std::path::Path) -> Result<u64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=size",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse::<u64>().ok())
        .sum())
}

fn run_outputs(a: &Args) -> Result<()> {
    let rtmp = producers::nginx_rtmp();
    let all = |k: usize| {
        with_outputs(
            a,
            json!([
                {"file": {"filename": format!("all{k}.mp4")}},
                {"segments": {"prefix": format!("all{k}")}},
                {"stream": {"urls": [format!("{}/all{k}", rtmp.url)]}},
                {"images": {"prefix": format!("all{k}")}},
            ]),
        )
    };
    let file = |k: usize| with_outputs(a, json!([{"file": {"filename": format!("f{k}.mp4")}}]));
    let three = |k: usize| {
        vec![
            file(k),
            with_outputs(a, json!([{"segments": {"prefix": format!("s{k}")}}])),
            with_outputs(
                a,
                json!([{"stream": {"urls": [format!("{}/s{k}", rtmp.url)]}}]),
            ),
        ]
    };
    println!(
        "bench --outputs: participant {}x{}@30, {} s measured per run, {} runs each, medians",
        a.width, a.height, a.seconds, a.repeat
    );
    let (mut c_all, mut c_file, mut c_three) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..a.repeat as usize {
        c_all.push(outputs_cpu(a, &[all(r)])?);
        c_file.push(outputs_cpu(a, &[file(r)])?);
        c_three.push(outputs_cpu(a, &three(r))?);
    }
    let (ca, cf, ct) = (
        percentile(&mut c_all, 0.5),
        percentile(&mut c_file, 0.5),
        percentile(&mut c_three, 0.5),
    );
    println!("file + HLS + RTMP + images, one egress:  {ca:.2} cores");
    println!(
        "file only, one egress:                    {cf:.2} cores   ratio {:.3} (target <= 1.15)",
        ca / cf
    );
    println!(
        "file, HLS, RTMP as three egresses:        {ct:.2} cores   ratio {:.3} (target <= 0.45)",
        ca / ct
    );

    // Size against media, and what a kill loses: a file recorded for `seconds`, then SIGKILLed.
    let dirs = Dirs::new();
    let eng = Service::start(&dirs, ENGINE_CONFIG);
    let (mut ratio, mut lost) = (Vec::new(), Vec::new());
    for r in 0..a.repeat as usize {
        let id = eng.start_egress(&file(100 + r));
        let t0 = eng.wait_active(&id);
        let pid = eng.egress(&id)["handler_pid"].as_u64().context("pid")? as i32;
        std::thread::sleep(Duration::from_secs(a.seconds));
        let at = t0.elapsed().as_secs_f64();
        // SAFETY: killing the handler this bench started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let v = eng.wait_status(&id, &["failed"], Duration::from_secs(60));
        let path = std::path::PathBuf::from(v["files"][0]["location"].as_str().context("file")?);
        let d = v["files"][0]["duration_s"].as_f64().context("duration")?;
        lost.push(at - d);
        let size = std::fs::metadata(&path)?.len() as f64;
        ratio.push(size / media_bytes(&path)? as f64);
    }
    println!(
        "MP4 size / media bytes (killed, repaired): {:.4} (target <= 1.02)",
        percentile(&mut ratio, 0.5)
    );
    println!(
        "seconds a SIGKILL loses (active -> kill vs repaired duration): median {:.2} s, max {:.2} s (target <= 2)",
        percentile(&mut lost.clone(), 0.5),
        lost.iter().cloned().fold(0.0, f64::max)
    );
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let bin = common::bin();
    if !bin.is_file() {
        bail!(
            "{} not found: build it with cargo build --release",
            bin.display()
        );
    }
    if let Some(kind) = &a.source_start {
        return run_source_start(kind, a.repeat as usize);
    }
    if a.outputs {
        return run_outputs(&a);
    }
    println!(
        "bench: type={} {}x{}@30, {} s measured per run, {} cores on this machine",
        a.egress_type,
        a.width,
        a.height,
        a.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:>3} | {:>9} {:>9} | {:>11} {:>11} {:>7} | {:>10} {:>10} {:>7}",
        "N",
        "start p50",
        "start p95",
        "engine cpu",
        "gst cpu",
        "ratio",
        "engine rss",
        "gst rss",
        "ratio"
    );
    // An unmeasured round of each first: the first run on a quiet machine measured ~15% more
    // CPU than the same run repeated (binary and libraries paged in, caches cold), whichever
    // side it was.
    let warm = Args {
        seconds: 3,
        ..a.clone()
    };
    run_engine(&warm, 1)?;
    run_baseline(&warm, 1)?;
    for &n in &a.ns {
        // `--repeat` pairs, the side that goes first alternating; the median of each figure.
        let (mut lat, mut ecpu, mut erss, mut gcpu, mut grss) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..a.repeat {
            let baseline_first = r % 2 == 1;
            let g = if baseline_first {
                Some(run_baseline(&a, n)?)
            } else {
                None
            };
            let (l, c, m) = run_engine(&a, n)?;
            let (gc, gm) = match g {
                Some(g) => g,
                None => run_baseline(&a, n)?,
            };
            lat.extend(l);
            ecpu.push(c);
            erss.push(m);
            gcpu.push(gc);
            grss.push(gm);
        }
        let (ec, er, gc, gr) = (
            percentile(&mut ecpu, 0.5),
            percentile(&mut erss, 0.5),
            percentile(&mut gcpu, 0.5),
            percentile(&mut grss, 0.5),
        );
        println!(
            "{:>3} | {:>7.0}ms {:>7.0}ms | {:>6.2} cores {:>6.2} cores {:>7.3} | {:>7.1} MB {:>7.1} MB {:>7.3}",
            n,
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.95),
            ec,
            gc,
            ec / gc,
            er / 1e6,
            gr / 1e6,
            er / gr
        );
    }
    Ok(())
}
