//! The one function that wires the service: actors, HTTP server, signals, drain and shutdown.
//!
//! ```text
//!  signals / POST /v1/node/drain ──> control loop ──> Node (draining, EndAll, CountRunning)
//!  HTTP API (api/) ──> [Fleet (fleet/) ──>] Node (node.rs) ──> Admission, Supervisor, AffinityScorer
//!  Supervisor ──> Pipeline (one per egress) ──> handler process
//!  CpuMonitor ──CpuSample──> Admission, Supervisor, CostLearner
//!  Supervisor ──TrackJob/JobEnded──> CostLearner ──costs.json, [egress:costs]──> Pricer (Node, affinity)
//!  Supervisor (every record change) ──record sinks──> store, [fleet mirror], Events hub
//!  Events hub (record changes, node watcher) ──> SSE, webhooks, fleet relay
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{App, HttpServer, middleware, web};
use slog::{Logger, info, warn};
use tokio::sync::mpsc;

use crate::actors::admission::Admission;
use crate::actors::affinity::AffinityScorer;
use crate::actors::cost_learner::{CostLearner, SaveCosts};
use crate::actors::cpu_monitor::{CpuMonitor, Subscribe, SysinfoSource, detect_capacity};
use crate::actors::delivery::{Delivery, DeliveryConfig};
use crate::actors::disk_monitor::{ConnectDisk, DiskMonitor};
use crate::actors::pipeline::{KillReason, StopReason};
use crate::actors::supervisor::{EndAll, Mirror, RecordSink, Supervisor};
use crate::api::AppState;
use crate::config::Config;
use crate::events::Events;
use crate::fleet::Fleet;
use crate::metrics::METRICS;
use crate::model::EgressInfo;
use crate::node::{Control, Node, Parts};
use crate::rules::pricer::Pricer;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot initialize GStreamer: {0}")]
    Gstreamer(String),
    #[error("storage: {path}: {source}")]
    Storage {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("fleet: {0}")]
    Fleet(String),
    #[error("{0}")]
    StateLocked(String),
    #[error("webhooks: {0}")]
    Webhooks(String),
}

fn storage_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::Storage {
        path: path.display().to_string(),
        source,
    }
}

/// Runs the service until it is told to exit.
pub fn run(cfg: Config) -> Result<(), ServiceError> {
    gstreamer::init().map_err(|e| ServiceError::Gstreamer(e.to_string()))?;
    let log = crate::logging::root(cfg.log.format, cfg.log.level);
    // First: a second service on this state_dir must stop before it touches anything in it.
    let _lock =
        crate::store::lock_state_dir(&cfg.storage.state_dir).map_err(ServiceError::StateLocked)?;
    std::fs::create_dir_all(&cfg.storage.output_dir)
        .map_err(storage_err(&cfg.storage.output_dir))?;
    let output_dir = cfg
        .storage
        .output_dir
        .canonicalize()
        .map_err(storage_err(&cfg.storage.output_dir))?;
    let mut store =
        Store::open(&cfg.storage.state_dir).map_err(storage_err(&cfg.storage.state_dir))?;
    store
        .start_writer(log.new(slog::o!("task" => "store_writer")))
        .map_err(storage_err(&cfg.storage.state_dir))?;
    let node_id = crate::store::node_id(&cfg.storage.state_dir, &cfg.node.id)
        .map_err(storage_err(&cfg.storage.state_dir))?;
    let log = log.new(slog::o!("node_id" => node_id.clone()));
    // Records of earlier runs are read here, before any actor runs (the disk is not theirs).
    let (index, records, problems) = store.load_index();
    for p in problems {
        warn!(log, "unreadable egress record"; "problem" => p);
    }
    let system = actix_rt::System::new();
    let r = system.block_on(serve(
        cfg,
        log.clone(),
        node_id,
        output_dir,
        store.clone(),
        index,
        records,
    ));
    if !store.flush(Duration::from_secs(5)) {
        warn!(log, "the last egress records may not be on disk");
    }
    r
}

