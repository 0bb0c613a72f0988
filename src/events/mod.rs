//! Live events: every change of an egress record and of the node's state, as one ordered stream
//! that the SSE route (`GET /v1/events`), the webhook senders and (in a fleet) the Redis relay
//! read.
//!
//! ```text
//!   Supervisor::put ──egress_changed──┐
//!   node watcher (1/s, on change) ─────┤                 ┌──► broadcast ──► SSE streams (api/events.rs)
//!                                      ├──► Events hub ──┼──► ring buffer (Last-Event-ID replay)
//!   fleet relay (other nodes, Redis) ──┘   (ids, order)  ├──► webhook senders (local events only)
//!                                                        └──► fleet relay ──PUBLISH──► {p}events
//! ```
//!
//! **Ids.** The hub numbers events in the order it takes them; the numbers start at the start
//! time in microseconds, so they grow across restarts and an id from an earlier run (or from
//! another node) is recognised as one this hub cannot replay. Each event also keeps the id its own
//! node gave it (`{node_id}-{n}`), the same on every node of a fleet: the webhook idempotence key.
//!
//! The hub is a plain struct behind a mutex (every caller only appends or copies), not an actor:
//! the Supervisor calls it inside `put` without waiting for anyone.

pub mod queue;
pub mod sse;
pub mod webhooks;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::EventsConfig;
use crate::model::{EgressInfo, now_ms};
use crate::rules::admission::NodeState;

pub use crate::model::EventKind;

/// One event as the hub keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// This hub's number for it: the SSE `id`.
    pub id: u64,
    pub kind: EventKind,
    /// The node it happened on.
    pub node_id: String,
    /// `{node_id}-{n}`: the id its node gave it, the same everywhere (webhook idempotence key).
    pub origin_id: String,
    /// The egress it is about (None for node events): webhooks keep each egress's events in order.
    pub egress_id: Option<String>,
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
    /// The EgressInfo (or NodeState) as JSON, on one line.
    pub data: Arc<str>,
}

impl Event {
    /// The event as one JSON object: the webhook body and the fleet's pub/sub message.
    /// `{"id", "event", "node_id", "egress_id"?, "at_ms", "data": {...}}`.
    pub fn wire(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
        let egress = self
            .egress_id
            .as_deref()
            .map(|e| format!(",\"egress_id\":{}", s(e)))
            .unwrap_or_default();
        format!(
            "{{\"id\":{},\"event\":\"{}\",\"node_id\":{}{egress},\"at_ms\":{},\"data\":{}}}",
            s(&self.origin_id),
            self.kind.as_str(),
            s(&self.node_id),
            self.at_ms,
            self.data
        )
    }

    /// Reads `wire()` back (an event of another node, from Redis); `id` is left 0 for the hub.
    pub fn from_wire(text: &str) -> Option<Event> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(Event {
            id: 0,
            kind: EventKind::parse(v["event"].as_str()?)?,
            node_id: v["node_id"].as_str()?.to_string(),
            origin_id: v["id"].as_str()?.to_string(),
            egress_id: v["egress_id"].as_str().map(str::to_string),
            at_ms: v["at_ms"].as_u64()?,
            data: v.get("data").filter(|d| d.is_object())?.to_string().into(),
        })
    }
}

/// What a new stream gets: the events it missed, and whether some were lost on the way.
#[derive(Debug)]
pub struct Replay {
    pub events: Vec<Arc<Event>>,
    /// Set when the asked-for id is older than the buffer, or unknown to this hub (another run,
    /// another node): `events` then holds what the buffer has.
    pub lost: Option<Lost>,
}

/// The marker a stream sends when it cannot replay everything since an id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lost {
    /// The id the client gave.
    pub last_event_id: String,
    /// The oldest id the buffer still had (None when it was empty).
    pub oldest_id: Option<u64>,
    /// `too_old` (the buffer moved past it) or `unknown` (not an id of this run of this node).
    pub reason: &'static str,
}

