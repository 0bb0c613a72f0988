//! WHEP sources: the handler plays a WebRTC stream from an SFU or media server. Each
//! connection is a `webrtcbin` bin like a WHIP publisher's (`source_whip::connect`), but this
//! side offers: recvonly video and audio, POSTed to the endpoint (`Authorization: Bearer` when
//! a token is given), the answer played; the session's `Location` is DELETEd when the
//! connection is dropped (the end, a stall, a room's source leaving).
//!
//! The exchange blocks on `webrtcbin` and on HTTP, so it runs on a thread of its own
//! (`play`); what goes wrong is posted on the bus as the bin's error, which the handler treats
//! as any source's failure (a failed start before media, a stall after).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use super::announce::{self, Announced};
use super::source_whip::{codecs, local_sdp_gathered, reply, webrtc_name};

/// What the offer proposes, by payload type: H.264 first when copied, else VP8 first (what
/// every SFU forwards).
const H264: &str = "application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload=102,\
     packetization-mode=(string)1,profile-level-id=(string)42e01f";
const VP8: &str = "application/x-rtp,media=video,encoding-name=VP8,clock-rate=90000,payload=96";
const VP9: &str = "application/x-rtp,media=video,encoding-name=VP9,clock-rate=90000,payload=98";
const OPUS: &str = "application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111,\
     encoding-params=(string)2";

/// How long the endpoint may take to answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One WHEP source: its endpoint, its token, and the session of its current connection.
#[derive(Debug, Clone)]
pub struct Whep {
    pub url: String,
    pub token: Option<String>,
    /// The current connection's session (each connection gets its own: `begin`).
    session: Arc<Mutex<Session>>,
}

/// One connection's session: its URL once the endpoint answered, and whether the connection
/// ended (an answer that comes after that is ended at once).
#[derive(Debug, Default)]
struct Session {
    location: Option<String>,
    ended: bool,
    /// DELETEs sent and not yet answered (`wait_ended` waits for them).
    deleting: Vec<std::thread::JoinHandle<()>>,
}

impl Whep {
    pub fn new(url: String, token: Option<String>) -> Whep {
        Whep {
            url,
            token,
            session: Arc::default(),
        }
    }

    /// A new connection: the last one's session is ended, and this one gets its own.
    pub fn begin(&mut self) {
        self.end();
        let deleting = self.take_deleting();
        self.session = Arc::new(Mutex::new(Session {
            deleting,
            ..Session::default()
        }));
    }

    /// Ends the current connection's session: DELETE its URL once known (on a thread: the
    /// endpoint may be slow).
    pub fn end(&self) {
        let Ok(mut s) = self.session.lock() else {
            return;
        };
        s.ended = true;
        if let Some(location) = s.location.take() {
            s.delete(location, self.token.clone());
        }
    }

