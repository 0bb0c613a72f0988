//! Fleet placement's pure rules (`fleet::placement` runs them over Redis and the nodes' answers):
//! why a node refused a job and which reason stands for a whole fleet, whether a round that
//! placed nothing is worth another, who an egress id that a node refused as `already_placed`
//! belongs to, and the answer when no node took the job. No clocks, no I/O: elapsed time and
//! jitter are arguments.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{AdmissionError, NodeError};
use crate::model::{EgressInfo, EgressType};

/// Most rounds one placement runs.
pub const ROUND_LIMIT: u32 = 16;
/// A new round is not started past this (from the start of the placement).
pub const RETRY_BUDGET: Duration = Duration::from_secs(2);
/// Longest pause between rounds.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// Why a node would not take the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    Cpu,
    TypeLimit,
    Draining,
    /// Anything else a node gave as its reason (e.g. its actors do not answer).
    Other,
}

impl Refusal {
    pub fn parse(reason: Option<&str>) -> Refusal {
        match reason {
            Some("cpu") => Refusal::Cpu,
            Some("type_limit") => Refusal::TypeLimit,
            Some("draining") => Refusal::Draining,
            _ => Refusal::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Cpu => "cpu",
            Refusal::TypeLimit => "type_limit",
            Refusal::Draining => "draining",
            Refusal::Other => "unavailable",
        }
    }
}

/// The reason most nodes gave (ties: cpu, then type_limit, then draining); None without refusals.
pub fn dominant(refusals: &[Refusal]) -> Option<Refusal> {
    let mut counts: BTreeMap<Refusal, usize> = BTreeMap::new();
    for r in refusals {
        *counts.entry(*r).or_default() += 1;
    }
    // max_by_key keeps the last maximum; iterate in reverse order of preference.
    counts
        .into_iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .map(|(r, _)| r)
}

