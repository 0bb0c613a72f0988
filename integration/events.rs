//! Live events and webhooks against the real binary: an SSE client over real HTTP that reconnects
//! with `Last-Event-ID`, and a webhook receiver (a small HTTP server on a free loopback port)
//! that checks every signature, including one that is down (port closed) for 30 s across a
//! restart of the service.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

// ---- an SSE client ----

/// One message of the stream: an event, or a comment (`event` = ":", `data` = its text).
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// A stream read by a thread of its own; messages arrive on `rx`. It ends when the server ends it
/// (`max_events`) or when the service goes.
pub struct SseClient {
    rx: Receiver<Sse>,
}

impl SseClient {
    /// Connects and waits for the `: connected` comment (the stream is subscribed from then on).
    pub fn connect(svc: &Service, query: &str, last_event_id: Option<&str>) -> SseClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent
            .get(format!("{}/v1/events{query}", svc.base))
            .header("accept", "text/event-stream");
        if let Some(t) = &svc.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.call().expect("GET /v1/events");
        assert_eq!(resp.status().as_u16(), 200, "GET /v1/events");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
            let mut cur = Sse {
                id: None,
                event: String::new(),
                data: String::new(),
            };
            while let Some(Ok(line)) = lines.next() {
                if line.is_empty() {
                    if !cur.event.is_empty() || !cur.data.is_empty() {
                        let done = std::mem::replace(
                            &mut cur,
                            Sse {
                                id: None,
                                event: String::new(),
                                data: String::new(),
                            },
                        );
                        if tx.send(done).is_err() {
                            return;
                        }
                    }
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((&line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "" => {
                        let _ = tx.send(Sse {
                            id: None,
                            event: ":".into(),
                            data: value.to_string(),
                        });
                    }
                    "id" => cur.id = Some(value.to_string()),
                    "event" => cur.event = value.to_string(),
                    "data" => cur.data.push_str(value),
                    _ => {}
                }
            }
        });
        let c = SseClient { rx };
        c.next_where(Duration::from_secs(10), |m| {
            m.event == ":" && m.data == "connected"
        })
        .expect("the stream's `: connected` comment");
        c
    }

    /// The next event (comments skipped), or None at the end of the stream or after `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<Sse> {
        self.next_where(timeout, |m| m.event != ":")
    }

    fn next_where(&self, timeout: Duration, f: impl Fn(&Sse) -> bool) -> Option<Sse> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) if f(&m) => return Some(m),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Events until (and with) the first one `until` accepts.
    pub fn events_until(&self, what: &str, mut until: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .next_event(left)
                .unwrap_or_else(|| panic!("the stream ended or timed out before {what}: {out:#?}"));
            let stop = until(&m);
            out.push(m);
            if stop {
                return out;
            }
        }
    }

    /// Every event until the server ends the stream.
    pub fn rest(&self) -> Vec<Sse> {
        std::iter::from_fn(|| self.next_event(Duration::from_secs(30))).collect()
    }

    /// Whether a keepalive comment arrives within `timeout`.
    pub fn keepalive_within(&self, timeout: Duration) -> bool {
        self.next_where(timeout, |m| m.event == ":" && m.data == "keepalive")
            .is_some()
    }
}

fn is_end_of(id: &str) -> impl Fn(&Sse) -> bool + '_ {
    move |m: &Sse| m.event == "egress_ended" && m.json()["egress_id"] == id
}

fn small(filename: &str) -> Value {
    request(
        "participant",
        &["test://av?pattern=ball&freq=440"],
        filename,
    )
}

