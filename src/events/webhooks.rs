//! Webhooks: this node's events POSTed to every `webhooks.urls` receiver, signed, at least once,
//! in order per egress.
//!
//! ```text
//!   Events hub ──WebhookCmd::Deliver──► sender task (one per receiver, on the service's arbiter)
//!                                         │ 1. queue file written (fsync, spawn_blocking)
//!                                         │ 2. lanes: one FIFO per egress (node events: one more)
//!                                         │ 3. each lane's head POSTed; the next waits for its 2xx
//!                                         ▼
//!   POST url  content-type: application/json        body = Event::wire()
//!             x-egress-event-id: ND_x-1764...       the same on every retry (idempotence key)
//!             x-egress-event: egress_ended
//!             x-egress-signature: sha256=<hex HMAC-SHA256(signing_key, body)>
//!             x-egress-delivery-attempt: 3
//!             webhook-id: ND_x-1764...              Standard Webhooks (standardwebhooks.com):
//!             webhook-timestamp: 1764921600         the same id, this attempt's time,
//!             webhook-signature: v1,<base64 HMAC-SHA256(key, id.timestamp.body)>
//! ```
//!
//! A failure (no connection, a timeout, any status but 2xx) retries that lane's head after a
//! backoff doubling from `webhooks.backoff_initial_ms` to `webhooks.backoff_max_ms` (with
//! jitter), while other egresses' lanes go on. A 2xx removes the queue file. Events queued when the
//! service stops are sent by the next run. A queue over `webhooks.max_queue` drops its oldest
//! events (counted as failures, reason `dropped`) rather than fill the disk.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use slog::{Logger, info, warn};
use tokio::sync::mpsc;

use crate::config::{WebhooksConfig, key_bytes, read_ca_file};
use crate::events::queue::{Queue, Queued};
use crate::events::{EventKind, Events, WebhookCmd};
use crate::metrics::METRICS;