async fn serve(
    cfg: Config,
    log: Logger,
    node_id: String,
    output_dir: PathBuf,
    store: Store,
    index: crate::store::index::RecordIndex,
    records: Vec<EgressInfo>,
) -> Result<(), ServiceError> {
    let cfg = Arc::new(cfg);
    let capacity = detect_capacity(cfg.cpu.capacity);
    let cpu = CpuMonitor::new(
        capacity,
        Duration::from_millis(cfg.cpu.sample_interval_ms),
        Box::new(SysinfoSource::new()),
        log.new(slog::o!("actor" => "cpu_monitor")),
    )
    .start();
    let admission = Admission::new(
        &cfg,
        node_id.clone(),
        capacity,
        log.new(slog::o!("actor" => "admission")),
    )
    .start();
    // The learned cost table of earlier runs (and of calibrate); an unreadable one is ignored
    // (and replaced by the next job learned).
    let table =
        crate::store::costs::read_table(&crate::store::costs::table_path(&cfg.storage.state_dir))
            .map(crate::rules::costs::keep_known)
            .unwrap_or_else(|e| {
                warn!(log, "unreadable learned cost table: starting without it"; "problem" => e);
                Default::default()
            });
    let pricer = Pricer::new(&cfg, table);
    let affinity = AffinityScorer::new(
        cfg.affinity_mode(),
        admission.clone(),
        log.new(slog::o!("actor" => "affinity")),
    )
    .with_pricer(pricer.clone())
    .start();
    // Fleet mode: connected before the Supervisor starts, so every record it settles or creates
    // is mirrored to Redis.
    let (fleet, mirror) = if cfg.fleet.redis_url.is_empty() {
        (None, None)
    } else {
        let (f, tx) = Fleet::connect(&cfg, &node_id, log.new(slog::o!("actor" => "fleet")))
            .await
            .map_err(ServiceError::Fleet)?;
        (Some(f), Some(tx))
    };
    // Uploads run on an arbiter of their own (kept alive until the service exits); the queue a
    // previous run left resumes at once.
    let journal =
        crate::delivery::journal::Journal::open(&cfg.storage.state_dir).map_err(|source| {
            ServiceError::Storage {
                path: cfg.storage.state_dir.join("uploads").display().to_string(),
                source,
            }
        })?;
    let (uploads, _upload_arbiter) = Delivery::new(
        DeliveryConfig::from_config(&cfg),
        journal,
        log.new(slog::o!("actor" => "delivery")),
    )
    .start_on_own_thread();
    let disk = DiskMonitor::new(
        &cfg,
        output_dir.clone(),
        log.new(slog::o!("actor" => "disk_monitor")),
    )
    .start();
    let costs = CostLearner::new(
        &cfg,
        pricer.clone(),
        fleet
            .clone()
            .map(|f| f as Arc<dyn crate::actors::cost_learner::SharedCosts>),
        log.new(slog::o!("actor" => "cost_learner")),
    )
    .start();
    // The hub comes before the Supervisor: every record change it makes is an event. Webhook
    // senders start with it (and read what an earlier run left in their queues).
    let events = Events::new(&cfg.events, node_id.clone());
    crate::events::webhooks::start(
        &cfg.webhooks,
        &cfg.storage.state_dir,
        &events,
        &log.new(slog::o!("task" => "webhooks")),
    )
    .map_err(ServiceError::Webhooks)?;
    // Where every record the Supervisor writes goes, in this order: this node's store (the whole
    // record), in a fleet the Redis mirror, the event hub (both of the shared form).
    let mut sinks: Vec<Box<dyn RecordSink>> = vec![Box::new(store.clone())];
    if let Some(tx) = mirror {
        sinks.push(Box::new(Mirror(tx)));
    }
    sinks.push(Box::new(events.clone()));
    let supervisor = Supervisor::new(
        store,
        index,
        records,
        admission.clone(),
        cpu.clone(),
        &cfg,
        output_dir.clone(),
        sinks,
        log.new(slog::o!("actor" => "supervisor")),
    )
    .with_delivery(Some(uploads.clone()))
    .with_costs(costs.clone(), pricer.clone())
    .start();
    disk.do_send(ConnectDisk {
        supervisor: supervisor.clone(),
        delivery: uploads.clone(),
    });
    cpu.do_send(Subscribe(admission.clone().recipient()));
    cpu.do_send(Subscribe(supervisor.clone().recipient()));
    let costs_at_exit = costs.clone();
    cpu.do_send(Subscribe(costs.recipient()));

    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let node = Node::new(
        cfg.clone(),
        node_id.clone(),
        output_dir,
        Parts {
            supervisor,
            admission: admission.clone(),
            affinity,
            pricer: pricer.clone(),
            control: control_tx.clone(),
            delivery: Some(crate::node::Delivery { uploads, disk }),
        },
    );
    let state = web::Data::new(AppState {
        cfg: cfg.clone(),
        node: node.clone(),
        fleet: fleet.clone(),
        events: events.clone(),
    });
    actix_rt::spawn(watch_node(
        events.clone(),
        node.clone(),
        Duration::from_millis(cfg.events.node_interval_ms),
    ));

    let max_body = cfg.server.max_body_bytes;
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        // Runs on each worker thread as it starts: its placement connection is ready before
        // the first request needs it.
        if let Some(f) = app_state.fleet.clone() {
            actix_rt::spawn(async move { f.open_worker_connection().await });
        }
        App::new()
            .app_data(app_state.clone())
            .wrap(middleware::from_fn(crate::api::guard))
            .configure(|c| crate::api::configure(c, max_body))
            .default_service(web::to(crate::api::not_found))
    })
    .workers(cfg.server.workers)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(&cfg.server.listen)
    .map_err(|source| ServiceError::Bind {
        addr: cfg.server.listen.clone(),
        source,
    })?;
    let addrs = server.addrs();
    let bound = addrs.first().map(|a| a.to_string()).unwrap_or_default();
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    let url = if cfg.fleet.advertise_url.is_empty() {
        format!("http://{bound}")
    } else {
        cfg.fleet.advertise_url.trim_end_matches('/').to_string()
    };
    node.set_base_url(&url);
    if let Some(f) = &fleet {
        if cfg.fleet.advertise_url.is_empty()
            && addrs.first().is_some_and(|a| a.ip().is_unspecified())
        {
            warn!(log, "listening on all interfaces without fleet.advertise_url: other nodes cannot reach this one";
                  "addr" => &bound);
        }
        if let Err(e) = f.join(url, node.clone()).await {
            handle.stop(false).await;
            return Err(ServiceError::Fleet(format!(
                "cannot register this node: {e}"
            )));
        }
        f.watch_capacity(pricer.clone());
        f.relay_events(events.clone())
            .map_err(ServiceError::Fleet)?;
    }
    // One line on stdout, for scripts and tests that start the service on port 0.
    println!(
        "{}",
        serde_json::json!({"listening": bound, "node_id": node_id})
    );
    info!(log, "listening"; "addr" => &bound, "capacity_cores" => capacity,
          "affinity_mode" => cfg.affinity.mode.as_str(), "auth" => !cfg.server.api_token.is_empty());

    spawn_signal_listeners(control_tx, log.clone());
    control_loop(control_rx, &node, &cfg, &log).await;
    // The last jobs' figures reach the disk before the process ends.
    let _ = costs_at_exit.send(SaveCosts).await;
    // The last events (egresses that ended on the way out) reach the webhook queues on disk:
    // the next run sends what this one could not.
    if !events.flush(Duration::from_secs(3)).await {
        warn!(log, "the last webhook events may not be queued on disk");
    }
    // Event streams never end on their own: end them, or the server waits for them.
    events.close();
    if let Some(f) = &fleet {
        f.leave().await;
    }
    handle.stop(true).await;
    info!(log, "exited");
    Ok(())
}