/// What the webhook senders are asked to do (see `webhooks`).
pub enum WebhookCmd {
    Deliver(Arc<Event>),
    /// Answer once every event sent before is on disk.
    Flush(oneshot::Sender<()>),
}

/// A handle on the hub: cheap to clone, shared by the Supervisor, the HTTP workers, the node
/// watcher, the fleet relay.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

/// One open event stream (`Events::client_slot`): the count goes down when it is dropped.
pub struct ClientSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Inner {
    node_id: String,
    ring: Mutex<Ring>,
    /// Every event as it is taken (SSE streams subscribe).
    live: broadcast::Sender<Arc<Event>>,
    /// One per webhook receiver; local events of the kinds in `webhooks.events` only.
    webhooks: Mutex<Vec<(mpsc::UnboundedSender<WebhookCmd>, Vec<EventKind>)>>,
    /// Fleet: this node's events, to be published for the other nodes.
    relay: Mutex<Option<mpsc::UnboundedSender<Arc<Event>>>>,
    /// Set at shutdown: every stream ends (the HTTP server stops without waiting for them).
    closed: watch::Sender<bool>,
    /// Event streams open now, and how many may be (`events.max_clients`).
    clients: Arc<std::sync::atomic::AtomicUsize>,
    max_clients: usize,
    /// `events.keepalive_ms`.
    keepalive: Duration,
}

/// The replay buffer and the numbering.
struct Ring {
    next_id: u64,
    buffer: VecDeque<Arc<Event>>,
    capacity: usize,
}

impl Ring {
    /// Events after `after`, or what the buffer has plus why not all (see `Replay`).
    fn since(&self, after: Option<&str>) -> Replay {
        let Some(raw) = after else {
            return Replay {
                events: Vec::new(),
                lost: None,
            };
        };
        let newest = self.next_id - 1;
        let oldest = self.buffer.front().map(|e| e.id);
        let lost = |reason| {
            Some(Lost {
                last_event_id: raw.to_string(),
                oldest_id: oldest,
                reason,
            })
        };
        match raw.trim().parse::<u64>() {
            // An id this hub never gave (a later one, or not a number).
            Ok(id) if id > newest => Replay {
                events: self.buffer.iter().cloned().collect(),
                lost: lost("unknown"),
            },
            Err(_) => Replay {
                events: self.buffer.iter().cloned().collect(),
                lost: lost("unknown"),
            },
            Ok(id) => {
                let events: Vec<Arc<Event>> =
                    self.buffer.iter().filter(|e| e.id > id).cloned().collect();
                // Everything after `id` is here when the buffer reaches back to `id + 1`, or
                // nothing was numbered after it.
                let complete = id == newest || oldest.is_some_and(|o| o <= id + 1);
                Replay {
                    events,
                    lost: if complete { None } else { lost("too_old") },
                }
            }
        }
    }
}

impl Events {
    pub fn new(cfg: &EventsConfig, node_id: String) -> Events {
        // A stream that falls further behind than this catches up from the buffer (`since`).
        let (live, _) = broadcast::channel(cfg.buffer.clamp(16, 4096));
        let (closed, _) = watch::channel(false);
        Events {
            inner: Arc::new(Inner {
                node_id,
                ring: Mutex::new(Ring {
                    next_id: now_ms().saturating_mul(1000).max(1),
                    buffer: VecDeque::with_capacity(cfg.buffer.min(4096)),
                    capacity: cfg.buffer,
                }),
                live,
                webhooks: Mutex::new(Vec::new()),
                relay: Mutex::new(None),
                closed,
                clients: Arc::default(),
                max_clients: cfg.max_clients,
                keepalive: Duration::from_millis(cfg.keepalive_ms),
            }),
        }
    }

