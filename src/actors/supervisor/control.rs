//! The Supervisor's control of running egresses: each message is passed on to the egress's
//! Pipeline actor (stop, kill, stream and source changes, WHIP sessions), or to all of them
//! (`EndAll`).

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{KILL_ANSWER_TIMEOUT, Supervisor};
use crate::actors::pipeline::{KillPipeline, KillReason, Pipeline, StopPipeline, StopReason};
use crate::error::NodeError;
use crate::model::{EgressInfo, EgressStatus};

impl Supervisor {
    /// Passes `msg` to the Pipeline actor of running egress `egress_id` and its answer back.
    fn to_pipeline<M, R>(&self, egress_id: &str, msg: M) -> ResponseFuture<Result<R, NodeError>>
    where
        M: Message<Result = Result<R, NodeError>> + Send + 'static,
        R: Send + 'static,
        Pipeline: Handler<M>,
    {
        let p = match self.running(egress_id) {
            Ok((_, p)) => p,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        Box::pin(async move { p.send(msg).await.map_err(NodeError::from_mailbox)? })
    }

    /// A running egress's record and Pipeline actor: `NotFound` when unknown, `Conflict` once it has ended
    /// (or while its end is being settled).
    fn running(&self, egress_id: &str) -> Result<(EgressInfo, Addr<Pipeline>), NodeError> {
        let info = self.lookup(egress_id)?;
        if info.status.is_final() {
            return Err(NodeError::Conflict(format!(
                "egress {} has already ended ({})",
                info.egress_id,
                info.status.as_str()
            )));
        }
        let Some(p) = self.pipelines.get(egress_id).cloned() else {
            return Err(NodeError::Conflict(format!(
                "egress {} is being settled",
                info.egress_id
            )));
        };
        Ok((info, p))
    }
}

/// Stop an egress gracefully; returns its record (status `ending`). `Conflict` once it has ended.
#[derive(Message)]
#[rtype(result = "Result<EgressInfo, NodeError>")]
pub struct StopEgress {
    pub egress_id: String,
    pub reason: StopReason,
}

impl Handler<StopEgress> for Supervisor {
    type Result = Result<EgressInfo, NodeError>;
    fn handle(&mut self, msg: StopEgress, _: &mut Context<Self>) -> Self::Result {
        let (info, p) = self.running(&msg.egress_id)?;
        p.do_send(StopPipeline(msg.reason));
        let mut shown = info;
        if shown.status != EgressStatus::Ending {
            shown.status = EgressStatus::Ending;
        }
        Ok(shown)
    }
}

/// Add or remove stream URLs of a running egress; returns its record.
#[derive(Message)]
#[rtype(result = "Result<EgressInfo, NodeError>")]
pub struct ChangeEgressStreams {
    pub egress_id: String,
    pub update: crate::model::StreamsUpdate,
}

impl Handler<ChangeEgressStreams> for Supervisor {
    type Result = ResponseFuture<Result<EgressInfo, NodeError>>;
    fn handle(&mut self, msg: ChangeEgressStreams, _: &mut Context<Self>) -> Self::Result {
        self.to_pipeline(
            &msg.egress_id,
            crate::actors::pipeline::ChangeStreams(msg.update),
        )
    }
}

/// Sources join or leave a running room; returns its record.
#[derive(Message)]
#[rtype(result = "Result<EgressInfo, NodeError>")]
pub struct ChangeEgressSources {
    pub egress_id: String,
    pub change: crate::actors::pipeline::ChangeSources,
}

impl Handler<ChangeEgressSources> for Supervisor {
    type Result = ResponseFuture<Result<EgressInfo, NodeError>>;
    fn handle(&mut self, msg: ChangeEgressSources, _: &mut Context<Self>) -> Self::Result {
        self.to_pipeline(&msg.egress_id, msg.change)
    }
}

/// A WHIP publisher's offer for a running egress (its Pipeline actor answers).
#[derive(Message)]
#[rtype(result = "Result<crate::actors::pipeline::WhipSession, NodeError>")]
pub struct PublishWhip {
    pub egress_id: String,
    pub offer: crate::actors::pipeline::WhipPublish,
}

impl Handler<PublishWhip> for Supervisor {
    type Result = ResponseFuture<Result<crate::actors::pipeline::WhipSession, NodeError>>;
    fn handle(&mut self, msg: PublishWhip, _: &mut Context<Self>) -> Self::Result {
        self.to_pipeline(&msg.egress_id, msg.offer)
    }
}

/// A WHIP publisher ends its session of a running egress.
#[derive(Message)]
#[rtype(result = "Result<(), NodeError>")]
pub struct EndWhip {
    pub egress_id: String,
    pub end: crate::actors::pipeline::WhipEnd,
}

impl Handler<EndWhip> for Supervisor {
    type Result = ResponseFuture<Result<(), NodeError>>;
    fn handle(&mut self, msg: EndWhip, _: &mut Context<Self>) -> Self::Result {
        self.to_pipeline(&msg.egress_id, msg.end)
    }
}

/// Kill an egress's handler at once; returns its record. `Conflict` once it has ended.
#[derive(Message)]
#[rtype(result = "Result<EgressInfo, NodeError>")]
pub struct KillEgress {
    pub egress_id: String,
    pub reason: KillReason,
}

impl Handler<KillEgress> for Supervisor {
    type Result = ResponseFuture<Result<EgressInfo, NodeError>>;
    fn handle(&mut self, msg: KillEgress, _: &mut Context<Self>) -> Self::Result {
        let (info, p) = match self.running(&msg.egress_id) {
            Ok(r) => r,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (tx, rx) = oneshot::channel();
        self.waiters
            .entry(msg.egress_id.clone())
            .or_default()
            .push(tx);
        p.do_send(KillPipeline(msg.reason));
        // The answer shows the killed status once the handler is gone; a handler slow to be
        // reaped answers with the record as it is.
        Box::pin(async move {
            Ok(tokio::time::timeout(KILL_ANSWER_TIMEOUT, rx)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(info))
        })
    }
}

/// Stop (gracefully) or kill every running egress; returns how many were running.
#[derive(Message)]
#[rtype(result = "usize")]
pub enum EndAll {
    Stop(StopReason),
    Kill(KillReason),
}

impl Handler<EndAll> for Supervisor {
    type Result = usize;
    fn handle(&mut self, msg: EndAll, _: &mut Context<Self>) -> usize {
        for p in self.pipelines.values() {
            match msg {
                EndAll::Stop(r) => p.do_send(StopPipeline(r)),
                EndAll::Kill(r) => p.do_send(KillPipeline(r)),
            }
        }
        self.pipelines.len()
    }
}
