//! Placement scoring: how well this node suits one request under an affinity mode.
//!
//! `score` returns exactly `-1.0` when the node cannot take the request (CPU, type limit or
//! draining), otherwise a value in `[0, 1]`, higher is better:
//!
//! | mode         | idle node (no job running or claimed) | busy node                    |
//! |--------------|---------------------------------------|------------------------------|
//! | `spread`     | `free`                                | `free`                       |
//! | `pack`       | `0.4 * free`  (always below busy)     | `0.5 + 0.5 * (1 - free)`     |
//! | `type_aware` | heavy types: `0.5 + 0.5 * free`       | heavy types: `0.4 * free`    |
//! |              | light types: `free`                   | light types: `free`          |
//!
//! where `free = available / budget` clamped to `[0, 1]` ("available" already has every other
//! pending claim deducted) and the heavy types are `room_composite` and `web`. Equal scores are
//! not broken here: the fleet picks at random among the best nodes.

use serde::Serialize;

use crate::config::AffinityMode;
use crate::model::EgressType;

/// What scoring needs to know about a node, as it was when the request's claim was taken.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreInput {
    /// CPU capacity of the node, in cores.
    pub capacity_cores: f64,
    /// Cores admission may commit: capacity * max_utilization.
    pub budget_cores: f64,
    /// Cores still free to commit, with running jobs and every other pending claim deducted.
    pub available_cpu: f64,
    /// Jobs running or claimed (a claimed slot counts as busy, so concurrent requests see it).
    pub jobs: u32,
    /// Whether the node can admit this request (CPU, type limit, not draining).
    pub can_admit: bool,
}

/// The score of a node that cannot take the request.
pub const REFUSED: f64 = -1.0;

/// Fraction of the budget still free, clamped to `[0, 1]` (0 for a zero or broken budget).
pub fn free_ratio(node: &ScoreInput) -> f64 {
    let usable = node.budget_cores.is_finite() && node.budget_cores > 0.0;
    if !usable || !node.available_cpu.is_finite() {
        return 0.0;
    }
    (node.available_cpu / node.budget_cores).clamp(0.0, 1.0)
}

/// Whether the type wants a node of its own under `type_aware`.
pub fn is_heavy(t: EgressType) -> bool {
    matches!(t, EgressType::RoomComposite | EgressType::Web)
}

/// A straight line over the free ratio: `base + slope * free`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub base: f64,
    pub slope: f64,
}

impl Line {
    pub fn at(self, free: f64) -> f64 {
        self.base + self.slope * free
    }
}

/// How a mode scores one type: one line for an idle node, one for a busy node. Fleet placement
/// hands these lines to the Redis script that ranks nodes, so both score with the same numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Curve {
    pub idle: Line,
    pub busy: Line,
}

const FREE: Line = Line {
    base: 0.0,
    slope: 1.0,
};

/// The table in the module doc, as lines.
pub fn curve(mode: AffinityMode, egress_type: EgressType) -> Curve {
    match mode {
        AffinityMode::Spread => Curve {
            idle: FREE,
            busy: FREE,
        },
        AffinityMode::Pack => Curve {
            idle: Line {
                base: 0.0,
                slope: 0.4,
            },
            busy: Line {
                base: 1.0,
                slope: -0.5,
            },
        },
        AffinityMode::TypeAware if is_heavy(egress_type) => Curve {
            idle: Line {
                base: 0.5,
                slope: 0.5,
            },
            busy: Line {
                base: 0.0,
                slope: 0.4,
            },
        },
        AffinityMode::TypeAware => Curve {
            idle: FREE,
            busy: FREE,
        },
    }
}

