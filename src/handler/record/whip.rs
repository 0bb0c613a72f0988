//! WHIP sources in the handler: a publisher's offer becomes the source's connection (a
//! `webrtcbin` bin, `pipeline::source_whip`), answered from a thread of its own; its DELETE
//! loses the source as a stall does, so a publisher may come back within `source_reconnect_s`.

use slog::{info, warn};

use super::{Recording, SrcState};
use crate::handler::emit;
use crate::handler::protocol::HandlerEvent;
use crate::pipeline::announce::Announced;
use crate::pipeline::{plan, source_whip};

impl Recording<'_> {
    /// Source `source`'s publisher offers `sdp`: its session becomes the source's connection
    /// (replacing one that stalled); the answer goes out as `whip_answer` once ICE gathered.
    pub(super) fn whip_offer(&mut self, source: usize, session: String, sdp: &str) {
        let answer = |sdp: Option<String>, error: Option<String>| {
            emit(&HandlerEvent::WhipAnswer {
                session: session.clone(),
                sdp,
                error,
            })
        };
        let Some(k) = self
            .sources
            .iter()
            .position(|s| s.whip && s.index == source)
        else {
            return answer(None, Some(format!("source {source} is not a WHIP source")));
        };
        if self.stopping.is_some() {
            return answer(None, Some("the egress is ending".into()));
        }
        let caps = plan::copy_caps(self.spec);
        let webrtc = self.opts.webrtc.clone();
        let made = self.with_source(k, |r, src| {
            if src.bin.is_some() {
                // A new publisher replaces one that stopped sending.
                super::disconnect(&r.pipeline, src);
            }
            // Every offer after the first is a new connection (`src0_r1`, ...): an offer sets
            // `started`, which is the recording's epoch until then.
            if src.started != r.epoch {
                src.attempt += 1;
            }
            let (bin, held) =
                source_whip::connect(src.index, &src.name(), caps.as_deref(), &webrtc)?;
            r.adopt(src, bin.clone(), held)?;
            // The offer lists what the publisher sends: the graph waits for all of it (an
            // audio stream's pad shows only with its first packet, after the video's).
            src.announced = Some(offered(sdp));
            Ok::<_, crate::error::PipelineError>(bin)
        });
        let bin = match made {
            Ok(b) => b,
            Err(e) => return answer(None, Some(e.to_string())),
        };
        let copied = source_whip::copied_video(caps.as_deref());
        let listed = gstreamer_sdp::SDPMessage::parse_buffer(sdp.as_bytes())
            .map(|m| {
                let (v, a) = (
                    source_whip::codecs(&m, "video"),
                    source_whip::codecs(&m, "audio"),
                );
                format!("video {}; audio {}", v.join(" "), a.join(" "))
            })
            .unwrap_or_default();
        info!(self.log, "whip publisher offered"; "source" => source, "session" => &session,
              "codecs" => listed);
        let public_ip = self.opts.webrtc.public_ip.clone();
        let log = self.log.clone();
        let offer = sdp.to_string();
        std::thread::spawn(move || {
            let (sdp, error) =
                match source_whip::negotiate(&bin, &offer, &copied, public_ip.as_deref()) {
                    Ok(a) => (Some(a), None),
                    Err(e) => {
                        warn!(log, "whip offer refused"; "source" => source, "why" => &e);
                        (None, Some(e))
                    }
                };
            emit(&HandlerEvent::WhipAnswer {
                session,
                sdp,
                error,
            });
        });
    }

    /// The publisher of `source` ended its session: the source stalls (and is lost unless a
    /// publisher comes back).
    pub(super) fn whip_end(&mut self, source: usize) {
        let Some(k) = self
            .sources
            .iter()
            .position(|s| s.whip && s.index == source)
        else {
            return;
        };
        if self.sources[k].bin.is_none() {
            return;
        }
        match self.sources[k].state {
            SrcState::Live => self.stall(k, "the publisher ended its session"),
            _ => {
                warn!(self.log, "whip publisher left"; "source" => source);
                self.with_source(k, |r, src| super::disconnect(&r.pipeline, src));
            }
        }
    }
}

/// The kinds of media an SDP offer sends (m-lines not rejected with port 0).
fn offered(sdp: &str) -> Announced {
    let mut a = Announced::default();
    for l in sdp.lines() {
        let mut f = l.trim().split(' ');
        let (kind, port) = (f.next().unwrap_or(""), f.next().unwrap_or("0"));
        if port == "0" {
            continue;
        }
        match kind {
            "m=video" => a.video = true,
            "m=audio" => a.audio = true,
            _ => {}
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_announces_its_m_lines() {
        let a =
            offered("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\n");
        assert!(a.video && !a.audio);
    }
}
