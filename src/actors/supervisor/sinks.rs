//! Where the Supervisor's record writes go. `put` (every change of an egress) and `MarkDeleted`
//! (retention) hand each new version to every `RecordSink` of one list, built by the service's
//! wiring: this node's store, in a fleet the Redis mirror, and the event hub.
//!
//! Each sink takes the whole record and decides the form it passes on: only this node's store
//! keeps the WHIP token; whatever leaves the node (Redis, events, webhooks) gets
//! `EgressInfo::shared`, the token hidden.

use tokio::sync::mpsc;

use crate::events::Events;
use crate::model::EgressInfo;
use crate::store::Store;

/// One destination of the Supervisor's record writes. Called on the actor's thread: a sink only
/// queues or appends, it never waits.
pub trait RecordSink {
    /// A new version of an egress's record. `old` is the version before it (None for a new
    /// egress); `indexed`: the record index entry changed (what listing needs).
    fn record_changed(&self, old: Option<&EgressInfo>, new: &EgressInfo, indexed: bool);

    /// Retention deleted the outputs of an ended egress: `record` is its final record, now with
    /// `deleted_at` (the one change a final record takes).
    fn outputs_deleted(&self, record: &EgressInfo, indexed: bool);
}

/// This node's own copy: the whole record, fsynced on the store's writer thread, with a line of
/// the record index when `indexed`.
impl RecordSink for Store {
    fn record_changed(&self, _: Option<&EgressInfo>, new: &EgressInfo, indexed: bool) {
        self.save_later(new, indexed);
    }

    fn outputs_deleted(&self, record: &EgressInfo, indexed: bool) {
        self.save_later(record, indexed);
    }
}

/// Fleet mode: the channel of the fleet's record writer, which mirrors every version to Redis
/// (`fleet::Fleet::connect`). Other nodes read it there, so it gets the shared form.
pub struct Mirror(pub mpsc::UnboundedSender<EgressInfo>);

impl RecordSink for Mirror {
    fn record_changed(&self, _: Option<&EgressInfo>, new: &EgressInfo, _: bool) {
        let _ = self.0.send(new.clone().shared());
    }

    fn outputs_deleted(&self, record: &EgressInfo, _: bool) {
        let _ = self.0.send(record.clone().shared());
    }
}

/// The live event hub: `egress_started`, `egress_updated` or `egress_ended` (SSE, webhooks, the
/// fleet's relay), of the shared form.
impl RecordSink for Events {
    fn record_changed(&self, old: Option<&EgressInfo>, new: &EgressInfo, _: bool) {
        let old = old.cloned().map(EgressInfo::shared);
        self.egress_changed(old.as_ref(), &new.clone().shared());
    }

    /// No event: no event kind says "outputs deleted", and `egress_changed` would announce the
    /// final record as `egress_ended` a second time.
    fn outputs_deleted(&self, _: &EgressInfo, _: bool) {}
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix::prelude::*;
    use slog::Logger;

    use super::*;
    use crate::actors::admission::Admission;
    use crate::actors::cpu_monitor::{CpuMonitor, CpuSource, RawSample};
    use crate::actors::supervisor::{MarkDeleted, Supervisor, UpdateEgress};
    use crate::config::{Config, EventsConfig};
    use crate::model::{EgressStatus, sample_info};
    use crate::store::index::RecordIndex;

    const TOKEN: &str = "whip-secret";

    fn with_token(status: EgressStatus) -> EgressInfo {
        let mut i = sample_info("EG_sinks", "ND_a", status, 1);
        i.whip_token = Some(TOKEN.into());
        i
    }

    #[test]
    fn only_the_store_keeps_the_whip_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        // No writer thread: `save_later` writes at once.
        let store = Store::open(dir.path()).expect("store");
        let (tx, mut mirrored) = mpsc::unbounded_channel();
        let events = Events::new(&EventsConfig::default(), "ND_a".into());
        let (_, mut live, _) = events.subscribe(None);
        let sinks: Vec<Box<dyn RecordSink>> = vec![
            Box::new(store.clone()),
            Box::new(Mirror(tx)),
            Box::new(events.clone()),
        ];

