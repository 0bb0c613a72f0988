//! Disk rules, pure: each egress's measured write rate, what admission reserves for the running
//! ones, and which egress a nearly full disk stops first. The DiskMonitor actor feeds them.

use std::collections::HashMap;

use serde::Serialize;

/// What `GET /v1/node` shows of the disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct DiskState {
    /// Free bytes under `storage.output_dir` at the last sample.
    pub free_bytes: u64,
    /// What running egresses will write within `storage.disk_horizon_s` at their measured rates.
    pub reserved_bytes: u64,
    /// `storage.min_free_bytes`.
    pub min_free_bytes: u64,
    /// `storage.stop_free_bytes`.
    pub stop_free_bytes: u64,
}

/// Recent output sizes of one egress, for its write rate.
#[derive(Debug, Clone, Default)]
pub struct Growth {
    /// `(at_ms, bytes)`, oldest first, within `WINDOW_MS`.
    samples: Vec<(u64, u64)>,
}

/// The rate is measured over this window: long enough to smooth out a muxer's bursts.
const WINDOW_MS: u64 = 5_000;

impl Growth {
    pub fn add(&mut self, at_ms: u64, bytes: u64) {
        self.samples.push((at_ms, bytes));
        let keep_from = at_ms.saturating_sub(WINDOW_MS);
        // Keep one sample at or before the window's start, so the window stays full.
        while self.samples.len() > 2 && self.samples[1].0 <= keep_from {
            self.samples.remove(0);
        }
    }

    /// Bytes per second over the window (0 until two samples exist; never negative).
    pub fn rate(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                b.1.saturating_sub(a.1) as f64 * 1000.0 / (b.0 - a.0) as f64
            }
            _ => 0.0,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.samples.last().map(|s| s.1).unwrap_or(0)
    }
}

/// What the running egresses will write within `horizon_s` at their measured rates.
pub fn reserved_bytes(rates: impl IntoIterator<Item = f64>, horizon_s: f64) -> u64 {
    rates
        .into_iter()
        .map(|r| (r.max(0.0) * horizon_s) as u64)
        .sum()
}

/// Whether a new egress may start: free space must cover `min_free` plus the reservation.
/// Returns the bytes needed when it may not.
pub fn admit(free: u64, min_free: u64, reserved: u64) -> Result<(), u64> {
    let needed = min_free.saturating_add(reserved);
    if free < needed { Err(needed) } else { Ok(()) }
}

/// The egress to stop when free space is below `stop_free`: the one writing fastest (ties: the
/// one with the most bytes, then the id, so the choice is stable). None above the line.
pub fn victim(free: u64, stop_free: u64, rates: &HashMap<String, (f64, u64)>) -> Option<&str> {
    if free >= stop_free {
        return None;
    }
    rates
        .iter()
        .max_by(|a, b| {
            a.1.0
                .total_cmp(&b.1.0)
                .then(a.1.1.cmp(&b.1.1))
                .then(b.0.cmp(a.0))
        })
        .map(|(id, _)| id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_measured_over_the_window() {
        let mut g = Growth::default();
        assert_eq!(g.rate(), 0.0);
        g.add(0, 0);
        g.add(1000, 1_000_000);
        assert_eq!(g.rate(), 1_000_000.0);
        for s in 2..=20u64 {
            g.add(s * 1000, s * 2_000_000 - 1_000_000);
        }
        // Only the last 5 s count: 2 MB/s now.
        assert!((g.rate() - 2_000_000.0).abs() < 1.0, "{}", g.rate());
        assert_eq!(g.bytes(), 39_000_000);
        // A file that shrinks (rewritten index) is not a negative rate.
        g.add(21_000, 0);
        assert!(g.rate() >= 0.0);
    }

    #[test]
    fn admission_counts_the_horizon() {
        let reserved = reserved_bytes([1_000_000.0, 500_000.0], 60.0);
        assert_eq!(reserved, 90_000_000);
        assert!(admit(2_000_000_000, 1 << 30, reserved).is_ok());
        assert_eq!(
            admit(1 << 30, 1 << 30, reserved),
            Err((1 << 30) + 90_000_000)
        );
    }

    #[test]
    fn the_fastest_writer_is_stopped_below_the_line_only() {
        let mut rates = HashMap::new();
        rates.insert("EG_slow".to_string(), (100.0, 10));
        rates.insert("EG_fast".to_string(), (900.0, 5));
        assert_eq!(victim(10, 5, &rates), None);
        assert_eq!(victim(4, 5, &rates), Some("EG_fast"));
        assert_eq!(victim(4, 5, &HashMap::new()), None);
    }
}
