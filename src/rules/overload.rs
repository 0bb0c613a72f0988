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
//! - **Settling jobs are spared**: a job still `starting`, or active for less than the start hold
//!   (`cpu.pending_hold_ms`, the time admission also holds a new job's estimate), is never the
//!   victim while a settled job can be picked. Its CPU is not yet its steady cost (the first
//!   sample of a process reads 0, encoders ramp up), and stopping it before its first frames
//!   leaves nothing worth keeping.
//! - **Victim**: among settled jobs, the one using the most CPU above its admitted cost
//!   (`cores_used - admitted_cost`; the Supervisor passes the job's `estimated_cpu`, else its
//!   class's price now, i.e. the learned price once the class is learned); ties go to the newest (largest `launched_at_ms`), then to the
//!   largest id so the choice is deterministic.
//! - **Every job settling**: above `hard` the node must still be relieved, so the oldest job
//!   (smallest `launched_at_ms`, the one likeliest to have recorded something; ties to the
//!   smallest id) is stopped. Above `soft` only, nothing is stopped yet; the sustained count is
//!   kept, so the first sample on which a job has settled acts on it.
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
    /// Cost it is judged by, in cores: its estimate, else its class's price (learned or configured).
    pub admitted_cost: f64,
    /// When it was launched (its record's `created_at`): orders jobs by age.
    pub launched_at_ms: u64,
    /// When its media started flowing (its record's `started_at`, set on `active`); None while
    /// it is still `starting`. Its start hold runs from here.
    pub active_since_ms: Option<u64>,
}

impl JobLoad {
    /// Whether the job has run long enough for its CPU to be its steady cost (see the module doc).
    pub fn settled(&self, now_ms: u64, start_hold_ms: u64) -> bool {
        self.active_since_ms
            .is_some_and(|t| now_ms >= t.saturating_add(start_hold_ms))
    }
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
    /// How long after becoming active a job is spared (`cpu.pending_hold_ms`).
    start_hold_ms: u64,
    /// Consecutive samples above `soft` while watching.
    above_soft: u32,
    victim: Option<Victim>,
}

