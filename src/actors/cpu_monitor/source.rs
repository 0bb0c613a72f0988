//! Where CpuMonitor's numbers come from: the `CpuSource` trait (so tests can feed exact
//! numbers), `SysinfoSource` (the real one, scanning `/proc`), and the node's core count.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
