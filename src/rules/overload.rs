//! Overload escalation: a state machine fed with every CPU sample, deciding when to stop one
//! egress gracefully and when to kill it. Pure: the caller (the Supervisor) passes the time, the
//! node load and the jobs whose handlers still run, and carries out the actions it gets back.
//!
//! ```text
//!            load > soft for sustain_samples in a row, or load > hard once
//!   Watching ────────────────────────────────────────────────────────────> Stopping(victim)
//!      ^   (no action while fewer than two jobs run)       Stop{victim}      │
//!      │                                                                     │ load > hard for
//!      │  victim gone from `jobs` (count starts afresh)                      │ kill_grace_s
//!      └─────────────────────────────────────────────────────────────────────┤ → Kill{victim}
//!                                                                            v   (once)
//! ```
//!
//! - **Victim**: the job using the most CPU above its admitted cost (`cores_used -
//!   admitted_cost`); ties go to the newest (largest `started_at_ms`), then to the largest id so
//!   the choice is deterministic.
//! - **One victim at a time**: while a stopped victim is still in `jobs` (finalizing), no new
//!   victim is chosen and samples do not count towards the sustain count.
//! - **Kill**: when the load has stayed above `hard` for `kill_grace_s` since the stop (every
//!   sample since the later of the stop and the last sample at or below `hard` was above it).
//!   A sample at or below `hard` restarts that wait.
//! - **Single-job exemption**: a lone job is never chosen as a victim: when it alone overloads the
//!   node, stopping it would not protect any other job. (A victim chosen while others ran may
//!   still be killed if it becomes the last one: its stop was already decided.)
//! - `jobs` must list every job whose handler still runs, including ones being stopped, so the
//!   machine can tell when its victim is gone.

use crate::config::OverloadConfig;
use crate::model::reason;

/// One running job, as the overload rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLoad {
    pub egress_id: String,
    /// Measured usage of its handler, in cores.
    pub cores_used: f64,
    /// Cost it was admitted with, in cores.
    pub admitted_cost: f64,
    pub started_at_ms: u64,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum OverloadAction {
    /// Stop this egress gracefully (EOS); its end reason is `reason` ("CPU limit reached").
    Stop {
        egress_id: String,
        reason: &'static str,
        load: f64,
    },
    /// Kill this egress's handler now; its end reason is `reason` ("CPU exhausted").
    Kill {
        egress_id: String,
        reason: &'static str,
        load: f64,
    },
}

impl OverloadAction {
    pub fn egress_id(&self) -> &str {
        match self {
            OverloadAction::Stop { egress_id, .. } | OverloadAction::Kill { egress_id, .. } => {
                egress_id
            }
        }
    }

    /// `stop` or `kill`: the `action` label of `egress_overload_actions_total`.
    pub fn action(&self) -> &'static str {
        match self {
            OverloadAction::Stop { .. } => "stop",
            OverloadAction::Kill { .. } => "kill",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            OverloadAction::Stop { reason, .. } | OverloadAction::Kill { reason, .. } => reason,
        }
    }
}

/// The victim being stopped.
#[derive(Debug, Clone, PartialEq)]
struct Victim {
    egress_id: String,
    /// Start of the current run of samples above `hard`, not before the stop.
    hard_since_ms: Option<u64>,
    killed: bool,
}

/// The escalation state.
#[derive(Debug, Clone)]
pub struct Overload {
    soft: f64,
    hard: f64,
    sustain_samples: u32,
    kill_grace_ms: u64,
    /// Consecutive samples above `soft` while watching.
    above_soft: u32,
    victim: Option<Victim>,
}

impl Overload {
    pub fn new(cfg: &OverloadConfig) -> Overload {
        Overload {
            soft: cfg.soft_threshold,
            hard: cfg.hard_threshold,
            sustain_samples: cfg.sustain_samples.max(1),
            kill_grace_ms: (cfg.kill_grace_s.max(0.0) * 1000.0) as u64,
            above_soft: 0,
            victim: None,
        }
    }

    /// The egress currently being stopped for overload, if any.
    pub fn victim(&self) -> Option<&str> {
        self.victim.as_ref().map(|v| v.egress_id.as_str())
    }

