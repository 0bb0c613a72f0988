//! A recording's stream URLs: which handler index each entry of `info.streams` is, their
//! states as the handler reports them, and changes asked over the API (validated,
//! rate-limited per egress, removed URLs leaving the record with a count).

use super::*;

impl Pipeline {
    /// The position in `info.streams` of `url` among the streams still live.
    pub(super) fn streaming(&self, url: &str) -> Option<usize> {
        self.stream_slots
            .iter()
            .enumerate()
            .position(|(p, (_, u))| {
                u == url && self.info.streams.get(p).is_some_and(|x| x.status.is_live())
            })
    }

    /// Drops entry `p` from the record (counted in `streams_removed`).
    fn drop_stream(&mut self, p: usize) {
        if p < self.stream_slots.len() && p < self.info.streams.len() {
            self.stream_slots.remove(p);
            self.info.streams.remove(p);
            self.info.streams_removed += 1;
        }
    }

    /// Keeps at most `MAX_STREAMS` streams that ended on their own, the latest.
    fn prune_streams(&mut self) {
        while self
            .info
            .streams
            .iter()
            .filter(|s| !s.status.is_live())
            .count()
            > MAX_STREAMS
        {
            match self.info.streams.iter().position(|s| !s.status.is_live()) {
                Some(p) => self.drop_stream(p),
                None => break,
            }
        }
    }

    pub(super) fn on_stream(&mut self, index: usize, status: StreamStatus, error: Option<String>) {
        // A stream removed from the record stays removed, whatever the handler says late.
        let Some(p) = self.stream_slots.iter().position(|(i, _)| *i == index) else {
            return;
        };
        let Some(s) = self.info.streams.get_mut(p) else {
            return;
        };
        if s.status == status && s.error == error && s.started_at.is_some() {
            return;
        }
        match status {
            StreamStatus::Active => {
                s.started_at.get_or_insert_with(now_ms);
            }
            StreamStatus::Retrying => {}
            StreamStatus::Failed | StreamStatus::Ended => {
                s.ended_at = Some(now_ms());
            }
        }
        if status == StreamStatus::Failed {
            warn!(self.log, "stream failed"; "url" => &s.url, "error" => error.clone());
            crate::metrics::METRICS
                .stream_failures_total
                .with_label_values(&[self.info.egress_type.as_str()])
                .inc();
        }
        s.status = status;
        s.error = error;
        self.prune_streams();
        self.report();
    }

    /// Counts a change against the egress's rate, or says when the next one is allowed.
    pub(super) fn rate_stream_change(&mut self) -> Result<(), NodeError> {
        let now = std::time::Instant::now();
        while self
            .stream_changes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= STREAM_WINDOW)
        {
            self.stream_changes.pop_front();
        }
        if self.stream_changes.len() >= STREAM_CHANGES {
            let oldest = self.stream_changes.front().copied().unwrap_or(now);
            let wait = STREAM_WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(NodeError::RateLimited {
                message: format!(
                    "at most {STREAM_CHANGES} stream changes in {} s per egress: retry in {} s",
                    STREAM_WINDOW.as_secs(),
                    wait.as_secs() + 1
                ),
                retry_after_s: wait.as_secs() + 1,
            });
        }
        self.stream_changes.push_back(now);
        Ok(())
    }
}

/// Stream changes one egress takes in `STREAM_WINDOW` (each restarts a sink and writes the
/// record, an event and a webhook: a client in a loop must not turn that into gigabytes).
const STREAM_CHANGES: usize = 30;
const STREAM_WINDOW: Duration = Duration::from_secs(60);

/// Add or remove stream URLs of a recording egress; answers its record.
#[derive(Message)]
#[rtype(result = "Result<EgressInfo, NodeError>")]
pub struct ChangeStreams(pub StreamsUpdate);

impl Handler<ChangeStreams> for Pipeline {
    type Result = Result<EgressInfo, NodeError>;
    fn handle(&mut self, msg: ChangeStreams, _: &mut Context<Self>) -> Self::Result {
        let u = msg.0;
        if self.stop_reason.is_some() || self.info.status == EgressStatus::Ending {
            return Err(NodeError::Conflict(format!(
                "egress {} is ending",
                self.info.egress_id
            )));
        }
        if !self.streamable {
            return Err(NodeError::Conflict(
                "this egress encodes no H.264: start it with a stream output to stream".into(),
            ));
        }
        let mut remove = Vec::new();
        for (k, url) in u.remove_urls.iter().enumerate() {
            match self.streaming(url) {
                Some(i) if !remove.contains(&i) => remove.push(i),
                Some(_) => {
                    return Err(NodeError::from(RequestError::invalid(
                        &format!("remove_urls[{k}]"),
                        "listed twice",
                    )));
                }
                None => {
                    return Err(NodeError::from(RequestError::invalid(
                        &format!("remove_urls[{k}]"),
                        format!("'{}' is not streaming in this egress", redact::url(url)),
                    )));
                }
            }
        }
        let active = self
            .info
            .streams
            .iter()
            .filter(|s| s.status.is_live())
            .count();
        if active.saturating_sub(remove.len()) + u.add_urls.len() > MAX_STREAMS {
            return Err(NodeError::from(RequestError::invalid(
                "add_urls",
                format!("at most {MAX_STREAMS} streams at once"),
            )));
        }
        for (k, url) in u.add_urls.iter().enumerate() {
            check_stream_url(url, &format!("add_urls[{k}]")).map_err(NodeError::from)?;
            if self.streaming(url).is_some() || u.add_urls[..k].contains(url) {
                return Err(NodeError::from(RequestError::invalid(
                    &format!("add_urls[{k}]"),
                    "already streaming to this URL",
                )));
            }
        }
        self.rate_stream_change()?;
        // Handler indexes of the removed, before their entries leave the record.
        let mut remove_positions = remove;
        remove_positions.sort_unstable();
        let remove: Vec<usize> = remove_positions
            .iter()
            .map(|&p| self.stream_slots[p].0)
            .collect();
        for &p in remove_positions.iter().rev() {
            self.drop_stream(p);
        }
        let mut add = Vec::new();
        for url in u.add_urls {
            let i = self.next_stream;
            self.next_stream += 1;
            self.stream_slots.push((i, url.clone()));
            self.info.streams.push(StreamInfo {
                url: redact::url(&url),
                status: StreamStatus::Active,
                started_at: None,
                ended_at: None,
                error: None,
            });
            add.push((i, url));
        }
        info!(self.log, "streams changed"; "added" => add.len(), "removed" => remove.len());
        if let Some(tx) = &self.commands {
            let _ = tx.send(HandlerCommand::Streams { add, remove });
        }
        self.report();
        Ok(self.info.clone())
    }
}