#[test]
fn sse_streams_every_change_and_a_reconnect_with_last_event_id_misses_nothing() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "server: { listen: \"127.0.0.1:0\", api_token: \"sse-token\" }\n\
         events: { keepalive_ms: 300, node_interval_ms: 100 }",
    );
    // The token is needed, as everywhere; queries are checked.
    let (s, _) = svc.raw(
        "GET",
        "/v1/events",
        None,
        &[("authorization", "Bearer nope")],
    );
    assert_eq!(s, 401);
    for q in ["?max_events=0", "?max_events=x", "?token=sse-token"] {
        let (s, v) = svc.get(&format!("/v1/events{q}"));
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("bad_query")),
            "{q}"
        );
    }

    // `all` follows everything; `early` leaves after 2 events and comes back later.
    let all = SseClient::connect(&svc, "", None);
    let early = SseClient::connect(&svc, "?max_events=2", None);
    assert!(all.keepalive_within(Duration::from_secs(5)), "no keepalive");
    let id = svc.start_egress(&small("a.mp4"));
    let first_part = early.rest();
    assert_eq!(first_part.len(), 2, "{first_part:#?}");
    svc.wait_active(&id);
    // The node's state follows: one participant running.
    let mut seen = all.events_until("node_updated with the egress running", |m| {
        m.event == "node_updated" && m.json()["types"]["participant"]["active"] == 1
    });
    let (s, _) = svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    assert_eq!(s, 200);
    seen.extend(all.events_until("the egress's end", is_end_of(&id)));
    // While `early` is away, its events pile up in the buffer.
    let last = first_part.last().and_then(|m| m.id.clone()).expect("an id");
    let back = SseClient::connect(&svc, "", Some(&last));
    let replayed = back.events_until("the egress's end, replayed", is_end_of(&id));
    assert!(
        replayed.iter().all(|m| m.event != "events_lost"),
        "{replayed:#?}"
    );

    let ids = |v: &[Sse]| -> Vec<u64> {
        v.iter()
            .map(|m| {
                m.id.as_deref()
                    .expect("every event has an id")
                    .parse()
                    .expect("numeric id")
            })
            .collect()
    };
    let mut got = ids(&first_part);
    got.extend(ids(&replayed));
    let expected: Vec<u64> = ids(&seen).into_iter().filter(|i| *i >= got[0]).collect();
    assert_eq!(got, expected, "the reconnecting client's events differ");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "ids increase: {got:?}");

    // The egress's own events: started, then updates, then its end, each with the record.
    let mine: Vec<&Sse> = seen
        .iter()
        .filter(|m| m.event.starts_with("egress_") && m.json()["egress_id"] == *id)
        .collect();
    assert_eq!(
        mine.first().map(|m| m.event.as_str()),
        Some("egress_started")
    );
    assert_eq!(mine.first().unwrap().json()["status"], "starting");
    let statuses: Vec<String> = mine
        .iter()
        .map(|m| m.json()["status"].as_str().unwrap_or("").to_string())
        .collect();
    for s in ["active", "ending", "complete"] {
        assert!(statuses.iter().any(|x| x == s), "{s} missing: {statuses:?}");
    }
    assert_eq!(
        mine.last().unwrap().json(),
        svc.egress(&id),
        "the final record"
    );
    let node = seen
        .iter()
        .find(|m| m.event == "node_updated")
        .expect("a node_updated event");
    assert_eq!(node.json()["node_id"], svc.node_id.as_str());
    assert!(node.json()["load"].is_number() && node.json()["draining"] == false);

    // An id older than the buffer reaches back to, or one this node never gave: a marker, then
    // what the buffer has.
    for (given, reason) in [
        ("1", "too_old"),
        ("99999999999999999", "unknown"),
        ("x", "unknown"),
    ] {
        let c = SseClient::connect(&svc, "?max_events=1", Some(given));
        let marker = c.next_event(Duration::from_secs(10)).expect("a marker");
        assert_eq!(marker.event, "events_lost", "{given}: {marker:?}");
        assert_eq!(marker.id, None);
        assert_eq!(marker.json()["reason"], reason);
        assert_eq!(marker.json()["last_event_id"], given);
        let oldest = c.next_event(Duration::from_secs(10)).expect("the buffer");
        let oldest: u64 = oldest.id.expect("an id").parse().unwrap();
        assert!(oldest <= got[0], "the buffer's oldest event comes first");
    }
}

// ---- a webhook receiver ----

/// One POST the receiver took.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A small HTTP server on a loopback port that answers 200 to every request and keeps them (or,
/// refusing, answers 503 to every first attempt of an event, keeping every request in `tried`).
pub struct WebhookReceiver {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookReceiver {
    pub fn start(port: u16, got: Arc<Mutex<Vec<Delivery>>>) -> WebhookReceiver {
        Self::start_with(port, got, None)
    }