        let info = with_token(EgressStatus::Active);
        for s in &sinks {
            s.record_changed(None, &info, true);
        }
        let kept = store.load("EG_sinks").expect("stored");
        assert_eq!(kept.whip_token.as_deref(), Some(TOKEN));
        let sent = mirrored.try_recv().expect("mirrored");
        assert_eq!(sent, info.clone().shared());
        assert_ne!(sent.whip_token.as_deref(), Some(TOKEN));
        let ev = live.try_recv().expect("an event");
        assert_eq!(ev.kind.as_str(), "egress_started");
        assert!(!ev.data.contains(TOKEN), "the event shows the token");

        let mut ended = with_token(EgressStatus::Complete);
        ended.deleted_at = Some(5);
        for s in &sinks {
            s.outputs_deleted(&ended, true);
        }
        assert_eq!(store.load("EG_sinks").expect("stored"), ended);
        assert_eq!(mirrored.try_recv().expect("mirrored"), ended.shared());
        assert!(live.try_recv().is_err(), "a deletion is no event");
    }

    /// What one sink was handed: (old status, new status, deleted_at, indexed); old is None for
    /// a new egress and for `outputs_deleted`.
    type Call = (Option<EgressStatus>, EgressStatus, Option<u64>, bool);

    struct Recording(Arc<Mutex<Vec<Call>>>);

    impl RecordSink for Recording {
        fn record_changed(&self, old: Option<&EgressInfo>, new: &EgressInfo, indexed: bool) {
            let call = (old.map(|o| o.status), new.status, new.deleted_at, indexed);
            self.0.lock().unwrap().push(call);
        }

        fn outputs_deleted(&self, record: &EgressInfo, indexed: bool) {
            let call = (None, record.status, record.deleted_at, indexed);
            self.0.lock().unwrap().push(call);
        }
    }

    struct Idle;

    impl CpuSource for Idle {
        fn sample(&mut self, _: &std::collections::HashMap<String, u32>) -> RawSample {
            RawSample::default()
        }
    }

    #[actix_rt::test]
    async fn every_write_reaches_every_sink_and_a_final_record_takes_only_deleted_at() {
        let log = Logger::root(slog::Discard, slog::o!());
        let cfg = Config::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let admission = Admission::new(&cfg, "ND_a".into(), 4.0, log.clone()).start();
        let interval = std::time::Duration::from_secs(3600);
        let cpu = CpuMonitor::new(4.0, interval, Box::new(Idle), log.clone()).start();
        let (first, second) = (Arc::default(), Arc::default());
        let sinks: Vec<Box<dyn RecordSink>> = vec![
            Box::new(Recording(Arc::clone(&first))),
            Box::new(Recording(Arc::clone(&second))),
        ];
        let sup = Supervisor::new(
            store,
            RecordIndex::default(),
            Vec::new(),
            admission,
            cpu,
            &cfg,
            dir.path().to_path_buf(),
            sinks,
            log,
        )
        .start();

        let update = |s: EgressStatus| UpdateEgress(with_token(s));
        sup.send(update(EgressStatus::Starting)).await.unwrap();
        sup.send(update(EgressStatus::Active)).await.unwrap();
        sup.send(update(EgressStatus::Complete)).await.unwrap();
        // A late report after the end: a final record never changes again.
        sup.send(update(EgressStatus::Active)).await.unwrap();
        let deleted = |at_ms| MarkDeleted {
            egress_id: "EG_sinks".into(),
            at_ms,
        };
        sup.send(deleted(7)).await.unwrap();
        // Deleted once: a second deletion changes nothing.
        sup.send(deleted(8)).await.unwrap();

        use EgressStatus::{Active, Complete, Starting};
        let want: Vec<Call> = vec![
            (None, Starting, None, true),
            (Some(Starting), Active, None, true),
            (Some(Active), Complete, None, true),
            (None, Complete, Some(7), true),
        ];
        assert_eq!(*first.lock().unwrap(), want);
        assert_eq!(*second.lock().unwrap(), want);
    }
}