/// Requests in flight per receiver at most (one per lane).
const MAX_IN_FLIGHT: usize = 8;
/// How much of a receiver's answer is read (and dropped) so its connection can be reused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The Standard Webhooks signature header: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` (what `standardwebhooks`' `Webhook(secret).verify` checks).
pub fn standard_signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// The TLS config of the webhook client: the system's roots and `ca_file`'s.
fn tls_config(ca_file: &str, log: &Logger) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        warn!(log, "a system CA certificate could not be read"; "error" => %e);
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if !ca_file.is_empty() {
        for c in read_ca_file(std::path::Path::new(ca_file))? {
            roots
                .add(c)
                .map_err(|e| format!("webhooks.ca_file {ca_file}: {e}"))?;
        }
    }
    if roots.is_empty() {
        warn!(log, "no CA certificate for https receivers: install ca-certificates or set webhooks.ca_file"; "system" => added);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // awc speaks HTTP/1.1 to receivers.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `key`: the `x-egress-signature` value.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: this never fails.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Opens every receiver's queue (reading what an earlier run left) and starts its sender.
/// Runs at start-up, on the service's arbiter, before the HTTP server: the queue reads are the
/// only blocking work, once.
pub fn start(
    cfg: &WebhooksConfig,
    state_dir: &std::path::Path,
    events: &Events,
    log: &Logger,
) -> Result<(), String> {
    let kinds: Vec<EventKind> = cfg.events.clone();
    warn_about_orphan_queues(cfg, state_dir, log);
    let tls = if cfg.urls.is_empty() {
        None
    } else {
        Some(Arc::new(tls_config(&cfg.ca_file, log)?))
    };
    for url in &cfg.urls {
        let queue = Queue::open(state_dir, url)
            .map_err(|e| format!("webhook queue for {url} in {}: {e}", state_dir.display()))?;
        let (pending, problems) = queue.load();
        for p in problems {
            warn!(log, "unreadable webhook queue entry"; "problem" => p);
        }
        let log = log.new(slog::o!("webhook" => crate::model::redact::url(url)));
        if !pending.is_empty() {
            info!(log, "webhook events left by an earlier run are sent again"; "queued" => pending.len());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sender = Sender {
            url: url.clone().into(),
            key: key_bytes(&cfg.signing_key).into(),
            queue,
            client: awc::Client::builder()
                .connector({
                    let c = awc::Connector::new().timeout(Duration::from_millis(cfg.timeout_ms));
                    match &tls {
                        Some(t) => c.rustls_0_23(t.clone()),
                        None => c,
                    }
                })
                .timeout(Duration::from_millis(cfg.timeout_ms))
                .disable_redirects()
                .finish(),
            lanes: BTreeMap::new(),
            queued: 0,
            backoff_initial: Duration::from_millis(cfg.backoff_initial_ms),
            backoff_max: Duration::from_millis(cfg.backoff_max_ms),
            max_queue: cfg.max_queue,
            log,
        };
        for q in pending {
            sender.push(q);
        }
        actix_rt::spawn(sender.run(rx));
        events.add_webhook(tx, kinds.clone());
    }
    Ok(())
}

/// Events queued by an earlier run for a receiver no longer in `webhooks.urls` stay on disk
/// (nothing is deleted behind an operator's back): say so once at start.
fn warn_about_orphan_queues(cfg: &WebhooksConfig, state_dir: &std::path::Path, log: &Logger) {
    let known: Vec<String> = cfg
        .urls
        .iter()
        .map(|u| crate::events::queue::receiver_dir_name(u))
        .collect();
    let Ok(dirs) = std::fs::read_dir(state_dir.join("webhooks")) else {
        return;
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().to_string();
        if known.contains(&name) {
            continue;
        }
        let queued = std::fs::read_dir(d.path())
            .map(|f| {
                f.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0);
        if queued > 0 {
            let url = std::fs::read_to_string(d.path().join("url")).unwrap_or_default();
            warn!(log, "webhook events queued for a receiver that is no longer configured are kept, not sent";
                  "url" => crate::model::redact::url(&url), "queued" => queued, "dir" => %d.path().display());
        }
    }
}

/// One event waiting to be delivered.
#[derive(Debug, Clone)]
struct Item {
    seq: u64,
    body: Bytes,
    event_id: String,
    kind: String,
}

/// One egress's events (or the node's), delivered in order.
#[derive(Debug)]
struct Lane {
    items: VecDeque<Item>,
    /// Not before this (after a failure).
    due: Instant,
    /// The wait after the next failure.
    backoff: Duration,
    /// Attempts of the head so far.
    attempts: u32,
    in_flight: bool,
}

/// How an attempt went.
struct Outcome {
    lane: String,
    seq: u64,
    kind: String,
    /// Ok(status) when the receiver answered.
    result: Result<u16, &'static str>,
    /// What the client said of a failure to send (a TLS error, a refused connection).
    detail: Option<String>,
}

struct Sender {
    url: Arc<str>,
    key: Arc<[u8]>,
    queue: Queue,
    client: awc::Client,
    lanes: BTreeMap<String, Lane>,
    /// Items in every lane.
    queued: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_queue: usize,
    log: Logger,
}

/// The lane of an event: its egress, or `node:{id}` for node events.
fn lane_of(body: &[u8]) -> (String, String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let lane = match v["egress_id"].as_str() {
        Some(e) => e.to_string(),
        None => format!("node:{}", v["node_id"].as_str().unwrap_or("")),
    };
    let id = v["id"].as_str().unwrap_or("").to_string();
    let kind = v["event"].as_str().unwrap_or("").to_string();
    (lane, id, kind)
}

impl Sender {
    /// Appends a queued event to its lane.
    fn push(&mut self, q: Queued) {
        let (lane, event_id, kind) = lane_of(&q.body);
        let initial = self.backoff_initial;
        let l = self.lanes.entry(lane).or_insert_with(|| Lane {
            items: VecDeque::new(),
            due: Instant::now(),
            backoff: initial,
            attempts: 0,
            in_flight: false,
        });
        l.items.push_back(Item {
            seq: q.seq,
            body: Bytes::from(q.body),
            event_id,
            kind,
        });
        self.queued += 1;
        METRICS.webhook_queue_depth.inc();
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WebhookCmd>) {
        let mut flight = FuturesUnordered::new();
        loop {
            let now = Instant::now();
            // Due lanes, oldest head first: after an outage the oldest events go first.
            let mut due: Vec<(u64, String)> = self
                .lanes
                .iter()
                .filter(|(_, l)| !l.in_flight && l.due <= now)
                .filter_map(|(name, l)| Some((l.items.front()?.seq, name.clone())))
                .collect();
            due.sort();
            for (_, name) in due {
                if flight.len() >= MAX_IN_FLIGHT {
                    break;
                }
                let Some(lane) = self.lanes.get_mut(&name) else {
                    continue;
                };
                let Some(head) = lane.items.front() else {
                    continue;
                };
                lane.in_flight = true;
                lane.attempts += 1;
                flight.push(attempt(
                    self.client.clone(),
                    self.url.clone(),
                    self.key.clone(),
                    name,
                    head.clone(),
                    lane.attempts,
                ));
            }
            let next_due = self
                .lanes
                .values()
                .filter(|l| !l.in_flight && !l.items.is_empty())
                .map(|l| l.due)
                .min();
            // A free slot is what a due lane waits for when every slot is taken.
            let slot_free = flight.len() < MAX_IN_FLIGHT;
            let wake = async {
                match next_due {
                    Some(d) if slot_free => tokio::time::sleep_until(d.into()).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(WebhookCmd::Deliver(ev)) => self.enqueue(ev.id, ev.wire()).await,
                    Some(WebhookCmd::Flush(ack)) => { let _ = ack.send(()); }
                    None => return,
                },
                Some(out) = flight.next(), if !flight.is_empty() => self.settle(out).await,
                _ = wake => {}
            }
        }
    }

    /// Writes the event to the queue on disk, then to its lane.
    async fn enqueue(&mut self, seq: u64, body: String) {
        let queue = self.queue.clone();
        let bytes = body.into_bytes();
        let to_disk = bytes.clone();
        let written = actix_web::rt::task::spawn_blocking(move || queue.put(seq, &to_disk)).await;
        if let Err(e) = written
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            // Still sent from memory: only a restart before its delivery would lose it.
            warn!(self.log, "cannot write a webhook event to its queue"; "error" => e);
            METRICS
                .webhook_failures_total
                .with_label_values(&["queue_write"])
                .inc();
        }
        self.push(Queued { seq, body: bytes });
        if self.queued > self.max_queue {
            self.drop_oldest().await;
        }
    }

    /// The queue is full: the oldest event not being sent goes.
    async fn drop_oldest(&mut self) {
        let oldest = self
            .lanes
            .iter()
            .filter_map(|(name, l)| {
                let skip = usize::from(l.in_flight);
                l.items.get(skip).map(|i| (i.seq, name.clone(), skip))
            })
            .min();
        let Some((seq, name, at)) = oldest else {
            return;
        };
        if let Some(l) = self.lanes.get_mut(&name) {
            l.items.remove(at);
            if l.items.is_empty() {
                self.lanes.remove(&name);
            }
        }
        self.queued -= 1;
        METRICS.webhook_queue_depth.dec();
        METRICS
            .webhook_failures_total
            .with_label_values(&["dropped"])
            .inc();
        warn!(self.log, "webhook queue full: dropped its oldest event"; "max_queue" => self.max_queue, "lane" => &name);
        self.forget(seq).await;
    }

    async fn forget(&self, seq: u64) {
        let queue = self.queue.clone();
        let r = actix_web::rt::task::spawn_blocking(move || queue.remove(seq)).await;
        if let Ok(Err(e)) = r {
            warn!(self.log, "cannot remove a delivered webhook event from its queue"; "error" => %e);
        }
    }

    /// Books an attempt's outcome: the next item of the lane, or a retry after a backoff.
    async fn settle(&mut self, out: Outcome) {
        let Some(lane) = self.lanes.get_mut(&out.lane) else {
            return;
        };
        lane.in_flight = false;
        match out.result {
            Ok(status) if (200..300).contains(&status) => {
                if lane.items.front().is_some_and(|i| i.seq == out.seq) {
                    lane.items.pop_front();
                    self.queued -= 1;
                    METRICS.webhook_queue_depth.dec();
                }
                lane.attempts = 0;
                lane.backoff = self.backoff_initial;
                lane.due = Instant::now();
                if lane.items.is_empty() {
                    self.lanes.remove(&out.lane);
                }
                METRICS
                    .webhook_deliveries_total
                    .with_label_values(&[&out.kind])
                    .inc();
                self.forget(out.seq).await;
            }
            other => {
                let reason = match other {
                    Ok(s) if (400..500).contains(&s) => "status_4xx",
                    Ok(s) if (500..600).contains(&s) => "status_5xx",
                    // 1xx, 3xx (redirects are not followed: a receiver answers where it is).
                    Ok(_) => "status_other",
                    Err(r) => r,
                };
                METRICS
                    .webhook_failures_total
                    .with_label_values(&[reason])
                    .inc();
                let wait = lane.backoff.mul_f64(rand::random_range(0.8..1.2));
                if lane.attempts == 1 || lane.attempts % 10 == 0 {
                    warn!(self.log, "webhook delivery failed: retrying"; "reason" => reason, "error" => &out.detail,
                          "status" => other.ok(), "lane" => &out.lane, "attempts" => lane.attempts,
                          "retry_in_ms" => wait.as_millis() as u64);
                }
                lane.due = Instant::now() + wait;
                lane.backoff = (lane.backoff * 2).min(self.backoff_max);
            }
        }
    }
}

/// One POST of a lane's head.
async fn attempt(
    client: awc::Client,
    url: Arc<str>,
    key: Arc<[u8]>,
    lane: String,
    item: Item,
    n: u32,
) -> Outcome {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sent = client
        .post(&*url)
        .insert_header(("content-type", "application/json"))
        .insert_header((
            "user-agent",
            concat!("egress-engine/", env!("CARGO_PKG_VERSION")),
        ))
        .insert_header(("x-egress-event-id", item.event_id.as_str()))
        .insert_header(("x-egress-event", item.kind.as_str()))
        .insert_header(("x-egress-signature", signature(&key, &item.body)))
        // Standard Webhooks: the id is the same on every retry (receivers drop repeats), the
        // timestamp is this attempt's (receivers refuse old ones: a replay fails).
        .insert_header(("webhook-id", item.event_id.as_str()))
        .insert_header(("webhook-timestamp", now_s.to_string()))
        .insert_header((
            "webhook-signature",
            standard_signature(&key, &item.event_id, now_s, &item.body),
        ))
        .insert_header(("x-egress-delivery-attempt", n.to_string()))
        .send_body(item.body.clone())
        .await;
    let mut detail = None;
    let result = match sent {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let _ = resp.body().limit(MAX_ANSWER_BYTES).await;
            Ok(status)
        }
        Err(awc::error::SendRequestError::Timeout) => Err("timeout"),
        Err(awc::error::SendRequestError::Connect(e)) => {
            detail = Some(e.to_string());
            Err("connect")
        }
        Err(e) => {
            detail = Some(e.to_string());
            Err("send")
        }
    };
    Outcome {
        lane,
        seq: item.seq,
        kind: item.kind,
        result,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signatures_match_the_spec_s_example() {
        // The example of the Standard Webhooks spec (and its libraries' tests).
        let key = key_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            standard_signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(key_bytes("0123456789abcdef"), b"0123456789abcdef");
    }

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn lanes_are_egresses_or_the_node() {
        let (lane, id, kind) = lane_of(
            br#"{"id":"ND_a-5","event":"egress_ended","node_id":"ND_a","egress_id":"EG_x","at_ms":1,"data":{}}"#,
        );
        assert_eq!(
            (lane.as_str(), id.as_str(), kind.as_str()),
            ("EG_x", "ND_a-5", "egress_ended")
        );
        let (lane, _, _) = lane_of(
            br#"{"id":"ND_a-6","event":"node_updated","node_id":"ND_a","at_ms":1,"data":{}}"#,
        );
        assert_eq!(lane, "node:ND_a");
    }
}
