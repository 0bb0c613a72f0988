//! The learned cost table's read side: a `Pricer` is a cheap handle (not an actor) that Node,
//! AffinityScorer, fleet placement and capacity and the Supervisor read prices from without a
//! message; the CostLearner actor writes the table through it. And `GET /v1/node/costs`'s report.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::{Config, CostMode, CpuCostConfig};
use crate::metrics::METRICS;
use crate::model::EgressType;
use crate::rules::costs::{CostClass, CostTable, Estimate, PricePolicy};

/// Read access to the learned table, and the prices made from it.
#[derive(Clone)]
pub struct Pricer {
    table: Arc<RwLock<CostTable>>,
    policy: PricePolicy,
    configured: CpuCostConfig,
}

/// One line of `GET /v1/node/costs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClassCost {
    /// `type WxH@fps` (`type audio` for audio only; ` xN` for N encodes).
    pub class: String,
    pub egress_type: EgressType,
    /// The type's `cpu_cost`, in cores.
    pub configured_cost: f64,
    /// What admission charges a job of this class now, in cores.
    pub price: f64,
    /// Whether the class has enough measured jobs (or a calibration) for its learned price.
    pub learned: bool,
    /// max(p95 x cost_margin, learned_cost_floor) once learned, in cores.
    pub learned_cost: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
    /// Jobs measured.
    pub samples: u64,
    pub calibrated: bool,
}

/// `GET /v1/node/costs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CostsReport {
    /// `static` or `learned` (`cpu.cost_mode`).
    pub mode: String,
    pub cost_margin: f64,
    pub learned_cost_floor: f64,
    pub learn_min_jobs: u32,
    /// Every class measured, and each type at its default video, sorted by class.
    pub classes: Vec<ClassCost>,
}

impl Pricer {
    pub fn new(cfg: &Config, table: CostTable) -> Pricer {
        Pricer {
            table: Arc::new(RwLock::new(table)),
            policy: PricePolicy::from_config(cfg),
            configured: cfg.cpu_cost.clone(),
        }
    }

    fn estimate(&self, class: &CostClass) -> Option<Estimate> {
        self.table
            .read()
            .ok()
            .and_then(|t| t.get(&class.key()).cloned())
    }

    /// What admission charges a job of `class` whose configured price (`cpu_cost`, with its
    /// outputs) is `configured` (see `rules::costs`).
    pub fn price(&self, class: &CostClass, configured: f64) -> f64 {
        self.policy.price(self.estimate(class).as_ref(), configured)
    }

    /// The configured price of a class with one output per encode.
    pub fn configured(&self, class: &CostClass) -> f64 {
        self.configured.of_class(class.egress_type, class.encodes)
    }

    /// A type at its default video, one output.
    pub fn price_of_type(&self, t: EgressType) -> f64 {
        let class = CostClass::default_of(t);
        self.price(&class, self.configured(&class))
    }

    /// The learned price when it is the one admission uses (learned mode, class learned): what
    /// fleet placement passes, so that every node charges the job alike; None = each node's own.
    pub fn learned_price(&self, class: &CostClass) -> Option<f64> {
        if self.policy.mode != CostMode::Learned {
            return None;
        }
        self.policy.learned_price(self.estimate(class).as_ref())
    }

    pub fn table(&self) -> CostTable {
        self.table.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Runs `f` on the table under its write lock (None if the lock is poisoned).
    pub fn with_table<R>(&self, f: impl FnOnce(&mut CostTable) -> Option<R>) -> Option<R> {
        self.table.write().ok().and_then(|mut t| f(&mut t))
    }

    /// Changes the table in place; answers what `f` answers (how many classes it changed).
    pub fn update(&self, f: impl FnOnce(&mut CostTable) -> usize) -> usize {
        match self.table.write() {
            Ok(mut t) => f(&mut t),
            Err(_) => 0,
        }
    }

    pub fn report(&self) -> CostsReport {
        let table = self.table();
        let mut keys: Vec<String> = table.keys().cloned().collect();
        for t in EgressType::ALL {
            keys.push(CostClass::default_of(t).key());
        }
        keys.sort();
        keys.dedup();
        let classes = keys
            .into_iter()
            .filter_map(|k| {
                let class = CostClass::parse(&k)?;
                let e = table.get(&k);
                let configured = self.configured(&class);
                Some(ClassCost {
                    class: k,
                    egress_type: class.egress_type,
                    configured_cost: configured,
                    price: self.policy.price(e, configured),
                    learned: e.is_some_and(|e| e.learned(self.policy.min_jobs)),
                    learned_cost: self.policy.learned_price(e),
                    p50: e.map(|e| e.p50),
                    p95: e.map(|e| e.p95),
                    max: e.map(|e| e.max),
                    samples: e.map_or(0, |e| e.jobs),
                    calibrated: e.is_some_and(|e| e.calibrated),
                })
            })
            .collect();
        CostsReport {
            mode: match self.policy.mode {
                CostMode::Static => "static".into(),
                CostMode::Learned => "learned".into(),
            },
            cost_margin: self.policy.margin,
            learned_cost_floor: self.policy.floor,
            learn_min_jobs: self.policy.min_jobs,
            classes,
        }
    }

    /// Sets the cost gauges from the table.
    /// Sets the cost metrics from the report.
    pub fn export_metrics(&self) {
        for c in self.report().classes {
            let l = [c.class.as_str()];
            METRICS
                .cost_configured_cores
                .with_label_values(&l)
                .set(c.configured_cost);
            METRICS.cost_price_cores.with_label_values(&l).set(c.price);
            METRICS
                .cost_learned
                .with_label_values(&l)
                .set(if c.learned { 1 } else { 0 });
            METRICS
                .cost_jobs
                .with_label_values(&l)
                .set(c.samples as i64);
            for (q, v) in [("p50", c.p50), ("p95", c.p95), ("max", c.max)] {
                if let Some(v) = v {
                    METRICS
                        .cost_measured_cores
                        .with_label_values(&[c.class.as_str(), q])
                        .set(v);
                }
            }
        }
    }
}
