//! The one place GStreamer errors become the texts users read in `error`. GStreamer's own texts
//! say what failed inside an element ("Could not open resource for reading and writing.",
//! "Internal data stream error."); a user wants to know what happened to their source. The raw
//! text stays in the handler's `debug` field and log.

/// A bus error (or warning), as much as the mapping needs of it.
#[derive(Debug, Clone, Default)]
pub struct Failure<'a> {
    /// Factory of the element that posted it (`rtmp2src`, `souphttpsrc`, `mp4mux`, ...).
    pub factory: &'a str,
    /// `gst-resource-error-quark`, `gst-stream-error-quark`, ...
    pub domain: &'a str,
    /// The error code within its domain (`gst::ResourceError` for resource errors).
    pub code: i32,
    pub message: &'a str,
    pub debug: &'a str,
    /// The source URI, when the element belongs to a URI source.
    pub uri: Option<&'a str>,
    /// Whether this source connection had delivered media before.
    pub had_media: bool,
    /// For a failure with no reason given (souphttpsrc says only "Internal data stream error"):
    /// whether a plain TCP connect to the URI's host and port was refused.
    pub tcp_refused: Option<bool>,
}

/// What kind of failure this is, for users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ConnectionRefused,
    SourceNotFound,
    NotAuthorized,
    ConnectionLost,
    /// None of the above: GStreamer's own message is the best there is.
    Other,
}

impl Kind {
    pub fn text(self) -> &'static str {
        match self {
            Kind::ConnectionRefused => "connection refused",
            Kind::SourceNotFound => "source not found",
            Kind::NotAuthorized => "not authorized",
            Kind::ConnectionLost => "connection lost",
            Kind::Other => "",
        }
    }
}

// GstResourceError codes.
const NOT_FOUND: i32 = 3;
const OPEN_READ: i32 = 5;
const OPEN_READ_WRITE: i32 = 7;
const READ: i32 = 9;
const NOT_AUTHORIZED: i32 = 15;

const SOURCE_FACTORIES: &[&str] = &[
    "rtmp2src",
    "rtmpsrc",
    "srtsrc",
    "souphttpsrc",
    "rtspsrc",
    "filesrc",
    "udpsrc",
    "tcpclientsrc",
    "hlsdemux",
    "dashdemux",
];

pub fn classify(f: &Failure<'_>) -> Kind {
    let all = format!("{} {}", f.message, f.debug).to_ascii_lowercase();
    let has = |s: &str| all.contains(s);
    let resource = f.domain == "gst-resource-error-quark";
    if (resource && f.code == NOT_AUTHORIZED)
        || has("401")
        || has("403")
        || has("unauthorized")
        || has("forbidden")
    {
        return Kind::NotAuthorized;
    }
    if (resource && f.code == NOT_FOUND)
        || has("404")
        || has("not found")
        || has("no such file")
        || has("stream not found")
    {
        return Kind::SourceNotFound;
    }
    if has("connection refused") || f.tcp_refused == Some(true) {
        return Kind::ConnectionRefused;
    }
    if f.had_media && (resource || SOURCE_FACTORIES.contains(&f.factory)) {
        return Kind::ConnectionLost;
    }
    if f.factory == "rtspsrc" && has("failed to connect") {
        return Kind::ConnectionRefused;
    }
    // SRT runs over UDP: no listener looks like a connection that never completes.
    if f.factory == "srtsrc" && (has("connection timeout") || has("connection setup failure")) {
        return Kind::ConnectionRefused;
    }
    if resource && matches!(f.code, OPEN_READ | OPEN_READ_WRITE | READ) && f.uri.is_some() {
        return Kind::ConnectionRefused;
    }
    Kind::Other
}

/// The user's text for `f`: "<kind>: <uri>" for a source failure, else GStreamer's message.
/// Never empty and never starting with ": ".
pub fn user_text(f: &Failure<'_>) -> String {
    let kind = classify(f);
    let uri = f.uri.map(redact);
    match (kind, uri) {
        (Kind::Other, Some(uri)) => format!("source {uri} failed: {}", clean(f.message)),
        (Kind::Other, None) => clean(f.message),
        (k, Some(uri)) => format!("{}: {uri}", k.text()),
        (k, None) => k.text().to_string(),
    }
}

/// A source that showed no streams before the start deadline.
pub fn no_streams(uri: &str, secs: f64) -> String {
    format!(
        "source not found: {} sent no media within {secs} s",
        redact(uri)
    )
}

