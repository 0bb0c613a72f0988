//! Autoscaling figures for the fleet (`GET /v1/fleet/capacity`), from the live nodes' published
//! admission state. Pure: the fleet layer reads the nodes and their jobs' records and passes them.
//!
//! - Only nodes that take work count (a draining node is on its way out): `budget` is the sum of
//!   their budgets, `used` of what they committed (running jobs and claims: `budget - headroom`),
//!   `free` of their headroom (at least 0 each).
//! - `fits[type]`: on each node, `min(floor(headroom / price), limit - active - claims)` (the
//!   limit part only when the type has one), summed. The price is the fleet's learned price of the
//!   type's default class when learned mode uses it, else each node's configured cost. A price of
//!   0 with no limit fits without bound (`null`).
//! - `desired_nodes = max(1, ceil(used / ((1 - target_free_fraction) * mean budget per node)))`:
//!   the nodes the committed work needs with the target fraction of their budget left free.
//! - `drain_candidates`: when fewer nodes are desired than take work, the surplus nodes whose
//!   draining loses least: fewest jobs, then the soonest done (the latest `max_duration_s` end
//!   among their jobs; a job without one never ends on its own and ranks last), then node id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Slack for float divisions (e.g. 3 x 0.1 cores fit 0.3 free).
const EPS: f64 = 1e-9;

/// One live node as capacity sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub node_id: String,
    pub budget_cores: f64,
    /// Cores it can still commit (negative when measured use outgrew its budget).
    pub headroom_cpu: f64,
    pub draining: bool,
    /// By type name: (active, limit (0 = none), pending claims, configured cost).
    pub types: BTreeMap<String, TypeView>,
    /// Each running job's remaining time in ms (None: no `max_duration_s`, runs until stopped).
    pub jobs_remaining_ms: Vec<Option<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeView {
    pub active: u32,
    pub limit: u32,
    pub pending_claims: u32,
    pub cost: f64,
}

/// A node whose draining loses least.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrainCandidate {
    pub node_id: String,
    /// Jobs it runs.
    pub jobs: u32,
    /// Seconds until its last job reaches its `max_duration_s` (0 when empty); null when a job
    /// has no end of its own.
    pub remaining_s: Option<f64>,
}

/// `GET /v1/fleet/capacity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capacity {
    /// Live nodes that take work (not draining).
    pub nodes: u32,
    /// Live nodes that are draining.
    pub draining_nodes: u32,
    pub budget_cores: f64,
    pub used_cores: f64,
    pub free_cores: f64,
    pub target_free_fraction: f64,
    /// Nodes needed to keep `target_free_fraction` of the budget free (at least 1).
    pub desired_nodes: u32,
    /// More jobs of each type (at its default profile) that fit now; null = no bound.
    pub fits: BTreeMap<String, Option<u64>>,
    /// The price each type was counted at, in cores (learned, or each node's own when null).
    pub prices: BTreeMap<String, Option<f64>>,
    /// Nodes to drain first when scaling in, best first (as many as `nodes - desired_nodes`).
    pub drain_candidates: Vec<DrainCandidate>,
}