    /// Feeds one sample; returns at most one action.
    pub fn on_sample(&mut self, now_ms: u64, load: f64, jobs: &[JobLoad]) -> Vec<OverloadAction> {
        let above_hard = load > self.hard;
        if let Some(v) = &mut self.victim {
            if jobs.iter().any(|j| j.egress_id == v.egress_id) {
                if !above_hard {
                    v.hard_since_ms = None;
                    return Vec::new();
                }
                let since = *v.hard_since_ms.get_or_insert(now_ms);
                if !v.killed && now_ms.saturating_sub(since) >= self.kill_grace_ms {
                    v.killed = true;
                    return vec![OverloadAction::Kill {
                        egress_id: v.egress_id.clone(),
                        reason: reason::CPU_EXHAUSTED,
                        load,
                    }];
                }
                return Vec::new();
            }
            // The victim is gone: watch afresh from this sample on.
            self.victim = None;
            self.above_soft = 0;
        }
        if load <= self.soft {
            self.above_soft = 0;
            return Vec::new();
        }
        self.above_soft = self.above_soft.saturating_add(1);
        if !above_hard && self.above_soft < self.sustain_samples {
            return Vec::new();
        }
        if jobs.len() < 2 {
            return Vec::new();
        }
        let Some(victim) = pick_victim(jobs) else {
            return Vec::new();
        };
        self.above_soft = 0;
        self.victim = Some(Victim {
            egress_id: victim.egress_id.clone(),
            hard_since_ms: above_hard.then_some(now_ms),
            killed: false,
        });
        vec![OverloadAction::Stop {
            egress_id: victim.egress_id.clone(),
            reason: reason::CPU_LIMIT,
            load,
        }]
    }
}

