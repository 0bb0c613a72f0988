//! The CpuMonitor actor: samples host CPU, the service process and every handler process (with
//! its descendants) each `cpu.sample_interval_ms`, publishes the result as a `CpuSample` to its
//! subscribers (Admission for measurements, the Supervisor for overload) and to the metrics.
//!
//! Sampling goes through the `CpuSource` trait so tests can feed exact numbers; `SysinfoSource`
//! is the real one. `detect_capacity` decides how many cores the node has.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use slog::{Logger, debug, warn};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::metrics::METRICS;
use crate::model::now_ms;

/// Usage of one job's handler process and its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct JobUsage {
    /// CPU in cores (1.0 = one core fully busy).
    pub cores: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
}

/// One raw measurement from a `CpuSource`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawSample {
    /// Busy fraction of all host cores, 0..1.
    pub host_busy: f64,
    /// CPU of the service process itself, in cores.
    pub service_cores: f64,
    pub service_rss_bytes: u64,
    /// Each watched egress whose handler still exists, by egress id.
    pub jobs: HashMap<String, JobUsage>,
}

/// Where CPU numbers come from.
pub trait CpuSource: Send + 'static {
    /// Measures the host, this process and each handler `pids[egress_id]` with its descendants.
    fn sample(&mut self, pids: &HashMap<String, u32>) -> RawSample;
}

/// The real source, reading `/proc` through sysinfo. CPU usage is the difference since the
/// previous call, so the first sample of a process reads 0.
pub struct SysinfoSource {
    /// None when sysinfo could not initialize; every sample is then zero.
    system: Option<System>,
    me: Option<Pid>,
}

impl SysinfoSource {
    pub fn new() -> SysinfoSource {
        SysinfoSource {
            system: System::new().ok(),
            me: sysinfo::get_current_pid().ok(),
        }
    }
}

impl Default for SysinfoSource {
    fn default() -> Self {
        SysinfoSource::new()
    }
}

impl CpuSource for SysinfoSource {
    fn sample(&mut self, pids: &HashMap<String, u32>) -> RawSample {
        let Some(sys) = self.system.as_mut() else {
            return RawSample::default();
        };
        sys.refresh_cpu_usage();
        sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        );
        let procs = sys.processes();
        let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, p) in procs {
            if p.thread_kind().is_some() {
                continue;
            }
            if let Some(parent) = p.parent() {
                children.entry(parent).or_default().push(*pid);
            }
        }
        let usage = |root: Pid| -> Option<JobUsage> {
            procs.get(&root)?;
            let mut total = JobUsage::default();
            let mut seen = HashSet::new();
            let mut stack = vec![root];
            while let Some(pid) = stack.pop() {
                if !seen.insert(pid) {
                    continue;
                }
                if let Some(p) = procs.get(&pid) {
                    total.cores += f64::from(p.cpu_usage()) / 100.0;
                    total.rss_bytes += p.memory();
                }
                stack.extend(children.get(&pid).into_iter().flatten().copied());
            }
            Some(total)
        };
        let jobs = pids
            .iter()
            .filter_map(|(id, pid)| usage(Pid::from_u32(*pid)).map(|u| (id.clone(), u)))
            .collect();
        let me = self.me.and_then(|pid| procs.get(&pid));
        RawSample {
            host_busy: (f64::from(sys.global_cpu_usage()) / 100.0).clamp(0.0, 1.0),
            service_cores: me.map_or(0.0, |p| f64::from(p.cpu_usage()) / 100.0),
            service_rss_bytes: me.map_or(0, |p| p.memory()),
            jobs,
        }
    }
}

