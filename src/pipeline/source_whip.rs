//! WHIP sources: one `webrtcbin` per publish session, in a bin of its own that shows the
//! decoded (or, for a `track` copy, parsed) streams as pads, held like a URI connection's
//! (`source_uri::hold`), so the rest of the handler treats a publisher as one more connection.
//!
//! ```text
//!   src0 (bin)
//!     webrtcbin (recvonly, ICE by libnice) ─ RTP ─► decodebin3 caps=... ─► ghost video_0 / audio_0
//! ```
//!
//! The SDP exchange blocks on `webrtcbin`'s promises and its ICE gathering, so it runs on a
//! thread of its own (`negotiate`), never on the handler's main loop.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use super::source_uri::{self, Held};
use crate::error::PipelineError;
use crate::model::WebrtcOptions;

/// What each offered m-line may carry: the codecs the graph takes from a publisher.
const VIDEO_CAPS: &str = "application/x-rtp,media=video,encoding-name=H264,clock-rate=90000;\
     application/x-rtp,media=video,encoding-name=VP8,clock-rate=90000;\
     application/x-rtp,media=video,encoding-name=VP9,clock-rate=90000";
const AUDIO_CAPS: &str = "application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000";

/// How long each step of the exchange may take, and ICE gathering in all.
const STEP: Duration = Duration::from_secs(5);
const GATHERING: Duration = Duration::from_secs(3);

/// The name of the `webrtcbin` inside source bin `name`.
pub fn webrtc_name(name: &str) -> String {
    format!("{name}_webrtc")
}

/// A bin named `name` holding a `webrtcbin` for source `index`: its media pads are held and
/// announced as a URI connection's are. `caps`: what may leave undecoded (a `track` copy).
pub fn connect(
    index: usize,
    name: &str,
    caps: Option<&str>,
    opts: &WebrtcOptions,
) -> Result<(gst::Element, Arc<Held>), PipelineError> {
    let bin = gst::Bin::with_name(name);
    let webrtc = gst::ElementFactory::make("webrtcbin")
        .name(webrtc_name(name))
        .build()
        .map_err(|_| PipelineError::MissingElement("webrtcbin (gstreamer1.0-nice)".into()))?;
    webrtc.set_property_from_str("bundle-policy", "max-bundle");
    if let Some(s) = &opts.stun_server {
        webrtc.set_property("stun-server", s);
    }
    if let Some(t) = &opts.turn_server {
        webrtc.set_property("turn-server", t);
    }
    if let Some((min, max)) = opts.udp_ports {
        let ice = webrtc.property::<gst::glib::Object>("ice-agent");
        ice.set_property("min-rtp-port", min as u32);
        ice.set_property("max-rtp-port", max as u32);
    }
    bin.add(&webrtc)?;
    let element = bin.clone().upcast::<gst::Element>();
    let held = Held::of(&element, false);
    // A keyframe is asked for (PLI) whenever a depayloader sees loss.
    bin.connect_deep_element_added(|_, _, e| {
        if e.has_property("request-keyframe") {
            e.set_property("request-keyframe", true);
        }
    });
    let caps: gst::Caps = caps
        .unwrap_or("video/x-raw(ANY);audio/x-raw(ANY)")
        .parse()
        .map_err(|_| PipelineError::Build("bad caps".into()))?;
    let weak = bin.downgrade();
    let h = held.clone();
    webrtc.connect_pad_added(move |_, pad| {
        if pad.direction() != gst::PadDirection::Src {
            return;
        }
        let Some(bin) = weak.upgrade() else { return };
        let Ok(dec) = gst::ElementFactory::make("decodebin3")
            .property("caps", &caps)
            .build()
        else {
            return;
        };
        if bin.add(&dec).is_err() {
            return;
        }
        let _ = dec.sync_state_with_parent();
        let outer = bin.downgrade();
        let h = h.clone();
        dec.connect_pad_added(move |_, p| {
            let Some(bin) = outer.upgrade() else { return };
            let Ok(ghost) = gst::GhostPad::builder_with_target(p).map(|b| b.build()) else {
                return;
            };
            let _ = ghost.set_active(true);
            if bin.add_pad(&ghost).is_err() {
                return;
            }
            let video = source_uri::caps_name(ghost.upcast_ref()).starts_with("video/");
            source_uri::hold(bin.upcast_ref(), ghost.upcast_ref(), index, &h);
            if video {
                // Start from a keyframe now, not at the publisher's next one (PLI).
                let ev = gst::event::CustomUpstream::new(
                    gst::Structure::builder("GstForceKeyUnit")
                        .field("all-headers", true)
                        .build(),
                );
                // An upstream event: sent into the pad (from outside), not pushed out of it.
                ghost.send_event(ev);
            }
        });
        if let Some(sink) = dec.static_pad("sink") {
            let _ = pad.link(&sink);
        }
    });
    Ok((element, held))
}