    pub fn start_with(
        port: u16,
        got: Arc<Mutex<Vec<Delivery>>>,
        refuse_first_into: Option<Arc<Mutex<Vec<Delivery>>>>,
    ) -> WebhookReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver's port");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, g) = (stop.clone(), got);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return; // the listener closes with this thread
                }
                let Some((d, mut c)) = conn.ok().and_then(read_request) else {
                    continue;
                };
                let mut status = "200 OK";
                if let Some(tried) = &refuse_first_into {
                    tried.lock().unwrap().push(d.clone());
                    if d.headers
                        .get("x-egress-delivery-attempt")
                        .map(String::as_str)
                        == Some("1")
                    {
                        status = "503 Service Unavailable";
                    }
                }
                if status.starts_with("200") {
                    g.lock().unwrap().push(d);
                }
                let _ = c.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        WebhookReceiver {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/egress", self.port)
    }

    /// Closes the port: from now on a connection is refused.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (headers, then `content-length` bytes); the caller answers on the stream.
fn read_request(c: TcpStream) -> Option<(Delivery, TcpStream)> {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(c.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    if !line.starts_with("POST /hooks/egress ") {
        return None;
    }
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let n: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; n];
    r.read_exact(&mut body).ok()?;
    Some((Delivery { headers, body }, c))
}

const KEY: &str = "webhook-test-signing-key";

/// Checks what every delivery must be: JSON, signed with KEY, its id header the body's id.
fn check_signed(d: &Delivery) {
    let sig = egress_engine::events::webhooks::signature(KEY.as_bytes(), &d.body);
    assert_eq!(d.headers.get("x-egress-signature"), Some(&sig), "{d:?}");
    // And by hand, as a receiver would, with the RustCrypto crates directly.
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(&d.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sig, format!("sha256={hex}"));
    let v = d.json();
    assert_eq!(
        d.headers.get("x-egress-event-id").map(String::as_str),
        v["id"].as_str()
    );
    assert_eq!(
        d.headers.get("x-egress-event").map(String::as_str),
        v["event"].as_str()
    );
    assert_eq!(
        d.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(v["data"].is_object(), "{v}");
}

/// The events of one egress in the order they arrived.
fn of_egress(got: &[Delivery], id: &str) -> Vec<Value> {
    got.iter()
        .map(|d| d.json())
        .filter(|v| v["egress_id"] == id)
        .collect()
}

/// One egress's events: egress_started first, egress_ended last (with the record the API shows),
/// statuses never going back, ids unique.
fn check_sequence(svc_record: &Value, events: &[Value]) {
    let kinds: Vec<&str> = events
        .iter()
        .map(|v| v["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.first(), Some(&"egress_started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"egress_ended"), "{kinds:?}");
    assert!(
        kinds[1..kinds.len() - 1]
            .iter()
            .all(|k| *k == "egress_updated"),
        "{kinds:?}"
    );
    let rank = |s: &str| match s {
        "starting" => 0,
        "active" => 1,
        "ending" => 2,
        _ => 3,
    };
    let ranks: Vec<i32> = events
        .iter()
        .map(|v| rank(v["data"]["status"].as_str().unwrap_or("")))
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "statuses went back: {events:#?}"
    );
    assert_eq!(&events.last().unwrap()["data"], svc_record);
}

fn webhook_config(url: &str, backoff: &str) -> String {
    format!(
        "webhooks: {{ urls: [\"{url}\"], signing_key: \"{KEY}\"{backoff} }}\nevents: {{ node_interval_ms: 200 }}"
    )
}

fn metric(svc: &Service, name: &str) -> f64 {
    let (_, text) = svc.raw("GET", "/metrics", None, &[]);
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn webhooks_deliver_a_start_stop_kill_sequence_in_order_with_valid_signatures() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = WebhookReceiver::start(0, got.clone());
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, &webhook_config(&receiver.url(), ""));
    let sse = SseClient::connect(&svc, "", None);

    let a = svc.start_egress(&small("a.mp4"));
    svc.wait_active(&a);
    assert_eq!(svc.post(&format!("/v1/egress/{a}/stop"), &json!({})).0, 200);
    let b = svc.start_egress(&small("b.mp4"));
    svc.wait_active(&b);
    assert_eq!(svc.post(&format!("/v1/egress/{b}/kill"), &json!({})).0, 200);
    let ra = svc.wait_status(&a, &["complete"], Duration::from_secs(30));
    let rb = svc.wait_status(&b, &["failed", "aborted"], Duration::from_secs(30));

