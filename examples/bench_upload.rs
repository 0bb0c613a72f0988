//! `scripts/bench-upload`: delivery figures against a local S3-compatible server (moto).
//!
//! - Upload throughput of the service (a `track` remux of a ~100 MB MP4, uploaded by the
//!   Delivery actor after it is finalized; time from the metric `egress_upload_duration_seconds`)
//!   against a plain `object_store` multipart copy of the same file with the same part size and
//!   concurrency, as a ratio (target >= 0.9).
//! - Time from the end of that recording (status `ending`) to `complete`.
//! - CPU cost of uploading while recording: the service process's CPU while the upload runs
//!   next to a live recording, against the same recording with no upload.
//!
//! Usage: bench_upload [--mb 100] [--repeat 3]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use object_store::{ObjectStoreExt, WriteMultipart};
use serde_json::json;

#[allow(dead_code)]
#[path = "../integration/common.rs"]
mod common;

#[allow(dead_code)]
#[path = "../integration/s3.rs"]
mod s3;

use common::{Dirs, Service};
use s3::Moto;

#[derive(Parser)]
struct Args {
    /// Size of the recording to upload, in MB.
    #[arg(long, default_value_t = 100)]
    mb: u32,
    /// Rounds; each figure is the median.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

const PART: u64 = 8 * 1024 * 1024;
const CONCURRENCY: usize = 4;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds (user + system) a process has used.
fn cpu_s(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0; // sysconf(_SC_CLK_TCK) on Linux
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tick
}

fn make_source(dir: &Path, mb: u32) -> Result<std::path::PathBuf> {
    let p = dir.join("source.mp4");
    let seconds = 40;
    let kbps = mb * 8 * 1000 / seconds;
    let st = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=640x360:rate=30:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "30"])
        .args(["-b:v", &format!("{kbps}k"), "-minrate", &format!("{kbps}k")])
        .args([
            "-maxrate",
            &format!("{kbps}k"),
            "-bufsize",
            &format!("{}k", kbps / 2),
        ])
        .args(["-x264-params", "nal-hrd=cbr", "-c:a", "aac", "-shortest"])
        .arg(&p)
        .status()
        .context("ffmpeg")?;
    if !st.success() {
        bail!("ffmpeg failed");
    }
    Ok(p)
}

/// A plain object_store multipart copy of `file`; seconds.
fn plain_copy(moto: &Moto, file: &Path, key: &str) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("bench")
            .with_region("us-east-1")
            .with_endpoint(moto.endpoint())
            .with_allow_http(true)
            .with_access_key_id("AKIATESTKEY")
            .with_secret_access_key("test-secret")
            .build()?;
        let started = Instant::now();
        let upload = store
            .put_multipart(&object_store::path::Path::from(key))
            .await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART as usize);
        let mut f = std::fs::File::open(file)?;
        let mut buf = vec![0u8; PART as usize];
        loop {
            use std::io::Read;
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(CONCURRENCY).await?;
            w.write(&buf[..n]);
        }
        w.finish().await?;
        Ok(started.elapsed().as_secs_f64())
    })
}