/// Cores of a cgroup v2 `cpu.max` ("quota period" or "max period"); None when unlimited.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// The node's CPU capacity in cores: `configured` if > 0, else the cgroup v2 quota if the service
/// is limited, else the number of logical cores.
pub fn detect_capacity(configured: f64) -> f64 {
    if configured > 0.0 {
        return configured;
    }
    if let Some(q) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max")
        .ok()
        .as_deref()
        .and_then(parse_cpu_max)
    {
        return q;
    }
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

pub struct CpuMonitor {
    /// Cores the node has (load is measured against this).
    capacity: f64,
    interval: Duration,
    source: Box<dyn CpuSource>,
    /// Handler pid of each running egress.
    pids: HashMap<String, u32>,
    subscribers: Vec<Recipient<CpuSample>>,
    last: Option<CpuSample>,
    log: Logger,
}

impl CpuMonitor {
    pub fn new(capacity: f64, interval: Duration, source: Box<dyn CpuSource>, log: Logger) -> Self {
        CpuMonitor {
            capacity,
            interval,
            source,
            pids: HashMap::new(),
            subscribers: Vec::new(),
            last: None,
            log,
        }
    }

    /// Takes one sample, publishes it and keeps it as the last one.
    fn tick(&mut self) {
        let raw = self.source.sample(&self.pids);
        let sample = CpuSample::from_raw(now_ms(), self.capacity, raw);
        METRICS.node_load.set(sample.load);
        METRICS.capacity_cores.set(sample.capacity_cores);
        let handler_cores: f64 = sample.jobs.values().map(|j| j.cores).sum();
        let handler_rss: u64 = sample.jobs.values().map(|j| j.rss_bytes).sum();
        METRICS
            .process_cpu_cores
            .with_label_values(&["service"])
            .set(sample.service_cores);
        METRICS
            .process_cpu_cores
            .with_label_values(&["handlers"])
            .set(handler_cores);
        METRICS
            .process_memory_bytes
            .with_label_values(&["service"])
            .set(sample.service_rss_bytes as f64);
        METRICS
            .process_memory_bytes
            .with_label_values(&["handlers"])
            .set(handler_rss as f64);
        self.subscribers.retain(|s| s.connected());
        for s in &self.subscribers {
            s.do_send(sample.clone());
        }
        self.last = Some(sample);
    }
}

impl Actor for CpuMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.capacity.is_nan() || self.capacity <= 0.0 {
            warn!(self.log, "CPU capacity is not positive; load is measured against 1 core"; "capacity" => self.capacity);
            self.capacity = 1.0;
        }
        METRICS.capacity_cores.set(self.capacity);
        debug!(self.log, "sampling CPU"; "capacity_cores" => self.capacity, "interval_ms" => self.interval.as_millis() as u64);
        ctx.run_interval(self.interval, |act, _| act.tick());
    }
}

/// One published measurement of the node.
#[derive(Debug, Clone, PartialEq, Serialize, Message)]
#[rtype(result = "()")]
pub struct CpuSample {
    pub at_ms: u64,
    pub capacity_cores: f64,
    /// Busy fraction of all host cores, 0..1.
    pub host_busy: f64,
    /// Service plus all handlers, in cores.
    pub node_cores: f64,
    /// max(host_busy, node_cores / capacity_cores).
    pub load: f64,
    pub service_cores: f64,
    pub service_rss_bytes: u64,
    /// Each running egress's handler (with descendants), by egress id.
    pub jobs: HashMap<String, JobUsage>,
}

impl CpuSample {
    /// Derives node CPU and load from a raw measurement.
    pub fn from_raw(at_ms: u64, capacity_cores: f64, raw: RawSample) -> CpuSample {
        let node_cores = raw.service_cores + raw.jobs.values().map(|j| j.cores).sum::<f64>();
        let load = if capacity_cores > 0.0 {
            raw.host_busy.max(node_cores / capacity_cores)
        } else {
            raw.host_busy
        };
        CpuSample {
            at_ms,
            capacity_cores,
            host_busy: raw.host_busy,
            node_cores,
            load,
            service_cores: raw.service_cores,
            service_rss_bytes: raw.service_rss_bytes,
            jobs: raw.jobs,
        }
    }
}

/// Starts measuring an egress's handler process (and its descendants). Returns nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WatchProcess {
    pub egress_id: String,
    pub pid: u32,
}

impl Handler<WatchProcess> for CpuMonitor {
    type Result = ();

    fn handle(&mut self, msg: WatchProcess, _: &mut Context<Self>) {
        self.pids.insert(msg.egress_id, msg.pid);
    }
}

/// Stops measuring an egress (idempotent). Returns nothing.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UnwatchProcess {
    pub egress_id: String,
}

impl Handler<UnwatchProcess> for CpuMonitor {
    type Result = ();

    fn handle(&mut self, msg: UnwatchProcess, _: &mut Context<Self>) {
        self.pids.remove(&msg.egress_id);
    }
}

/// Asks for every future `CpuSample`. Returns nothing; dropped recipients are forgotten.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<CpuSample>);

impl Handler<Subscribe> for CpuMonitor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribers.push(msg.0);
    }
}

/// Asks for the latest sample; returns None before the first one.
#[derive(Debug, Message)]
#[rtype(result = "Option<CpuSample>")]
pub struct GetLastSample;

impl Handler<GetLastSample> for CpuMonitor {
    type Result = Option<CpuSample>;

