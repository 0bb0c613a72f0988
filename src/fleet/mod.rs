//! Fleet coordination over Redis: node registry with heartbeats, fleet-wide egress records, and
//! placement of a job on the best node. With `fleet.redis_url` empty none of this runs.
//!
//! # Layout
//! - `registry`: each node's registration (`egress:node:{id}`, heartbeat with expiry) and the
//!   set of live nodes.
//! - `records`: egress records (`egress:records`), egress ownership (`egress:owner:{id}`) and the
//!   rule that reports a dead node's unfinished egresses as aborted.
//! - `reservations`: the placement decision as one Redis script (score every live node from its
//!   published state, reserve the best).
//! - `placement`: `POST /v1/egress` fleet-wide: decide, start on the chosen node, fall back,
//!   retry a burst.
//! - `client`: node-to-node calls over the admin API.
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

pub mod client;
pub mod placement;
pub mod records;
pub mod registry;
pub mod reservations;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::Addr;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use slog::{Logger, debug, info, warn};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::actors::admission::{Admission, GetNodeState, WatchState};
use crate::config::{Config, FleetConfig};
use crate::error::ApiError;
use crate::fleet::client::{CallError, NodeStart, Target};
use crate::fleet::placement::Placement;
use crate::fleet::records::{
    CLAIM_OWNER, DISOWN, OWNER_TTL_MS, PUT_RECORD, RECORDS_KEY, owner_key,
};
use crate::fleet::registry::{
    FleetNode, LIVE_NODES, NODE_KEY_PREFIX, NODES_KEY, NodeRecord, node_key, parse_nodes,
};
use crate::model::{EgressInfo, EgressRequest, EgressStatus, is_valid_egress_id, now_ms};
use crate::node::{EndAction, Node};

/// Redis must answer a command within this (a node that cannot reach Redis leaves the fleet
/// when its registration expires).
pub(crate) const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Stop and kill forwarded to another node.
const END_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful exit waits for the last records to reach Redis.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// This node's membership in the fleet.
pub struct Fleet {
    /// One multiplexed connection, shared by every worker thread (it reconnects on its own).
    redis: ConnectionManager,
    /// For the per-worker placement connections (`placement::decide`).
    client: redis::Client,
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
    /// Asks the writer to write everything queued, then answer.
    flush_tx: mpsc::UnboundedSender<oneshot::Sender<()>>,
    flush_rx: Mutex<Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>>,
    log: Logger,
}

pub(crate) fn redis_err(e: redis::RedisError) -> ApiError {
    ApiError::Unavailable(format!("the fleet's Redis does not answer: {e}"))
}