fn metric(svc: &Service, name: &str) -> f64 {
    let (_, text) = svc.raw("GET", "/metrics", None, &[]);
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

struct Round {
    plain_s: f64,
    engine_s: f64,
    end_to_complete_s: f64,
    size: u64,
    cpu_upload_cores: f64,
    cpu_idle_cores: f64,
    cpu_upload_s: f64,
}

fn round(i: usize, moto: &mut Moto, source: &Path) -> Result<Round> {
    // A fresh store per round: moto keeps every object in memory.
    moto.restart();
    moto.create_bucket("bench");
    let moto = &*moto;
    let size = std::fs::metadata(source)?.len();
    // The plain copy runs before and after the service's upload (the store's speed drifts as
    // it fills up); its time is the mean of the two.
    let plain_before = plain_copy(moto, source, &format!("plain-{i}-a.mp4"))?;

    let dirs = Dirs::new();
    let target = serde_json::to_string(&moto.target("bench", "engine"))?;
    let cfg = format!(
        "storage: {{ output_dir: \"{}\", state_dir: \"{}\", upload: {target}, \
         upload_part_bytes: {PART}, upload_concurrency: {CONCURRENCY} }}\n\
         server: {{ listen: \"127.0.0.1:0\" }}\nlog: {{ level: info }}\ncpu: {{ capacity: 64 }}\n\
         overload: {{ soft_threshold: 10, hard_threshold: 10 }}\n\
         sources: {{ allowed_schemes: [test, file] }}\n",
        dirs.output().display(),
        dirs.state().display()
    );
    let svc = Service::start_with(&dirs, &cfg, &[]);
    // A live recording runs through the whole round (uploads happen while recording).
    let live = svc.start_egress(&json!({"type": "track_composite",
        "sources": [{"uri": "test://video?pattern=ball"}, {"uri": "test://audio"}],
        "output": {"file": {"filename": format!("live-{i}.mkv")}},
        "video": {"width": 640, "height": 360, "fps": 30, "bitrate_kbps": 1500}}));
    svc.wait_active(&live);
    // The service's CPU with the recording only.
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cpu_s(svc.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let cpu_idle_cores = (cpu_s(svc.pid()) - c0) / t0.elapsed().as_secs_f64();

    let id = svc.start_egress(&json!({"type": "track",
        "sources": [{"uri": format!("file://{}", source.display())}],
        "output": {"file": {"filename": format!("big-{i}.mp4")}}}));
    let mut ended: Option<(Instant, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (completed, cpu_end) = loop {
        let v = svc.egress(&id);
        let s = v["status"].as_str().unwrap_or("").to_string();
        if ended.is_none() && (s == "ending" || v["status"] == "complete") {
            ended = Some((Instant::now(), cpu_s(svc.pid())));
        }
        if s == "complete" {
            break (Instant::now(), cpu_s(svc.pid()));
        }
        if s == "failed" || s == "aborted" {
            bail!("the upload egress ended {s}: {v}");
        }
        if Instant::now() > deadline {
            bail!("no completion: {v}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (end_at, cpu_start) = ended.expect("seen");
    let window = completed.duration_since(end_at).as_secs_f64();
    let engine_s = metric(&svc, "egress_upload_duration_seconds_sum");
    let v = svc.egress(&id);
    if v["files"][0]["upload"] != "done" {
        bail!("not uploaded: {v}");
    }
    let plain_s = (plain_before + plain_copy(moto, source, &format!("plain-{i}-b.mp4"))?) / 2.0;
    svc.post(&format!("/v1/egress/{live}/stop"), &json!({}));
    let l = svc.wait_status(&live, &["complete", "failed"], Duration::from_secs(60));
    if l["status"] != "complete" {
        bail!("the live recording did not complete: {l}");
    }
    Ok(Round {
        plain_s,
        engine_s,
        end_to_complete_s: window,
        size,
        cpu_upload_cores: (cpu_end - cpu_start) / window.max(1e-3),
        cpu_idle_cores,
        cpu_upload_s: cpu_end - cpu_start,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut moto = Moto::start();
    let tmp = tempfile::tempdir()?;
    let source = make_source(tmp.path(), args.mb)?;
    let size = std::fs::metadata(&source)?.len();
    println!(
        "bench-upload: {:.1} MB file, moto S3 on loopback, parts {} MiB x {CONCURRENCY} in flight, {} rounds",
        size as f64 / 1e6,
        PART >> 20,
        args.repeat
    );
    let mut plain = Vec::new();
    let mut engine = Vec::new();
    let mut e2c = Vec::new();
    let mut cpu_up = Vec::new();
    let mut cpu_idle = Vec::new();
    let mut cpu_s_per_100mb = Vec::new();
    let mut ratios = Vec::new();
    for i in 0..args.repeat {
        let r = round(i, &mut moto, &source)?;
        let mbps = |s: f64| r.size as f64 / 1e6 / s;
        println!(
            "round {i}: plain copy {:.2} s ({:.0} MB/s), service upload {:.2} s ({:.0} MB/s), \
             ratio {:.2}; end -> complete {:.2} s; service CPU {:.3} cores while uploading vs {:.3} recording only",
            r.plain_s,
            mbps(r.plain_s),
            r.engine_s,
            mbps(r.engine_s),
            r.plain_s / r.engine_s,
            r.end_to_complete_s,
            r.cpu_upload_cores,
            r.cpu_idle_cores
        );
        ratios.push(r.plain_s / r.engine_s);
        plain.push(mbps(r.plain_s));
        engine.push(mbps(r.engine_s));
        e2c.push(r.end_to_complete_s);
        cpu_up.push(r.cpu_upload_cores);
        cpu_idle.push(r.cpu_idle_cores);
        cpu_s_per_100mb.push(r.cpu_upload_s / (r.size as f64 / 1e8));
    }
    let (p, e) = (median(&mut plain), median(&mut engine));
    println!(
        "median: plain object_store {p:.0} MB/s, service {e:.0} MB/s, ratio {:.2} \
         (median of the rounds' ratios {:.2}); \
         end of recording -> complete {:.2} s; service CPU while uploading {:.3} cores \
         (recording only {:.3}), {:.2} CPU-s per 100 MB",
        e / p,
        median(&mut ratios),
        median(&mut e2c),
        median(&mut cpu_up),
        median(&mut cpu_idle),
        median(&mut cpu_s_per_100mb)
    );
    Ok(())
}
