//! One redaction for every URL the service shows or logs (records, events, webhooks, the
//! manifest, errors, handler logs): what grants access is replaced by `{redacted}`, what helps an
//! operator find the thing (scheme, host, port, path) stays. The table in the tests is the
//! contract; the README repeats it.
//!
//! - `user:password@` (any scheme): `{redacted}@`.
//! - RTMP(S): the stream key, the last non-empty path segment, in every form
//!   (`/app/KEY`, `/app/KEY/`, `/KEY`).
//! - Query values (any scheme): every value but a few known harmless ones (`mode`, `latency`,
//!   `pbkeylen`, ...): `?token=`, SRT `passphrase` and `streamid`, signed-URL parameters.
//! - `test://` URIs carry no secret and stay as given; text that is not a URL is hidden whole.

/// What a hidden part reads as.
pub const MARK: &str = "{redacted}";

/// Query keys whose values are settings, never secrets.
const PLAIN_KEYS: &[&str] = &[
    "mode",
    "latency",
    "pbkeylen",
    "transport",
    "pattern",
    "wave",
    "freq",
    "width",
    "height",
    "fps",
];

/// `u` with its secrets replaced by `{redacted}`.
pub fn url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return MARK.into();
    };
    if scheme.eq_ignore_ascii_case("test") {
        return u.to_string();
    }
    // Only a web URL has a fragment: an SRT streamid may start with `#!::`.
    let web = ["http", "https"].contains(&scheme.to_ascii_lowercase().as_str());
    let (rest, fragment) = match rest.split_once('#').filter(|_| web) {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let auth_end = before_query.find('/').unwrap_or(before_query.len());
    let (auth, path) = before_query.split_at(auth_end);
    let host = match auth.rfind('@') {
        Some(at) => format!("{MARK}{}", &auth[at..]),
        None => auth.to_string(),
    };
    let path = if scheme.to_ascii_lowercase().starts_with("rtmp") {
        hide_last_segment(path)
    } else {
        path.to_string()
    };
    let mut out = format!("{scheme}://{host}{path}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(&hide_query_values(q));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// `text` with every URL of `urls` that it quotes replaced by its redacted form (a launch
/// line, a GStreamer error that names its location).
pub fn in_text<'a>(text: &str, urls: impl IntoIterator<Item = &'a str>) -> String {
    let mut urls: Vec<&str> = urls.into_iter().filter(|u| !u.is_empty()).collect();
    // The longest first: a URL that is a prefix of another must not break the longer one.
    urls.sort_by_key(|u| std::cmp::Reverse(u.len()));
    urls.into_iter()
        .fold(text.to_string(), |t, u| t.replace(u, &url(u)))
}

/// `/app/KEY` → `/app/{redacted}`, keeping a trailing slash; `/` and `` stay.
fn hide_last_segment(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    let Some(cut) = trimmed.rfind('/') else {
        return path.to_string();
    };
    if trimmed.len() == cut + 1 {
        return path.to_string();
    }
    format!("{}/{MARK}{}", &trimmed[..cut], &path[trimmed.len()..])
}

fn hide_query_values(q: &str) -> String {
    q.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if !PLAIN_KEYS.contains(&k.to_ascii_lowercase().as_str()) => {
                format!("{k}={MARK}")
            }
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The redaction table (README, "What the service shows of a URL").
    #[test]
    fn every_form_of_secret_is_hidden() {
        let table = [
            ("rtmp://h/live/KEY", "rtmp://h/live/{redacted}"),
            ("rtmp://h/live/KEY/", "rtmp://h/live/{redacted}/"),
            ("rtmp://h/KEY", "rtmp://h/{redacted}"),
            (
                "rtmps://h:443/app/sub/KEY?x=1",
                "rtmps://h:443/app/sub/{redacted}?x={redacted}",
            ),
            ("RTMP://h/app/KEY", "RTMP://h/app/{redacted}"),
            ("rtmp://h", "rtmp://h"),
            ("rtmp://h/", "rtmp://h/"),
            (
                "rtsp://u:p@cam:554/s?y=@",
                "rtsp://{redacted}@cam:554/s?y={redacted}",
            ),
            ("rtsp://user@cam/stream", "rtsp://{redacted}@cam/stream"),
            ("http://u:p@h/live.m3u8", "http://{redacted}@h/live.m3u8"),
            (
                "https://h/p.m3u8?token=abc&X-Amz-Signature=s",
                "https://h/p.m3u8?token={redacted}&X-Amz-Signature={redacted}",
            ),
            (
                "srt://h:9000?streamid=#!::r=live/k&passphrase=secret123&mode=caller&latency=200",
                "srt://h:9000?streamid={redacted}&passphrase={redacted}&mode=caller&latency=200",
            ),
            ("srt://h:9000?mode=listener", "srt://h:9000?mode=listener"),
            ("https://h/room#frag", "https://h/room#frag"),
            (
                "https://h/room?access_token=x#f",
                "https://h/room?access_token={redacted}#f",
            ),
            (
                "test://av?pattern=ball&freq=440",
                "test://av?pattern=ball&freq=440",
            ),
            ("redis://:pw@r:6379/0", "redis://{redacted}@r:6379/0"),
            ("not a url", "{redacted}"),
        ];
        for (given, shown) in table {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn a_quoted_url_is_redacted_in_text() {
        let t = "rtmpsink location=rtmp://h/live/KEY live=1 ! x location=rtmp://h/live/KEY2";
        assert_eq!(
            in_text(t, ["rtmp://h/live/KEY", "rtmp://h/live/KEY2"]),
            "rtmpsink location=rtmp://h/live/{redacted} live=1 ! x location=rtmp://h/live/{redacted}"
        );
    }
}