    /// A place for one more event stream, held until the stream ends; None when
    /// `events.max_clients` are open.
    pub fn client_slot(&self) -> Option<ClientSlot> {
        use std::sync::atomic::Ordering;
        let c = &self.inner.clients;
        c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < self.inner.max_clients).then_some(n + 1)
        })
        .ok()
        .map(|_| ClientSlot(c.clone()))
    }

    pub fn max_clients(&self) -> usize {
        self.inner.max_clients
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn keepalive(&self) -> Duration {
        self.inner.keepalive
    }

    /// Sends local events of `kinds` to a webhook sender from now on.
    pub fn add_webhook(&self, tx: mpsc::UnboundedSender<WebhookCmd>, kinds: Vec<EventKind>) {
        if let Ok(mut w) = self.inner.webhooks.lock() {
            w.push((tx, kinds));
        }
    }

    /// Fleet: sends every local event to `tx` (the Redis publisher) from now on.
    pub fn set_relay(&self, tx: mpsc::UnboundedSender<Arc<Event>>) {
        if let Ok(mut r) = self.inner.relay.lock() {
            *r = Some(tx);
        }
    }

    /// The hook of the Supervisor: a record was stored. `old` is the version before (None for a
    /// new egress); a store that changes nothing is no event.
    pub fn egress_changed(&self, old: Option<&EgressInfo>, new: &EgressInfo) {
        if old == Some(new) {
            return;
        }
        let kind = match old {
            None => EventKind::EgressStarted,
            Some(_) if new.status.is_final() => EventKind::EgressEnded,
            Some(_) => EventKind::EgressUpdated,
        };
        let Ok(data) = serde_json::to_string(new) else {
            return;
        };
        self.take_local(kind, Some(new.egress_id.clone()), data);
    }

    /// The node's state as `GET /v1/node` shows it (serialized by the caller).
    pub fn node_changed(&self, state_json: String) {
        self.take_local(EventKind::NodeUpdated, None, state_json);
    }

    fn take_local(&self, kind: EventKind, egress_id: Option<String>, data: String) {
        let ev = Event {
            id: 0,
            kind,
            node_id: self.inner.node_id.clone(),
            origin_id: String::new(),
            egress_id,
            at_ms: now_ms(),
            data: data.into(),
        };
        self.take(ev, true);
    }

    /// An event of another node of the fleet (from the relay): streamed, never sent to webhooks
    /// (its own node sends those).
    pub fn take_remote(&self, ev: Event) {
        if ev.node_id == self.inner.node_id {
            return;
        }
        self.take(ev, false);
    }

    /// Numbers the event, keeps it in the buffer and hands it on (streams; for a `local` event
    /// also the webhook senders and the fleet relay), all under the lock, so everyone sees events
    /// in id order and a new stream's replay and live part never overlap or leave a gap.
    fn take(&self, mut ev: Event, local: bool) {
        let mut ring = self.inner.ring.lock().unwrap_or_else(|p| p.into_inner());
        ev.id = ring.next_id;
        ring.next_id += 1;
        if local {
            ev.origin_id = format!("{}-{}", self.inner.node_id, ev.id);
        }
        let ev = Arc::new(ev);
        if ring.capacity > 0 {
            if ring.buffer.len() >= ring.capacity {
                ring.buffer.pop_front();
            }
            ring.buffer.push_back(ev.clone());
        }
        let _ = self.inner.live.send(ev.clone());
        if !local {
            return;
        }
        if let Ok(hooks) = self.inner.webhooks.lock() {
            for (tx, kinds) in hooks.iter() {
                if kinds.contains(&ev.kind) {
                    let _ = tx.send(WebhookCmd::Deliver(ev.clone()));
                }
            }
        }
        if let Ok(r) = self.inner.relay.lock()
            && let Some(tx) = r.as_ref()
        {
            let _ = tx.send(ev);
        }
    }

    /// A new stream: what it missed since `last_event_id`, the live events from now on, and the
    /// newest id so far (the live ones come after it).
    pub fn subscribe(
        &self,
        last_event_id: Option<&str>,
    ) -> (Replay, broadcast::Receiver<Arc<Event>>, u64) {
        let ring = self.inner.ring.lock().unwrap_or_else(|p| p.into_inner());
        (
            ring.since(last_event_id),
            self.inner.live.subscribe(),
            ring.next_id - 1,
        )
    }

    /// What a stream that fell behind the broadcast missed after the last id it sent.
    pub fn since(&self, after: u64) -> Replay {
        let ring = self.inner.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.since(Some(&after.to_string()))
    }

    /// Resolves once the service shuts down.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.inner.closed.subscribe()
    }

    /// Ends every stream (the service is shutting down).
    pub fn close(&self) {
        let _ = self.inner.closed.send(true);
    }

    /// Waits (at most `timeout`) until every event taken so far is in the webhook queues on disk.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let waits: Vec<oneshot::Receiver<()>> = match self.inner.webhooks.lock() {
            Ok(hooks) => hooks
                .iter()
                .filter_map(|(tx, _)| {
                    let (ack, rx) = oneshot::channel();
                    tx.send(WebhookCmd::Flush(ack)).ok().map(|()| rx)
                })
                .collect(),
            Err(_) => return false,
        };
        tokio::time::timeout(timeout, async {
            for w in waits {
                let _ = w.await;
            }
        })
        .await
        .is_ok()
    }
}