/// Waits for a `webrtcbin` promise's reply.
pub(super) fn reply(
    f: impl FnOnce(gst::Promise),
    what: &str,
) -> Result<Option<gst::Structure>, String> {
    let (tx, rx) = mpsc::channel();
    let promise = gst::Promise::with_change_func(move |r| {
        let _ = tx.send(r.ok().flatten().map(|s| s.to_owned()));
    });
    f(promise);
    let r = rx
        .recv_timeout(STEP)
        .map_err(|_| format!("{what}: no answer from webrtcbin"))?;
    if let Some(s) = &r
        && let Ok(e) = s.get::<gst::glib::Error>("error")
    {
        return Err(format!("{what}: {}", e.message()));
    }
    Ok(r)
}

/// Plays `offer` (an SDP offer from a publisher) on the `webrtcbin` of `bin` and returns the
/// SDP answer once ICE has gathered its candidates (no trickle: WHIP answers hold them all).
/// `copied`: the video codecs the graph copies (`copied_video`); when the publisher offers one,
/// only those are answered (browsers list VP8 before H.264). `Err` says why in words for the
/// publisher (a bad offer above all).
pub fn negotiate(
    bin: &gst::Element,
    offer: &str,
    copied: &[&str],
    public_ip: Option<&str>,
) -> Result<String, String> {
    let webrtc = bin
        .downcast_ref::<gst::Bin>()
        .and_then(|b| b.by_name(&webrtc_name(&bin.name())))
        .ok_or("no webrtcbin")?;
    let offer_text = offer;
    let sdp = gst_sdp::SDPMessage::parse_buffer(offer.as_bytes())
        .map_err(|_| "the body is not an SDP offer".to_string())?;
    let kinds: Vec<String> = sdp
        .medias()
        .map(|m| m.media().unwrap_or_default().to_string())
        .collect();
    if !kinds.iter().any(|k| k == "video" || k == "audio") {
        return Err("the offer has no audio or video".into());
    }
    let offered = codecs(&sdp, "video");
    let video = if offered.iter().any(|c| copied.contains(&c.as_str())) {
        VIDEO_CAPS
            .split(';')
            .filter(|c| {
                copied
                    .iter()
                    .any(|n| c.contains(&format!("encoding-name={n},")))
            })
            .collect::<Vec<_>>()
            .join(";")
    } else {
        VIDEO_CAPS.to_string()
    };
    for k in &kinds {
        let caps: gst::Caps = match k.as_str() {
            "video" => video.parse().map_err(|_| "caps")?,
            "audio" => AUDIO_CAPS.parse().map_err(|_| "caps")?,
            _ => continue,
        };
        webrtc.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
        );
    }
    let offer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, sdp);
    reply(
        |p| webrtc.emit_by_name::<()>("set-remote-description", &[&offer, &p]),
        "the offer",
    )?;
    let answer = reply(
        |p| webrtc.emit_by_name::<()>("create-answer", &[&None::<gst::Structure>, &p]),
        "the answer",
    )?
    .and_then(|s| s.get::<gst_webrtc::WebRTCSessionDescription>("answer").ok())
    .ok_or("no codec of the offer can be recorded (H.264, VP8, VP9, Opus)")?;
    reply(
        |p| webrtc.emit_by_name::<()>("set-local-description", &[&answer, &p]),
        "the answer",
    )?;
    verify_peer(&webrtc, bin, offer_text);
    let text = local_sdp_gathered(&webrtc)?;
    Ok(match public_ip {
        Some(ip) => with_public_ip(&text, ip),
        None => text,
    })
}

