//! Fleet coordination over Redis: node registry with heartbeats, fleet-wide egress records, and
//! placement of a job on the best node. With `fleet.redis_url` empty none of this runs.
//!
//! # Layout
//! - `registry`: each node's registration (`egress:node:{id}`, heartbeat with expiry), the set
//!   of live nodes, and the `Fleet` methods that join, publish and leave.
//! - `records`: egress records (`egress:records`), egress ownership (`egress:owner:{id}`), the
//!   rule that reports a dead node's unfinished egresses as aborted, and the `Fleet` methods
//!   that mirror records, start an owned egress, list, get and forward stop/kill.
//! - `reservations`: the placement decision as one Redis script (score every live node from its
//!   published state, reserve the best).
//! - `placement`: `POST /v1/egress` fleet-wide: decide, start on the chosen node, fall back,
//!   retry a burst.
//! - `client`: node-to-node calls over the admin API.
//! - `costs`: the fleet's learned cost table (`egress:costs`), shared by every node.
//! - `capacity`: `GET /v1/fleet/capacity`: budget, free cores, what fits, desired nodes and
//!   which nodes to drain (autoscaling signals).
//! - `events`: every node's live events relayed through Redis pub/sub (`{p}events`).
//!
//! Coordination is Redis plus each node's own admin API: no gossip, no consensus. Every decision
//! that must be atomic is one Redis command or one Lua script (taking an egress id, writing a
//! record only as its owner, choosing and reserving a node) or one actor message on the node
//! concerned (admission).
//!
//! ```text
//!   Supervisor ──EgressInfo (channel)──► record writer ──HSET──► egress:records
//!   publisher (every change, else every heartbeat_ms) ──GetNodeState──► Admission;
//!       SET egress:node:{id} PX node_ttl_ms
//!   HTTP placement ──EVALSHA place──► Redis ──► chosen node's /v1/node/egress
//! ```

pub mod capacity;
pub mod client;
pub mod connection;
pub mod costs;
pub mod events;
pub mod keys;
pub mod placement;
pub mod records;
pub mod registry;
pub mod reservations;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use slog::Logger;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, FleetConfig};
use crate::error::{ApiError, NodeError};
use crate::fleet::placement::Placement;
use crate::model::{EgressInfo, EgressRequest};
use crate::node::Node;

/// Redis must answer a command within this (a node that cannot reach Redis leaves the fleet
/// when its registration expires).
pub(crate) const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Stop and kill forwarded to another node.
pub(crate) const END_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful exit waits for the last records to reach Redis.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// This node's membership in the fleet.
pub struct Fleet {
    /// The shared connection (it reconnects on its own; with Sentinel it follows the primary)
    /// and the client the per-worker placement connections are opened from.
    conns: connection::Connections,
    /// The fleet's key names (`fleet.key_prefix`).
    keys: keys::Keys,
    node_id: String,
    /// `server.api_token`: the nodes of a fleet share it and send it to each other.
    token: String,
    cfg: FleetConfig,
    /// The URL other nodes reach this one at; known once the server is bound (`join`).
    url: OnceLock<String>,
    /// The heartbeat task, stopped on a graceful exit before the registration is removed.
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Records from the Supervisor, consumed by the writer task spawned in `join`.
    records_rx: Mutex<Option<mpsc::UnboundedReceiver<EgressInfo>>>,
    /// The same channel's sender: on Redis's return every record of this node is sent again
    /// (a Redis that came back empty gets them all).
    records_tx: mpsc::UnboundedSender<EgressInfo>,
    /// Why the fleet's Redis is not usable now (set by a failed heartbeat, cleared by the next
    /// good one); None while it answers. `/readyz` and fleet-wide reads report it.
    degraded: Mutex<Option<String>>,
    /// Asks the writer to write everything queued, then answer.
    flush_tx: mpsc::UnboundedSender<oneshot::Sender<()>>,
    flush_rx: Mutex<Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>>,
    log: Logger,
}

/// What can go wrong in the fleet layer. `From<FleetError> for ApiError` is its one mapping to
/// what a client sees: Redis unreachable, loading or busy is a 503 (try again); a command or
/// script Redis refused would fail every retry the same way, so it is a 500.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// From Redis: unreachable, loading or busy (503), or a command or script it refused (500).
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something this version does not understand (500).
    #[error("the fleet's Redis gave an unexpected answer: {0}")]
    Reply(String),
    /// What a node (this one, or the one that runs the egress) answered: passed on as it is.
    #[error(transparent)]
    Node(#[from] ApiError),
}

/// Redis cannot be reached, or cannot serve now (loading, busy, a demoted primary): worth a
/// retry or another connection, and what degraded mode falls back on. Anything else Redis
/// refused would fail every retry the same way.
pub fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
}

impl FleetError {
    /// See `unreachable`.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, FleetError::Redis(e) if unreachable(e))
    }
}

/// This node's own answer (in-process) is passed on as the API would give it.
impl From<NodeError> for FleetError {
    fn from(e: NodeError) -> FleetError {
        FleetError::Node(e.into())
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        match e {
            FleetError::Redis(e) if unreachable(&e) => {
                ApiError::Unavailable(format!("the fleet's Redis does not answer: {e}"))
            }
            FleetError::Redis(e) => {
                ApiError::Internal(format!("the fleet's Redis refused a command: {e}"))
            }
            FleetError::Reply(_) => ApiError::Internal(e.to_string()),
            FleetError::Node(e) => e,
        }
    }
}

impl Fleet {
    /// Connects to `fleet.redis_url`. Returns the fleet and the sender the Supervisor mirrors
    /// every record change into.
    pub async fn connect(
        cfg: &Config,
        node_id: &str,
        log: Logger,
    ) -> Result<(Arc<Fleet>, mpsc::UnboundedSender<EgressInfo>), String> {
        let url = &cfg.fleet.redis_url;
        let target = connection::Target::parse(url).map_err(|e| format!("fleet.redis_url {e}"))?;
        // Reconnects back off exponentially with jitter, up to a second apart.
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let conns = connection::Connections::open(target, mcfg)
            .await
            .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conns.con())
            .await
            .map_err(|e| format!("Redis at {url} does not answer: {e}"))?;
        let (records_tx, records_rx) = mpsc::unbounded_channel();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let fleet = Fleet {
            conns,
            keys: keys::Keys::new(&cfg.fleet.key_prefix),
            node_id: node_id.to_string(),
            token: cfg.server.api_token.clone(),
            cfg: cfg.fleet.clone(),
            url: OnceLock::new(),
            heartbeat: Mutex::new(None),
            records_rx: Mutex::new(Some(records_rx)),
            records_tx: records_tx.clone(),
            degraded: Mutex::new(None),
            flush_tx,
            flush_rx: Mutex::new(Some(flush_rx)),
            log,
        };
        Ok((Arc::new(fleet), records_tx))
    }

    /// Why the fleet's Redis is not usable now, None while it answers.
    pub fn degraded(&self) -> Option<String> {
        self.degraded.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn set_degraded(&self, why: Option<String>) {
        if let Ok(mut g) = self.degraded.lock() {
            *g = why;
        }
        crate::metrics::METRICS
            .fleet_degraded
            .set(if self.degraded().is_some() { 1.0 } else { 0.0 });
    }

    /// The URL other nodes reach this one at (empty before `join`).
    pub fn url(&self) -> &str {
        self.url.get().map(String::as_str).unwrap_or("")
    }

    /// Places a new egress on the best node of the fleet (see `placement`).
    pub async fn place(&self, node: &Node, req: EgressRequest) -> Result<Placement, FleetError> {
        self.place_egress(node, req).await
    }
}