fn spawn_signal_listeners(tx: mpsc::UnboundedSender<Control>, log: Logger) {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, ctl) in [
        (SignalKind::terminate(), Control::Drain),
        (SignalKind::interrupt(), Control::Interrupt),
    ] {
        let tx = tx.clone();
        let log = log.clone();
        match signal(kind) {
            Ok(mut s) => {
                actix_rt::spawn(async move {
                    while s.recv().await.is_some() {
                        if tx.send(ctl).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => warn!(log, "cannot listen for a signal"; "error" => %e),
        }
    }
}

/// Waits for drain/interrupt, then for the node to become idle; returns when the service may exit.
async fn control_loop(
    mut rx: mpsc::UnboundedReceiver<Control>,
    node: &Node,
    cfg: &Config,
    log: &Logger,
) {
    let mut draining_since: Option<Instant> = None;
    let mut drain_stop_sent = false;
    let mut interrupts = 0u32;
    let mut interrupted_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                if draining_since.is_none() {
                    draining_since = Some(Instant::now());
                    node.set_draining().await;
                    METRICS.draining.set(1.0);
                }
                match ev {
                    Control::Drain => info!(log, "draining: no new egress; exiting when idle";
                        "drain_timeout_s" => cfg.overload.drain_timeout_s),
                    Control::Interrupt => {
                        interrupts += 1;
                        if interrupts == 1 {
                            info!(log, "interrupted: stopping every egress gracefully");
                            interrupted_at = Some(Instant::now());
                            node.end_all(EndAll::Stop(StopReason::Shutdown)).await;
                        } else {
                            warn!(log, "interrupted again: killing every egress");
                            node.end_all(EndAll::Kill(KillReason::Shutdown)).await;
                        }
                    }
                }
            }
            _ = tick.tick() => {}
        }
        let Some(since) = draining_since else {
            continue;
        };
        let running = node.count_running().await;
        if running == 0 {
            return;
        }
        let timeout = cfg.overload.drain_timeout_s;
        if !drain_stop_sent
            && interrupts == 0
            && timeout > 0.0
            && since.elapsed().as_secs_f64() >= timeout
        {
            info!(log, "drain timeout: stopping the remaining egresses"; "running" => running);
            drain_stop_sent = true;
            node.end_all(EndAll::Stop(StopReason::DrainTimeout)).await;
        }
        if let Some(at) = interrupted_at {
            // The Pipeline actors kill after eos_timeout themselves; this is the last resort.
            if at.elapsed().as_secs_f64() > cfg.pipeline.eos_timeout_s + 10.0 {
                warn!(log, "egresses still running after the EOS timeout: exiting"; "running" => running);
                return;
            }
        }
    }
}

/// Emits `node_updated` when the node's state (as `GET /v1/node` reports it) changed
/// (`worth_sending`), at most once per `every`; runs until the service stops.
async fn watch_node(events: Events, node: Node, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = events.closed();
    let mut sent: Option<crate::rules::admission::NodeState> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closed.changed() => return,
        }
        let Ok(state) = node.state().await else {
            continue;
        };
        if !crate::events::worth_sending(sent.as_ref(), &state) {
            continue;
        }
        if let Ok(json) = serde_json::to_string(&state) {
            sent = Some(state);
            events.node_changed(json);
        }
    }
}