/// Fails the session of `bin` (its error on the bus) when the peer's DTLS certificate is not
/// the one whose fingerprint its SDP (`remote_sdp`) gave: GStreamer 1.22's webrtcbin does not
/// check it, so anyone who could reach the session's port could have taken the publisher's place.
/// Only SHA-256 fingerprints are checked (what browsers, OBS and SFUs send).
pub fn verify_peer(webrtc: &gst::Element, bin: &gst::Element, remote_sdp: &str) {
    let Some(want) = fingerprint(remote_sdp) else {
        return;
    };
    // Bundled: every stream shares the first transceiver's transport.
    let Some(transport) = webrtc
        .emit_by_name::<Option<gst_webrtc::WebRTCRTPTransceiver>>("get-transceiver", &[&0i32])
        .and_then(|t| t.receiver())
        .and_then(|r| r.transport())
    else {
        return;
    };
    let bin = bin.downgrade();
    // Checked once the handshake is done (webrtcbin does not notify the certificate itself).
    transport.connect_state_notify(move |t| {
        if t.state() != gst_webrtc::WebRTCDTLSTransportState::Connected {
            return;
        }
        let Some(pem) = t.remote_certificate() else {
            return;
        };
        if pem_fingerprint(&pem).is_some_and(|got| got.eq_ignore_ascii_case(&want)) {
            return;
        }
        if let Some(bin) = bin.upgrade() {
            let text = "the peer's DTLS certificate does not match the fingerprint in its SDP";
            let msg = gst::message::Error::builder(gst::ResourceError::NotAuthorized, text)
                .src(&bin)
                .build();
            let _ = bin.post_message(msg);
        }
    });
}

/// The SHA-256 fingerprint an SDP gives (`AB:CD:...`), from its session or its first m-line.
pub fn fingerprint(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|l| {
        let v = l.trim().strip_prefix("a=fingerprint:")?;
        let (alg, fp) = v.split_once(' ')?;
        alg.eq_ignore_ascii_case("sha-256")
            .then(|| fp.trim().to_string())
    })
}

/// The SHA-256 fingerprint of a PEM certificate, as SDP writes it.
fn pem_fingerprint(pem: &str) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let digest = sha2::Sha256::digest(&der);
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// The RTP encoding names of the video codecs a graph with `caps` (`plan::copy_caps`) copies.
pub fn copied_video(caps: Option<&str>) -> Vec<&'static str> {
    let caps = caps.unwrap_or_default();
    [
        ("video/x-h264", "H264"),
        ("video/x-vp8", "VP8"),
        ("video/x-vp9", "VP9"),
    ]
    .into_iter()
    .filter(|(c, _)| caps.contains(c))
    .map(|(_, n)| n)
    .collect()
}

/// The encoding names (upper case) an SDP's `kind` m-lines list, in their order.
pub fn codecs(sdp: &gst_sdp::SDPMessageRef, kind: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in sdp.medias().filter(|m| m.media() == Some(kind)) {
        for a in m.attributes().filter(|a| a.key() == "rtpmap") {
            let name = a
                .value()
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.split('/').next())
                .map(str::to_ascii_uppercase);
            if let Some(n) = name
                && !out.contains(&n)
            {
                out.push(n);
            }
        }
    }
    out
}

/// The local description once ICE has gathered its candidates (at most `GATHERING`): no
/// trickle, the SDP holds them all.
pub(super) fn local_sdp_gathered(webrtc: &gst::Element) -> Result<String, String> {
    let since = Instant::now();
    while webrtc.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state")
        != gst_webrtc::WebRTCICEGatheringState::Complete
        && since.elapsed() < GATHERING
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let local = webrtc
        .property::<Option<gst_webrtc::WebRTCSessionDescription>>("local-description")
        .ok_or("no local description")?;
    local.sdp().as_text().map_err(|e| e.to_string())
}

