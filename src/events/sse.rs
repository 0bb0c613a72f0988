//! One Server-Sent Events stream: the events a client missed since its `Last-Event-ID`, then the
//! live ones, with a keepalive comment when nothing happens.
//!
//! ```text
//!   retry: 2000                     first: how long a client waits before reconnecting
//!   : connected                     (a comment: the stream is subscribed from here on)
//!
//!   event: events_lost              only when the id given is older than the buffer or unknown;
//!   data: {"last_event_id", "oldest_id", "reason"}   no `id`, so it moves no client's position
//!
//!   id: 1764496800000123
//!   event: egress_started           egress_started | egress_updated | egress_ended | node_updated
//!   data: {EgressInfo}              (node_updated: the NodeState of `GET /v1/node`)
//!
//!   : keepalive                     every events.keepalive_ms without an event
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::sync::{broadcast, watch};

use crate::events::{Event, Events, Lost, Replay};

/// How long a client should wait before reconnecting, in ms (the `retry:` field).
pub const RETRY_MS: u64 = 2000;

/// The name of the marker event.
pub const LOST_EVENT: &str = "events_lost";

/// The text of one event.
pub fn format_event(ev: &Event) -> Bytes {
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        ev.id,
        ev.kind.as_str(),
        ev.data
    ))
}

fn format_lost(lost: &Lost) -> Bytes {
    let data = serde_json::to_string(lost).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {LOST_EVENT}\ndata: {data}\n\n"))
}

struct State {
    events: Events,
    rx: broadcast::Receiver<Arc<Event>>,
    /// Text ready to send.
    out: VecDeque<Bytes>,
    /// The newest id sent (or known to the client).
    last: u64,
    /// Events sent (markers and keepalives are not counted).
    sent: usize,
    max: Option<usize>,
    keepalive: tokio::time::Interval,
    closed: watch::Receiver<bool>,
    done: bool,
}

impl State {
    fn push_replay(&mut self, r: Replay) {
        if let Some(lost) = &r.lost {
            self.out.push_back(format_lost(lost));
        }
        for ev in r.events {
            self.push(&ev);
        }
    }

    fn push(&mut self, ev: &Event) {
        if ev.id <= self.last || self.done {
            return;
        }
        self.out.push_back(format_event(ev));
        self.last = ev.id;
        self.sent += 1;
        if self.max.is_some_and(|m| self.sent >= m) {
            self.done = true;
        }
    }
}

/// The stream for a client that last saw `last_event_id` (None: live events only), ending after
/// `max_events` events if given, or when the service shuts down.
pub fn stream(
    events: Events,
    last_event_id: Option<&str>,
    max_events: Option<usize>,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> + use<> {
    let (replay, rx, newest) = events.subscribe(last_event_id);
    let every = events.keepalive();
    let closed = events.closed();
    let done = *closed.borrow();
    let mut st = State {
        rx,
        out: VecDeque::from([Bytes::from(format!("retry: {RETRY_MS}\n: connected\n\n"))]),
        last: 0,
        sent: 0,
        max: max_events,
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        done,
        closed,
        events,
    };
    st.push_replay(replay);
    // Live events are those after the newest at subscription (replayed or not).
    st.last = st.last.max(newest);
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.out.pop_front() {
                return Some((Ok(b), st));
            }
            if st.done {
                return None;
            }
            tokio::select! {
                r = st.rx.recv() => match r {
                    Ok(ev) => st.push(&ev),
                    // This client fell behind the broadcast: catch up from the buffer.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let r = st.events.since(st.last);
                        st.push_replay(r);
                    }
                    Err(broadcast::error::RecvError::Closed) => st.done = true,
                },
                _ = st.keepalive.tick() => st.out.push_back(Bytes::from_static(b": keepalive\n\n")),
                _ = st.closed.changed() => st.done = true,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EventsConfig;
    use futures_util::StreamExt;

    fn text(b: Result<Bytes, actix_web::Error>) -> String {
        String::from_utf8(b.unwrap().to_vec()).unwrap()
    }

    #[actix_rt::test]
    async fn a_stream_that_falls_behind_catches_up_from_the_buffer_or_says_what_it_lost() {
        let hub = Events::new(
            &EventsConfig {
                buffer: 20,
                ..EventsConfig::default()
            },
            "ND_a".into(),
        );
        let s = stream(hub.clone(), None, Some(20));
        futures_util::pin_mut!(s);
        assert!(text(s.next().await.unwrap()).contains(": connected"));
        // 60 events while the stream is not read: more than the broadcast (20, rounded up to 32)
        // holds, and more than the buffer (20).
        for i in 0..60 {
            hub.node_changed(format!("{{\"n\":{i}}}"));
        }
        let mut got = Vec::new();
        while let Some(b) = s.next().await {
            got.push(text(b));
        }
        assert!(got[0].starts_with("event: events_lost\n"), "{got:?}");
        let ids: Vec<u64> = got[1..]
            .iter()
            .map(|e| {
                e.lines()
                    .next()
                    .unwrap()
                    .strip_prefix("id: ")
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids.len(), 20, "the whole buffer: {got:?}");
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(got.last().unwrap().contains("{\"n\":59}"));
        // A stream that keeps up misses nothing and gets no marker; max_events ends it.
        let s = stream(hub.clone(), None, Some(3));
        futures_util::pin_mut!(s);
        let _ = s.next().await;
        for i in 0..3 {
            hub.node_changed(format!("{{\"m\":{i}}}"));
        }
        let rest: Vec<String> = s.map(text).collect().await;
        assert_eq!(rest.len(), 3);
        assert!(
            rest.iter()
                .all(|e| e.starts_with("id: ") && e.contains("event: node_updated\n"))
        );
    }
}
