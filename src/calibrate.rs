//! `egress-engine calibrate`: measures what each egress type costs on this machine before the
//! node takes traffic, and writes the result into the learned cost table of `state_dir`.
//!
//! It runs the service's own machinery: a child `egress-engine serve` on a loopback port with a
//! scratch state and output directory (no fleet, no limits, a capacity so large that neither
//! admission nor overload interferes), and drives it over its API with the command-line client's
//! `cli::Client`, one job at a time: each type at its default profile (and any `--profiles`) from
//! test sources, for the start hold plus `--seconds` (at least 3 s, the shortest job a class
//! learns from), then a graceful stop. The service learns each job as it would in production
//! (samples after the start hold); the figures it learned are marked `calibrated` (learned at
//! once, whatever `cpu.learn_min_jobs`) and replace those classes in `state_dir/costs.json`. The
//! real `state_dir` is locked meanwhile, so a service cannot run on it at the same time. In a
//! fleet, the node pushes calibrated classes to Redis when it starts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cli::{CliError, Client, Connection};
use crate::config::Config;
use crate::model::{EgressInfo, EgressStatus, EgressType};
use crate::rules::costs::{
    CostClass, CostTable, DEFAULT_VIDEO, MIN_JOB_MS, PricePolicy, keep_known,
};
use crate::rules::pricer::{ClassCost, CostsReport};
use crate::store::costs::{read_table, table_path, write_table};

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("{0}")]
    Usage(String),
    #[error("invalid config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    State(String),
    #[error("the calibration service: {0}")]
    Service(String),
}

/// What to calibrate.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub types: Vec<EgressType>,
    /// Output video profiles (w, h, fps) each type runs at; the default one first.
    pub profiles: Vec<(u32, u32, u32)>,
    /// Measured time per job, after the start hold.
    pub seconds: f64,
}

/// The types calibrate runs by default: every type with test sources (a web egress records a
/// page, whose cost depends on the page: it is learned from real jobs).
pub const DEFAULT_TYPES: [EgressType; 4] = [
    EgressType::Track,
    EgressType::TrackComposite,
    EgressType::Participant,
    EgressType::RoomComposite,
];