/// `sdp` with each IPv4 host candidate offered again at `ip` (a node behind 1:1 NAT).
pub fn with_public_ip(sdp: &str, ip: &str) -> String {
    let mut out = String::with_capacity(sdp.len() * 2);
    for line in sdp.split_inclusive('\n') {
        out.push_str(line);
        let l = line.trim_end();
        if let Some(rest) = l.strip_prefix("a=candidate:")
            && l.contains(" typ host")
        {
            let f: Vec<&str> = rest.split(' ').collect();
            if f.len() > 5 && f[4].parse::<std::net::Ipv4Addr>().is_ok() && f[4] != ip {
                let mut g = f.clone();
                let foundation = format!("{}9", f[0]);
                g[0] = &foundation;
                g[4] = ip;
                out.push_str(&format!("a=candidate:{}\r\n", g.join(" ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_matches_the_fingerprint_its_sdp_gave() {
        // A self-signed certificate, and its fingerprint as `openssl x509 -fingerprint -sha256`
        // printed it.
        let pem = "-----BEGIN CERTIFICATE-----\n\
             MIIBfTCCASOgAwIBAgIUVDHtIVciN6+NAXDaq6wQqXBOLwIwCgYIKoZIzj0EAwIw\n\
             FDESMBAGA1UEAwwJd2VicnRjLWl0MB4XDTI2MTIwNTA1MTIxNFoXDTM2MTIwMjA1\n\
             MTIxNFowFDESMBAGA1UEAwwJd2VicnRjLWl0MFkwEwYHKoZIzj0CAQYIKoZIzj0D\n\
             AQcDQgAE4r35lNCJw8RDB8QVBGmdDYnCyabSn+7y2LK+QOfAhMvle3gUQWILwCq5\n\
             3FY/qYkbQ463nXyuztSYSnM3uQA1wKNTMFEwHQYDVR0OBBYEFJfHLn+0jMlNmS9w\n\
             KlSRi8o4jFm6MB8GA1UdIwQYMBaAFJfHLn+0jMlNmS9wKlSRi8o4jFm6MA8GA1Ud\n\
             EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgCvlqn3haQx5UByLtNgGcuCBd\n\
             LqSXCqfU0rZ+bL+j/gYCIQC9h+Vt1hicRLvmbjHnk3ppwN0Ipy7TJu1KD8nXir0P\n\
             gg==\n\
             -----END CERTIFICATE-----\n";
        let want = "F5:99:79:3D:F3:6F:78:91:C6:1E:D5:5F:7A:BF:6E:D9:A4:F8:34:91:51:22:6A:13:5A:5C:94:97:02:4C:A6:CE";
        assert_eq!(pem_fingerprint(pem).as_deref(), Some(want));
        let sdp =
            format!("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=fingerprint:sha-256 {want}\r\n");
        assert_eq!(fingerprint(&sdp).as_deref(), Some(want));
        assert_eq!(fingerprint("v=0\r\na=fingerprint:sha-1 AB:CD\r\n"), None);
    }

    #[test]
    fn codecs_are_read_per_kind_in_their_order() {
        gst::init().expect("gstreamer");
        let sdp = gst_sdp::SDPMessage::parse_buffer(
            b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
              m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\na=rtpmap:96 VP8/90000\r\n\
              a=rtpmap:97 rtx/90000\r\na=rtpmap:102 H264/90000\r\n\
              m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
        )
        .expect("sdp");
        assert_eq!(codecs(&sdp, "video"), ["VP8", "RTX", "H264"]);
        assert_eq!(codecs(&sdp, "audio"), ["OPUS"]);
    }

    #[test]
    fn a_public_ip_adds_a_candidate_beside_each_ipv4_host_one() {
        let sdp = "v=0\r\na=candidate:1 1 UDP 2015363327 10.0.0.5 50000 typ host\r\n\
                   a=candidate:2 1 UDP 2015363327 fd00::2 50001 typ host\r\n";
        let out = with_public_ip(sdp, "203.0.113.7");
        assert!(out.contains("a=candidate:19 1 UDP 2015363327 203.0.113.7 50000 typ host\r\n"));
        assert_eq!(out.matches("a=candidate:").count(), 3, "{out}");
    }
}