    fn handle(&mut self, _: GetLastSample, _: &mut Context<Self>) -> Option<CpuSample> {
        self.last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Fixed numbers; remembers the pids it was asked about.
    struct FakeSource {
        seen: Arc<Mutex<Vec<HashMap<String, u32>>>>,
    }

    impl CpuSource for FakeSource {
        fn sample(&mut self, pids: &HashMap<String, u32>) -> RawSample {
            self.seen.lock().unwrap().push(pids.clone());
            let jobs = pids
                .keys()
                .map(|id| {
                    (
                        id.clone(),
                        JobUsage {
                            cores: 1.5,
                            rss_bytes: 1000,
                        },
                    )
                })
                .collect();
            RawSample {
                host_busy: 0.2,
                service_cores: 0.5,
                service_rss_bytes: 42,
                jobs,
            }
        }
    }

    /// Collects the samples it receives.
    struct Collector(Arc<Mutex<Vec<CpuSample>>>);
    impl Actor for Collector {
        type Context = Context<Self>;
    }
    impl Handler<CpuSample> for Collector {
        type Result = ();
        fn handle(&mut self, s: CpuSample, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(s);
        }
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[test]
    fn load_is_the_larger_of_host_busy_and_node_share() {
        let mut jobs = HashMap::new();
        jobs.insert(
            "EG_a".to_string(),
            JobUsage {
                cores: 2.0,
                rss_bytes: 1,
            },
        );
        jobs.insert(
            "EG_b".to_string(),
            JobUsage {
                cores: 1.0,
                rss_bytes: 1,
            },
        );
        let raw = RawSample {
            host_busy: 0.1,
            service_cores: 1.0,
            service_rss_bytes: 0,
            jobs,
        };
        let s = CpuSample::from_raw(7, 8.0, raw.clone());
        assert_eq!((s.node_cores, s.load, s.at_ms), (4.0, 0.5, 7));
        let s = CpuSample::from_raw(
            7,
            8.0,
            RawSample {
                host_busy: 0.9,
                ..raw
            },
        );
        assert_eq!(s.load, 0.9);
    }

    #[test]
    fn cpu_max_parses_quota_and_unlimited() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(detect_capacity(3.5), 3.5);
        assert!(detect_capacity(0.0) > 0.0);
    }

    #[test]
    fn the_real_source_sees_this_process() {
        let mut src = SysinfoSource::new();
        let mut pids = HashMap::new();
        pids.insert("EG_me".to_string(), std::process::id());
        pids.insert("EG_gone".to_string(), u32::MAX - 1);
        let s = src.sample(&pids);
        assert!(s.service_rss_bytes > 0);
        assert!(s.jobs.contains_key("EG_me"));
        assert!(!s.jobs.contains_key("EG_gone"));
        assert!((0.0..=1.0).contains(&s.host_busy));
    }

    #[actix_rt::test]
    async fn subscribers_get_samples_of_watched_processes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let source = Box::new(FakeSource { seen: seen.clone() });
        let mon = CpuMonitor::new(4.0, Duration::from_millis(10), source, log()).start();
        let collector = Collector(got.clone()).start();
        mon.send(Subscribe(collector.recipient())).await.unwrap();
        mon.send(WatchProcess {
            egress_id: "EG_a".into(),
            pid: 11,
        })
        .await
        .unwrap();
        mon.send(WatchProcess {
            egress_id: "EG_b".into(),
            pid: 12,
        })
        .await
        .unwrap();
        actix_rt::time::sleep(Duration::from_millis(60)).await;
        let last = mon.send(GetLastSample).await.unwrap().expect("a sample");
        assert_eq!(last.jobs.len(), 2);
        assert_eq!(last.node_cores, 3.5);
        assert_eq!(last.load, 3.5 / 4.0);
        assert_eq!(last.service_rss_bytes, 42);
        assert!(
            got.lock()
                .unwrap()
                .iter()
                .any(|s| s.jobs.len() == 2 && s.load == 0.875)
        );

        mon.send(UnwatchProcess {
            egress_id: "EG_a".into(),
        })
        .await
        .unwrap();
        mon.send(UnwatchProcess {
            egress_id: "EG_a".into(),
        })
        .await
        .unwrap();
        actix_rt::time::sleep(Duration::from_millis(40)).await;
        let last = mon.send(GetLastSample).await.unwrap().expect("a sample");
        assert_eq!(last.jobs.keys().collect::<Vec<_>>(), vec!["EG_b"]);
        assert_eq!(seen.lock().unwrap().last().unwrap().get("EG_b"), Some(&12));
    }
}
