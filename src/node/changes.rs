//! What changes in a recording running on this node: its stream URLs, a room's sources, and
//! its WHIP publishers' sessions, each passed to the egress's Pipeline actor.

use super::*;

impl Node {
    /// Adds or removes stream URLs of an egress running here; None when it is not here.
    pub async fn change_streams(
        &self,
        id: &str,
        update: crate::model::StreamsUpdate,
    ) -> Result<Option<EgressInfo>, NodeError> {
        let r = self
            .inner
            .supervisor
            .send(crate::actors::supervisor::ChangeEgressStreams {
                egress_id: id.to_string(),
                update,
            })
            .await
            .map_err(NodeError::from_mailbox)?;
        super::here(r)
    }

    /// Sources join or leave a room running here (validated here: schemes are configuration);
    /// None when it is not here.
    pub async fn change_sources(
        &self,
        id: &str,
        update: crate::model::SourcesUpdate,
    ) -> Result<Option<EgressInfo>, NodeError> {
        let cfg = &self.inner.cfg;
        let mut add = Vec::new();
        for (i, s) in update.add.iter().enumerate() {
            let source = s.validate(&cfg.sources.allowed_schemes, &format!("add[{i}]"))?;
            if let crate::model::Source::Test { .. } = source {
                return Err(crate::error::RequestError::invalid(
                    &format!("add[{i}]"),
                    "a test source cannot join a recording room: give a uri or whip",
                )
                .into());
            }
            add.push((s.redacted(), source));
        }
        let base = self.inner.base_url.get().cloned().unwrap_or_default();
        let r = self
            .inner
            .supervisor
            .send(crate::actors::supervisor::ChangeEgressSources {
                egress_id: id.to_string(),
                change: crate::actors::pipeline::ChangeSources {
                    add,
                    remove: update.remove,
                    base_url: base,
                },
            })
            .await
            .map_err(NodeError::from_mailbox)?;
        super::here(r)
    }

    /// A WHIP publisher's offer for source `source` of egress `id` (running here).
    pub async fn whip_publish(
        &self,
        id: &str,
        offer: crate::actors::pipeline::WhipPublish,
    ) -> Result<crate::actors::pipeline::WhipSession, NodeError> {
        self.inner
            .supervisor
            .send(crate::actors::supervisor::PublishWhip {
                egress_id: id.to_string(),
                offer,
            })
            .await
            .map_err(NodeError::from_mailbox)?
    }

    /// A WHIP publisher ends its session.
    pub async fn whip_end(
        &self,
        id: &str,
        end: crate::actors::pipeline::WhipEnd,
    ) -> Result<(), NodeError> {
        self.inner
            .supervisor
            .send(crate::actors::supervisor::EndWhip {
                egress_id: id.to_string(),
                end,
            })
            .await
            .map_err(NodeError::from_mailbox)?
    }
}