    /// Ends the session and waits (at most `HTTP_TIMEOUT`) for its DELETEs to be answered:
    /// the handler's last step, so the endpoint does not keep a session nobody plays.
    pub fn end_and_wait(&self) {
        self.end();
        let deleting = self.take_deleting();
        let since = Instant::now();
        for d in deleting {
            while !d.is_finished() && since.elapsed() < HTTP_TIMEOUT {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The DELETEs sent and not yet known to be answered.
    fn take_deleting(&self) -> Vec<std::thread::JoinHandle<()>> {
        self.session
            .lock()
            .map(|mut s| std::mem::take(&mut s.deleting))
            .unwrap_or_default()
    }

    /// The endpoint answered this connection with session `location`.
    fn answered(&self, location: String) {
        let Ok(mut s) = self.session.lock() else {
            return;
        };
        if s.ended {
            s.delete(location, self.token.clone());
        } else {
            s.location = Some(location);
        }
    }
}

impl Session {
    /// DELETEs session `location` on a thread of its own (kept, so the end can wait for it).
    fn delete(&mut self, location: String, token: Option<String>) {
        self.deleting.push(std::thread::spawn(move || {
            let mut req = agent().delete(&location);
            if let Some(t) = &token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            let _ = req.call();
        }));
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// Offers to play `whep`'s stream on the `webrtcbin` of `bin` (source `index`), from a thread:
/// the endpoint's answer is played and its m-lines announced; a refusal is the bin's error.
pub fn play(bin: gst::Element, index: usize, whep: Whep, copied: Vec<&'static str>) {
    std::thread::spawn(move || match exchange(&bin, &whep, &copied) {
        Ok(a) => announce::post(&bin, index, a),
        Err((code, text)) => {
            let msg = gst::message::Error::builder(code, &text).src(&bin).build();
            let _ = bin.post_message(msg);
        }
    });
}

/// The offer, the POST and the answer; the streams the answer accepts.
fn exchange(
    bin: &gst::Element,
    whep: &Whep,
    copied: &[&str],
) -> Result<Announced, (gst::ResourceError, String)> {
    let failed = |text: String| (gst::ResourceError::OpenRead, text);
    let webrtc = bin
        .downcast_ref::<gst::Bin>()
        .and_then(|b| b.by_name(&webrtc_name(&bin.name())))
        .ok_or_else(|| failed("no webrtcbin".into()))?;
    // The first connection is made before the pipeline plays: webrtcbin takes no offer
    // while it is still in Null.
    let since = Instant::now();
    while webrtc.current_state() == gst::State::Null {
        if since.elapsed() > HTTP_TIMEOUT {
            return Err(failed("the WebRTC connection did not start".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the graph copies first (H.264 for an MP4 track, VP8/VP9 for WebM), then the rest.
    let mut video = vec![VP8, VP9, H264];
    if copied.contains(&"H264") {
        video = vec![H264, VP8, VP9];
    }
    let video = video.join(";");
    for caps in [video.as_str(), OPUS] {
        let caps: gst::Caps = caps.parse().map_err(|_| failed("bad caps".into()))?;
        webrtc.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
        );
    }
    let offer = reply(
        |p| webrtc.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &p]),
        "the offer",
    )
    .map_err(failed)?
    .and_then(|s| s.get::<gst_webrtc::WebRTCSessionDescription>("offer").ok())
    .ok_or_else(|| failed("webrtcbin made no offer".into()))?;
    // This side takes the DTLS client role (`active`): an endpoint that starts ICE as soon as
    // it answered would otherwise send its DTLS hello before the answer is played here, which
    // webrtcbin, not yet knowing its role, fails on ("Fatal SSL error").
    let text = offer.sdp().as_text().map_err(|e| failed(e.to_string()))?;
    let text = text.replace("a=setup:actpass", "a=setup:active");
    let offer = gst_sdp::SDPMessage::parse_buffer(text.as_bytes())
        .map(|m| gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, m))
        .map_err(|_| failed("webrtcbin's offer is not SDP".into()))?;
    reply(
        |p| webrtc.emit_by_name::<()>("set-local-description", &[&offer, &p]),
        "the offer",
    )
    .map_err(failed)?;
    // No trickle: the offer goes out with every candidate.
    let sdp = local_sdp_gathered(&webrtc).map_err(failed)?;

    let mut req = agent()
        .post(&whep.url)
        .header("Content-Type", "application/sdp");
    if let Some(t) = &whep.token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.send(sdp.as_bytes()).map_err(|e| {
        let text = crate::model::redact::in_text(&e.to_string(), [whep.url.as_str()]);
        failed(format!("the WHEP endpoint cannot be reached: {text}"))
    })?;
    let status = resp.status().as_u16();
    if status != 201 && status != 200 {
        let code = match status {
            401 | 403 => gst::ResourceError::NotAuthorized,
            404 => gst::ResourceError::NotFound,
            _ => gst::ResourceError::OpenRead,
        };
        return Err((code, format!("the WHEP endpoint answered HTTP {status}")));
    }
    if let Some(location) = resp.headers().get("location").and_then(|v| v.to_str().ok()) {
        whep.answered(resolve(&whep.url, location));
    }
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| failed(format!("the WHEP answer cannot be read: {e}")))?;
    let answer = gst_sdp::SDPMessage::parse_buffer(text.as_bytes())
        .map_err(|_| failed("the WHEP endpoint's answer is not SDP".into()))?;
    let announced = Announced {
        video: accepted(&answer, "video"),
        audio: accepted(&answer, "audio"),
    };
    let answer =
        gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, answer);
    reply(
        |p| webrtc.emit_by_name::<()>("set-remote-description", &[&answer, &p]),
        "the answer",
    )
    .map_err(failed)?;
    super::source_whip::verify_peer(&webrtc, bin, &text);
    Ok(announced)
}

/// Whether the answer accepts a `kind` m-line (a port, a codec, and a direction that sends).
fn accepted(sdp: &gst_sdp::SDPMessageRef, kind: &str) -> bool {
    sdp.medias().any(|m| {
        m.media() == Some(kind)
            && m.port() != 0
            && m.attribute_val("inactive").is_none()
            && m.attribute_val("recvonly").is_none()
    }) && !codecs(sdp, kind).is_empty()
}

/// `location` (absolute, or relative to the endpoint `url`) as an absolute URL.
pub fn resolve(url: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let host = rest.split('/').next().unwrap_or(rest);
    if location.starts_with('/') {
        return format!("{scheme}://{host}{location}");
    }
    let dir = url.rsplit_once('/').map(|(d, _)| d).unwrap_or(url);
    format!("{dir}/{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_location_is_resolved_against_the_endpoint() {
        let url = "https://sfu.example.com:8443/whep/room1";
        assert_eq!(
            resolve(url, "/whep/room1/s1"),
            "https://sfu.example.com:8443/whep/room1/s1"
        );
        assert_eq!(resolve(url, "s1"), "https://sfu.example.com:8443/whep/s1");
        assert_eq!(resolve(url, "http://other/x"), "http://other/x");
    }
}
