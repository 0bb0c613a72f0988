//! `cpu`, `cpu_cost`, `limits`, `affinity`, `overload`: what the node admits and how it
//! places, prices and sheds work.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// How often CpuMonitor samples host and process CPU.
    #[serde(default = "default_sample_interval")]
    pub sample_interval_ms: u64,
    /// Cores this node may use; 0 = cgroup v2 cpu.max quota if any, else the core count.
    #[serde(default)]
    pub capacity: f64,
    /// Fraction of capacity that admission may commit.
    #[serde(default = "default_max_utilization")]
    pub max_utilization: f64,
    /// How long a new job's estimated cost is held before its measured usage may replace it.
    #[serde(default = "default_pending_hold")]
    pub pending_hold_ms: u64,
    /// `learned`: price a job by what jobs of its class measured on this hardware (or the fleet)
    /// once the class is learned, else by `cpu_cost`; `static`: always `cpu_cost`.
    #[serde(default = "default_cost_mode")]
    pub cost_mode: CostMode,
    /// A learned class is priced at its learned p95 times this (at least 1).
    #[serde(default = "default_cost_margin")]
    pub cost_margin: f64,
    /// The lowest price a learned class gets, in cores (a near-idle job still takes a slot's worth).
    #[serde(default = "default_learned_cost_floor")]
    pub learned_cost_floor: f64,
    /// Jobs of a class (each measured for at least 3 s after its start hold) before its learned
    /// price is used.
    #[serde(default = "default_learn_min_jobs")]
    pub learn_min_jobs: u32,
}

/// How admission prices a job (`cpu.cost_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostMode {
    /// The configured `cpu_cost` of the type, always.
    Static,
    /// The class's learned price once learned, else the configured cost.
    Learned,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuCostConfig {
    /// Cores a room_composite egress is expected to use.
    #[serde(default = "cost_room")]
    pub room_composite: f64,
    /// Cores a web egress is expected to use.
    #[serde(default = "cost_web")]
    pub web: f64,
    /// Cores a participant egress is expected to use.
    #[serde(default = "cost_participant")]
    pub participant: f64,
    /// Cores a track_composite egress is expected to use.
    #[serde(default = "cost_track_composite")]
    pub track_composite: f64,
    /// Cores a track egress is expected to use.
    #[serde(default = "cost_track")]
    pub track: f64,
    /// Cores each output beyond the first adds when it shares the egress's encode (a segment
    /// muxer, a stream, a JPEG every few seconds): outputs are priced by encodes, not by count.
    #[serde(default = "default_cost_output")]
    pub output: f64,
    /// Cores an output adds when it needs an encoder of its own (webm next to HLS: VP8 and
    /// H.264).
    #[serde(default = "default_cost_encode")]
    pub encode: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most room_composite egresses at once (0 = no limit).
    #[serde(default)]
    pub max_concurrent_room_composite: u32,
    /// Most web egresses at once (0 = no limit).
    #[serde(default)]
    pub max_concurrent_web: u32,
    /// Most participant egresses at once (0 = no limit).
    #[serde(default)]
    pub max_concurrent_participant: u32,
    /// Most track_composite egresses at once (0 = no limit).
    #[serde(default)]
    pub max_concurrent_track_composite: u32,
    /// Most track egresses at once (0 = no limit).
    #[serde(default)]
    pub max_concurrent_track: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    /// `pack` (alias `consolidate`), `spread` or `type_aware`.
    #[serde(default = "default_mode", alias = "load_distribution")]
    pub mode: AffinityMode,
    /// A claim taken by an affinity request is released after this long if never used.
    #[serde(default = "default_claim_ttl")]
    pub pending_claim_ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadConfig {
    /// Node load above which (for `sustain_samples` in a row) one egress is stopped gracefully.
    #[serde(default = "default_soft")]
    pub soft_threshold: f64,
    /// Node load above which one egress is stopped gracefully at once.
    #[serde(default = "default_hard")]
    pub hard_threshold: f64,
    /// Consecutive samples above the soft threshold before acting.
    #[serde(default = "default_sustain")]
    pub sustain_samples: u32,
    /// After a graceful overload stop, kill the victim if load stays above hard this long.
    #[serde(default = "default_kill_grace")]
    pub kill_grace_s: f64,
    /// On drain, stop the remaining egresses gracefully after this long (0 = wait forever).
    #[serde(default)]
    pub drain_timeout_s: f64,
}

fn default_cost_output() -> f64 {
    0.1
}

fn default_cost_encode() -> f64 {
    1.0
}

fn default_sample_interval() -> u64 {
    1000
}

fn default_max_utilization() -> f64 {
    0.8
}

fn default_pending_hold() -> u64 {
    5000
}

fn default_cost_mode() -> CostMode {
    // Proven by integration/costs.rs: the learned price refuses at admission what the static
    // one lets overload stop; an unlearned class is priced as in static mode.
    CostMode::Learned
}

fn default_cost_margin() -> f64 {
    1.2
}

fn default_learned_cost_floor() -> f64 {
    0.1
}

fn default_learn_min_jobs() -> u32 {
    3
}

fn cost_room() -> f64 {
    4.0
}

fn cost_web() -> f64 {
    4.0
}

fn cost_participant() -> f64 {
    2.0
}

fn cost_track_composite() -> f64 {
    1.0
}

fn cost_track() -> f64 {
    0.5
}

fn default_mode() -> AffinityMode {
    AffinityMode::Spread
}

fn default_claim_ttl() -> u64 {
    2000
}

fn default_soft() -> f64 {
    0.85
}

fn default_hard() -> f64 {
    0.95
}

fn default_sustain() -> u32 {
    3
}

fn default_kill_grace() -> f64 {
    30.0
}

impl CpuCostConfig {
    /// The cost of an egress of type `t` with `outputs` outputs of which `extra_encodes` need
    /// an encoder of their own: the type's cost covers its encode and first output; each
    /// further output sharing that encode adds `output`, and each extra encoder adds `encode`
    /// (`pipeline::plan::extra_encodes` counts them).
    pub fn priced(&self, t: EgressType, outputs: usize, extra_encodes: usize) -> f64 {
        let extra_outputs = outputs.saturating_sub(1) as f64;
        self.cost(t) + extra_outputs * self.output + extra_encodes as f64 * self.encode
    }

    /// `priced` for a learned-cost class: `encodes` encoders, one output each.
    pub fn of_class(&self, t: EgressType, encodes: u32) -> f64 {
        self.cost(t) + f64::from(encodes.saturating_sub(1)) * (self.encode + self.output)
    }

    pub fn cost(&self, t: EgressType) -> f64 {
        match t {
            EgressType::RoomComposite => self.room_composite,
            EgressType::Web => self.web,
            EgressType::Participant => self.participant,
            EgressType::TrackComposite => self.track_composite,
            EgressType::Track => self.track,
        }
    }
}

impl LimitsConfig {
    /// The cap for a type; 0 = none.
    pub fn limit(&self, t: EgressType) -> u32 {
        match t {
            EgressType::RoomComposite => self.max_concurrent_room_composite,
            EgressType::Web => self.max_concurrent_web,
            EgressType::Participant => self.max_concurrent_participant,
            EgressType::TrackComposite => self.max_concurrent_track_composite,
            EgressType::Track => self.max_concurrent_track,
        }
    }
}

/// Placement modes of the AffinityScorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityMode {
    #[serde(alias = "consolidate")]
    Pack,
    Spread,
    TypeAware,
}