fn sane(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// How many more of a type fit on one node at `price` cores; None = no bound.
fn fits_on(n: &NodeView, t: &TypeView, price: f64) -> Option<u64> {
    let by_limit = (t.limit > 0).then(|| {
        u64::from(t.limit).saturating_sub(u64::from(t.active) + u64::from(t.pending_claims))
    });
    let headroom = sane(n.headroom_cpu);
    let by_cpu = if price > 0.0 {
        Some(((headroom + EPS) / price).floor().max(0.0) as u64)
    } else if headroom + EPS >= 0.0 {
        None
    } else {
        Some(0)
    };
    match (by_limit, by_cpu) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The figures (see the module doc). `learned_prices`: by type, the learned price to count a job
/// at; a type missing there is counted at each node's configured cost.
pub fn capacity(
    nodes: &[NodeView],
    learned_prices: &BTreeMap<String, f64>,
    target_free_fraction: f64,
) -> Capacity {
    let takers: Vec<&NodeView> = nodes.iter().filter(|n| !n.draining).collect();
    let budget: f64 = takers.iter().map(|n| sane(n.budget_cores).max(0.0)).sum();
    let used: f64 = takers
        .iter()
        .map(|n| (sane(n.budget_cores) - sane(n.headroom_cpu)).max(0.0))
        .sum();
    let free: f64 = takers.iter().map(|n| sane(n.headroom_cpu).max(0.0)).sum();
    let mut type_names: Vec<&String> = takers.iter().flat_map(|n| n.types.keys()).collect();
    type_names.sort();
    type_names.dedup();
    let mut fits = BTreeMap::new();
    let mut prices = BTreeMap::new();
    for name in type_names {
        let learned = learned_prices.get(name).copied();
        let mut total: Option<u64> = Some(0);
        for n in &takers {
            let Some(t) = n.types.get(name) else { continue };
            let price = learned.unwrap_or(t.cost);
            total = match (total, fits_on(n, t, price)) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                _ => None,
            };
        }
        fits.insert(name.clone(), total);
        prices.insert(name.clone(), learned);
    }
    let keep = (1.0 - target_free_fraction).max(0.0);
    let desired = if takers.is_empty() || budget <= 0.0 || keep <= 0.0 {
        1
    } else {
        let per_node = budget / takers.len() as f64;
        ((used / (keep * per_node)) - EPS).ceil().max(1.0) as u32
    };
    let surplus = (takers.len() as u32).saturating_sub(desired) as usize;
    let mut ranked: Vec<DrainCandidate> = takers
        .iter()
        .map(|n| DrainCandidate {
            node_id: n.node_id.clone(),
            jobs: n.jobs_remaining_ms.len() as u32,
            remaining_s: n
                .jobs_remaining_ms
                .iter()
                .try_fold(0u64, |acc, r| r.map(|r| acc.max(r)))
                .map(|ms| ms as f64 / 1000.0),
        })
        .collect();
    ranked.sort_by(|a, b| {
        a.jobs
            .cmp(&b.jobs)
            .then(
                a.remaining_s
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.remaining_s.unwrap_or(f64::INFINITY)),
            )
            .then(a.node_id.cmp(&b.node_id))
    });
    ranked.truncate(surplus);
    Capacity {
        nodes: takers.len() as u32,
        draining_nodes: (nodes.len() - takers.len()) as u32,
        budget_cores: budget,
        used_cores: used,
        free_cores: free,
        target_free_fraction,
        desired_nodes: desired,
        fits,
        prices,
        drain_candidates: ranked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, headroom: f64, jobs: Vec<Option<u64>>, track_limit: u32) -> NodeView {
        let mut types = BTreeMap::new();
        types.insert(
            "track".to_string(),
            TypeView {
                active: jobs.len() as u32,
                limit: track_limit,
                pending_claims: 0,
                cost: 0.5,
            },
        );
        types.insert(
            "participant".to_string(),
            TypeView {
                active: 0,
                limit: 0,
                pending_claims: 0,
                cost: 2.0,
            },
        );
        NodeView {
            node_id: id.into(),
            budget_cores: 4.0,
            headroom_cpu: headroom,
            draining: false,
            types,
            jobs_remaining_ms: jobs,
        }
    }

    #[test]
    fn figures_of_a_three_node_fleet() {
        let nodes = vec![
            node("ND_a", 4.0, vec![], 0),
            node("ND_b", 3.0, vec![Some(5_000), Some(20_000)], 3),
            node("ND_c", 3.5, vec![Some(1_000)], 0),
        ];
        let c = capacity(&nodes, &BTreeMap::new(), 0.2);
        assert_eq!(c.nodes, 3);
        assert_eq!(
            (c.budget_cores, c.used_cores, c.free_cores),
            (12.0, 1.5, 10.5)
        );
        // track: 8 on a, min(6, 3 - 2) = 1 on b, 7 on c; participant: 2 + 1 + 1.
        assert_eq!(c.fits["track"], Some(16));
        assert_eq!(c.fits["participant"], Some(4));
        // 1.5 used / (0.8 * 4) -> 1 node.
        assert_eq!(c.desired_nodes, 1);
        let ids: Vec<_> = c
            .drain_candidates
            .iter()
            .map(|d| d.node_id.as_str())
            .collect();
        assert_eq!(ids, ["ND_a", "ND_c"]);
        assert_eq!(c.drain_candidates[0].remaining_s, Some(0.0));
        assert_eq!(c.drain_candidates[1].remaining_s, Some(1.0));
    }

    #[test]
    fn desired_nodes_keep_the_free_fraction_and_drains_do_not_count() {
        let mut nodes = vec![
            node("ND_a", 0.0, vec![None], 0),
            node("ND_b", 1.0, vec![Some(1), None], 0),
            node("ND_c", 4.0, vec![], 0),
        ];
        // 7 used of 12: 7 / 3.2 -> 3 nodes, nothing to drain.
        let c = capacity(&nodes, &BTreeMap::new(), 0.2);
        assert_eq!((c.used_cores, c.desired_nodes), (7.0, 3));
        assert!(c.drain_candidates.is_empty());
        // Exactly at the target: 6.4 used of 8 leaves 20% free with 2 nodes.
        nodes[1].headroom_cpu = 1.6;
        nodes[2].draining = true;
        let c = capacity(&nodes, &BTreeMap::new(), 0.2);
        assert_eq!((c.nodes, c.draining_nodes, c.desired_nodes), (2, 1, 2));
        // Over budget counts as used, never as negative free.
        nodes[0].headroom_cpu = -1.0;
        let c = capacity(&nodes, &BTreeMap::new(), 0.2);
        assert_eq!((c.used_cores, c.free_cores, c.desired_nodes), (7.4, 1.6, 3));
        assert_eq!(c.fits["track"], Some(3));
        // Unbounded jobs rank after bounded ones with as many jobs.
        let nodes = vec![
            node("ND_a", 4.0, vec![None], 0),
            node("ND_b", 4.0, vec![Some(60_000)], 0),
        ];
        let c = capacity(&nodes, &BTreeMap::new(), 0.5);
        assert_eq!(c.desired_nodes, 1);
        assert_eq!(c.drain_candidates[0].node_id, "ND_b");
    }

    #[test]
    fn learned_prices_replace_configured_ones_and_zero_costs_are_unbounded() {
        let nodes = vec![node("ND_a", 4.0, vec![], 0)];
        let learned: BTreeMap<String, f64> = [("participant".to_string(), 1.3)].into();
        let c = capacity(&nodes, &learned, 0.2);
        assert_eq!(c.fits["participant"], Some(3));
        assert_eq!(c.prices["participant"], Some(1.3));
        assert_eq!(c.prices["track"], None);
        let mut free = nodes.clone();
        free[0].types.get_mut("track").unwrap().cost = 0.0;
        assert_eq!(capacity(&free, &BTreeMap::new(), 0.2).fits["track"], None);
        free[0].types.get_mut("track").unwrap().limit = 2;
        assert_eq!(
            capacity(&free, &BTreeMap::new(), 0.2).fits["track"],
            Some(2)
        );
        let none = capacity(&[], &BTreeMap::new(), 0.2);
        assert_eq!(
            (none.nodes, none.desired_nodes, none.budget_cores),
            (0, 1, 0.0)
        );
    }
}
