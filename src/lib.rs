//! egress-engine: a recording engine that runs live-media recording jobs ("egresses") as
//! supervised GStreamer pipelines, one child process per job, controlled over an HTTP admin API.
//!
//! # Layout
//! The modules form layers (`layers`, kept by a test): each uses only its own layer and those
//! before it, model -> config -> error -> pipeline -> rules -> actors -> node -> fleet -> api ->
//! service.
//! - `config`: the YAML/env configuration, validated before anything starts (the Redis target,
//!   webhook keys and durations parsed there).
//! - `model`: requests, validated specs and egress records; request validation
//!   (`RequestError`), upload targets, event kinds, URL redaction, host allow-lists.
//! - `error`: typed errors per domain (`NodeError`: what the actors and the node answer) and
//!   their single HTTP mapping.
//! - `actors/`: one file per actor (Supervisor, Pipeline, CpuMonitor, Admission, AffinityScorer,
//!   CostLearner, Delivery, DiskMonitor). The Supervisor writes every record in one place,
//!   to a list of record sinks (`actors::supervisor::RecordSink`: store, fleet mirror, events).
//!   `actors.md` at the top of the repository draws who sends what to whom.
//! - `rules/`: the pure decision functions the actors wrap: admission, scoring, overload,
//!   learned costs and prices, an egress's final status, fleet placement's refusals and
//!   retries, fleet capacity.
//! - `pipeline/`: GStreamer graph building per egress type and per output.
//! - `handler/`: the child process that runs one pipeline and its stdio protocol.
//! - `media`: reading finished files back with Discoverer.
//! - `closing`: the last look at an egress's outputs: repaired, read back, manifest written.
//! - `hls`: HLS playlists (rendered by the handler, closed by the service after a crash).
//! - `repair`: making outputs whole after a handler died (remux a fragmented MP4, end a
//!   playlist).
//! - `node`: the node layer: start, list, get, stop, kill, state, drain over the actors. The
//!   API and the fleet call it; it calls neither (requests flow api -> fleet -> node -> actors).
//! - `outputs`: output files confined to `storage.output_dir`, created before a handler starts.
//! - `api/`: the HTTP admin API, one file per resource; routes parse, call the node, render.
//! - `fleet/`: Redis coordination between nodes.
//! - `delivery/`: uploads to object storage (durable queue, retries, backup), disk admission,
//!   "Disk full" stops and retention: the rules; the actors are `Delivery` and `DiskMonitor`.
//! - `events/`: the live event hub (every record and node state change), its SSE streams and
//!   the webhook senders with their durable queue.
//! - `dashboard/`: the one-page dashboard's static HTML, CSS and JS (built in, served at `/`).
//! - `timeline`: where each track of a hybrid MP4 really starts (written by the handler, used
//!   by the remux).
//! - `store`: egress records persisted in `state_dir` (written by a thread of its own), the
//!   state_dir lock, the learned cost table's file, the one atomic writer.
//! - `metrics`: every Prometheus metric.
//! - `logging`: the slog root (terminal or JSON) and its async drain.
//! - `service`: the one function that wires everything and runs the service.
//! - `calibrate`: `egress-engine calibrate`: each type measured on this machine (a child service
//!   driven through `cli::Client`), into the learned cost table.
//! - `layers`: the layer order and the test that keeps every import to it.
//! - `cli/`: the client commands (`egress`, `node`, `fleet`) that call a node's API over HTTP;
//!   `cli::http` is the one client (calibrate's too).

pub mod actors;
pub mod api;
pub mod calibrate;
pub mod cli;
pub mod closing;
pub mod config;
pub mod dashboard;
pub mod delivery;
pub mod error;
pub mod events;
pub mod fleet;
pub mod handler;
pub mod hls;
pub mod layers;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod model;
pub mod node;
pub mod outputs;
pub mod pipeline;
pub mod repair;
pub mod rules;
pub mod service;
pub mod store;
pub mod timeline;
