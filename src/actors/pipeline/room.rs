//! A room's sources while it records: who joins and leaves (`POST /v1/egress/{id}/sources`),
//! with stable ids in the record (`info.sources`), and those the handler reports lost while
//! the rest of the room goes on.

use super::*;
use crate::model::{EgressType, MAX_ROOM_SOURCES, Source, SourceInfo, SourceRequest, WhipInfo};

/// Sources join (`add`: as requested, redacted, and as validated) and leave (`remove`: ids) a
/// recording room; answers its record. `base_url`: this node's, for a WHIP source's URL.
#[derive(Message)]
#[rtype(result = "Result<EgressInfo, NodeError>")]
pub struct ChangeSources {
    pub add: Vec<(SourceRequest, Source)>,
    pub remove: Vec<usize>,
    pub base_url: String,
}

impl Handler<ChangeSources> for Pipeline {
    type Result = Result<EgressInfo, NodeError>;
    fn handle(&mut self, msg: ChangeSources, _: &mut Context<Self>) -> Self::Result {
        if self.info.egress_type != EgressType::RoomComposite {
            return Err(NodeError::Conflict(format!(
                "egress {} is a {}: only a room_composite takes sources while it records",
                self.info.egress_id,
                self.info.egress_type.as_str()
            )));
        }
        // Until the room records, its graph is still being decided from the request's sources.
        if self.stop_reason.is_some() || self.info.status != EgressStatus::Active || self.exited {
            return Err(NodeError::Conflict(format!(
                "egress {} is {}: a room takes source changes while it records (active)",
                self.info.egress_id,
                self.info.status.as_str()
            )));
        }
        for (k, id) in msg.remove.iter().enumerate() {
            let present = self.info.sources.iter().any(|s| s.id == *id && s.present());
            if !present || msg.remove[..k].contains(id) {
                return Err(NodeError::from(RequestError::invalid(
                    &format!("remove[{k}]"),
                    format!("no source {id} in this room (or listed twice)"),
                )));
            }
        }
        let present = self.info.sources.iter().filter(|s| s.present()).count();
        let after = present + msg.add.len() - msg.remove.len();
        if after == 0 {
            return Err(NodeError::Conflict(
                "a room keeps at least one source: stop the egress to end it".into(),
            ));
        }
        if after > MAX_ROOM_SOURCES {
            return Err(NodeError::from(RequestError::invalid(
                "add",
                format!("a room holds at most {MAX_ROOM_SOURCES} sources, this would make {after}"),
            )));
        }
        self.rate_stream_change()?;
        let now = now_ms();
        for id in &msg.remove {
            if let Some(s) = self.info.sources.iter_mut().find(|s| s.id == *id) {
                s.removed_at = Some(now);
            }
            // Its URL takes no publisher any more.
            self.whip_gone(*id);
            self.info.whip.retain(|w| w.source != *id);
        }
        let mut add = Vec::new();
        for (shown, source) in msg.add {
            let id = self.info.sources.len();
            if matches!(source, Source::Whip) {
                self.info.whip.push(WhipInfo {
                    source: id,
                    url: format!("{}/v1/whip/{}/{id}", msg.base_url, self.info.egress_id),
                    publishing: false,
                });
                if self.info.whip_token.is_none() {
                    self.info.whip_token = Some(crate::model::new_whip_token());
                }
            }
            self.info.sources.push(SourceInfo {
                id,
                source: shown,
                added_at: Some(now),
                removed_at: None,
                lost_at: None,
            });
            add.push((id, source));
        }
        info!(self.log, "sources changed"; "added" => add.len(), "removed" => msg.remove.len());
        crate::metrics::METRICS
            .source_events_total
            .with_label_values(&["joined"])
            .inc_by(add.len() as u64);
        crate::metrics::METRICS
            .source_events_total
            .with_label_values(&["removed"])
            .inc_by(msg.remove.len() as u64);
        if let Some(tx) = &self.commands {
            let _ = tx.send(HandlerCommand::Sources {
                add,
                remove: msg.remove,
            });
        }
        self.report();
        Ok(self.info.clone())
    }
}

impl Pipeline {
    /// The handler gave up on room source `source` while others send: its tile stays.
    pub(super) fn on_source_left(&mut self, source: usize) {
        warn!(self.log, "room source lost; the room goes on"; "source" => source);
        self.whip_gone(source);
        // It is lost until removed: its WHIP URL takes no publisher (404), and the recording
        // is no longer judged up to its stall.
        self.info.whip.retain(|w| w.source != source);
        self.stalled_at = None;
        crate::metrics::METRICS
            .source_events_total
            .with_label_values(&["lost"])
            .inc();
        if let Some(s) = self.info.sources.iter_mut().find(|s| s.id == source) {
            s.lost_at.get_or_insert_with(now_ms);
            self.report();
        }
    }
}
