//! `scripts/bench`: N concurrent recordings of one type through the real service, against the
//! same pipelines run by `gst-launch-1.0` side by side. Prints start latency (POST to `active`)
//! and CPU and RSS of the engine's processes (service + handlers) against the baseline's, as ratios.
//!
//! Usage: bench [--type participant] [--n 1,4,8] [--seconds 10] [--width 1280 --height 720] [--repeat 3]
//!        bench --source-start srt [--repeat 10]
//!
//! `--source-start srt` measures instead how long a network source takes from the request to
//! `active` when its sender is up: an ffmpeg SRT listener (one caller only, as a real sender),
//! a fresh one per egress, recorded as a `track`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use egress_engine::model::{EgressRequest, PipelineOptions, ValidationContext};
use serde_json::{Value, json};

#[derive(Clone)]
struct Args {
    egress_type: String,
    ns: Vec<usize>,
    seconds: u64,
    width: u32,
    height: u32,
    /// Measured engine/baseline pairs per N (medians are printed).
    repeat: usize,
    /// `srt`: measure a network source's start instead (`--source-start`).
    source_start: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        egress_type: "participant".into(),
        ns: vec![1, 4, 8],
        seconds: 10,
        width: 1280,
        height: 720,
        repeat: 3,
        source_start: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--type" => a.egress_type = v,
            "--n" => a.ns = v.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
            "--seconds" => a.seconds = v.parse()?,
            "--width" => a.width = v.parse()?,
            "--height" => a.height = v.parse()?,
            "--repeat" => a.repeat = v.parse::<usize>()?.max(1),
            "--source-start" => a.source_start = Some(v),
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    Ok(a)
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

struct Engine {
    child: Child,
    base: String,
    agent: ureq::Agent,
}

impl Engine {
    fn start(bin: &Path, dir: &Path) -> Result<Engine> {
        Self::start_with(bin, dir, "")
    }

    fn start_with(bin: &Path, dir: &Path, extra: &str) -> Result<Engine> {
        let cfg = dir.join("bench.yaml");
        std::fs::write(
            &cfg,
            format!(
                "server: {{ listen: \"127.0.0.1:0\" }}\nstorage: {{ output_dir: \"{0}/out\", state_dir: \"{0}/state\" }}\n\
                 log: {{ level: warning }}\ncpu: {{ capacity: 64 }}\noverload: {{ soft_threshold: 10, hard_threshold: 10 }}\n{1}\n",
                dir.display(),
                extra
            ),
        )?;
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start egress-engine")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        )?;
        let v: Value = serde_json::from_str(&line).context("listening line")?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Engine {
            child,
            base: format!("http://{}", v["listening"].as_str().unwrap_or_default()),
            agent,
        })
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
        let url = format!("{}{}", self.base, path);
        let mut r = if method == "GET" {
            self.agent.get(&url).call()?
        } else {
            self.agent.post(&url).send_json(body)?
        };
        let s = r.status().as_u16();
        Ok((
            s,
            serde_json::from_str(&r.body_mut().read_to_string()?).unwrap_or(Value::Null),
        ))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs N egresses in the engine: (start latencies in ms, cores, rss bytes).
fn run_engine(bin: &Path, a: &Args, n: usize) -> Result<(Vec<f64>, f64, f64)> {
    let dir = tempfile::tempdir()?;
    let eng = Engine::start(bin, dir.path())?;
    let latencies: Vec<Result<(String, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let eng = &eng;
                s.spawn(move || -> Result<(String, f64)> {
                    let t0 = Instant::now();
                    let (st, v) =
                        eng.call("POST", "/v1/egress", &request(a, &format!("e{i}.mp4")))?;
                    if st != 201 {
                        bail!("start answered {st}: {v}");
                    }
                    let id = v["egress_id"].as_str().unwrap_or_default().to_string();
                    loop {
                        let (_, v) = eng.call("GET", &format!("/v1/egress/{id}"), &Value::Null)?;
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
    std::thread::sleep(Duration::from_secs(2));
    let mut pids = vec![eng.child.id()];
    for id in &ids {
        let (_, v) = eng.call("GET", &format!("/v1/egress/{id}"), &Value::Null)?;
        pids.push(v["handler_pid"].as_u64().context("handler_pid")? as u32);
    }
    let (cores, rss) = measure(&pids, a.seconds);
    for id in &ids {
        eng.call("POST", &format!("/v1/egress/{id}/stop"), &Value::Null)?;
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
    };
    let opts = PipelineOptions {
        x264_speed_preset: "veryfast".into(),
        mp4_moov_update_period_s: 1.0,
        mp4_reserved_max_duration_s: 21600.0,
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

/// Whether something listens on this UDP port (an SRT listener), read from /proc: connecting
/// would take the listener's one caller.
fn udp_bound(port: u16) -> bool {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| a.ends_with(&hex))
            })
        })
        .unwrap_or(false)
}

/// Request to `active` for an SRT source whose sender (an ffmpeg listener) is up, `repeat` times.
fn run_source_start(bin: &Path, kind: &str, repeat: usize) -> Result<()> {
    if kind != "srt" {
        bail!("--source-start takes srt");
    }
    let dir = tempfile::tempdir()?;
    let eng = Engine::start_with(bin, dir.path(), "sources: { allowed_schemes: [srt] }")?;
    let mut ms = Vec::new();
    for i in 0..repeat {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut sender = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg("testsrc=size=1280x720:rate=30")
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args([
                "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mpegts",
            ])
            .arg(format!("srt://127.0.0.1:{port}?mode=listener"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("ffmpeg (scripts/setup installs it)")?;
        let t = Instant::now();
        while !udp_bound(port) {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("the SRT listener did not bind");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The sender has been sending for a moment, as a live sender would have.
        std::thread::sleep(Duration::from_millis(500));
        let body = json!({"type": "track", "sources": [{"uri": format!("srt://127.0.0.1:{port}")}],
            "output": {"file": {"filename": format!("s{i}.mp4")}}});
        let t0 = Instant::now();
        let (st, v) = eng.call("POST", "/v1/egress", &body)?;
        if st != 201 {
            bail!("start answered {st}: {v}");
        }
        let id = v["egress_id"].as_str().unwrap_or_default().to_string();
        loop {
            let (_, v) = eng.call("GET", &format!("/v1/egress/{id}"), &Value::Null)?;
            if v["status"] == "active" {
                ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if v["status"] != "starting" || t0.elapsed() > Duration::from_secs(30) {
                bail!("egress did not become active: {v}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eng.call("POST", &format!("/v1/egress/{id}/stop"), &Value::Null)?;
        loop {
            let (_, v) = eng.call("GET", &format!("/v1/egress/{id}"), &Value::Null)?;
            if v["status"] != "ending" && v["status"] != "active" {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = sender.kill();
        let _ = sender.wait();
    }
    let max = ms.iter().cloned().fold(0.0, f64::max);
    println!(
        "{kind} source, request -> active ({repeat} runs, 1280x720@30 H.264 + AAC, track): p50 {:.0} ms, p95 {:.0} ms, max {max:.0} ms",
        percentile(&mut ms, 0.5),
        percentile(&mut ms, 0.95),
    );
    Ok(())
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let bin = PathBuf::from(
        std::env::var("EGRESS_BIN").unwrap_or_else(|_| "target/release/egress-engine".into()),
    );
    if let Some(kind) = &a.source_start {
        return run_source_start(&bin, kind, a.repeat);
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
    run_engine(&bin, &warm, 1)?;
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
            let (l, c, m) = run_engine(&bin, &a, n)?;
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