impl AffinityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityMode::Pack => "pack",
            AffinityMode::Spread => "spread",
            AffinityMode::TypeAware => "type_aware",
        }
    }

    pub fn parse(s: &str) -> Option<AffinityMode> {
        match s {
            "pack" | "consolidate" => Some(AffinityMode::Pack),
            "spread" => Some(AffinityMode::Spread),
            "type_aware" => Some(AffinityMode::TypeAware),
            _ => None,
        }
    }
}

impl CpuConfig {
    /// The `cpu` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(50..=60_000).contains(&self.sample_interval_ms) {
            return Err(invalid("cpu.sample_interval_ms", "must be in [50, 60000]"));
        }
        if !(self.capacity.is_finite() && self.capacity >= 0.0 && self.capacity <= 4096.0) {
            return Err(invalid(
                "cpu.capacity",
                "must be a number of cores in [0, 4096] (0 = detect)",
            ));
        }
        if !(self.max_utilization > 0.0 && self.max_utilization <= 1.0) {
            return Err(invalid("cpu.max_utilization", "must be in (0, 1]"));
        }
        if !(self.cost_margin.is_finite() && (1.0..=10.0).contains(&self.cost_margin)) {
            return Err(invalid("cpu.cost_margin", "must be in [1, 10]"));
        }
        if !(self.learned_cost_floor.is_finite()
            && (0.0..=256.0).contains(&self.learned_cost_floor))
        {
            return Err(invalid(
                "cpu.learned_cost_floor",
                "must be a number of cores in [0, 256]",
            ));
        }
        if !(1..=1000).contains(&self.learn_min_jobs) {
            return Err(invalid("cpu.learn_min_jobs", "must be in [1, 1000]"));
        }
        Ok(())
    }
}

impl CpuCostConfig {
    /// The `cpu_cost` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let extra = [("output", self.output), ("encode", self.encode)];
        let per_type = EgressType::ALL.map(|t| (t.as_str(), self.cost(t)));
        for (k, c) in per_type.into_iter().chain(extra) {
            if !(c.is_finite() && (0.0..=256.0).contains(&c)) {
                return Err(invalid(
                    &format!("cpu_cost.{k}"),
                    "must be a number of cores in [0, 256]",
                ));
            }
        }
        Ok(())
    }
}

impl AffinityConfig {
    /// The `affinity` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(10..=600_000).contains(&self.pending_claim_ttl_ms) {
            return Err(invalid(
                "affinity.pending_claim_ttl_ms",
                "must be in [10, 600000]",
            ));
        }
        Ok(())
    }
}

impl OverloadConfig {
    /// The `overload` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.soft_threshold > 0.0 && self.soft_threshold <= 10.0) {
            return Err(invalid("overload.soft_threshold", "must be in (0, 10]"));
        }
        if !(self.hard_threshold >= self.soft_threshold && self.hard_threshold <= 10.0) {
            return Err(invalid(
                "overload.hard_threshold",
                "must be >= overload.soft_threshold",
            ));
        }
        if self.sustain_samples == 0 {
            return Err(invalid("overload.sustain_samples", "must be at least 1"));
        }
        positive("overload.kill_grace_s", self.kill_grace_s, 86400.0)?;
        if !(self.drain_timeout_s.is_finite() && self.drain_timeout_s >= 0.0) {
            return Err(invalid(
                "overload.drain_timeout_s",
                "must be >= 0 (0 = wait forever)",
            ));
        }
        Ok(())
    }
}