/// "2 nodes refused (cpu: 1, draining: 1)".
pub fn describe(refusals: &[Refusal]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in refusals {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let n = refusals.len();
    format!(
        "{n} node{} refused ({})",
        if n == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// What a round that placed nothing saw, for the retry decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundReport {
    /// Nodes that cannot take the job: why, and the claims and reservations of other
    /// placements they hold (of the type for `type_limit`, of every type for `cpu`).
    pub refused: Vec<(Refusal, u32)>,
    /// Starts on a chosen node that failed in a way that may pass (refused by its admission,
    /// node unreachable or timed out).
    pub transient_failures: u32,
}

/// Whether to run another round, and after how long. A refusal is worth a retry only while the
/// refusing node holds claims or reservations of other placements (a refused start gives its
/// reservation back within milliseconds); a fleet that is simply full, or draining, is answered
/// at once.
/// `jitter` is uniform in [0, 1): concurrent placers must not retry in lockstep.
pub fn retry_after(
    report: &RoundReport,
    round: u32,
    elapsed: Duration,
    jitter: f64,
) -> Option<Duration> {
    let claims_in_the_way = report
        .refused
        .iter()
        .any(|(why, pending)| matches!(why, Refusal::Cpu | Refusal::TypeLimit) && *pending > 0);
    let may_pass = claims_in_the_way || report.transient_failures > 0;
    if !may_pass || round >= ROUND_LIMIT {
        return None;
    }
    let base_us = 1000.0 + 4000.0 * jitter.clamp(0.0, 1.0);
    let backoff =
        Duration::from_micros((base_us * f64::from(round.max(1))) as u64).min(MAX_BACKOFF);
    (elapsed + backoff <= RETRY_BUDGET).then_some(backoff)
}

/// Who owns an egress id that a node refused as `already_placed`.
pub enum Owner {
    /// It runs there: this is its record.
    Placed(Box<EgressInfo>),
    /// Nobody live holds it any more: start it again.
    Free,
}

/// What the stored record and owner key of an egress id say: it runs on its live owner, or the
/// id is free (no owner, or a dead one: a job lost with its node is started again), or it is
/// still up to the live owner `Err(owner)` to start it or give it up.
pub fn settle(
    record: Option<EgressInfo>,
    owner: Option<String>,
    owner_live: bool,
) -> Result<Owner, String> {
    match (record, owner) {
        (_, None) => Ok(Owner::Free),
        (_, Some(_)) if !owner_live => Ok(Owner::Free),
        (Some(info), Some(o)) if info.node_id == o => Ok(Owner::Placed(Box::new(info))),
        (_, Some(o)) => Err(o),
    }
}

/// The answer when no round placed the job: the reason most nodes gave (as admission's
/// `NoNode`, with how many refused and why), or, without one, what failed.
pub fn final_error(
    egress_type: EgressType,
    refusals: &[Refusal],
    failures: &[String],
    nodes: usize,
) -> NodeError {
    match dominant(refusals) {
        Some(reason) if reason != Refusal::Other => {
            let mut detail = format!("{} of {nodes} live", describe(refusals));
            if !failures.is_empty() {
                detail.push_str(&format!(", {} failed to start it", failures.len()));
            }
            NodeError::NoCapacity(AdmissionError::NoNode {
                egress_type,
                reason: reason.as_str(),
                detail,
            })
        }
        _ => NodeError::Unavailable(format!(
            "no node of the fleet ({nodes} live) could start the egress: {}",
            if failures.is_empty() {
                describe(refusals)
            } else {
                failures.join("; ")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn an_egress_id_is_settled_only_by_its_live_owner() {
        use crate::model::{EgressStatus, sample_info};
        let on = |node: &str| Some(sample_info("EG_x", node, EgressStatus::Active, 1));
        let b = || Some("ND_b".to_string());
        let placed = |r: Result<Owner, String>| match r {
            Ok(Owner::Placed(i)) => format!("placed on {}", i.node_id),
            Ok(Owner::Free) => "free".into(),
            Err(o) => format!("wait for {o}"),
        };
        let table = [
            (on("ND_b"), b(), true, "placed on ND_b"),
            // Its node died: the job went with it, the id may be started again.
            (on("ND_b"), b(), false, "free"),
            (None, b(), true, "wait for ND_b"),
            (None, b(), false, "free"),
            // An older record of another node: the live owner has not written its own yet.
            (on("ND_a"), b(), true, "wait for ND_b"),
            (on("ND_a"), b(), false, "free"),
            (on("ND_b"), None, false, "free"),
            (None, None, false, "free"),
        ];
        for (record, owner, live, want) in table {
            let ctx = format!("{:?} {owner:?} {live}", record.as_ref().map(|r| &r.node_id));
            assert_eq!(placed(settle(record, owner, live)), want, "{ctx}");
        }
    }

    #[test]
    fn dominant_reason_and_its_ties() {
        use Refusal::*;
        // (refusals, the dominant one): most nodes win; ties go to cpu, then type_limit.
        let table: [(&[Refusal], Option<Refusal>); 4] = [
            (&[], None),
            (&[Draining, Cpu, Draining], Some(Draining)),
            (&[TypeLimit, Cpu], Some(Cpu)),
            (&[Draining, TypeLimit], Some(TypeLimit)),
        ];
        for (refusals, want) in table {
            assert_eq!(dominant(refusals), want, "{refusals:?}");
        }
        assert_eq!(
            describe(&[Cpu, Draining, Cpu]),
            "3 nodes refused (cpu: 2, draining: 1)"
        );
    }

    #[test]
    fn a_reason_reads_back_and_anything_else_is_other() {
        use Refusal::*;
        for r in [Cpu, TypeLimit, Draining] {
            assert_eq!(Refusal::parse(Some(r.as_str())), r);
        }
        for other in [None, Some("disk"), Some("unavailable"), Some("")] {
            assert_eq!(Refusal::parse(other), Other, "{other:?}");
        }
    }

    #[test]
    fn retry_decision() {
        use Refusal::*;
        let ms = Duration::from_millis;
        let report = |refused: Vec<(Refusal, u32)>, transient_failures| RoundReport {
            refused,
            transient_failures,
        };
        // (report, round, elapsed, retries?)
        let table = [
            // A full fleet with no claims in the way: answer at once.
            (report(vec![(Cpu, 0), (TypeLimit, 0)], 0), 1, ms(0), false),
            // Draining never passes, claims or not.
            (report(vec![(Draining, 3)], 0), 1, ms(0), false),
            // Other placements hold claims: a burst.
            (report(vec![(Cpu, 0), (Cpu, 2)], 0), 1, ms(0), true),
            (report(vec![(TypeLimit, 1)], 0), 3, ms(100), true),
            // A start that failed but may pass (refused without a claim, node unreachable).
            (report(vec![], 1), 1, ms(0), true),
            // Bounded in rounds and time.
            (report(vec![(Cpu, 2)], 0), ROUND_LIMIT, ms(0), false),
            (report(vec![(Cpu, 2)], 0), 2, RETRY_BUDGET, false),
        ];
        for (i, (r, round, elapsed, want)) in table.into_iter().enumerate() {
            assert_eq!(
                retry_after(&r, round, elapsed, 0.5).is_some(),
                want,
                "case {i}: {r:?}"
            );
        }
        // Backoff: a few random ms, growing with the round, capped.
        let r = report(vec![(Cpu, 1)], 0);
        assert_eq!(retry_after(&r, 1, ms(0), 0.0), Some(ms(1)));
        assert_eq!(
            retry_after(&r, 1, ms(0), 0.999_999),
            Some(Duration::from_micros(4999))
        );
        assert_eq!(retry_after(&r, 2, ms(0), 0.0), Some(ms(2)));
        assert_eq!(retry_after(&r, 15, ms(0), 1.0), Some(MAX_BACKOFF));
    }

    /// A round's end and the answer it must give.
    struct Case {
        refusals: &'static [Refusal],
        failures: &'static [&'static str],
        live: usize,
        code: &'static str,
        reason: Option<&'static str>,
        /// Part of the message.
        says: &'static str,
    }

    #[test]
    fn final_errors_name_the_dominant_reason() {
        use Refusal::*;
        let table = [
            Case {
                refusals: &[Cpu, Cpu, Draining],
                failures: &[],
                live: 3,
                code: "no_capacity",
                reason: Some("cpu"),
                says: "3 nodes refused (cpu: 2, draining: 1) of 3 live",
            },
            Case {
                refusals: &[Draining],
                failures: &[],
                live: 1,
                code: "no_capacity",
                reason: Some("draining"),
                says: "1 node refused (draining: 1)",
            },
            Case {
                refusals: &[],
                failures: &["ND_a: unreachable"],
                live: 1,
                code: "unavailable",
                reason: None,
                says: "ND_a: unreachable",
            },
            Case {
                refusals: &[Other, Other],
                failures: &[],
                live: 2,
                code: "unavailable",
                reason: None,
                says: "2 nodes refused (unavailable: 2)",
            },
        ];
        for c in table {
            let failures: Vec<String> = c.failures.iter().map(|f| f.to_string()).collect();
            let e = ApiError::from(final_error(
                EgressType::Track,
                c.refusals,
                &failures,
                c.live,
            ));
            assert_eq!(
                (e.code(), e.body()["error"]["reason"].as_str()),
                (c.code, c.reason),
                "{:?}",
                c.refusals
            );
            assert!(e.to_string().contains(c.says), "{e}");
        }
    }
}
