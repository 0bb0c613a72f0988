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

