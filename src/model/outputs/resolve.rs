//! Output requests resolved into the spec: name templates expanded, paths kept inside the
//! output directory, stream URLs checked, defaults and limits applied.

use std::path::{Component, Path, PathBuf};

use super::*;
use crate::model::EgressType;
use crate::model::RequestError;

/// Values the name templates take.
pub struct TemplateValues<'a> {
    pub egress_id: &'a str,
    pub egress_type: EgressType,
    /// Milliseconds since the Unix epoch (the request's time).
    pub now_ms: u64,
}

/// Expands `{egress_id}`, `{type}`, `{time}` (UTC `20261123T081500Z`) and `{date}`
/// (`2026-11-23`); any other `{...}` is an error naming it.
pub fn expand(template: &str, v: &TemplateValues<'_>, field: &str) -> Result<String, RequestError> {
    let (date, time) = utc(v.now_ms);
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| RequestError::invalid(field, format!("'{template}': unclosed '{{'")))?;
        match &after[..close] {
            "egress_id" => out.push_str(v.egress_id),
            "type" => out.push_str(v.egress_type.as_str()),
            "time" => out.push_str(&time),
            "date" => out.push_str(&date),
            other => {
                return Err(RequestError::invalid(
                    field,
                    format!(
                        "'{template}': unknown template '{{{other}}}' (known: {{egress_id}}, {{type}}, {{time}}, {{date}})"
                    ),
                ));
            }
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(RequestError::invalid(
            field,
            format!("'{template}': unmatched '}}'"),
        ));
    }
    out.push_str(rest);
    Ok(out)
}

/// (`YYYY-MM-DD`, `YYYYMMDDTHHMMSSZ`) of a Unix time in ms, UTC.
fn utc(ms: u64) -> (String, String) {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let sod = secs % 86400;
    let (y, m, d) = crate::model::civil_from_days(days);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        ),
    )
}

/// A relative path inside the output directory: no `..`, no root, no control characters.
pub fn relative(name: &str, field: &str) -> Result<PathBuf, RequestError> {
    if name.is_empty() || name.len() > 1024 || name.chars().any(|c| c.is_control()) {
        return Err(RequestError::invalid(
            field,
            "must be a non-empty relative path",
        ));
    }
    let rel = Path::new(name);
    for c in rel.components() {
        if !matches!(c, Component::Normal(_) | Component::CurDir) {
            return Err(RequestError::invalid(
                field,
                format!("'{name}' must be a relative path inside the output directory"),
            ));
        }
    }
    if name.ends_with('/') {
        return Err(RequestError::invalid(
            field,
            format!("'{name}' names a directory, not a file"),
        ));
    }
    Ok(rel.to_path_buf())
}

/// `dir` and file stem of a prefix (`rec/a/seg` -> (`output_dir/rec/a`, `seg`)).
fn split_prefix(
    prefix: &str,
    output_dir: &Path,
    field: &str,
) -> Result<(PathBuf, String), RequestError> {
    let rel = relative(prefix, field)?;
    let stem = rel
        .file_name()
        .and_then(|s| s.to_str())
        .ok_or_else(|| RequestError::invalid(field, format!("'{prefix}' has no file name part")))?
        .to_string();
    if stem.len() > 200 {
        return Err(RequestError::invalid(
            field,
            format!("'{prefix}': the name part is longer than 200 bytes"),
        ));
    }
    let dir = rel
        .parent()
        .map(|p| output_dir.join(p))
        .unwrap_or_else(|| output_dir.to_path_buf());
    Ok((dir, stem))
}

/// Stream URLs an egress sends to at once.
pub const MAX_STREAMS: usize = 8;