    // The stream is the reference: every egress event it shows is delivered, once.
    let mut ended = HashSet::new();
    let streamed = sse.events_until("both ends", |m| {
        if m.event == "egress_ended" {
            ended.insert(m.json()["egress_id"].as_str().unwrap_or("").to_string());
        }
        ended.contains(&a) && ended.contains(&b)
    });
    let expected: HashSet<String> = streamed
        .iter()
        .filter(|m| m.event.starts_with("egress_"))
        .map(|m| format!("{}-{}", svc.node_id, m.id.as_deref().unwrap()))
        .collect();
    let all = wait_for(
        Duration::from_secs(20),
        "every event at the receiver",
        || {
            let g = got.lock().unwrap().clone();
            let ids: HashSet<String> = g
                .iter()
                .map(|d| d.json()["id"].as_str().unwrap_or("").to_string())
                .collect();
            expected.is_subset(&ids).then_some(g)
        },
    );
    let ids: Vec<String> = all
        .iter()
        .map(|d| d.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<HashSet<_>>().len(),
        "duplicates: {ids:?}"
    );
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        expected,
        "node_updated is not sent by default"
    );
    for d in &all {
        check_signed(d);
    }
    check_sequence(&ra, &of_egress(&all, &a));
    check_sequence(&rb, &of_egress(&all, &b));
    assert_eq!(
        of_egress(&all, &b).last().unwrap()["data"]["end_reason"],
        "KillEgress API"
    );
    wait_for(Duration::from_secs(5), "an empty queue", || {
        (metric(&svc, "egress_webhook_queue_depth") == 0.0).then_some(())
    });
    assert_eq!(
        metric(&svc, "egress_webhook_deliveries_total"),
        all.len() as f64
    );
    assert_eq!(metric(&svc, "egress_webhook_failures_total"), 0.0);
    receiver.stop();
}

#[test]
fn webhooks_reach_a_receiver_that_was_down_for_30_s_across_a_service_restart() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = WebhookReceiver::start(0, got.clone());
    let port = receiver.port;
    let dirs = Dirs::new();
    let config = webhook_config(
        &receiver.url(),
        ", backoff_initial_ms: 200, backoff_max_ms: 2000",
    );
    let mut svc = Service::start(&dirs, &config);
    let a = svc.start_egress(&small("a.mp4"));
    wait_for(
        Duration::from_secs(20),
        "the first event at the receiver",
        || (!got.lock().unwrap().is_empty()).then_some(()),
    );
    // Down: the port is closed, connections are refused.
    receiver.stop();
    let down_at = Instant::now();
    let before_down = got.lock().unwrap().len();
    svc.wait_active(&a);
    assert_eq!(svc.post(&format!("/v1/egress/{a}/stop"), &json!({})).0, 200);
    let ra = svc.wait_status(&a, &["complete"], Duration::from_secs(30));
    let b = svc.start_egress(&small("b.mp4"));
    svc.wait_active(&b);
    wait_for(Duration::from_secs(20), "failed attempts", || {
        (metric(&svc, "egress_webhook_failures_total") >= 2.0).then_some(())
    });
    assert!(metric(&svc, "egress_webhook_queue_depth") >= 4.0);
    // The service stops (b ends on the way out, "Service stopped"): its events wait on disk.
    svc.signal(libc::SIGINT);
    assert_eq!(svc.wait_exit(Duration::from_secs(30)), Some(0));
    let queue_dir = dirs.state().join("webhooks");
    let queued = || -> usize {
        std::fs::read_dir(&queue_dir)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .filter(|f| f.file_name().to_string_lossy().ends_with(".json"))
            .count()
    };
    assert!(queued() >= 5, "queued on disk: {}", queued());

    let svc = Service::start(&dirs, &config);
    let rb = svc.egress(&b);
    assert!(
        rb["status"] == "complete" || rb["status"] == "failed",
        "{rb}"
    );
    // The receiver stays down for 30 s in all: the scenario, not a synchronization.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed()));
    assert_eq!(
        got.lock().unwrap().len(),
        before_down,
        "delivered while down?"
    );
    let receiver = WebhookReceiver::start(port, got.clone());
    let all = wait_for(
        Duration::from_secs(20),
        "both egresses' ends at the receiver",
        || {
            let g = got.lock().unwrap().clone();
            let ended = g
                .iter()
                .filter(|d| d.json()["event"] == "egress_ended")
                .count();
            (ended == 2).then_some(g)
        },
    );
    let ids: Vec<String> = all
        .iter()
        .map(|d| d.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<HashSet<_>>().len(),
        "duplicates: {ids:?}"
    );
    for d in &all {
        check_signed(d);
    }
    check_sequence(&ra, &of_egress(&all, &a));
    check_sequence(&svc.egress(&b), &of_egress(&all, &b));
    let retried = all.iter().any(|d| {
        d.headers
            .get("x-egress-delivery-attempt")
            .is_some_and(|n| n.parse::<u32>().unwrap_or(0) > 1)
    });
    assert!(retried, "no delivery says it was retried");
    wait_for(Duration::from_secs(5), "an empty queue on disk", || {
        (queued() == 0).then_some(())
    });
    receiver.stop();
}

