//! Overload escalation: each CPU sample judges the running jobs (`rules::overload`) and the
//! chosen ones are stopped, then killed.

use actix::prelude::*;
use slog::warn;

use super::Supervisor;
use crate::actors::cpu_monitor::CpuSample;
use crate::actors::pipeline::{KillPipeline, KillReason, StopPipeline, StopReason};
use crate::metrics::METRICS;
use crate::model::EgressInfo;
use crate::rules::overload::{JobLoad, OverloadAction};

impl Supervisor {
    /// The cost overload judges a running job by: its `estimated_cpu` when the request gave
    /// one, else its class's learned price when learned mode uses it, else what it was admitted
    /// at.
    fn judged_cost(&self, info: &EgressInfo) -> f64 {
        if let Some(c) = info.request.estimated_cpu {
            return c;
        }
        match (&self.pricer, self.classes.get(&info.egress_id)) {
            (Some(p), Some(class)) => p.price(class, info.cpu_cost),
            _ => info.cpu_cost,
        }
    }
}

/// Each sample feeds overload escalation over the egresses whose handlers still run.
impl Handler<CpuSample> for Supervisor {
    type Result = ();
    fn handle(&mut self, sample: CpuSample, _: &mut Context<Self>) {
        let jobs: Vec<JobLoad> = self
            .pipelines
            .keys()
            .filter_map(|id| self.egresses.get(id))
            .map(|i| JobLoad {
                egress_id: i.egress_id.clone(),
                cores_used: sample
                    .jobs
                    .get(&i.egress_id)
                    .map(|u| u.cores)
                    .unwrap_or(0.0),
                admitted_cost: self.judged_cost(i),
                launched_at_ms: i.created_at,
                active_since_ms: i.started_at,
            })
            .collect();
        for action in self.overload.on_sample(sample.at_ms, sample.load, &jobs) {
            let id = action.egress_id().to_string();
            let used = sample.jobs.get(&id).map(|u| u.cores).unwrap_or(0.0);
            warn!(self.log, "CPU overload"; "action" => action.action(), "egress_id" => &id,
                  "load" => sample.load, "host_busy" => sample.host_busy, "node_cores" => sample.node_cores,
                  "capacity_cores" => sample.capacity_cores, "victim_cores" => used, "running" => jobs.len());
            METRICS
                .overload_actions_total
                .with_label_values(&[action.action(), action.reason()])
                .inc();
            let Some(p) = self.pipelines.get(&id) else {
                continue;
            };
            match action {
                OverloadAction::Stop { .. } => p.do_send(StopPipeline(StopReason::CpuLimit)),
                OverloadAction::Kill { .. } => p.do_send(KillPipeline(KillReason::CpuExhausted)),
            }
        }
    }
}