/// Checks a stream URL: rtmp, rtmps or srt, with a host; no characters that would need quoting.
pub fn check_stream_url(url: &str, field: &str) -> Result<(), RequestError> {
    // The URL is quoted redacted as an RTMP URL (its last segment hidden) whatever its
    // scheme: a key sent with a mistyped scheme is still a key.
    let shown = match url.split_once("://") {
        Some((_, rest)) => crate::model::redact::url(&format!("rtmp://{rest}")),
        None => crate::model::redact::MARK.to_string(),
    };
    let bad = |why: &str| RequestError::invalid(field, format!("'{shown}': {why}"));
    if url.len() > 2048
        || url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        return Err(bad("not a valid URL"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("not a URL (rtmp://, rtmps:// or srt://)"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !["rtmp", "rtmps", "srt"].contains(&scheme.as_str()) {
        return Err(bad("streams go to rtmp://, rtmps:// or srt:// URLs"));
    }
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if scheme != "srt" && rest.split('/').filter(|s| !s.is_empty()).count() < 2 {
        return Err(bad(
            "an RTMP URL needs an application path: rtmp://host/app/key",
        ));
    }
    Ok(())
}

/// The request's outputs with every stream URL redacted (what EgressInfo echoes).
pub fn redacted(outputs: &[OutputRequest]) -> Vec<OutputRequest> {
    outputs
        .iter()
        .map(|o| match o {
            OutputRequest::Stream(s) => OutputRequest::Stream(StreamRequest {
                urls: s
                    .urls
                    .iter()
                    .map(|u| crate::model::redact::url(u))
                    .collect(),
            }),
            other => other.clone(),
        })
        .collect()
}

/// Resolves the requested outputs: templates, defaults, paths inside `output_dir`, at most one
/// output of each kind (one `stream` output holds every URL), distinct paths.
pub fn resolve(
    outputs: &[OutputRequest],
    output_dir: &Path,
    v: &TemplateValues<'_>,
    video: (u32, u32),
) -> Result<OutputsSpec, RequestError> {
    let mut spec = OutputsSpec::default();
    if outputs.is_empty() {
        return Err(RequestError::invalid(
            "outputs",
            "at least one output is required, e.g. [{\"file\": {\"filename\": \"a.mp4\"}}]",
        ));
    }
    for (i, o) in outputs.iter().enumerate() {
        let at = format!("outputs[{i}]");
        let dup = |kind: &str| {
            RequestError::invalid(&at, format!("at most one {kind} output per egress"))
        };
        match o {
            OutputRequest::File(f) => {
                if spec.file.is_some() {
                    return Err(dup("file"));
                }
                let field = format!("{at}.file.filename");
                let name = expand(
                    f.filename.as_deref().unwrap_or("{egress_id}.mp4"),
                    v,
                    &field,
                )?;
                spec.file = Some(crate::model::resolve_output_named(
                    &name, output_dir, &field,
                )?);
            }
            OutputRequest::Segments(s) => {
                if spec.segments.is_some() {
                    return Err(dup("segments"));
                }
                let pf = format!("{at}.segments.prefix");
                let prefix = expand(s.prefix.as_deref().unwrap_or("{egress_id}"), v, &pf)?;
                let (dir, stem) = split_prefix(&prefix, output_dir, &pf)?;
                let plf = format!("{at}.segments.playlist");
                let playlist = match &s.playlist {
                    Some(p) => expand(p, v, &plf)?,
                    None => format!("{prefix}.m3u8"),
                };
                let playlist_path = output_dir.join(m3u8(&playlist, &plf)?);
                let d = s.segment_duration_s.unwrap_or(6.0);
                if !(d.is_finite() && (1.0..=60.0).contains(&d)) {
                    return Err(RequestError::invalid(
                        &format!("{at}.segments.segment_duration_s"),
                        "must be a number of seconds in [1, 60]",
                    ));
                }
                let live = match &s.live_playlist {
                    None => None,
                    Some(l) => {
                        let lf = format!("{at}.segments.live_playlist.name");
                        let name = match &l.name {
                            Some(n) => expand(n, v, &lf)?,
                            None => format!("{prefix}_live.m3u8"),
                        };
                        let path = output_dir.join(m3u8(&name, &lf)?);
                        let len = l.length.unwrap_or(6);
                        if !(1..=1000).contains(&len) {
                            return Err(RequestError::invalid(
                                &format!("{at}.segments.live_playlist.length"),
                                "must be in [1, 1000]",
                            ));
                        }
                        Some((name, path, len))
                    }
                };
                spec.segments = Some(SegmentsOutput {
                    prefix,
                    dir,
                    stem,
                    playlist,
                    playlist_path,
                    segment_duration_s: d,
                    live,
                });
            }
            OutputRequest::Stream(s) => {
                if spec.stream {
                    return Err(dup("stream"));
                }
                spec.stream = true;
                for (k, u) in s.urls.iter().enumerate() {
                    check_stream_url(u, &format!("{at}.stream.urls[{k}]"))?;
                    if spec.stream_urls.contains(u) {
                        return Err(RequestError::invalid(
                            &format!("{at}.stream.urls[{k}]"),
                            "the same URL is listed twice",
                        ));
                    }
                    spec.stream_urls.push(u.clone());
                }
                if spec.stream_urls.len() > MAX_STREAMS {
                    return Err(RequestError::invalid(
                        &format!("{at}.stream.urls"),
                        format!("at most {MAX_STREAMS} stream URLs per egress"),
                    ));
                }
            }
            OutputRequest::Images(im) => {
                if spec.images.is_some() {
                    return Err(dup("images"));
                }
                let pf = format!("{at}.images.prefix");
                let prefix = expand(im.prefix.as_deref().unwrap_or("{egress_id}"), v, &pf)?;
                let (dir, stem) = split_prefix(&prefix, output_dir, &pf)?;
                let interval_s = im.interval_s.unwrap_or(10.0);
                if !(interval_s.is_finite() && (1.0..=86400.0).contains(&interval_s)) {
                    return Err(RequestError::invalid(
                        &format!("{at}.images.interval_s"),
                        "must be a number of seconds in [1, 86400]",
                    ));
                }
                let width = crate::model::ranged(
                    &format!("{at}.images.width"),
                    im.width.unwrap_or(video.0),
                    16,
                    3840,
                )? & !1;
                let height = crate::model::ranged(
                    &format!("{at}.images.height"),
                    im.height.unwrap_or(video.1),
                    16,
                    2160,
                )? & !1;
                spec.images = Some(ImagesOutput {
                    prefix,
                    dir,
                    stem,
                    interval_s,
                    width,
                    height,
                });
            }
        }
    }
    // Two outputs of one egress never write the same file.
    let mut paths: Vec<PathBuf> = Vec::new();
    paths.extend(spec.file.iter().map(|f| f.path.clone()));
    if let Some(s) = &spec.segments {
        paths.push(s.playlist_path.clone());
        paths.extend(s.live.iter().map(|l| l.1.clone()));
        paths.push(s.dir.join(format!("{}_00000.ts", s.stem)));
    }
    if let Some(im) = &spec.images {
        paths.push(im.dir.join(format!("{}_00000.jpg", im.stem)));
    }
    for (i, p) in paths.iter().enumerate() {
        if paths[..i].contains(p) {
            return Err(RequestError::invalid(
                "outputs",
                format!(
                    "two outputs would write the same file '{}'",
                    p.strip_prefix(output_dir).unwrap_or(p).display()
                ),
            ));
        }
    }
    Ok(spec)
}

fn m3u8(name: &str, field: &str) -> Result<PathBuf, RequestError> {
    let rel = relative(name, field)?;
    if !name.to_ascii_lowercase().ends_with(".m3u8") {
        return Err(RequestError::invalid(
            field,
            format!("'{name}': a playlist name ends with .m3u8"),
        ));
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> TemplateValues<'static> {
        TemplateValues {
            egress_id: "EG_abc",
            egress_type: EgressType::Participant,
            // 2026-11-23 08:15:00 UTC
            now_ms: 1_795_421_700_000,
        }
    }

    #[test]
    fn templates_expand_and_unknown_ones_are_refused() {
        let v = values();
        assert_eq!(
            expand("rec/{date}/{type}-{egress_id}-{time}.mp4", &v, "f").unwrap(),
            "rec/2026-11-23/participant-EG_abc-20261123T081500Z.mp4"
        );
        let e = expand("a{room}.mp4", &v, "outputs[0].file.filename").unwrap_err();
        assert!(e.to_string().contains("{room}"), "{e}");
        assert!(expand("a{egress_id.mp4", &v, "f").is_err());
        assert!(expand("a}.mp4", &v, "f").is_err());
        assert_eq!(utc(0), ("1970-01-01".into(), "19700101T000000Z".into()));
        assert_eq!(utc(951_782_400_000).0, "2000-02-29");
    }

    #[test]
    fn stream_urls_are_checked() {
        assert!(check_stream_url("rtmp://h/app/key", "u").is_ok());
        assert!(check_stream_url("srt://127.0.0.1:9000", "u").is_ok());
        for bad in [
            "http://h/a/b",
            "rtmp://h",
            "rtmp:///app/k",
            "rtmp://h/a/k k",
            "nothing",
        ] {
            assert!(check_stream_url(bad, "u").is_err(), "{bad}");
        }
        let e = check_stream_url("http://h/app/secretkey", "u").unwrap_err();
        assert!(!e.to_string().contains("secretkey"), "{e}");
    }

    #[test]
    fn outputs_resolve_with_defaults_and_limits() {
        let dir = Path::new("/rec");
        let v = values();
        let outs: Vec<OutputRequest> = serde_json::from_value(serde_json::json!([
            {"file": {}},
            {"segments": {"prefix": "hls/{egress_id}", "live_playlist": {}}},
            {"stream": {"urls": ["rtmp://h/app/k"]}},
            {"images": {"prefix": "img/x", "width": 321}}
        ]))
        .unwrap();
        let s = resolve(&outs, dir, &v, (1280, 720)).unwrap();
        assert_eq!(s.file.as_ref().unwrap().path, Path::new("/rec/EG_abc.mp4"));
        let seg = s.segments.as_ref().unwrap();
        assert_eq!(
            (seg.dir.as_path(), seg.stem.as_str()),
            (Path::new("/rec/hls"), "EG_abc")
        );
        assert_eq!(seg.playlist, "hls/EG_abc.m3u8");
        assert_eq!(seg.live.as_ref().unwrap().0, "hls/EG_abc_live.m3u8");
        assert_eq!(seg.segment_duration_s, 6.0);
        let im = s.images.as_ref().unwrap();
        assert_eq!((im.width, im.height, im.interval_s), (320, 720, 10.0));
        assert_eq!(s.count(), 4);
        assert!(s.wants_h264());

        let two: Vec<OutputRequest> = serde_json::from_value(
            serde_json::json!([{"file": {}}, {"file": {"filename": "b.mkv"}}]),
        )
        .unwrap();
        let e = resolve(&two, dir, &v, (1280, 720)).unwrap_err();
        assert!(e.to_string().contains("at most one file"), "{e}");
        let clash: Vec<OutputRequest> = serde_json::from_value(serde_json::json!([
            {"segments": {"prefix": "a", "playlist": "x.m3u8", "live_playlist": {"name": "x.m3u8"}}}
        ]))
        .unwrap();
        assert!(resolve(&clash, dir, &v, (1280, 720)).is_err());
        for bad in [
            serde_json::json!([{"segments": {"prefix": "../x"}}]),
            serde_json::json!([{"segments": {"playlist": "a.txt"}}]),
            serde_json::json!([{"segments": {"segment_duration_s": 0.5}}]),
            serde_json::json!([{"images": {"interval_s": 0}}]),
            serde_json::json!([{"stream": {"urls": ["rtmp://h/a/k", "rtmp://h/a/k"]}}]),
            serde_json::json!([]),
        ] {
            let outs: Vec<OutputRequest> = serde_json::from_value(bad.clone()).unwrap();
            assert!(resolve(&outs, dir, &v, (1280, 720)).is_err(), "{bad}");
        }
    }
}
