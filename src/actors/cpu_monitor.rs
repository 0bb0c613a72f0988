//! The CpuMonitor actor: samples host CPU, the service process and every handler process (with
//! its descendants) each `cpu.sample_interval_ms`, publishes the result as a `CpuSample` to its
//! subscribers (Admission for measurements, the Supervisor for overload) and to the metrics.
//!
//! Sampling goes through the `CpuSource` trait (`source.rs`) so tests can feed exact numbers;
//! `SysinfoSource` is the real one. A sample scans every process in `/proc` (tens of ms on a busy host), so it
//! runs on a blocking-pool thread, never on the arbiter thread that runs every actor: the
//! source moves to that thread for the scan and comes back with the result. A tick that finds
//! the previous scan still running is skipped rather than queued. `detect_capacity` decides how
//! many cores the node has.

mod source;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use slog::{Logger, debug, error, warn};

use crate::metrics::METRICS;
use crate::model::now_ms;

pub use source::{CpuSource, JobUsage, RawSample, SysinfoSource, detect_capacity, parse_cpu_max};

pub struct CpuMonitor {
    /// Cores the node has (load is measured against this).
    capacity: f64,
    interval: Duration,
    /// None while a sample is being taken on the blocking pool (the scan owns it meanwhile).
    source: Option<Box<dyn CpuSource>>,
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
            source: Some(source),
            pids: HashMap::new(),
            subscribers: Vec::new(),
            last: None,
            log,
        }
    }

    /// Starts one sample on the blocking pool, unless the previous one is still running.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(mut source) = self.source.take() else {
            debug!(
                self.log,
                "CPU sample skipped: the previous one is still running"
            );
            return;
        };
        let pids = self.pids.clone();
        let scan = actix_rt::task::spawn_blocking(move || {
            // A panicking source costs one sample, not the monitor: the source comes back.
            let raw = std::panic::catch_unwind(AssertUnwindSafe(|| source.sample(&pids)));
            (source, raw)
        });
        ctx.spawn(
            actix::fut::wrap_future(scan).map(|done, act: &mut Self, _| match done {
                Ok((source, raw)) => {
                    act.source = Some(source);
                    match raw {
                        Ok(raw) => act.publish(raw),
                        Err(_) => error!(act.log, "CPU sample panicked; skipped"),
                    }
                }
                // Only a runtime shutting down cancels a blocking task.
                Err(e) => error!(act.log, "CPU sample task lost; sampling stops"; "error" => %e),
            }),
        );
    }

    /// Publishes a sample to the metrics and the subscribers and keeps it as the last one.
    fn publish(&mut self, mut raw: RawSample) {
        // An egress unwatched while the scan ran has ended: leave it out.
        raw.jobs.retain(|id, _| self.pids.contains_key(id));
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
        ctx.run_interval(self.interval, |act, ctx| act.tick(ctx));
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

    /// Polls the monitor's last sample until `done` holds (panics after 10 s).
    async fn wait_sample(
        mon: &Addr<CpuMonitor>,
        what: &str,
        done: impl Fn(&CpuSample) -> bool,
    ) -> CpuSample {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = mon.send(GetLastSample).await.unwrap()
                && done(&s)
            {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for a sample with {what}"
            );
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn subscribers_get_samples_of_watched_processes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let source = Box::new(FakeSource { seen: seen.clone() });
        let mon = CpuMonitor::new(4.0, Duration::from_millis(10), source, log()).start();
        let collector = Collector(got.clone()).start();
        mon.send(Subscribe(collector.recipient())).await.unwrap();
        for (id, pid) in [("EG_a", 11), ("EG_b", 12)] {
            mon.send(WatchProcess {
                egress_id: id.into(),
                pid,
            })
            .await
            .unwrap();
        }
        let last = wait_sample(&mon, "both jobs", |s| s.jobs.len() == 2).await;
        assert_eq!(last.node_cores, 3.5);
        assert_eq!(last.load, 3.5 / 4.0);
        assert_eq!(last.service_rss_bytes, 42);
        // The subscriber gets it too, through its own mailbox.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !got
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.jobs.len() == 2 && s.load == 0.875)
        {
            assert!(std::time::Instant::now() < deadline, "no sample delivered");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }

        for _ in 0..2 {
            mon.send(UnwatchProcess {
                egress_id: "EG_a".into(),
            })
            .await
            .unwrap();
        }
        let last = wait_sample(&mon, "EG_b alone", |s| s.jobs.len() == 1).await;
        assert_eq!(last.jobs.keys().collect::<Vec<_>>(), vec!["EG_b"]);
        assert_eq!(seen.lock().unwrap().last().unwrap().get("EG_b"), Some(&12));
    }

    /// Blocks in `sample` until the test opens the gate; counts scans in flight.
    struct GatedSource {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        in_flight: Arc<std::sync::atomic::AtomicUsize>,
        most_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl CpuSource for GatedSource {
        fn sample(&mut self, pids: &HashMap<String, u32>) -> RawSample {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most_in_flight.fetch_max(n, SeqCst);
            let (open, cv) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.in_flight.fetch_sub(1, SeqCst);
            let jobs = pids
                .keys()
                .map(|id| (id.clone(), JobUsage::default()))
                .collect();
            RawSample {
                jobs,
                ..RawSample::default()
            }
        }
    }

    /// Counts the "skipped" debug lines of ticks that found a scan still running.
    struct CountSkips(Arc<std::sync::atomic::AtomicUsize>);

    impl slog::Drain for CountSkips {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            if r.msg().to_string().contains("skipped") {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
    }

    #[actix_rt::test]
    async fn a_slow_scan_blocks_neither_the_actor_nor_overlaps_the_next() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let skips = Arc::new(AtomicUsize::new(0));
        let log = Logger::root(CountSkips(skips.clone()), slog::o!());
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let source = Box::new(GatedSource {
            gate: gate.clone(),
            in_flight: in_flight.clone(),
            most_in_flight: most.clone(),
        });
        let mon = CpuMonitor::new(1.0, Duration::from_millis(5), source, log).start();
        // The first scan is stuck; the actor still answers, and the ticks meanwhile are skipped.
        mon.send(WatchProcess {
            egress_id: "EG_a".into(),
            pid: 1,
        })
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while skips.load(SeqCst) < 3 {
            assert!(std::time::Instant::now() < deadline, "no tick was skipped");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(mon.send(GetLastSample).await.unwrap(), None);
        assert_eq!(most.load(SeqCst), 1, "scans overlapped");
        {
            let (open, cv) = &*gate;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        // The source came back: later scans see the watched job.
        wait_sample(&mon, "EG_a", |s| s.jobs.contains_key("EG_a")).await;
        assert_eq!(most.load(SeqCst), 1, "scans overlapped");
    }
}