/// Opens the connection on a thread of its own, which then does nothing but Redis I/O. The
/// connection's driver runs where it was created; on the service's arbiter it would wait behind
/// the actors (handler launches, CPU sampling), and every placement decision with it.
async fn connect_on_own_thread(
    client: redis::Client,
    cfg: ConnectionManagerConfig,
) -> Result<ConnectionManager, String> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("fleet-redis".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the Redis I/O thread: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let r = client.get_connection_manager_with_config(cfg).await;
                let failed = r.is_err();
                let _ = tx.send(r.map_err(|e| e.to_string()));
                if !failed {
                    // Lives as long as the process: the connection's driver runs here.
                    std::future::pending::<()>().await;
                }
            });
        })
        .map_err(|e| format!("cannot start the Redis I/O thread: {e}"))?;
    rx.await
        .map_err(|_| "the Redis I/O thread ended".to_string())?
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
        let client = redis::Client::open(url.as_str())
            .map_err(|e| format!("fleet.redis_url '{url}': {e}"))?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let mut redis = connect_on_own_thread(client.clone(), mcfg)
            .await
            .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut redis)
            .await
            .map_err(|e| format!("Redis at {url} does not answer: {e}"))?;
        let (records_tx, records_rx) = mpsc::unbounded_channel();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let fleet = Fleet {
            redis,
            client,
            node_id: node_id.to_string(),
            token: cfg.server.api_token.clone(),
            cfg: cfg.fleet.clone(),
            url: OnceLock::new(),
            heartbeat: Mutex::new(None),
            records_rx: Mutex::new(Some(records_rx)),
            flush_tx,
            flush_rx: Mutex::new(Some(flush_rx)),
            log,
        };
        Ok((Arc::new(fleet), records_tx))
    }

    /// The URL other nodes reach this one at (empty before `join`).
    pub fn url(&self) -> &str {
        self.url.get().map(String::as_str).unwrap_or("")
    }

    /// Registers the node under `url` and starts the heartbeat and the record writer. Call once,
    /// from the service's arbiter, when the HTTP server is bound.
    pub async fn join(
        self: &Arc<Self>,
        url: String,
        admission: Addr<Admission>,
    ) -> Result<(), String> {
        let _ = self.url.set(url);
        if let Some(rx) = self.records_rx.lock().ok().and_then(|mut g| g.take()) {
            let flush = self.flush_rx.lock().ok().and_then(|mut g| g.take());
            let me = self.clone();
            actix_rt::spawn(async move { me.write_records(rx, flush).await });
        }
        // Every change of the node's admission state is published at once (placement reads it
        // from Redis); the heartbeat refreshes it when nothing changes.
        let changed = Arc::new(Notify::new());
        admission
            .send(WatchState(changed.clone()))
            .await
            .map_err(|e| format!("admission does not answer: {e}"))?;
        self.register(&admission).await?;
        info!(self.log, "joined the fleet"; "url" => self.url(), "heartbeat_ms" => self.cfg.heartbeat_ms,
              "node_ttl_ms" => self.cfg.node_ttl_ms);
        let me = self.clone();
        let every = Duration::from_millis(self.cfg.heartbeat_ms);
        let handle = actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = changed.notified() => tick.reset(),
                }
                match me.register(&admission).await {
                    Ok(()) if failing => {
                        info!(me.log, "heartbeat works again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        warn!(me.log, "heartbeat failed: other nodes will see this node as dead"; "error" => e);
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        });
        if let Ok(mut g) = self.heartbeat.lock() {
            *g = Some(handle);
        }
        Ok(())
    }

    /// One heartbeat: this node's state under its key, with expiry, and its id in the set.
    async fn register(&self, admission: &Addr<Admission>) -> Result<(), String> {
        let state = admission
            .send(GetNodeState)
            .await
            .map_err(|e| format!("admission does not answer: {e}"))?;
        let record = serde_json::json!({
            "node_id": &self.node_id, "url": self.url(), "state": state, "updated_at_ms": now_ms(),
        });
        let mut con = self.redis.clone();
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(node_key(&self.node_id))
            .arg(record.to_string())
            .arg("PX")
            .arg(self.cfg.node_ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(NODES_KEY)
            .arg(&self.node_id)
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| e.to_string())
    }

    /// Graceful exit: no more heartbeats, the last records written, the registration removed.
    pub async fn leave(&self) {
        if let Some(h) = self.heartbeat.lock().ok().and_then(|mut g| g.take()) {
            h.abort();
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.flush_tx.send(ack_tx).is_ok()
            && tokio::time::timeout(FLUSH_TIMEOUT, ack_rx).await.is_err()
        {
            warn!(
                self.log,
                "the last egress records did not reach Redis in time"
            );
        }
        let mut con = self.redis.clone();
        let res = redis::pipe()
            .cmd("DEL")
            .arg(node_key(&self.node_id))
            .ignore()
            .cmd("SREM")
            .arg(NODES_KEY)
            .arg(&self.node_id)
            .ignore()
            .query_async::<()>(&mut con)
            .await;
        match res {
            Ok(()) => info!(self.log, "left the fleet"),
            Err(e) => {
                warn!(self.log, "cannot remove this node's registration (it expires on its own)"; "error" => %e)
            }
        }
    }

    /// Mirrors every record change to Redis, in order.
    async fn write_records(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<EgressInfo>,
        mut flush: Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>,
    ) {
        loop {
            tokio::select! {
                biased;
                info = rx.recv() => match info {
                    Some(info) => self.put_record_retrying(&info).await,
                    None => return,
                },
                ack = async { match flush.as_mut() { Some(f) => f.recv().await, None => std::future::pending().await } } => {
                    match ack {
                        Some(ack) => {
                            while let Ok(info) = rx.try_recv() {
                                self.put_record_retrying(&info).await;
                            }
                            let _ = ack.send(());
                        }
                        None => flush = None,
                    }
                }
            }
        }
    }

    async fn put_record_retrying(&self, info: &EgressInfo) {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=4 {
            match self.put_record(info, "mirror").await {
                Ok(_) => return,
                Err(e) if attempt == 4 => {
                    warn!(self.log, "cannot mirror an egress record to Redis"; "egress_id" => &info.egress_id,
                          "status" => info.status.as_str(), "error" => %e);
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// Writes this node's record of an egress it owns (see `records::PUT_RECORD` for `mode`).
    async fn put_record(&self, info: &EgressInfo, mode: &str) -> Result<bool, redis::RedisError> {
        let json = serde_json::to_string(info).unwrap_or_default();
        let mut con = self.redis.clone();
        let written: i64 = PUT_RECORD
            .key(RECORDS_KEY)
            .key(owner_key(&info.egress_id))
            .arg(&info.egress_id)
            .arg(&self.node_id)
            .arg(json)
            .arg(mode)
            .invoke_async(&mut con)
            .await?;
        Ok(written == 1)
    }

    /// Every live node's registration, sorted by node id.
    pub async fn live_nodes(&self) -> Result<Vec<NodeRecord>, ApiError> {
        let mut con = self.redis.clone();
        let raw: Vec<String> = LIVE_NODES
            .key(NODES_KEY)
            .arg(NODE_KEY_PREFIX)
            .invoke_async(&mut con)
            .await
            .map_err(redis_err)?;
        let (nodes, bad) = parse_nodes(raw);
        for b in bad {
            warn!(self.log, "unreadable node registration"; "problem" => b);
        }
        Ok(nodes)
    }

    /// `GET /v1/fleet/nodes`.
    pub async fn nodes(&self) -> Result<Vec<FleetNode>, ApiError> {
        Ok(self
            .live_nodes()
            .await?
            .into_iter()
            .map(FleetNode::from)
            .collect())
    }

    /// Places a new egress on the best node of the fleet (see `placement`).
    pub async fn place(&self, node: &Node, req: EgressRequest) -> Result<Placement, ApiError> {
        self.place_egress(node, req).await
    }

    /// `POST /v1/node/egress`: starts a placed egress on this node, once it owns the id.
    pub async fn start_owned(&self, node: &Node, start: NodeStart) -> Result<EgressInfo, ApiError> {
        let id = start.egress_id;
        if !is_valid_egress_id(&id) {
            return Err(ApiError::BadQuery(format!("'{id}' is not an egress id")));
        }
        if node.get(&id).await?.is_some() {
            return Err(ApiError::AlreadyPlaced {
                egress_id: id,
                owner: self.node_id.clone(),
            });
        }
        let mut con = self.redis.clone();
        let owner: String = CLAIM_OWNER
            .key(owner_key(&id))
            .arg(&self.node_id)
            .arg(OWNER_TTL_MS)
            .arg(NODE_KEY_PREFIX)
            .invoke_async(&mut con)
            .await
            .map_err(redis_err)?;
        if owner != self.node_id {
            debug!(self.log, "egress owned elsewhere"; "egress_id" => &id, "owner" => &owner);
            return Err(ApiError::AlreadyPlaced {
                egress_id: id,
                owner,
            });
        }
        match node
            .start(start.request, Some(id.clone()), start.claim_id)
            .await
        {
            Ok(info) => {
                // Readable fleet-wide before the placer answers (the mirror follows at once).
                if let Err(e) = self.put_record(&info, "start").await {
                    warn!(self.log, "cannot write the new egress record"; "egress_id" => &id, "error" => %e);
                }
                Ok(info)
            }
            Err(e) => {
                // "exists already" means it runs here: keep the id. Otherwise give it back, so a
                // retry on another node can take it.
                if !matches!(e, ApiError::Conflict(_)) {
                    let r: Result<i64, _> = DISOWN
                        .key(owner_key(&id))
                        .arg(&self.node_id)
                        .invoke_async(&mut con)
                        .await;
                    if let Err(de) = r {
                        warn!(self.log, "cannot give an egress id back (it stays blocked until this node dies)";
                              "egress_id" => &id, "error" => %de);
                    }
                }
                Err(e)
            }
        }
    }

    /// The record, whether its owner lives, and the owner key: what `resolve_owner` decides on.
    async fn ownership(
        &self,
        egress_id: &str,
    ) -> Result<(Option<EgressInfo>, Option<String>, bool), ApiError> {
        let mut con = self.redis.clone();
        let (record, owner): (Option<String>, Option<String>) = redis::pipe()
            .cmd("HGET")
            .arg(RECORDS_KEY)
            .arg(egress_id)
            .cmd("GET")
            .arg(owner_key(egress_id))
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        let live = match &owner {
            Some(o) if o == &self.node_id => true,
            Some(o) => {
                redis::cmd("EXISTS")
                    .arg(node_key(o))
                    .query_async::<i64>(&mut con)
                    .await
                    .map_err(redis_err)?
                    == 1
            }
            None => false,
        };
        let record = record.and_then(|r| serde_json::from_str::<EgressInfo>(&r).ok());
        Ok((record, owner, live))
    }

    /// `GET /v1/egress` fleet-wide: stored records with the dead-node rule, this node's own
    /// records as they are now.
    pub async fn list(
        &self,
        node: &Node,
        statuses: Option<Vec<EgressStatus>>,
    ) -> Result<Vec<EgressInfo>, ApiError> {
        let mut con = self.redis.clone();
        let stored: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(RECORDS_KEY)
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        let mut live: HashSet<String> = self
            .live_nodes()
            .await?
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        live.insert(self.node_id.clone());
        let local = node.list(None).await?;
        let (list, bad) = records::merge(stored, local, &live, statuses.as_deref());
        for b in bad {
            warn!(self.log, "unreadable egress record in Redis"; "problem" => b);
        }
        Ok(list)
    }

    /// One egress from the fleet's records (the caller looked on this node first).
    pub async fn get(&self, id: &str) -> Result<Option<EgressInfo>, ApiError> {
        let (record, _, _) = self.ownership(id).await?;
        let Some(info) = record else { return Ok(None) };
        let live = if info.node_id == self.node_id {
            true
        } else {
            let mut con = self.redis.clone();
            redis::cmd("EXISTS")
                .arg(node_key(&info.node_id))
                .query_async::<i64>(&mut con)
                .await
                .map_err(redis_err)?
                == 1
        };
        let live_set: HashSet<String> = if live {
            [info.node_id.clone()].into()
        } else {
            HashSet::new()
        };
        Ok(Some(records::as_seen(info, &live_set)))
    }

    /// Stop or kill forwarded to the node that runs the egress. None when no other node has it.
    pub async fn end_remote(
        &self,
        id: &str,
        action: EndAction,
    ) -> Result<Option<EgressInfo>, ApiError> {
        let (record, owner, _) = self.ownership(id).await?;
        let Some(node) = record.as_ref().map(|r| r.node_id.clone()).or(owner) else {
            return Ok(None);
        };
        if node == self.node_id {
            return Ok(None);
        }
        let mut con = self.redis.clone();
        let reg: Option<String> = redis::cmd("GET")
            .arg(node_key(&node))
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        let Some(reg) = reg.and_then(|r| serde_json::from_str::<NodeRecord>(&r).ok()) else {
            return Err(ApiError::Conflict(format!(
                "egress {id} ran on node {node}, which is no longer live: it ended (aborted, \"Node lost\")"
            )));
        };
        let action_name = action.as_str();
        match client::end(
            Target {
                url: &reg.url,
                token: &self.token,
            },
            id,
            action_name,
            END_TIMEOUT,
        )
        .await
        {
            Ok(info) => Ok(Some(info)),
            Err(CallError::Remote(r)) if r.status == 404 => Ok(None),
            Err(CallError::Remote(r)) if r.status == 409 => Err(ApiError::Conflict(r.message)),
            Err(CallError::Remote(r)) => Err(ApiError::Unavailable(format!(
                "node {node} that runs egress {id} answered {} {}: {}",
                r.status, r.code, r.message
            ))),
            Err(e) => Err(ApiError::Unavailable(format!(
                "cannot reach node {node} ({}) that runs egress {id} to {action_name} it: {e}",
                reg.url
            ))),
        }
    }
}
