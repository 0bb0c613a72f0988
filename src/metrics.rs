//! Every Prometheus metric the service exports, registered in one registry. Names carry the
//! `egress_` prefix and base units; labels are low-cardinality (type, status, reason), never ids.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Egresses this node holds, by type and status (final statuses included until restart).
    pub egresses: IntGaugeVec,
    /// Egresses that ended, by type and end reason.
    pub results_total: IntCounterVec,
    /// CPU used by the service and its handlers, in cores.
    pub process_cpu_cores: GaugeVec,
    /// Resident memory of the service and its handlers, in bytes.
    pub process_memory_bytes: GaugeVec,
    /// Node load: max(host busy fraction, node CPU / capacity).
    pub node_load: Gauge,
    /// CPU capacity of the node, in cores.
    pub capacity_cores: Gauge,
    /// CPU admission can still commit, in cores.
    pub available_cpu_cores: Gauge,
    /// Running egresses by type, as admission counts them.
    pub type_active: IntGaugeVec,
    /// Per-type concurrency limit (0 = none).
    pub type_limit: IntGaugeVec,
    /// Pending placement claims by type.
    pub pending_claims: IntGaugeVec,
    /// Admission decisions by type and outcome (admitted, cpu, type_limit, draining).
    pub admissions_total: IntCounterVec,
    /// Overload actions by action (stop, kill) and reason.
    pub overload_actions_total: IntCounterVec,
    /// Placement attempts by outcome (placed, retried, failed).
    pub placements_total: IntCounterVec,
    /// 1 while the node is draining.
    pub draining: Gauge,
    /// 1 while the fleet's Redis does not answer this node (degraded: starts placed locally).
    pub fleet_degraded: Gauge,
    /// Egress records this node could not write to the fleet's Redis yet.
    pub fleet_unpublished_records: Gauge,
    /// Live-source events: stalled, recovered, lost (reported by handlers); joined, removed (a
    /// room's sources changed over the API).
    pub source_events_total: IntCounterVec,
    /// Recordings whose file lacks part of a stream the source announced, by stream (video,
    /// audio) and what (missing: none at all, the egress failed; partial: a warning).
    pub recording_gaps_total: IntCounterVec,
    /// Health warnings raised (a picture black or frozen, sound silent, for longer than
    /// `pipeline.health_window_s`), by condition.
    pub health_warnings_total: IntCounterVec,
    /// Egresses with a health condition now, by condition.
    pub health_active: IntGaugeVec,
    /// Bytes the object stores confirmed.
    pub upload_bytes_total: IntCounter,
    /// Time from the start of an upload (its first attempt) to the store's confirmation.
    pub upload_duration_seconds: Histogram,
    /// Uploads queued or running (the durable queue's length).
    pub upload_queue_depth: IntGauge,
    /// Upload attempts that failed and were retried.
    pub upload_retries_total: IntCounter,
    /// Uploads that failed for good (retries and the backup target exhausted; the local copy
    /// stays and the egress fails). Alert rules use this name.
    pub upload_failures_total: IntCounter,
    /// Uploads that went to `storage.backup`.
    pub upload_backup_total: IntCounter,
    /// Free bytes under `storage.output_dir`.
    pub disk_free_bytes: Gauge,
    /// Bytes admission reserves for what running egresses write within `disk_horizon_s`.
    pub disk_reserved_bytes: Gauge,
    /// Egresses whose local outputs retention deleted.
    pub retention_deleted_total: IntCounter,
    /// Configured cost of each cost class's type, in cores (class: `type WxH@fps`; as many
    /// classes as profiles in use).
    pub cost_configured_cores: GaugeVec,
    /// What admission charges a job of each class now, in cores.
    pub cost_price_cores: GaugeVec,
    /// Learned CPU of each class by quantile (p50, p95, max), in cores.
    pub cost_measured_cores: GaugeVec,
    /// Jobs measured per class.
    pub cost_jobs: IntGaugeVec,
    /// 1 when a class is learned (its learned price is used in learned mode).
    pub cost_learned: IntGaugeVec,
    /// Fleet (from this node's view): CPU budget of the live nodes that take work, in cores.
    pub fleet_budget_cores: Gauge,
    /// Fleet: cores committed on those nodes.
    pub fleet_used_cores: Gauge,
    /// Fleet: cores still free on those nodes.
    pub fleet_free_cores: Gauge,
    /// Fleet: live nodes that take work (not draining).
    pub fleet_nodes: Gauge,
    /// Fleet: nodes needed to keep `fleet.target_free_fraction` of the budget free (the
    /// autoscaler's target).
    pub fleet_desired_nodes: Gauge,
    /// Fleet: more jobs of each type (at its default profile) that fit fleet-wide now (-1: no
    /// bound, a type priced at 0 without a limit).
    pub fleet_fits: IntGaugeVec,
    /// Stream URLs given up on after `pipeline.stream_retry_s` of failures, by egress type.
    pub stream_failures_total: IntCounterVec,
    /// Webhook events delivered (a 2xx answer), by event.
    pub webhook_deliveries_total: IntCounterVec,
    /// Failed webhook attempts, by reason: connect, timeout, send, status_4xx, status_5xx,
    /// status_other, queue_write, dropped (queue over webhooks.max_queue).
    pub webhook_failures_total: IntCounterVec,
    /// Webhook events waiting for delivery, every receiver together.
    pub webhook_queue_depth: IntGauge,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}
fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}
fn int_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}
fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}
fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}
fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            egresses: int_gauge_vec(
                &r,
                "egress_egresses",
                "Egresses on this node by type and status",
                &["type", "status"],
            ),
            results_total: counter_vec(
                &r,
                "egress_results_total",
                "Egresses ended, by type and end reason",
                &["type", "reason"],
            ),
            process_cpu_cores: gauge_vec(
                &r,
                "egress_process_cpu_cores",
                "CPU used, in cores (process = service | handlers)",
                &["process"],
            ),
            process_memory_bytes: gauge_vec(
                &r,
                "egress_process_memory_bytes",
                "Resident memory (process = service | handlers)",
                &["process"],
            ),
            node_load: gauge(
                &r,
                "egress_node_load",
                "Node load: max(host busy fraction, node CPU / capacity)",
            ),
            capacity_cores: gauge(
                &r,
                "egress_capacity_cores",
                "CPU capacity of this node in cores",
            ),
            available_cpu_cores: gauge(
                &r,
                "egress_available_cpu_cores",
                "CPU admission can still commit, in cores",
            ),
            type_active: int_gauge_vec(
                &r,
                "egress_type_active",
                "Running egresses by type",
                &["type"],
            ),
            type_limit: int_gauge_vec(
                &r,
                "egress_type_limit",
                "Concurrency limit by type (0 = none)",
                &["type"],
            ),
            pending_claims: int_gauge_vec(
                &r,
                "egress_pending_claims",
                "Pending placement claims by type",
                &["type"],
            ),
            admissions_total: counter_vec(
                &r,
                "egress_admissions_total",
                "Admission decisions by type and outcome",
                &["type", "outcome"],
            ),
            overload_actions_total: counter_vec(
                &r,
                "egress_overload_actions_total",
                "Overload stops and kills",
                &["action", "reason"],
            ),
            placements_total: counter_vec(
                &r,
                "egress_placements_total",
                "Fleet placements by outcome",
                &["outcome"],
            ),
            draining: gauge(&r, "egress_draining", "1 while the node is draining"),
            fleet_degraded: gauge(
                &r,
                "egress_fleet_degraded",
                "1 while the fleet's Redis does not answer this node (starts are placed locally)",
            ),
            fleet_unpublished_records: gauge(
                &r,
                "egress_fleet_unpublished_records",
                "Egress records not yet written to the fleet's Redis",
            ),
            source_events_total: counter_vec(
                &r,
                "egress_source_events_total",
                "Live-source events: stalled (reconnecting), recovered, lost; a room's joined, removed",
                &["event"],
            ),
            recording_gaps_total: counter_vec(
                &r,
                "egress_recording_gaps_total",
                "Recordings lacking part of an announced stream, by stream and what",
                &["stream", "what"],
            ),
            health_warnings_total: counter_vec(
                &r,
                "egress_health_warnings_total",
                "Health warnings raised: black or frozen picture, silent sound",
                &["condition"],
            ),
            health_active: int_gauge_vec(
                &r,
                "egress_health_active",
                "Egresses whose picture is black or frozen, or sound silent, now",
                &["condition"],
            ),
            upload_bytes_total: int_counter(
                &r,
                "egress_upload_bytes_total",
                "Bytes uploaded to object storage (confirmed by the store)",
            ),
            upload_duration_seconds: histogram(
                &r,
                "egress_upload_duration_seconds",
                "Upload time per object, first attempt to confirmation",
                vec![
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                ],
            ),
            upload_queue_depth: int_gauge(
                &r,
                "egress_upload_queue_depth",
                "Uploads queued or running",
            ),
            upload_retries_total: int_counter(
                &r,
                "egress_upload_retries_total",
                "Upload attempts that failed and were retried",
            ),
            upload_failures_total: int_counter(
                &r,
                "egress_upload_failures_total",
                "Uploads that failed for good (retries and backup exhausted; local copy kept)",
            ),
            upload_backup_total: int_counter(
                &r,
                "egress_upload_backup_total",
                "Uploads that went to the backup target",
            ),
            disk_free_bytes: gauge(
                &r,
                "egress_disk_free_bytes",
                "Free bytes under storage.output_dir",
            ),
            disk_reserved_bytes: gauge(
                &r,
                "egress_disk_reserved_bytes",
                "Bytes reserved for what running egresses write within storage.disk_horizon_s",
            ),
            retention_deleted_total: int_counter(
                &r,
                "egress_retention_deleted_total",
                "Ended egresses whose local outputs retention deleted",
            ),
            cost_configured_cores: gauge_vec(
                &r,
                "egress_cost_configured_cores",
                "Configured cost of each cost class's type, in cores",
                &["class"],
            ),
            cost_price_cores: gauge_vec(
                &r,
                "egress_cost_price_cores",
                "What admission charges a job of each cost class now, in cores",
                &["class"],
            ),
            cost_measured_cores: gauge_vec(
                &r,
                "egress_cost_measured_cores",
                "Learned CPU of each cost class (quantile = p50 | p95 | max), in cores",
                &["class", "quantile"],
            ),
            cost_jobs: int_gauge_vec(
                &r,
                "egress_cost_jobs",
                "Jobs measured per cost class",
                &["class"],
            ),
            cost_learned: int_gauge_vec(
                &r,
                "egress_cost_learned",
                "1 when a cost class is learned",
                &["class"],
            ),
            fleet_budget_cores: gauge(
                &r,
                "egress_fleet_budget_cores",
                "CPU budget of the fleet's nodes that take work, in cores",
            ),
            fleet_used_cores: gauge(
                &r,
                "egress_fleet_used_cores",
                "Cores committed on the fleet's nodes that take work",
            ),
            fleet_free_cores: gauge(
                &r,
                "egress_fleet_free_cores",
                "Cores still free on the fleet's nodes that take work",
            ),
            fleet_nodes: gauge(
                &r,
                "egress_fleet_nodes",
                "Live fleet nodes that take work (not draining)",
            ),
            fleet_desired_nodes: gauge(
                &r,
                "egress_fleet_desired_nodes",
                "Nodes needed to keep fleet.target_free_fraction of the budget free",
            ),
            fleet_fits: int_gauge_vec(
                &r,
                "egress_fleet_fits",
                "More jobs of each type (default profile) that fit fleet-wide now",
                &["type"],
            ),
            stream_failures_total: counter_vec(
                &r,
                "egress_stream_failures_total",
                "Stream URLs marked failed after retrying for pipeline.stream_retry_s",
                &["type"],
            ),
            webhook_deliveries_total: counter_vec(
                &r,
                "egress_webhook_deliveries_total",
                "Webhook events delivered (2xx), by event",
                &["event"],
            ),
            webhook_failures_total: counter_vec(
                &r,
                "egress_webhook_failures_total",
                "Failed webhook attempts by reason (connect, timeout, send, status_4xx, status_5xx, status_other, queue_write, dropped)",
                &["reason"],
            ),
            webhook_queue_depth: int_gauge(
                &r,
                "egress_webhook_queue_depth",
                "Webhook events waiting for delivery",
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