/// Load moves of less than this (a fraction of the node) since the last `node_updated` are
/// jitter: an idle node's load wanders by a few percent from second to second.
pub const LOAD_STEP: f64 = 0.05;
/// Free CPU moves of less than this (cores) since the last `node_updated` are jitter.
pub const CPU_STEP: f64 = 0.1;

/// What of a node's state a reader acts on, exactly: counts, limits, costs, claims, draining,
/// capacity, the egresses.
fn discrete(s: &NodeState) -> String {
    let cores = |x: f64| (x * 100.0).round() as i64;
    let types: Vec<String> = s
        .types
        .iter()
        .map(|(t, v)| {
            format!(
                "{t}:{}:{}:{}:{}",
                v.active,
                v.limit,
                cores(v.cost),
                v.pending_claims
            )
        })
        .collect();
    format!(
        "{}|{}|{}|{}|{}",
        cores(s.capacity_cores),
        cores(s.budget_cores),
        s.draining,
        types.join(","),
        s.egress_ids.join(",")
    )
}

/// Whether `now` is worth a `node_updated` after `sent` (the last one sent): anything discrete
/// changed, or load or free CPU moved by a step (`LOAD_STEP`, `CPU_STEP`) from what was sent,
/// so an idle node is quiet and a slow drift is still reported once it adds up.
pub fn worth_sending(sent: Option<&NodeState>, now: &NodeState) -> bool {
    let Some(sent) = sent else {
        return true;
    };
    discrete(sent) != discrete(now)
        || (sent.load - now.load).abs() >= LOAD_STEP
        || (sent.available_cpu - now.available_cpu).abs() >= CPU_STEP
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EgressStatus, sample_info};

    #[test]
    fn event_streams_take_a_slot_each_up_to_max_clients() {
        let e = Events::new(
            &EventsConfig {
                max_clients: 2,
                ..EventsConfig::default()
            },
            "ND_a".into(),
        );
        let a = e.client_slot().expect("first");
        let _b = e.client_slot().expect("second");
        assert!(e.client_slot().is_none(), "a third over max_clients");
        drop(a);
        assert!(
            e.client_slot().is_some(),
            "a slot comes back when its stream ends"
        );
    }

    fn hub(buffer: usize) -> Events {
        Events::new(
            &EventsConfig {
                buffer,
                ..EventsConfig::default()
            },
            "ND_a".into(),
        )
    }

    fn ids(r: &Replay) -> Vec<u64> {
        r.events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn kinds_follow_the_record_and_no_change_is_no_event() {
        let h = hub(10);
        let (_, mut rx, _) = h.subscribe(None);
        let mut i = sample_info("EG_aaaaaaaaaaaa", "ND_a", EgressStatus::Starting, 1);
        h.egress_changed(None, &i);
        h.egress_changed(Some(&i.clone()), &i);
        let old = i.clone();
        i.status = EgressStatus::Active;
        h.egress_changed(Some(&old), &i);
        let old = i.clone();
        i.status = EgressStatus::Complete;
        h.egress_changed(Some(&old), &i);
        let got: Vec<&str> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.kind.as_str())
            .collect();
        assert_eq!(got, ["egress_started", "egress_updated", "egress_ended"]);
    }

    #[test]
    fn node_events_ignore_jitter_and_report_what_adds_up() {
        let cfg = crate::config::Config::default();
        let ledger = crate::rules::admission::Ledger::new(
            "ND_a".into(),
            4.0,
            &cfg.cpu,
            &cfg.cpu_cost,
            &cfg.limits,
            1000,
        );
        let s = ledger.state(0);
        assert!(worth_sending(None, &s));
        let mut t = s.clone();
        // An idle node's seconds: a few percent either way, a few hundredths of a core.
        for (load, cpu) in [(0.02, 0.03), (-0.03, -0.05), (0.04, 0.08)] {
            t.load = s.load + load;
            t.available_cpu = s.available_cpu + cpu;
            assert!(!worth_sending(Some(&s), &t), "{load} {cpu}");
        }
        // A drift that adds up, from what was sent.
        t.load = s.load + 0.06;
        assert!(worth_sending(Some(&s), &t));
        t.load = s.load;
        t.available_cpu = s.available_cpu - 0.15;
        assert!(worth_sending(Some(&s), &t));
        let mut u = s.clone();
        u.draining = !u.draining;
        assert!(worth_sending(Some(&s), &u));
    }

    #[test]
    fn replay_gives_what_was_missed_or_says_what_was_lost() {
        let h = hub(3);
        for _ in 0..5 {
            h.node_changed("{}".into());
        }
        let (all, _, _) = h.subscribe(None);
        assert!(all.events.is_empty() && all.lost.is_none());
        let first = h.since(0).events[0].id; // the 3rd event; 2 fell out
        let r = h.since(first);
        assert_eq!(ids(&r), [first + 1, first + 2]);
        assert!(r.lost.is_none());
        // The newest id: nothing missed.
        let r = h.since(first + 2);
        assert!(r.events.is_empty() && r.lost.is_none());
        // Just before the oldest kept: complete.
        assert!(h.since(first - 1).lost.is_none());
        // Older: the buffer, and a marker.
        let r = h.since(first - 2);
        assert_eq!(ids(&r), [first, first + 1, first + 2]);
        assert_eq!(r.lost.as_ref().map(|l| l.reason), Some("too_old"));
        // Ids this hub never gave.
        for bad in [(first + 99).to_string(), "x".to_string()] {
            let (r, _, _) = h.subscribe(Some(&bad));
            assert_eq!(r.lost.map(|l| l.reason), Some("unknown"), "{bad}");
            assert_eq!(r.events.len(), 3);
        }
    }

    #[test]
    fn remote_events_are_renumbered_and_own_echoes_dropped() {
        let h = hub(10);
        let mut i = sample_info("EG_aaaaaaaaaaaa", "ND_b", EgressStatus::Active, 1);
        let other = hub(10);
        let (_, mut rx, _) = other.subscribe(None);
        other.egress_changed(None, &i);
        let sent = rx.try_recv().unwrap();
        let mut back = Event::from_wire(&sent.wire()).unwrap();
        assert_eq!(back.origin_id, sent.origin_id);
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(json(&back.data), json(&sent.data));
        back.node_id = "ND_b".into();
        h.take_remote(back.clone());
        back.node_id = "ND_a".into();
        h.take_remote(back);
        let r = h.since(0);
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].node_id, "ND_b");
        i.status = EgressStatus::Complete;
        let v: serde_json::Value = serde_json::from_str(&sent.wire()).unwrap();
        assert_eq!(v["event"], "egress_started");
        assert_eq!(v["egress_id"], "EG_aaaaaaaaaaaa");
        assert_eq!(v["data"]["status"], "active");
    }
}
