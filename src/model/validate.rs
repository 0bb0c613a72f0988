//! What a request that fails validation gets: each variant a 400 with its own code (the HTTP
//! mapping is `error::ApiError`'s), and the validation that turns a request into a spec.

use super::*;

/// A request that fails validation. Each variant is a 400 with its own code.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    UnknownType(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    SchemeNotAllowed(String),
}

impl RequestError {
    /// The same error with a field path prefix replaced (`outputs[0]` -> `output` for a request
    /// that used the single `output` form).
    pub fn reprefixed(self, from: &str, to: &str) -> Self {
        match self {
            RequestError::Invalid { field, message } if field.starts_with(from) => {
                RequestError::Invalid {
                    message: message.replacen(from, to, 1),
                    field: format!("{to}{}", &field[from.len()..]),
                }
            }
            other => other,
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        RequestError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
    pub fn field(&self) -> Option<&str> {
        match self {
            RequestError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Node-level limits and defaults that validation needs.
pub struct ValidationContext<'a> {
    pub output_dir: &'a Path,
    pub state_dir: &'a Path,
    pub allowed_schemes: &'a [String],
    /// `sources.allowed_web_hosts`: hosts a `web` egress may record (`*` all, `*.example.com`).
    pub allowed_web_hosts: &'a [String],
    /// `storage.allowed_endpoints`: hosts a request's upload target may name as `endpoint`.
    pub allowed_endpoints: &'a [String],
}

pub const MAX_ROOM_SOURCES: usize = 16;

impl EgressRequest {
    /// Checks every field and resolves defaults. Errors name the field.
    pub fn validate(
        &self,
        egress_id: &str,
        ctx: &ValidationContext<'_>,
    ) -> Result<EgressSpec, RequestError> {
        let egress_type = EgressType::parse(&self.egress_type).ok_or_else(|| {
            RequestError::UnknownType(format!(
                "unknown type '{}': expected one of track, track_composite, participant, room_composite, web",
                self.egress_type
            ))
        })?;
        let audio_on = self.audio.as_ref().is_none_or(AudioField::enabled);
        let sources = if egress_type == EgressType::Web {
            if !self.sources.is_empty() {
                return Err(RequestError::invalid(
                    "sources",
                    "a web egress records its url and takes no sources",
                ));
            }
            let url = self
                .url
                .as_deref()
                .ok_or_else(|| RequestError::invalid("url", "a web egress needs the page's url"))?;
            vec![parse_web_url(url, ctx.allowed_web_hosts, audio_on)?]
        } else {
            if self.url.is_some() {
                return Err(RequestError::invalid(
                    "url",
                    "only a web egress takes a url; other types take sources",
                ));
            }
            self.sources
                .iter()
                .enumerate()
                .map(|(i, s)| s.validate(ctx.allowed_schemes, &format!("sources[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
        };
        check_source_count(egress_type, &sources)?;

        let v = self.video.clone().unwrap_or_default();
        let video = VideoSettings {
            width: ranged("video.width", v.width.unwrap_or(1280), 16, 3840)? & !1,
            height: ranged("video.height", v.height.unwrap_or(720), 16, 2160)? & !1,
            fps: ranged("video.fps", v.fps.unwrap_or(30), 1, 60)?,
            bitrate_kbps: ranged(
                "video.bitrate_kbps",
                v.bitrate_kbps.unwrap_or(3000),
                100,
                50_000,
            )?,
        };
        let requested: Vec<OutputRequest> = match (&self.output, &self.outputs) {
            (Some(o), None) => vec![o.clone()],
            (None, Some(list)) => list.clone(),
            (Some(_), Some(_)) => {
                return Err(RequestError::invalid(
                    "outputs",
                    "give either output or outputs, not both",
                ));
            }
            (None, None) => {
                return Err(RequestError::invalid(
                    "outputs",
                    "an output is required: \"outputs\": [{\"file\": {\"filename\": \"name.mp4\"}}]",
                ));
            }
        };
        let values = TemplateValues {
            egress_id,
            egress_type,
            now_ms: now_ms(),
        };
        let outputs = outputs::resolve(
            &requested,
            ctx.output_dir,
            &values,
            (video.width, video.height),
        )
        .map_err(|e| match self.output {
            // Errors name the field as the client wrote it.
            Some(_) => e.reprefixed("outputs[0]", "output"),
            None => e,
        })?;
        let container = outputs.file.as_ref().map(|f| f.container);
        let a = self
            .audio
            .as_ref()
            .map(AudioField::settings)
            .unwrap_or_default();
        let default_codec = match container {
            Some(Container::Webm | Container::Ogg) => AudioCodec::Opus,
            _ => AudioCodec::Aac,
        };
        let codec = match a.codec.as_deref() {
            None => default_codec,
            Some("aac") => AudioCodec::Aac,
            Some("opus") => AudioCodec::Opus,
            Some(other) => {
                return Err(RequestError::invalid(
                    "audio.codec",
                    format!("unknown audio codec '{other}': expected aac or opus"),
                ));
            }
        };
        if matches!(container, Some(Container::Webm | Container::Ogg)) && codec == AudioCodec::Aac {
            return Err(RequestError::invalid(
                "audio.codec",
                "aac cannot be stored in webm or ogg: use opus",
            ));
        }
        let audio = AudioSettings {
            codec,
            bitrate_kbps: ranged("audio.bitrate_kbps", a.bitrate_kbps.unwrap_or(128), 8, 512)?,
            enabled: audio_on,
        };
        if let Some(d) = self.max_duration_s
            && !(d.is_finite() && d > 0.0 && d <= 7.0 * 86400.0)
        {
            return Err(RequestError::invalid(
                "max_duration_s",
                "must be a number of seconds in (0, 604800]",
            ));
        }
        if let Some(c) = self.estimated_cpu
            && !(c.is_finite() && (0.0..=256.0).contains(&c))
        {
            return Err(RequestError::invalid(
                "estimated_cpu",
                "must be a number of cores in [0, 256]",
            ));
        }
        if let Some(u) = &self.upload {
            u.validate().map_err(|(field, message)| {
                RequestError::invalid(&format!("upload.{field}"), message)
            })?;
            if let Some((field, endpoint)) = u.endpoint() {
                let host = hosts::host_port(endpoint)
                    .map(|(h, _)| h)
                    .unwrap_or_default();
                if hosts::listed(&host, ctx.allowed_endpoints) == hosts::Listed::No {
                    return Err(RequestError::invalid(
                        &format!("upload.{field}"),
                        format!(
                            "host '{host}' is not in storage.allowed_endpoints (a request's target may name only the endpoints the operator lists)"
                        ),
                    ));
                }
            }
        }
        Ok(EgressSpec {
            egress_id: egress_id.to_string(),
            egress_type,
            sources,
            video,
            audio,
            manifest_path: manifest_dir(&outputs, ctx.output_dir).join(format!("{egress_id}.json")),
            outputs,
            result_path: ctx
                .state_dir
                .join("egresses")
                .join(format!("{egress_id}.result.json")),
        })
    }
}

pub(super) fn ranged(field: &str, v: u32, lo: u32, hi: u32) -> Result<u32, RequestError> {
    if v < lo || v > hi {
        return Err(RequestError::invalid(
            field,
            format!("must be in [{lo}, {hi}], got {v}"),
        ));
    }
    Ok(v)
}

impl SourceRequest {
    /// The source this request names; errors name `field` (`sources[2]`).
    pub fn validate(
        &self,
        allowed_schemes: &[String],
        field: &str,
    ) -> Result<Source, RequestError> {
        match (&self.uri, &self.whip, &self.whep) {
            (Some(uri), None, None) => parse_source(uri, allowed_schemes, &format!("{field}.uri")),
            (None, Some(_), None) => Ok(Source::Whip),
            (None, None, Some(w)) => {
                let field = format!("{field}.whep.url");
                let scheme = w.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
                if !matches!(scheme.as_deref(), Some("http" | "https")) {
                    return Err(RequestError::invalid(
                        &field,
                        "a WHEP endpoint is an http:// or https:// URL",
                    ));
                }
                if w.token.as_ref().is_some_and(|t| {
                    t.is_empty() || t.len() > 4096 || t.chars().any(|c| c.is_control())
                }) {
                    return Err(RequestError::invalid(
                        &format!("{field}.token"),
                        "a token is 1 to 4096 characters, none of them control characters",
                    ));
                }
                match parse_source(&format!("whep+{}", w.url), allowed_schemes, &field)? {
                    Source::Whep { url, .. } => Ok(Source::Whep {
                        url,
                        token: w.token.clone(),
                    }),
                    other => Ok(other),
                }
            }
            _ => Err(RequestError::invalid(
                field,
                "give a source's uri, whip or whep, one of them",
            )),
        }
    }
}

fn check_source_count(t: EgressType, sources: &[Source]) -> Result<(), RequestError> {
    let n = sources.len();
    let ok = match t {
        EgressType::Track | EgressType::Participant => n == 1,
        EgressType::TrackComposite => n == 2 || n == 1,
        EgressType::RoomComposite => (1..=MAX_ROOM_SOURCES).contains(&n),
        EgressType::Web => n == 1,
    };
    if !ok {
        let want = match t {
            EgressType::Track | EgressType::Participant => "exactly 1 source".to_string(),
            EgressType::TrackComposite => "a video source and an audio source".to_string(),
            _ => format!("1 to {MAX_ROOM_SOURCES} sources"),
        };
        return Err(RequestError::invalid(
            "sources",
            format!("type {t} takes {want}, got {n}"),
        ));
    }
    if t == EgressType::TrackComposite {
        if n == 1 && sources[0].has_video() == Some(true) && sources[0].has_audio() == Some(false) {
            return Err(RequestError::invalid(
                "sources",
                "track_composite needs audio too: give a video source and an audio source",
            ));
        }
        if n == 2
            && (sources[0].has_video() == Some(false) || sources[1].has_audio() == Some(false))
        {
            return Err(RequestError::invalid(
                "sources",
                "track_composite takes the video source first and the audio source second",
            ));
        }
    }
    if t == EgressType::Participant
        && (sources[0].has_video() == Some(false) || sources[0].has_audio() == Some(false))
    {
        return Err(RequestError::invalid(
            "sources[0].uri",
            "participant needs a source with audio and video (e.g. test://av)",
        ));
    }
    Ok(())
}

/// Checks a web egress's URL: http or https, its host allowed by `sources.allowed_web_hosts`
/// (empty: web egress is off; `*`: any host; `*.example.com`: that domain and its subdomains).
/// The allow-list keeps the service from being pointed at internal addresses.
pub fn parse_web_url(url: &str, allowed: &[String], audio: bool) -> Result<Source, RequestError> {
    let field = "url";
    if url.len() > 4096 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RequestError::invalid(field, "not a valid URL"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(RequestError::invalid(
            field,
            format!("'{}' is not a URL", redact::url(url)),
        ));
    };
    if !["http", "https"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(RequestError::invalid(
            field,
            format!("a web egress records http:// or https:// pages, not {scheme}://"),
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    }
    .to_ascii_lowercase();
    if host.is_empty() {
        return Err(RequestError::invalid(
            field,
            format!("'{}' has no host", redact::url(url)),
        ));
    }
    if allowed.is_empty() {
        return Err(RequestError::invalid(
            field,
            "web egress is off on this node: list the hosts it may record in sources.allowed_web_hosts",
        ));
    }
    if hosts::listed(&host, allowed) == hosts::Listed::No {
        return Err(RequestError::invalid(
            field,
            format!("host '{host}' is not in sources.allowed_web_hosts"),
        ));
    }
    Ok(Source::Web {
        url: url.to_string(),
        audio,
    })
}

/// Parses and checks a source URI against the scheme allow-list.
pub fn parse_source(uri: &str, allowed: &[String], field: &str) -> Result<Source, RequestError> {
    if uri.len() > 4096 || uri.chars().any(|c| c.is_control()) {
        return Err(RequestError::invalid(field, "not a valid URI"));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(RequestError::invalid(
            field,
            format!("'{}' is not a URI (scheme://...)", redact::url(uri)),
        ));
    };
    let scheme_lc = scheme.to_ascii_lowercase();
    if scheme_lc.is_empty()
        || !scheme_lc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
    {
        return Err(RequestError::invalid(
            field,
            format!("'{}' has no valid scheme", redact::url(uri)),
        ));
    }
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&scheme_lc)) {
        return Err(RequestError::SchemeNotAllowed(format!(
            "{field}: scheme '{scheme_lc}' is not allowed (allowed: {})",
            allowed.join(", ")
        )));
    }
    if scheme_lc != "test" {
        if rest.is_empty() {
            return Err(RequestError::invalid(
                field,
                format!("'{}' has nothing after the scheme", redact::url(uri)),
            ));
        }
        if let Some(inner) = scheme_lc.strip_prefix("whep+") {
            if inner != "http" && inner != "https" {
                return Err(RequestError::invalid(
                    field,
                    "a WHEP endpoint is whep+http:// or whep+https://",
                ));
            }
            return Ok(Source::Whep {
                url: format!("{inner}://{rest}"),
                token: None,
            });
        }
        return Ok(Source::Uri {
            uri: uri.to_string(),
        });
    }
    let (kind, query) = rest.split_once('?').unwrap_or((rest, ""));
    let media = match kind.trim_end_matches('/') {
        "video" => TestMedia::Video,
        "audio" => TestMedia::Audio,
        "av" => TestMedia::Av,
        other => {
            return Err(RequestError::invalid(
                field,
                format!("unknown test source '{other}': expected video, audio or av"),
            ));
        }
    };
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(k.to_string(), v.to_string());
    }
    let word = |k: &str, default: &str, known: &[&str]| -> Result<String, RequestError> {
        let v = params.get(k).map(String::as_str).unwrap_or(default);
        if known.contains(&v) {
            Ok(v.to_string())
        } else {
            Err(RequestError::invalid(
                field,
                format!("test source {k}='{v}' is not one of {}", known.join(", ")),
            ))
        }
    };
    let num = |k: &str, default: u32, lo: u32, hi: u32| -> Result<u32, RequestError> {
        match params.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| {
                    RequestError::invalid(
                        field,
                        format!("test source {k}='{v}' must be in [{lo}, {hi}]"),
                    )
                }),
        }
    };
    for k in params.keys() {
        if !["pattern", "wave", "freq", "width", "height", "fps"].contains(&k.as_str()) {
            return Err(RequestError::invalid(
                field,
                format!("unknown test source parameter '{k}'"),
            ));
        }
    }
    let freq = match params.get("freq") {
        None => 440.0,
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && (1.0..=20_000.0).contains(f))
            .ok_or_else(|| {
                RequestError::invalid(
                    field,
                    format!("test source freq='{v}' must be in [1, 20000]"),
                )
            })?,
    };
    Ok(Source::Test {
        media,
        pattern: word("pattern", "ball", TEST_PATTERNS)?,
        wave: word("wave", "sine", TEST_WAVES)?,
        freq,
        width: num("width", 1280, 16, 3840)? & !1,
        height: num("height", 720, 16, 2160)? & !1,
        fps: num("fps", 30, 1, 60)?,
    })
}

/// videotestsrc patterns we accept (their GStreamer nicks).
pub const TEST_PATTERNS: &[&str] = &[
    "smpte",
    "snow",
    "black",
    "white",
    "red",
    "green",
    "blue",
    "checkers-1",
    "checkers-2",
    "checkers-4",
    "checkers-8",
    "circular",
    "blink",
    "smpte75",
    "zone-plate",
    "gamut",
    "chroma-zone-plate",
    "solid-color",
    "ball",
    "smpte100",
    "bar",
    "pinwheel",
    "spokes",
    "gradient",
    "colors",
];

/// audiotestsrc waves we accept (their GStreamer nicks).
pub const TEST_WAVES: &[&str] = &[
    "sine",
    "square",
    "saw",
    "triangle",
    "silence",
    "white-noise",
    "pink-noise",
    "sine-table",
    "ticks",
    "gaussian-noise",
    "red-noise",
    "blue-noise",
    "violet-noise",
];

/// Resolves a client filename inside `output_dir`, refusing anything that could escape it.
pub fn resolve_output_named(
    filename: &str,
    output_dir: &Path,
    field: &str,
) -> Result<FileOutput, RequestError> {
    let rel = outputs::relative(filename, field)?;
    let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("");
    let container = Container::from_extension(ext).ok_or_else(|| {
        RequestError::invalid(
            field,
            format!("'{filename}': extension must be mp4, mkv, webm or ogg"),
        )
    })?;
    Ok(FileOutput {
        filename: filename.to_string(),
        path: output_dir.join(rel),
        container,
    })
}

/// The directory of the first output that has one (file, playlist, images), else the output
/// directory: where the manifest goes.
fn manifest_dir(o: &OutputsSpec, output_dir: &Path) -> PathBuf {
    let first = o
        .file
        .as_ref()
        .and_then(|f| f.path.parent().map(Path::to_path_buf))
        .or_else(|| {
            o.segments
                .as_ref()
                .and_then(|s| s.playlist_path.parent().map(Path::to_path_buf))
        })
        .or_else(|| o.images.as_ref().map(|i| i.dir.clone()));
    first.unwrap_or_else(|| output_dir.to_path_buf())
}
