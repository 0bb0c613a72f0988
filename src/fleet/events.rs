//! The fleet's live events: each node PUBLISHes its own events on `{p}events`, and SUBSCRIBEs to
//! it to stream every other node's (its own echoes are dropped by the hub).
//!
//! ```text
//!   Events hub ──local events (channel)──► publisher task ──PUBLISH {p}events──► Redis
//!   Redis ──{p}events messages──► subscriber (own thread) ──take_remote──► Events hub ──► SSE
//! ```
//!
//! Pub/sub is fire-and-forget: while the fleet's Redis is away (degraded) other nodes' streams
//! miss this node's events (their records still reach Redis through the record writer, and a
//! dashboard re-reads the list on `events_lost`). Webhooks do not depend on it: each node sends
//! its own events from its own queue.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use slog::{debug, info, warn};
use tokio::sync::mpsc;

use crate::events::{Event, Events};
use crate::fleet::Fleet;

/// Events waiting for PUBLISH beyond this are dropped (Redis is slow or away).
const MAX_BACKLOG: usize = 10_000;
/// The wait before subscribing again after the subscription broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

impl Fleet {
    /// Publishes this node's events and streams the other nodes' into `events`. Call once.
    pub fn relay_events(self: &Arc<Self>, events: Events) -> Result<(), String> {
        let (tx, rx) = mpsc::unbounded_channel();
        events.set_relay(tx);
        let me = self.clone();
        actix_rt::spawn(async move { me.publish_events(rx).await });
        let me = self.clone();
        // The subscription's connection is driven where it is polled: a thread of its own keeps
        // it off the actors' arbiter.
        std::thread::Builder::new()
            .name("fleet-events".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(me.subscribe_events(events)),
                    Err(e) => warn!(me.log, "cannot start the fleet events thread"; "error" => %e),
                }
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start the fleet events thread: {e}"))
    }

    async fn publish_events(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Arc<Event>>) {
        let channel = self.keys.events();
        while let Some(ev) = rx.recv().await {
            if self.degraded().is_some() || rx.len() > MAX_BACKLOG {
                continue;
            }
            let mut con = self.conns.con();
            let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(ev.wire())
                .query_async(&mut con)
                .await;
            if let Err(e) = r {
                debug!(self.log, "cannot publish an event to the fleet"; "error" => %e);
            }
        }
    }

    async fn subscribe_events(self: Arc<Self>, events: Events) {
        let channel = self.keys.events();
        let closed = events.closed();
        let mut failing = false;
        while !*closed.borrow() {
            let client = self.conns.client();
            let subscribed = async {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            }
            .await;
            match subscribed {
                Ok(mut ps) => {
                    if failing {
                        info!(self.log, "subscribed to the fleet's events again");
                    }
                    failing = false;
                    let mut messages = ps.on_message();
                    while let Some(msg) = messages.next().await {
                        if let Some(ev) = msg
                            .get_payload::<String>()
                            .ok()
                            .and_then(|t| Event::from_wire(&t))
                        {
                            events.take_remote(ev);
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(self.log, "cannot subscribe to the fleet's events: retrying"; "error" => %e);
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }
}