#[test]
fn in_a_fleet_every_node_streams_every_nodes_events_once() {
    let redis = Redis::start();
    let (da, db) = (Dirs::new(), Dirs::new());
    let cfg = format!(
        "fleet: {{ redis_url: \"{}\", heartbeat_ms: 250, node_ttl_ms: 5000 }}\nevents: {{ node_interval_ms: 200 }}",
        redis.url()
    );
    let a = Service::start(&da, &cfg);
    let b = Service::start(&db, &cfg);
    wait_for(Duration::from_secs(10), "both nodes in the fleet", || {
        let (s, v) = a.get("/v1/fleet/nodes");
        (s == 200 && v["nodes"].as_array().is_some_and(|n| n.len() == 2)).then_some(())
    });
    let on_a = SseClient::connect(&a, "", None);
    let on_b = SseClient::connect(&b, "", None);
    // a's state changes too (a claim it holds), so b's stream has a node_updated of a's.
    let (s, v) = a.post("/v1/affinity", &json!({"type": "track"}));
    assert_eq!(s, 200, "{v}");
    // Started on b, and only there.
    let id = "EG_fleetevents1";
    let (s, v) = b.post(
        "/v1/node/egress",
        &json!({"egress_id": id, "request": small("f.mp4")}),
    );
    assert_eq!(s, 201, "{v}");
    b.wait_active(id);
    assert_eq!(b.post(&format!("/v1/egress/{id}/stop"), &json!({})).0, 200);
    for (name, stream, other) in [("a", &on_a, &b.node_id), ("b", &on_b, &a.node_id)] {
        let mut nodes_seen = HashSet::new();
        let mut ended = false;
        let got = stream.events_until("the egress's end and both nodes' state", |m| {
            if m.event == "node_updated" {
                nodes_seen.insert(m.json()["node_id"].as_str().unwrap_or("").to_string());
            }
            ended |= is_end_of(id)(m);
            ended && nodes_seen.contains(other)
        });
        let mine: Vec<&Sse> = got
            .iter()
            .filter(|m| m.event.starts_with("egress_") && m.json()["egress_id"] == id)
            .collect();
        let starts = mine.iter().filter(|m| m.event == "egress_started").count();
        assert_eq!(starts, 1, "on {name}: {mine:#?}");
        assert!(
            mine.iter()
                .all(|m| m.json()["node_id"] == b.node_id.as_str())
        );
        let ids: Vec<u64> = got
            .iter()
            .map(|m| m.id.as_deref().unwrap().parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "on {name}: {ids:?}");
    }
}

