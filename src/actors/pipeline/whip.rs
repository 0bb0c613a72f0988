//! A recording's WHIP sources: the publisher of each (one session at a time), its offer passed
//! to the handler and the answer passed back, and the token every publisher must show.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::*;

/// How long a publisher's offer may wait for the handler's answer (ICE gathering included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// The WHIP state of one recording.
#[derive(Default)]
pub(super) struct Whip {
    /// The session of each source that has a publisher now.
    sessions: HashMap<usize, String>,
    /// Offers sent to the handler, by session, waiting for its answer.
    pending: HashMap<String, oneshot::Sender<Result<String, String>>>,
}

/// A publisher's SDP offer for source `source`, with the bearer token it showed.
#[derive(Message)]
#[rtype(result = "Result<WhipSession, NodeError>")]
pub struct WhipPublish {
    pub source: usize,
    pub token: Option<String>,
    pub sdp: String,
}

/// What a publisher gets: its session's id (the `Location`) and the SDP answer.
#[derive(Debug, Clone)]
pub struct WhipSession {
    pub session: String,
    pub sdp: String,
}

/// A publisher ends session `session` of source `source` (DELETE).
#[derive(Message)]
#[rtype(result = "Result<(), NodeError>")]
pub struct WhipEnd {
    pub source: usize,
    pub session: String,
    pub token: Option<String>,
}

/// Compares in time independent of where the strings differ (a token guessed byte by byte).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Pipeline {
    /// 404 unless `source` is a WHIP source of this egress; 401 unless `token` is its token.
    fn whip_check(&self, source: usize, token: Option<&str>) -> Result<(), NodeError> {
        if !self.info.whip.iter().any(|w| w.source == source) {
            return Err(NodeError::NotFound(format!(
                "egress {} has no WHIP source {source}",
                self.info.egress_id
            )));
        }
        match (&self.info.whip_token, token) {
            (Some(t), Some(given)) if same(t, given) => Ok(()),
            _ => Err(NodeError::Unauthorized),
        }
    }

    fn set_publishing(&mut self, source: usize, on: bool) {
        if let Some(w) = self.info.whip.iter_mut().find(|w| w.source == source)
            && w.publishing != on
        {
            w.publishing = on;
            self.report();
        }
    }

    /// The handler answered offer `session`.
    pub(super) fn on_whip_answer(
        &mut self,
        session: String,
        sdp: Option<String>,
        error: Option<String>,
    ) {
        let ok = sdp.is_some();
        if let Some(tx) = self.whip.pending.remove(&session) {
            let _ = tx.send(sdp.ok_or_else(|| error.unwrap_or_else(|| "no answer".into())));
        }
        let source = self
            .whip
            .sessions
            .iter()
            .find(|(_, s)| **s == session)
            .map(|(k, _)| *k);
        if let Some(source) = source {
            if ok {
                self.set_publishing(source, true);
            } else {
                self.whip.sessions.remove(&source);
            }
        }
    }

    /// Source `source` stalled or was lost: its publisher is gone, a new one may come.
    pub(super) fn whip_gone(&mut self, source: usize) {
        if let Some(session) = self.whip.sessions.remove(&source) {
            // A publisher still waiting for its answer gets none (its POST fails).
            self.whip.pending.remove(&session);
            self.set_publishing(source, false);
        }
    }
}

impl Handler<WhipPublish> for Pipeline {
    type Result = ResponseFuture<Result<WhipSession, NodeError>>;
    fn handle(&mut self, msg: WhipPublish, _: &mut Context<Self>) -> Self::Result {
        let ready = |r| Box::pin(std::future::ready(r)) as Self::Result;
        if let Err(e) = self.whip_check(msg.source, msg.token.as_deref()) {
            return ready(Err(e));
        }
        if self.info.status.is_final() || self.info.status == EgressStatus::Ending || self.exited {
            return ready(Err(NodeError::Conflict(format!(
                "egress {} is {}: it takes no publisher",
                self.info.egress_id,
                self.info.status.as_str()
            ))));
        }
        if self.whip.sessions.contains_key(&msg.source) {
            return ready(Err(NodeError::Conflict(format!(
                "source {} already has a publisher: DELETE its session first",
                msg.source
            ))));
        }
        let Some(tx) = &self.commands else {
            return ready(Err(NodeError::Conflict("the handler is gone".into())));
        };
        let session = crate::model::random_alnum(16);
        let (answer_tx, answer_rx) = oneshot::channel();
        self.whip.pending.insert(session.clone(), answer_tx);
        self.whip.sessions.insert(msg.source, session.clone());
        let _ = tx.send(HandlerCommand::WhipOffer {
            source: msg.source,
            session: session.clone(),
            sdp: msg.sdp,
        });
        info!(self.log, "whip offer"; "source" => msg.source, "session" => &session);
        Box::pin(async move {
            match tokio::time::timeout(ANSWER_TIMEOUT, answer_rx).await {
                Ok(Ok(Ok(sdp))) => Ok(WhipSession { session, sdp }),
                Ok(Ok(Err(why))) => Err(NodeError::Request(RequestError::invalid("sdp", why))),
                _ => Err(NodeError::Unavailable(
                    "the recording did not answer the offer in time".into(),
                )),
            }
        })
    }
}

impl Handler<WhipEnd> for Pipeline {
    type Result = Result<(), NodeError>;
    fn handle(&mut self, msg: WhipEnd, _: &mut Context<Self>) -> Self::Result {
        self.whip_check(msg.source, msg.token.as_deref())?;
        if self.whip.sessions.get(&msg.source) != Some(&msg.session) {
            return Err(NodeError::NotFound(format!(
                "no session {} on source {}",
                msg.session, msg.source
            )));
        }
        info!(self.log, "whip session ended by its publisher"; "source" => msg.source);
        if let Some(tx) = &self.commands {
            let _ = tx.send(HandlerCommand::WhipEnd { source: msg.source });
        }
        self.whip_gone(msg.source);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same("wt_abc", "wt_abc"));
        assert!(!same("wt_abc", "wt_abd"));
        assert!(!same("wt_abc", "wt_ab"));
    }
}