/// The job using the most CPU above its admitted cost; ties to the newest, then the largest id.
pub fn pick_victim(jobs: &[JobLoad]) -> Option<&JobLoad> {
    let excess = |j: &JobLoad| {
        let e = j.cores_used - j.admitted_cost;
        if e.is_nan() { f64::NEG_INFINITY } else { e }
    };
    jobs.iter().max_by(|a, b| {
        excess(a)
            .total_cmp(&excess(b))
            .then(a.started_at_ms.cmp(&b.started_at_ms))
            .then(a.egress_id.cmp(&b.egress_id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OverloadConfig {
        OverloadConfig {
            soft_threshold: 0.85,
            hard_threshold: 0.95,
            sustain_samples: 3,
            kill_grace_s: 10.0,
            ..OverloadConfig::default()
        }
    }

    fn job(id: &str, used: f64, cost: f64, started: u64) -> JobLoad {
        JobLoad {
            egress_id: id.into(),
            cores_used: used,
            admitted_cost: cost,
            started_at_ms: started,
        }
    }

    fn two() -> Vec<JobLoad> {
        vec![job("EG_a", 1.0, 1.0, 0), job("EG_b", 3.0, 1.0, 10)]
    }

    fn stop(id: &str, load: f64) -> Vec<OverloadAction> {
        vec![OverloadAction::Stop {
            egress_id: id.into(),
            reason: "CPU limit reached",
            load,
        }]
    }

    fn kill(id: &str, load: f64) -> Vec<OverloadAction> {
        vec![OverloadAction::Kill {
            egress_id: id.into(),
            reason: "CPU exhausted",
            load,
        }]
    }

    /// Runs (time s, load, jobs) rows and checks each row's actions.
    fn run(o: &mut Overload, rows: &[(u64, f64, &[JobLoad], Vec<OverloadAction>)]) {
        for (i, (t, load, jobs, want)) in rows.iter().enumerate() {
            assert_eq!(
                &o.on_sample(t * 1000, *load, jobs),
                want,
                "row {i}: t={t}s load={load}"
            );
        }
    }

    #[test]
    fn soft_needs_sustained_samples() {
        let j = two();
        let mut o = Overload::new(&cfg());
        run(
            &mut o,
            &[
                (0, 0.90, &j, vec![]),
                (1, 0.90, &j, vec![]),
                (2, 0.90, &j, stop("EG_b", 0.90)),
                // Victim still finalizing: nothing more, however long.
                (3, 0.90, &j, vec![]),
                (4, 0.90, &j, vec![]),
                (5, 0.90, &j, vec![]),
                (60, 0.90, &j, vec![]),
            ],
        );
        assert_eq!(o.victim(), Some("EG_b"));
    }

    #[test]
    fn hard_stops_at_once() {
        let j = two();
        let mut o = Overload::new(&cfg());
        run(&mut o, &[(0, 0.97, &j, stop("EG_b", 0.97))]);
    }

    #[test]
    fn kill_after_grace_if_still_above_hard() {
        let j = two();
        let mut o = Overload::new(&cfg());
        run(
            &mut o,
            &[
                (0, 0.97, &j, stop("EG_b", 0.97)),
                (5, 0.97, &j, vec![]),
                (9, 0.99, &j, vec![]),
                (10, 0.97, &j, kill("EG_b", 0.97)),
                // Killed once only, even if the process lingers.
                (11, 0.99, &j, vec![]),
                (30, 0.99, &j, vec![]),
            ],
        );
    }

    #[test]
    fn kill_grace_starts_when_load_goes_above_hard_after_a_soft_stop() {
        let j = two();
        let mut o = Overload::new(&cfg());
        run(
            &mut o,
            &[
                (0, 0.90, &j, vec![]),
                (1, 0.90, &j, vec![]),
                (2, 0.90, &j, stop("EG_b", 0.90)),
                (5, 0.97, &j, vec![]),
                (12, 0.97, &j, vec![]),
                (15, 0.97, &j, kill("EG_b", 0.97)),
            ],
        );
    }

    #[test]
    fn no_kill_if_load_drops_under_hard() {
        let j = two();
        let mut o = Overload::new(&cfg());
        run(
            &mut o,
            &[
                (0, 0.97, &j, stop("EG_b", 0.97)),
                (5, 0.90, &j, vec![]),
                (10, 0.90, &j, vec![]),
                (20, 0.90, &j, vec![]),
                // Back above hard: the grace starts again from here.
                (21, 0.97, &j, vec![]),
                (30, 0.97, &j, vec![]),
                (31, 0.97, &j, kill("EG_b", 0.97)),
            ],
        );
    }

    #[test]
    fn low_samples_reset_the_sustain_count() {
        let j = two();
        let mut o = Overload::new(&cfg());
        run(
            &mut o,
            &[
                (0, 0.90, &j, vec![]),
                (1, 0.90, &j, vec![]),
                (2, 0.85, &j, vec![]), // at soft: not above
                (3, 0.90, &j, vec![]),
                (4, 0.90, &j, vec![]),
                (5, 0.50, &j, vec![]),
                (6, 0.90, &j, vec![]),
                (7, 0.90, &j, vec![]),
                (8, 0.90, &j, stop("EG_b", 0.90)),
            ],
        );
    }

    #[test]
    fn one_victim_at_a_time_then_count_afresh() {
        let three = vec![
            job("EG_a", 1.0, 1.0, 0),
            job("EG_b", 3.0, 1.0, 10),
            job("EG_c", 2.0, 1.0, 20),
        ];
        let after = vec![job("EG_a", 1.0, 1.0, 0), job("EG_c", 2.0, 1.0, 20)];
        let mut o = Overload::new(&cfg());
        run(
            &mut o,
            &[
                (0, 0.97, &three, stop("EG_b", 0.97)),
                (1, 0.97, &three, vec![]),
                (2, 0.97, &three, vec![]),
                // EG_b is gone; a sample above hard acts at once on the next victim.
                (3, 0.97, &after, stop("EG_c", 0.97)),
                (4, 0.97, &after, vec![]),
            ],
        );
        let mut o = Overload::new(&cfg());
        run(
            &mut o,
            &[
                (0, 0.97, &three, stop("EG_b", 0.97)),
                (1, 0.90, &three, vec![]),
                (2, 0.90, &three, vec![]),
                (3, 0.90, &three, vec![]),
                // Gone: the soft count starts from zero with this sample.
                (4, 0.90, &after, vec![]),
                (5, 0.90, &after, vec![]),
                (6, 0.90, &after, stop("EG_c", 0.90)),
            ],
        );
    }

    #[test]
    fn a_lone_job_is_never_stopped() {
        let one = vec![job("EG_a", 8.0, 1.0, 0)];
        let mut o = Overload::new(&cfg());
        run(
            &mut o,
            &[
                (0, 0.99, &one, vec![]),
                (1, 0.99, &one, vec![]),
                (2, 0.99, &one, vec![]),
                (60, 0.99, &one, vec![]),
                (61, 0.99, &[], vec![]),
            ],
        );
        assert_eq!(o.victim(), None);
        // A second job joins while the node is still overloaded: act.
        let j = vec![job("EG_a", 8.0, 1.0, 0), job("EG_b", 1.0, 1.0, 62_000)];
        run(&mut o, &[(62, 0.99, &j, stop("EG_a", 0.99))]);
    }

    #[test]
    fn ties_go_to_the_newest() {
        let j = vec![
            job("EG_old", 2.0, 1.0, 100),
            job("EG_new", 3.0, 2.0, 200),
            job("EG_mid", 1.5, 0.5, 150),
        ];
        let mut o = Overload::new(&cfg());
        run(&mut o, &[(0, 0.97, &j, stop("EG_new", 0.97))]);
        // Usage above cost wins over age.
        let j = vec![job("EG_old", 4.0, 1.0, 100), job("EG_new", 3.0, 2.0, 200)];
        assert_eq!(
            pick_victim(&j).map(|j| j.egress_id.as_str()),
            Some("EG_old")
        );
        assert_eq!(pick_victim(&[]), None);
    }

    #[test]
    fn actions_name_their_labels() {
        let s = &stop("EG_a", 1.0)[0];
        let k = &kill("EG_a", 1.0)[0];
        assert_eq!(
            (s.action(), s.reason(), s.egress_id()),
            ("stop", reason::CPU_LIMIT, "EG_a")
        );
        assert_eq!((k.action(), k.reason()), ("kill", reason::CPU_EXHAUSTED));
    }
}