#[test]
fn a_refused_webhook_is_retried_before_its_egress_s_next_event() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let tried = Arc::new(Mutex::new(Vec::new()));
    let receiver = WebhookReceiver::start_with(0, got.clone(), Some(tried.clone()));
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        &webhook_config(
            &receiver.url(),
            ", backoff_initial_ms: 100, backoff_max_ms: 400",
        ),
    );
    let a = svc.start_egress(&small("a.mp4"));
    let b = svc.start_egress(&small("b.mp4"));
    for id in [&a, &b] {
        svc.wait_active(id);
        assert_eq!(
            svc.post(&format!("/v1/egress/{id}/stop"), &json!({})).0,
            200
        );
    }
    let ra = svc.wait_status(&a, &["complete"], Duration::from_secs(30));
    let rb = svc.wait_status(&b, &["complete"], Duration::from_secs(30));
    let all = wait_for(Duration::from_secs(20), "both ends accepted", || {
        let g = got.lock().unwrap().clone();
        let ended = g
            .iter()
            .filter(|d| d.json()["event"] == "egress_ended")
            .count();
        (ended == 2).then_some(g)
    });
    check_sequence(&ra, &of_egress(&all, &a));
    check_sequence(&rb, &of_egress(&all, &b));
    // Every event was refused once, and no event of an egress was tried before the one before
    // it was accepted.
    let tried = tried.lock().unwrap().clone();
    for id in [&a, &b] {
        let mut accepted: Vec<String> = Vec::new();
        for d in tried
            .iter()
            .filter(|d| d.json()["egress_id"] == id.as_str())
        {
            let eid = d.json()["id"].as_str().unwrap().to_string();
            let attempt = d.headers["x-egress-delivery-attempt"].clone();
            if attempt == "1" {
                assert!(
                    !accepted.contains(&eid),
                    "{eid} tried again after it was accepted"
                );
            } else {
                accepted.push(eid.clone());
            }
            let order: Vec<String> = of_egress(&all, id)
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_string())
                .collect();
            let pos = order
                .iter()
                .position(|x| *x == eid)
                .expect("tried events are accepted in the end");
            assert_eq!(
                &order[..pos],
                &accepted[..pos.min(accepted.len())],
                "{eid} tried before its predecessors were accepted"
            );
            assert!(
                accepted.len() >= pos,
                "{eid} tried before its predecessors were accepted"
            );
        }
    }
    assert!(metric(&svc, "egress_webhook_failures_total") >= all.len() as f64);
    receiver.stop();
}

/// Idle event streams are capped (`events.max_clients`): one more is answered 503 with a JSON
/// error that says so, and the API goes on answering (4,000 idle ones were accepted before).
#[test]
fn event_streams_over_events_max_clients_get_503() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "events: { max_clients: 2 }");
    let _a = SseClient::connect(&svc, "", None);
    let _b = SseClient::connect(&svc, "", None);
    let (s, v) = svc.get("/v1/events");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("events.max_clients"),
        "{v}"
    );
    assert_eq!(svc.get("/v1/node").0, 200);
}

/// An idle node is quiet: `node_updated` only when what a reader sees changed (it came about
/// once a second from load jitter alone, so `curl -N /v1/events` scrolled forever). Each one
/// after the first differs from the one before it by a step a reader notices: 5 points of load,
/// 0.1 core, or a count (other tests running beside this one move the host's load for real).
#[test]
fn an_idle_node_does_not_chatter() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "events: { node_interval_ms: 200 }");
    let sse = SseClient::connect(&svc, "", None);
    let t0 = std::time::Instant::now();
    let mut states: Vec<Value> = Vec::new();
    while t0.elapsed() < Duration::from_secs(8) {
        if let Some(e) = sse.next_event(Duration::from_millis(500))
            && e.event == "node_updated"
        {
            states.push(e.json());
        }
    }
    assert!(!states.is_empty(), "no node_updated at all");
    for w in states.windows(2) {
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let load = (f(&w[1], "load") - f(&w[0], "load")).abs();
        let cpu = (f(&w[1], "available_cpu") - f(&w[0], "available_cpu")).abs();
        let same_counts = w[0]["types"] == w[1]["types"] && w[0]["draining"] == w[1]["draining"];
        assert!(
            load >= 0.05 - 1e-9 || cpu >= 0.1 - 1e-9 || !same_counts,
            "node_updated for a move of {load:.3} load, {cpu:.3} cores: {} then {}",
            w[0],
            w[1]
        );
    }
    assert!(
        states.len() <= 8,
        "{} node_updated in 8 s on an idle node",
        states.len()
    );
}
