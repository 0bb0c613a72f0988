//! What the Supervisor answers about records: one, a page, the ended ones retention may
//! delete, how many still run.

use actix::prelude::*;

use super::Supervisor;
use crate::model::{EgressInfo, EgressStatus};
use crate::store::index::Cursor;

/// One egress's record, if this node has it.
#[derive(Message)]
#[rtype(result = "Option<EgressInfo>")]
pub struct GetEgress(pub String);

impl Handler<GetEgress> for Supervisor {
    type Result = ResponseFuture<Option<EgressInfo>>;
    fn handle(&mut self, msg: GetEgress, _: &mut Context<Self>) -> Self::Result {
        let read = self.records(vec![msg.0]);
        Box::pin(async move { read.await.pop() })
    }
}

/// A page of this node's records, newest first, optionally only those in `statuses`: at most
/// `limit`, after `after`; with the cursor of the next page when there is more.
#[derive(Message)]
#[rtype(result = "EgressPage")]
pub struct ListEgresses {
    pub statuses: Option<Vec<EgressStatus>>,
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// One page of records, and where the next starts (None: this was the last).
#[derive(Debug, Default, actix::MessageResponse)]
pub struct EgressPage {
    pub egresses: Vec<EgressInfo>,
    pub next: Option<Cursor>,
}

impl Handler<ListEgresses> for Supervisor {
    type Result = ResponseFuture<EgressPage>;
    fn handle(&mut self, msg: ListEgresses, _: &mut Context<Self>) -> Self::Result {
        let (ids, next) = self
            .index
            .page(msg.statuses.as_deref(), msg.after.as_ref(), msg.limit);
        let read = self.records(ids);
        Box::pin(async move {
            EgressPage {
                // A list shows no WHIP token: it is for whoever created the egress.
                egresses: read.await.into_iter().map(EgressInfo::shared).collect(),
                next,
            }
        })
    }
}

/// Ended records whose end is before `before_ms` and whose outputs retention has not deleted
/// yet (what `storage.delete_after` deletes), oldest first.
#[derive(Message)]
#[rtype(result = "Vec<EgressInfo>")]
pub struct EndedBefore {
    pub before_ms: u64,
}

impl Handler<EndedBefore> for Supervisor {
    type Result = ResponseFuture<Vec<EgressInfo>>;
    fn handle(&mut self, msg: EndedBefore, _: &mut Context<Self>) -> Self::Result {
        Box::pin(self.records(self.index.ended_before(msg.before_ms, true)))
    }
}

/// How many egresses still have a running Pipeline actor.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountRunning;

impl Handler<CountRunning> for Supervisor {
    type Result = usize;
    fn handle(&mut self, _: CountRunning, _: &mut Context<Self>) -> usize {
        self.pipelines.len()
    }
}