impl Plan {
    /// From the command line: `a,b` type names, `WxH@fps,...` extra profiles, seconds.
    pub fn parse(
        types: Option<&str>,
        profiles: Option<&str>,
        seconds: f64,
    ) -> Result<Plan, CalibrateError> {
        let types = match types {
            None => DEFAULT_TYPES.to_vec(),
            Some(s) => s
                .split(',')
                .map(|t| match EgressType::parse(t.trim()) {
                    Some(EgressType::Web) => Err(CalibrateError::Usage(
                        "--types: web has no test source to record (it records a page): its \
                         class is learned from real jobs"
                            .into(),
                    )),
                    Some(t) => Ok(t),
                    None => Err(CalibrateError::Usage(format!(
                        "--types: unknown type '{t}': expected track, track_composite, participant, room_composite"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let mut all = vec![DEFAULT_VIDEO];
        for p in profiles.into_iter().flat_map(|s| s.split(',')) {
            let c = CostClass::parse(&format!("track {}", p.trim()))
                .and_then(|c| c.video)
                .filter(|(w, h, f)| {
                    (16..=3840).contains(w) && (16..=2160).contains(h) && (1..=60).contains(f)
                })
                .ok_or_else(|| {
                    CalibrateError::Usage(format!(
                        "--profiles: '{p}' is not WxH@fps (e.g. 1920x1080@30, within 3840x2160@60)"
                    ))
                })?;
            if !all.contains(&c) {
                all.push(c);
            }
        }
        // A job measured for less than MIN_JOB_MS teaches its class nothing.
        let min = MIN_JOB_MS as f64 / 1000.0;
        if !(seconds.is_finite() && (min..=3600.0).contains(&seconds)) {
            return Err(CalibrateError::Usage(format!(
                "--seconds: must be in [{min}, 3600]"
            )));
        }
        Ok(Plan {
            types,
            profiles: all,
            seconds,
        })
    }
}

/// The request calibrate sends for a type at a profile: test sources as a real job of the type
/// has them (a room of four participants for room_composite).
pub fn job(t: EgressType, (w, h, fps): (u32, u32, u32), filename: &str) -> Value {
    let sources: Vec<&str> = match t {
        EgressType::Track => vec!["test://video"],
        EgressType::TrackComposite => vec!["test://video", "test://audio"],
        EgressType::Participant => vec!["test://av"],
        _ => vec!["test://av"; 4],
    };
    json!({
        "type": t.as_str(),
        "sources": sources.iter().map(|u| json!({"uri": u})).collect::<Vec<_>>(),
        "output": {"file": {"filename": filename}},
        "video": {"width": w, "height": h, "fps": fps},
    })
}

/// One calibrated class, as printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub class: String,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub configured: f64,
    pub price: f64,
    /// Wall time of its job (start to final record).
    pub took: Duration,
}

/// The child service; killed if still running when dropped.
struct Child_ {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Child_ {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Child_ {
    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The child's config: the operator's (costs, pipeline, hold, sampling), made to measure one
/// job at a time undisturbed.
fn child_config(cfg: &Config, scratch: &Path) -> Config {
    let mut c = cfg.clone();
    c.server.listen = "127.0.0.1:0".into();
    c.server.api_token = String::new();
    c.storage.output_dir = scratch.join("out");
    c.storage.state_dir = scratch.join("state");
    c.node.id = String::new();
    c.fleet.redis_url = String::new();
    c.cpu.capacity = 4096.0;
    c.cpu.max_utilization = 1.0;
    c.cpu.learn_min_jobs = 1;
    c.limits = Default::default();
    c.overload.soft_threshold = 10.0;
    c.overload.hard_threshold = 10.0;
    c.log.level = crate::logging::LogLevel::Warning;
    c
}

fn spawn(cfg: &Config, scratch: &Path) -> Result<Child_, CalibrateError> {
    let err = |e: std::io::Error| CalibrateError::Service(e.to_string());
    std::fs::create_dir_all(scratch).map_err(err)?;
    // JSON is YAML: the config file the service reads.
    let path = scratch.join("config.yaml");
    let text = serde_json::to_string_pretty(&child_config(cfg, scratch))
        .map_err(|e| CalibrateError::Service(e.to_string()))?;
    std::fs::write(&path, text).map_err(err)?;
    let log = scratch.join("service.log");
    let exe = std::env::current_exe().map_err(err)?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).map_err(err)?));
    // The operator's EGRESS__* overrides are in `cfg` already; the child must not re-apply
    // them over its own settings (a fleet URL, a listen address).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("EGRESS__") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().map_err(err)?;
    let stdout = child.stdout.take();
    let mut c = Child_ {
        child,
        base: String::new(),
        log,
    };
    let mut line = String::new();
    if let Some(out) = stdout {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    let Some(addr) = v["listening"].as_str() else {
        return Err(CalibrateError::Service(format!(
            "did not start:\n{}",
            c.log_tail()
        )));
    };
    c.base = format!("http://{addr}");
    Ok(c)
}

/// The child's API, through the command-line client's `Client` (plain HTTP on loopback, no
/// token, 30 s per answer).
fn client(base: &str) -> Result<Client, CalibrateError> {
    Client::new(&Connection {
        url: base.to_string(),
        token: None,
        json: false,
        http_timeout_s: 30.0,
    })
    .map_err(|e| CalibrateError::Service(e.to_string()))
}

/// Polls `GET path` every 100 ms until `done` holds for the answer, up to `timeout`. An error
/// answer is polled again; a child that does not answer at all ends the wait.
fn poll<T: DeserializeOwned + Serialize>(
    client: &Client,
    path: &str,
    timeout: Duration,
    done: impl Fn(&T) -> bool,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get_as::<T>(path) {
            Ok(v) if done(&v) => return Ok(v),
            Ok(v) => serde_json::to_string(&v).unwrap_or_default(),
            Err(e @ CliError::Unreachable { .. }) => return Err(e.to_string()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} on {path}: {last}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one job of `t` at `profile` for the hold plus `seconds`; returns the class's learned line.
fn measure(
    client: &Client,
    t: EgressType,
    profile: (u32, u32, u32),
    hold: Duration,
    seconds: f64,
) -> Result<(ClassCost, Duration), String> {
    let t0 = Instant::now();
    let class = CostClass {
        egress_type: t,
        video: Some(profile),
        encodes: 1,
        remux: false,
    }
    .key();
    let file = format!(
        "{}-{}x{}-{}.mp4",
        t.as_str(),
        profile.0,
        profile.1,
        profile.2
    );
    let started: EgressInfo = client
        .post_as("/v1/egress", Some(&job(t, profile, &file)))
        .map_err(|e| format!("start refused: {e}"))?;
    let path = format!("/v1/egress/{}", started.egress_id);
    let info: EgressInfo = poll(client, &path, Duration::from_secs(60), |e: &EgressInfo| {
        e.status != EgressStatus::Starting
    })?;
    if info.status != EgressStatus::Active {
        return Err(format!("the job did not record: {}", record(&info)));
    }
    // Measuring: the job runs its hold and the asked time; nothing to wait for but time.
    std::thread::sleep(hold + Duration::from_secs_f64(seconds));
    // The stop's own answer does not matter (the job may have ended meanwhile): its record does.
    if let Err(e @ CliError::Unreachable { .. }) = client.post(&format!("{path}/stop"), None) {
        return Err(e.to_string());
    }
    let info: EgressInfo = poll(client, &path, Duration::from_secs(60), |e: &EgressInfo| {
        e.status.is_final()
    })?;
    if info.status != EgressStatus::Complete {
        return Err(format!(
            "the job ended {}: {}",
            info.status.as_str(),
            record(&info)
        ));
    }
    let has_samples = |c: &ClassCost| c.class == class && c.samples >= 1;
    let costs: CostsReport = poll(
        client,
        "/v1/node/costs",
        Duration::from_secs(10),
        |r: &CostsReport| r.classes.iter().any(has_samples),
    )?;
    let line = costs
        .classes
        .into_iter()
        .find(has_samples)
        .ok_or_else(|| format!("{class}: not in the learned costs"))?;
    Ok((line, t0.elapsed()))
}

/// A record as the API gave it, for an error message.
fn record(info: &EgressInfo) -> String {
    serde_json::to_string(info).unwrap_or_default()
}

/// Runs the plan; writes the calibrated classes into `state_dir/costs.json`. Prints progress on
/// stderr; returns the figures and the total time.
pub fn run(
    config: Option<&Path>,
    plan: &Plan,
) -> Result<(Vec<Measured>, Duration, PathBuf), CalibrateError> {
    let cfg = Config::load(config)?;
    let t0 = Instant::now();
    let _lock =
        crate::store::lock_state_dir(&cfg.storage.state_dir).map_err(CalibrateError::State)?;
    let scratch = cfg.storage.state_dir.join("calibrate.tmp");
    let _ = std::fs::remove_dir_all(&scratch);
    let child = spawn(&cfg, &scratch)?;
    // The hold, plus two sample intervals: the first counted sample may come up to one interval
    // after the hold ends, and the last one up to one before the stop.
    let hold = Duration::from_millis(cfg.cpu.pending_hold_ms + 2 * cfg.cpu.sample_interval_ms);
    let client = client(&child.base)?;
    let mut results = Vec::new();
    for t in &plan.types {
        for p in &plan.profiles {
            eprintln!(
                "calibrating {} {}x{}@{} for {:.0} s (+{:.1} s start hold)...",
                t.as_str(),
                p.0,
                p.1,
                p.2,
                plan.seconds,
                hold.as_secs_f64()
            );
            results.push((*t, *p, measure(&client, *t, *p, hold, plan.seconds)));
        }
    }
    let mut child = child;
    // SAFETY: signalling the child this function started.
    unsafe { libc::kill(child.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut failures = Vec::new();
    let mut done: Vec<(String, Duration)> = Vec::new();
    for (t, p, r) in results {
        match r {
            Ok((line, took)) => done.push((line.class, took)),
            Err(e) => failures.push(format!("{} {}x{}@{}: {e}", t.as_str(), p.0, p.1, p.2)),
        }
    }
    // What the child learned, from its table: marked calibrated, replacing those classes.
    let learned = read_table(&table_path(&scratch.join("state")))
        .map(keep_known)
        .map_err(|e| CalibrateError::Service(format!("its learned table: {e}")))?;
    let path = table_path(&cfg.storage.state_dir);
    let mut table: CostTable = read_table(&path)
        .map(keep_known)
        .map_err(CalibrateError::State)?;
    let policy = PricePolicy {
        mode: crate::config::CostMode::Learned,
        ..PricePolicy::from_config(&cfg)
    };
    let mut measured = Vec::new();
    for (class, took) in &done {
        let Some(e) = learned.get(class) else {
            failures.push(format!("{class}: nothing learned"));
            continue;
        };
        let mut e = e.clone();
        e.calibrated = true;
        let configured = CostClass::parse(class)
            .map_or(0.0, |c| cfg.cpu_cost.of_class(c.egress_type, c.encodes));
        measured.push(Measured {
            class: class.clone(),
            p50: e.p50,
            p95: e.p95,
            max: e.max,
            configured,
            price: policy.price(Some(&e), configured),
            took: *took,
        });
        table.insert(class.clone(), e);
    }
    if !measured.is_empty() {
        write_table(&path, &table)
            .map_err(|e| CalibrateError::State(format!("{}: {e}", path.display())))?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if !failures.is_empty() {
        return Err(CalibrateError::Service(format!(
            "{} of {} jobs failed:\n  {}\n{}",
            failures.len(),
            plan.types.len() * plan.profiles.len(),
            failures.join("\n  "),
            child.log_tail()
        )));
    }
    Ok((measured, t0.elapsed(), path))
}

/// The table calibrate prints.
pub fn render(measured: &[Measured], took: Duration, path: &Path) -> String {
    let mut s = format!(
        "{:<34} {:>6} {:>6} {:>6} {:>11} {:>14} {:>7}\n",
        "class", "p50", "p95", "max", "configured", "learned price", "time"
    );
    for m in measured {
        s.push_str(&format!(
            "{:<34} {:>6.2} {:>6.2} {:>6.2} {:>11.2} {:>14.2} {:>6.1}s\n",
            m.class,
            m.p50,
            m.p95,
            m.max,
            m.configured,
            m.price,
            m.took.as_secs_f64()
        ));
    }
    s.push_str(&format!(
        "calibrated {} classes in {:.1} s; learned table written to {}\n",
        measured.len(),
        took.as_secs_f64(),
        path.display()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_name_their_flag() {
        let p = Plan::parse(None, None, 10.0).unwrap();
        assert_eq!(
            (p.types.len(), p.profiles.clone()),
            (4, vec![DEFAULT_VIDEO])
        );
        let p = Plan::parse(
            Some("track, participant"),
            Some("640x360@15,1280x720@30"),
            3.0,
        )
        .unwrap();
        assert_eq!(p.types, vec![EgressType::Track, EgressType::Participant]);
        assert_eq!(p.profiles, vec![DEFAULT_VIDEO, (640, 360, 15)]);
        for (types, profiles, secs, flag) in [
            (Some("web"), None, 10.0, "--types"),
            (Some("nope"), None, 10.0, "--types"),
            (None, Some("640x360"), 10.0, "--profiles"),
            (None, Some("9999x360@15"), 10.0, "--profiles"),
            (None, None, 0.5, "--seconds"),
        ] {
            let e = Plan::parse(types, profiles, secs).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }

    #[test]
    fn calibration_jobs_are_valid_requests_of_their_class() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::model::ValidationContext {
            output_dir: dir.path(),
            state_dir: dir.path(),
            allowed_schemes: &["test".to_string()],
            allowed_web_hosts: &[],
            allowed_endpoints: &[],
        };
        for t in DEFAULT_TYPES {
            let req: crate::model::EgressRequest =
                serde_json::from_value(job(t, (640, 360, 15), "x.mp4")).unwrap();
            let spec = req.validate("EG_x", &ctx).unwrap();
            assert_eq!(CostClass::of(&spec).key(), format!("{t} 640x360@15"));
        }
    }
}