impl Overload {
    /// `start_hold_ms`: how long a job that just became active is spared (`cpu.pending_hold_ms`).
    pub fn new(cfg: &OverloadConfig, start_hold_ms: u64) -> Overload {
        Overload {
            soft: cfg.soft_threshold,
            hard: cfg.hard_threshold,
            sustain_samples: cfg.sustain_samples.max(1),
            kill_grace_ms: (cfg.kill_grace_s.max(0.0) * 1000.0) as u64,
            start_hold_ms,
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
        let Some(victim) = pick_victim(jobs, now_ms, self.start_hold_ms, above_hard) else {
            // Every job is settling and the load is only above soft: the count is kept.
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

/// The victim among `jobs` at `now_ms` (see the module doc): the settled job using the most CPU
/// above its admitted cost; if none has settled, the oldest when `above_hard`, else None.
pub fn pick_victim(
    jobs: &[JobLoad],
    now_ms: u64,
    start_hold_ms: u64,
    above_hard: bool,
) -> Option<&JobLoad> {
    let excess = |j: &JobLoad| {
        let e = j.cores_used - j.admitted_cost;
        if e.is_nan() { f64::NEG_INFINITY } else { e }
    };
    let settled = jobs
        .iter()
        .filter(|j| j.settled(now_ms, start_hold_ms))
        .max_by(|a, b| {
            excess(a)
                .total_cmp(&excess(b))
                .then(a.launched_at_ms.cmp(&b.launched_at_ms))
                .then(a.egress_id.cmp(&b.egress_id))
        });
    if settled.is_some() || !above_hard {
        return settled;
    }
    jobs.iter().min_by(|a, b| {
        a.launched_at_ms
            .cmp(&b.launched_at_ms)
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

    /// The start hold of these tests.
    const HOLD_MS: u64 = 5_000;
    /// Row times count from here, so that the jobs of `job()` have settled by row 0.
    const T0_MS: u64 = 100_000;

    /// Row time `s` (seconds) in ms.
    fn at(s: u64) -> u64 {
        T0_MS + s * 1000
    }

    fn overload() -> Overload {
        Overload::new(&cfg(), HOLD_MS)
    }

    /// A job active since it launched at `started` ms (long settled at row 0).
    fn job(id: &str, used: f64, cost: f64, started: u64) -> JobLoad {
        JobLoad {
            egress_id: id.into(),
            cores_used: used,
            admitted_cost: cost,
            launched_at_ms: started,
            active_since_ms: Some(started),
        }
    }

    /// A job launched at row time `launched` s, active from row time `active` s (None: starting).
    fn young(id: &str, used: f64, launched: u64, active: Option<u64>) -> JobLoad {
        JobLoad {
            egress_id: id.into(),
            cores_used: used,
            admitted_cost: 1.0,
            launched_at_ms: at(launched),
            active_since_ms: active.map(at),
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
                &o.on_sample(at(*t), *load, jobs),
                want,
                "row {i}: t={t}s load={load}"
            );
        }
    }

    #[test]
    fn soft_needs_sustained_samples() {
        let j = two();
        let mut o = overload();
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
        let mut o = overload();
        run(&mut o, &[(0, 0.97, &j, stop("EG_b", 0.97))]);
    }

    #[test]
    fn kill_after_grace_if_still_above_hard() {
        let j = two();
        let mut o = overload();
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
        let mut o = overload();
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
        let mut o = overload();
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
        let mut o = overload();
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
        let mut o = overload();
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
        let mut o = overload();
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
        let mut o = overload();
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
        let mut o = overload();
        run(&mut o, &[(0, 0.97, &j, stop("EG_new", 0.97))]);
        // Usage above cost wins over age.
        let j = vec![job("EG_old", 4.0, 1.0, 100), job("EG_new", 3.0, 2.0, 200)];
        assert_eq!(
            pick_victim(&j, at(0), HOLD_MS, false).map(|j| j.egress_id.as_str()),
            Some("EG_old")
        );
        assert_eq!(pick_victim(&[], at(0), HOLD_MS, true), None);
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

    /// (name, jobs, row time s, above hard, the victim `pick_victim` must choose).
    type PickCase = (&'static str, Vec<JobLoad>, u64, bool, Option<&'static str>);

    #[test]
    fn settling_jobs_are_spared_while_a_settled_one_can_be_picked() {
        let settled = job("EG_settled", 1.2, 1.0, 0);
        let starting_hog = young("EG_starting", 6.0, 9, None);
        let held_hog = young("EG_held", 6.0, 5, Some(6));
        let cases: Vec<PickCase> = vec![
            (
                "a starting hog is spared, soft",
                vec![settled.clone(), starting_hog.clone()],
                10,
                false,
                Some("EG_settled"),
            ),
            (
                "a starting hog is spared, hard",
                vec![settled.clone(), starting_hog.clone()],
                10,
                true,
                Some("EG_settled"),
            ),
            (
                "a hog inside its hold is spared",
                vec![settled.clone(), held_hog.clone()],
                10,
                true,
                Some("EG_settled"),
            ),
            (
                "the hold ends HOLD_MS after it became active",
                vec![settled.clone(), held_hog.clone()],
                11,
                false,
                Some("EG_held"),
            ),
            (
                "everyone settling, soft: nobody",
                vec![starting_hog.clone(), held_hog.clone()],
                10,
                false,
                None,
            ),
            (
                "everyone settling, hard: the oldest",
                vec![starting_hog.clone(), held_hog.clone()],
                10,
                true,
                Some("EG_held"),
            ),
            (
                "everyone settling, hard: the oldest, even if it is still starting",
                vec![young("EG_slow", 0.1, 2, None), held_hog.clone()],
                10,
                true,
                Some("EG_slow"),
            ),
            (
                "equal ages: the smallest id",
                vec![young("EG_b", 3.0, 2, None), young("EG_a", 0.1, 2, Some(3))],
                4,
                true,
                Some("EG_a"),
            ),
            (
                "a job launched long ago that only just became active is held",
                vec![settled.clone(), young("EG_late", 6.0, 0, Some(9))],
                10,
                false,
                Some("EG_settled"),
            ),
        ];
        for (name, jobs, now, hard, want) in cases {
            assert_eq!(
                pick_victim(&jobs, at(now), HOLD_MS, hard).map(|j| j.egress_id.as_str()),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn a_sustained_soft_overload_waits_for_a_job_to_settle() {
        // Both jobs launched at row 0; EG_a active at 1 s, EG_b at 3 s: EG_a settles at 6 s.
        let starting = vec![young("EG_a", 3.0, 0, None), young("EG_b", 2.0, 0, None)];
        let active = vec![
            young("EG_a", 3.0, 0, Some(1)),
            young("EG_b", 2.0, 0, Some(3)),
        ];
        let mut o = overload();
        run(
            &mut o,
            &[
                (0, 0.90, &starting, vec![]),
                (1, 0.90, &starting, vec![]),
                (2, 0.90, &starting, vec![]),
                (3, 0.90, &active, vec![]),
                (5, 0.90, &active, vec![]),
                // EG_a's hold is over: the count was kept, so this sample acts.
                (6, 0.90, &active, stop("EG_a", 0.90)),
            ],
        );
        // Above hard with everyone settling: the oldest at once.
        let j = vec![
            young("EG_new", 5.0, 2, Some(3)),
            young("EG_old", 1.0, 1, None),
        ];
        let mut o = overload();
        run(&mut o, &[(4, 0.97, &j, stop("EG_old", 0.97))]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// (cores used, admitted cost, launched at s, became active after s or never).
        fn any_job() -> impl Strategy<Value = (f64, f64, u64, Option<u64>)> {
            (
                0.0f64..4.0,
                0.0f64..2.0,
                0u64..20,
                prop::option::weighted(0.7, 0u64..10),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Samples every second over jobs of random ages; each victim is gone by the next
            /// sample. Whenever a job is stopped: if a settled job ran, a settled job was chosen;
            /// otherwise the load was above hard and the oldest job was chosen.
            #[test]
            fn never_picks_a_starting_or_held_job_when_an_eligible_one_exists(
                specs in prop::collection::vec(any_job(), 2..7),
                loads in prop::collection::vec(0.5f64..1.2, 1..40),
            ) {
                let mut jobs: Vec<JobLoad> = specs
                    .iter()
                    .enumerate()
                    .map(|(i, (used, cost, launched, active))| JobLoad {
                        egress_id: format!("EG_{i}"),
                        cores_used: *used,
                        admitted_cost: *cost,
                        launched_at_ms: at(*launched),
                        active_since_ms: active.map(|a| at(launched + a)),
                    })
                    .collect();
                let mut o = overload();
                for (t, load) in loads.iter().enumerate() {
                    let now = at(t as u64);
                    // Jobs exist from their launch on; starting jobs stay starting.
                    let running: Vec<JobLoad> = jobs
                        .iter()
                        .filter(|j| j.launched_at_ms <= now)
                        .cloned()
                        .map(|mut j| {
                            j.active_since_ms = j.active_since_ms.filter(|a| *a <= now);
                            j
                        })
                        .collect();
                    for action in o.on_sample(now, *load, &running) {
                        let OverloadAction::Stop { egress_id, .. } = &action else {
                            continue;
                        };
                        prop_assert!(running.len() >= 2, "a lone job was stopped");
                        let victim = running.iter().find(|j| &j.egress_id == egress_id).unwrap();
                        if running.iter().any(|j| j.settled(now, HOLD_MS)) {
                            prop_assert!(
                                victim.settled(now, HOLD_MS),
                                "stopped settling {victim:?} at {now} among {running:?}"
                            );
                        } else {
                            prop_assert!(*load > cfg().hard_threshold, "soft stop of {victim:?}");
                            let oldest = running.iter().map(|j| j.launched_at_ms).min();
                            prop_assert_eq!(Some(victim.launched_at_ms), oldest);
                        }
                        jobs.retain(|j| &j.egress_id != egress_id);
                    }
                }
            }
        }
    }
}
