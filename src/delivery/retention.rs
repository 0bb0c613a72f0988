//! Retention rules, pure: `storage.delete_after` durations and which ended egresses' local
//! outputs are due for deletion.

use crate::model::EgressInfo;

pub use crate::config::parse_duration;

/// Ended egresses whose outputs are older than `after_s`, not deleted yet, and not still
/// queued for upload (`queued(egress_id)`).
pub fn due(
    records: &[EgressInfo],
    now_ms: u64,
    after_s: f64,
    queued: impl Fn(&str) -> bool,
) -> Vec<&EgressInfo> {
    let after_ms = (after_s * 1000.0) as u64;
    records
        .iter()
        .filter(|i| i.status.is_final() && i.deleted_at.is_none())
        .filter(|i| {
            i.ended_at
                .is_some_and(|e| now_ms.saturating_sub(e) >= after_ms)
        })
        .filter(|i| !queued(&i.egress_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EgressStatus, sample_info};

    #[test]
    fn durations() {
        assert_eq!(parse_duration("").unwrap(), None);
        assert_eq!(parse_duration("7d").unwrap(), Some(604800.0));
        assert_eq!(parse_duration("2s").unwrap(), Some(2.0));
        assert_eq!(parse_duration("1.5h").unwrap(), Some(5400.0));
        assert_eq!(parse_duration("90").unwrap(), Some(90.0));
        assert!(parse_duration("7y").is_err());
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("d").is_err());
    }

    #[test]
    fn only_old_ended_unqueued_undeleted_egresses_are_due() {
        let mut old = sample_info("EG_old000000000", "n", EgressStatus::Complete, 0);
        old.ended_at = Some(1_000);
        let mut fresh = sample_info("EG_fresh0000000", "n", EgressStatus::Complete, 0);
        fresh.ended_at = Some(9_500);
        let running = sample_info("EG_running00000", "n", EgressStatus::Active, 0);
        let mut queued = old.clone();
        queued.egress_id = "EG_queued000000".into();
        let mut gone = old.clone();
        gone.egress_id = "EG_gone00000000".into();
        gone.deleted_at = Some(5_000);
        let all = vec![old, fresh, running, queued, gone];
        let d = due(&all, 10_000, 2.0, |id| id == "EG_queued000000");
        let ids: Vec<&str> = d.iter().map(|i| i.egress_id.as_str()).collect();
        assert_eq!(ids, vec!["EG_old000000000"]);
    }
}