/// The node's score for a request of `egress_type`: `-1` if it cannot admit, else in `[0, 1]`.
pub fn score(mode: AffinityMode, egress_type: EgressType, node: &ScoreInput) -> f64 {
    if !node.can_admit {
        return REFUSED;
    }
    let c = curve(mode, egress_type);
    let line = if node.jobs == 0 { c.idle } else { c.busy };
    line.at(free_ratio(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(available: f64, jobs: u32) -> ScoreInput {
        ScoreInput {
            capacity_cores: 10.0,
            budget_cores: 8.0,
            available_cpu: available,
            jobs,
            can_admit: true,
        }
    }

    const MODES: [AffinityMode; 3] = [
        AffinityMode::Pack,
        AffinityMode::Spread,
        AffinityMode::TypeAware,
    ];

    #[test]
    fn refused_nodes_score_minus_one_in_every_mode() {
        for mode in MODES {
            for t in EgressType::ALL {
                let n = ScoreInput {
                    can_admit: false,
                    ..node(8.0, 0)
                };
                assert_eq!(score(mode, t, &n), -1.0, "{mode:?} {t}");
            }
        }
    }

    #[test]
    fn spread_table() {
        // (available, jobs, expected)
        let table = [
            (8.0, 0, 1.0),
            (4.0, 3, 0.5),
            (2.0, 1, 0.25),
            (0.0, 5, 0.0),
            (-1.0, 5, 0.0),
            (9.0, 0, 1.0),
        ];
        for (avail, jobs, want) in table {
            for t in EgressType::ALL {
                let s = score(AffinityMode::Spread, t, &node(avail, jobs));
                assert!(
                    (s - want).abs() < 1e-12,
                    "avail {avail} jobs {jobs}: {s} != {want}"
                );
            }
        }
    }

    #[test]
    fn pack_table() {
        let table = [
            (8.0, 0, 0.4),   // idle
            (4.0, 1, 0.75),  // half full
            (2.0, 3, 0.875), // fuller
            (8.0, 2, 0.5),   // busy with zero-cost jobs still beats idle
            (0.0, 4, 1.0),   // full but (say) a zero-cost request still fits
        ];
        for (avail, jobs, want) in table {
            let s = score(AffinityMode::Pack, EgressType::Track, &node(avail, jobs));
            assert!(
                (s - want).abs() < 1e-12,
                "avail {avail} jobs {jobs}: {s} != {want}"
            );
        }
    }

    #[test]
    fn type_aware_table() {
        // Heavy types: an idle node beats any busy node; busy nodes ordered by free CPU.
        for t in [EgressType::RoomComposite, EgressType::Web] {
            assert!((score(AffinityMode::TypeAware, t, &node(8.0, 0)) - 1.0).abs() < 1e-12);
            assert!((score(AffinityMode::TypeAware, t, &node(8.0, 1)) - 0.4).abs() < 1e-12);
            assert!((score(AffinityMode::TypeAware, t, &node(4.0, 1)) - 0.2).abs() < 1e-12);
        }
        // Light types spread by free CPU, idle or not.
        for t in [
            EgressType::Track,
            EgressType::TrackComposite,
            EgressType::Participant,
        ] {
            assert!((score(AffinityMode::TypeAware, t, &node(8.0, 0)) - 1.0).abs() < 1e-12);
            assert!((score(AffinityMode::TypeAware, t, &node(4.0, 1)) - 0.5).abs() < 1e-12);
            assert!((score(AffinityMode::TypeAware, t, &node(2.0, 3)) - 0.25).abs() < 1e-12);
        }
    }

    #[test]
    fn broken_budgets_do_not_produce_nan() {
        for mode in MODES {
            for budget in [0.0, -1.0, f64::NAN, f64::INFINITY] {
                let n = ScoreInput {
                    budget_cores: budget,
                    ..node(4.0, 1)
                };
                let s = score(mode, EgressType::Track, &n);
                assert!((0.0..=1.0).contains(&s), "{mode:?} {budget}: {s}");
            }
        }
    }

    fn any_mode() -> impl Strategy<Value = AffinityMode> {
        prop::sample::select(MODES.to_vec())
    }
    fn any_type() -> impl Strategy<Value = EgressType> {
        prop::sample::select(EgressType::ALL.to_vec())
    }
    fn any_node() -> impl Strategy<Value = ScoreInput> {
        (
            0.1f64..64.0,
            0.05f64..=1.0,
            -10.0f64..80.0,
            0u32..20,
            any::<bool>(),
        )
            .prop_map(|(cap, util, avail, jobs, can_admit)| ScoreInput {
                capacity_cores: cap,
                budget_cores: cap * util,
                available_cpu: avail,
                jobs,
                can_admit,
            })
    }

    proptest! {
        #[test]
        fn scores_are_in_range_or_refused(mode in any_mode(), t in any_type(), n in any_node()) {
            let s = score(mode, t, &n);
            prop_assert!(s == -1.0 || (0.0..=1.0).contains(&s), "{s}");
            prop_assert_eq!(s == -1.0, !n.can_admit);
        }

        #[test]
        fn spread_is_monotone_in_free_cpu(t in any_type(), n in any_node(), more in 0.0f64..20.0) {
            let n = ScoreInput { can_admit: true, ..n };
            let richer = ScoreInput { available_cpu: n.available_cpu + more, ..n };
            prop_assert!(score(AffinityMode::Spread, t, &richer) >= score(AffinityMode::Spread, t, &n));
        }

        #[test]
        fn pack_prefers_a_busy_node_over_an_idle_one(t in any_type(), busy in any_node(), idle in any_node()) {
            let busy = ScoreInput { can_admit: true, jobs: busy.jobs.max(1), ..busy };
            let idle = ScoreInput { can_admit: true, jobs: 0, ..idle };
            prop_assert!(score(AffinityMode::Pack, t, &busy) > score(AffinityMode::Pack, t, &idle));
        }

        #[test]
        fn pack_prefers_the_fuller_busy_node(t in any_type(), n in any_node(), jobs in 1u32..20, less in 0.0f64..20.0) {
            let a = ScoreInput { can_admit: true, jobs, ..n };
            let fuller = ScoreInput { available_cpu: a.available_cpu - less, ..a };
            prop_assert!(score(AffinityMode::Pack, t, &fuller) >= score(AffinityMode::Pack, t, &a));
            if free_ratio(&fuller) < free_ratio(&a) {
                prop_assert!(score(AffinityMode::Pack, t, &fuller) > score(AffinityMode::Pack, t, &a));
            }
        }

        #[test]
        fn type_aware_heavy_prefers_idle(busy in any_node(), idle in any_node()) {
            let busy = ScoreInput { can_admit: true, jobs: busy.jobs.max(1), ..busy };
            let idle = ScoreInput { can_admit: true, jobs: 0, ..idle };
            for t in [EgressType::RoomComposite, EgressType::Web] {
                prop_assert!(score(AffinityMode::TypeAware, t, &idle) > score(AffinityMode::TypeAware, t, &busy));
            }
        }
    }
}