/// A source that announced video but sent no keyframe (or no video at all) in time.
pub fn no_keyframe(uri: &str, secs: f64) -> String {
    format!(
        "no keyframe from source {} within {secs} s (pipeline.first_keyframe_s): its encoder's keyframe interval is longer, or it sends no video",
        redact(uri)
    )
}

fn clean(message: &str) -> String {
    let m = message
        .trim()
        .trim_start_matches(':')
        .trim()
        .trim_end_matches('.');
    if m.is_empty() {
        "pipeline error".to_string()
    } else {
        m.to_string()
    }
}

/// The URI as errors show it (they end up in records, events and logs).
pub fn redact(uri: &str) -> String {
    crate::model::redact::url(uri)
}

/// `host:port` of a URI with a default port per scheme, for the TCP check.
pub fn host_port(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..auth_end];
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    let has_port = match host.rsplit_once(':') {
        Some((h, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'),
        None => false,
    } && !host.ends_with(']');
    if has_port {
        return Some(host.to_string());
    }
    let port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        "rtmp" => 1935,
        "rtsp" => 554,
        _ => return None,
    };
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f<'a>(factory: &'a str, code: i32, message: &'a str, debug: &'a str) -> Failure<'a> {
        Failure {
            factory,
            domain: "gst-resource-error-quark",
            code,
            message,
            debug,
            uri: Some("rtmp://u:secret@127.0.0.1:1935/live/x"),
            ..Failure::default()
        }
    }

    #[test]
    fn source_failures_read_as_what_happened_to_the_source() {
        let refused = f(
            "rtmp2src",
            5,
            "Connection refused: Could not connect to 127.0.0.1: Connection refused",
            "",
        );
        assert_eq!(
            user_text(&refused),
            "connection refused: rtmp://{redacted}@127.0.0.1:1935/live/{redacted}"
        );
        let rtsp = f(
            "rtspsrc",
            7,
            "Could not open resource for reading and writing.",
            "Failed to connect. (Generic error)",
        );
        assert_eq!(classify(&rtsp), Kind::ConnectionRefused);
        let lost = Failure {
            had_media: true,
            ..f("rtspsrc", 7, "Could not open resource for reading.", "")
        };
        assert_eq!(classify(&lost), Kind::ConnectionLost);
        assert!(!user_text(&lost).contains("Could not open resource"));
        let srt = f(
            "srtsrc",
            9,
            "Error on SRT socket: Connection timeout. Trying to reconnect",
            "",
        );
        assert_eq!(classify(&srt), Kind::ConnectionRefused);
        let http = Failure {
            domain: "gst-stream-error-quark",
            code: 1,
            tcp_refused: Some(true),
            ..f(
                "souphttpsrc",
                1,
                "Internal data stream error.",
                "reason error (-5)",
            )
        };
        assert_eq!(classify(&http), Kind::ConnectionRefused);
        assert!(!user_text(&http).contains("Internal data stream error"));
        let missing = f("souphttpsrc", 3, "Not Found (404), URL: http://x/y", "");
        assert_eq!(classify(&missing), Kind::SourceNotFound);
        let auth = f("rtspsrc", 15, "Unauthorized", "");
        assert_eq!(classify(&auth), Kind::NotAuthorized);
    }

    #[test]
    fn other_errors_keep_gstreamer_text_but_never_start_with_a_colon() {
        let e = Failure {
            factory: "mp4mux",
            domain: "gst-stream-error-quark",
            message: ": Could not multiplex stream.",
            ..Failure::default()
        };
        assert_eq!(user_text(&e), "Could not multiplex stream");
        let empty = Failure::default();
        assert_eq!(user_text(&empty), "pipeline error");
        assert!(!no_streams("rtmp://a/b", 3.0).starts_with(": "));
    }

    #[test]
    fn uris_lose_credentials_and_get_default_ports() {
        assert_eq!(
            redact("rtsp://a:b@cam/x?y=@"),
            "rtsp://{redacted}@cam/x?y={redacted}"
        );
        assert_eq!(
            redact("srt://h:1?streamid=x"),
            "srt://h:1?streamid={redacted}"
        );
        assert_eq!(host_port("http://h/x.m3u8").as_deref(), Some("h:80"));
        assert_eq!(host_port("http://u@h:8080/x").as_deref(), Some("h:8080"));
        assert_eq!(
            host_port("rtmp://127.0.0.1/live").as_deref(),
            Some("127.0.0.1:1935")
        );
        assert_eq!(
            host_port("srt://127.0.0.1:9/").as_deref(),
            Some("127.0.0.1:9")
        );
        assert_eq!(host_port("file:///x"), None);
    }
}
