//! What a client sends: `POST /v1/egress`'s body, as given (validated into a spec by `validate`).

use super::*;

/// `POST /v1/egress` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    /// One of the egress types, as a string (kept raw so an unknown type gets its own error).
    #[serde(rename = "type")]
    #[schema(
        pattern = "^(track|track_composite|participant|room_composite|web)$",
        example = "track"
    )]
    pub egress_type: String,
    /// The inputs: one for track/participant, video+audio for track_composite, 1..16 for rooms;
    /// none for `web` (it records `url`).
    #[serde(default)]
    #[schema(max_items = 16)]
    pub sources: Vec<SourceRequest>,
    /// `web`: the page to record (`http(s)://`, its host in `sources.allowed_web_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4096, example = "https://example.com/room")]
    pub url: Option<String>,
    /// One output (the form older clients send): `{"file": {"filename": "a.mp4"}}`. Give this or
    /// `outputs`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputRequest>,
    /// Every output of the egress, all fed by one encode: at most one `file`, one `segments` and
    /// one `images`, and one `stream` with any number of URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 4)]
    pub outputs: Option<Vec<OutputRequest>>,
    /// Video encoding overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoRequest>,
    /// Audio: encoding overrides, or `false` to record no audio (`true`: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioField>,
    /// Stop the egress after this many seconds with status `limit_reached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 604800)]
    pub max_duration_s: Option<f64>,
    /// Overrides the type's configured CPU cost for admission, in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 256)]
    pub estimated_cpu: Option<f64>,
    /// Where the outputs are uploaded (overrides `storage.upload`); secrets are never echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<upload::UploadTarget>,
}

/// One input: a URI the handler opens, a WebRTC publisher that pushes to the egress over
/// WHIP, or a WebRTC stream the egress pulls over WHEP. Exactly one of the three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, max_properties = 1)]
pub struct SourceRequest {
    /// `scheme://...` with a scheme in `sources.allowed_schemes`; `test://video|audio|av?pattern=
    /// ball&wave=sine&freq=440&width=1280&height=720&fps=30` is a synthetic live source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 4096,
        pattern = "^[A-Za-z0-9+.-]+://[^\\x00-\\x1f\\x7f-\\x9f]+$",
        example = "test://av?pattern=ball&freq=440"
    )]
    pub uri: Option<String>,
    /// `{}`: a WebRTC publisher (browser, OBS, encoder, SFU) sends this source to the egress's
    /// `whip[].url` with its `whip_token` (WHIP, RFC 9725).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whip: Option<WhipRequest>,
    /// A WebRTC stream to play (WHEP): an SFU's or a media server's endpoint; the egress
    /// POSTs its offer there and DELETEs the session at the end (`whep+https://...` as a `uri`
    /// is the same, without a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whep: Option<WhepRequest>,
}

/// Where a WHEP source plays from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhepRequest {
    /// The WHEP endpoint, `http(s)://...` (its scheme, as `whep+https`, must be in
    /// `sources.allowed_schemes`).
    #[schema(max_length = 4096, example = "https://sfu.example.com/whep/room1")]
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`; `[redacted]` in records, events and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 4096)]
    pub token: Option<String>,
}

/// Sources to add to a recording `room_composite` and ids of sources to remove
/// (`POST /v1/egress/{id}/sources`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourcesUpdate {
    /// Sources that join: each gets the next id (`sources[].id` of the record) and a tile.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub add: Vec<SourceRequest>,
    /// Ids of sources that leave (their tiles go; the grid is laid out again).
    #[serde(default)]
    #[schema(max_items = 16)]
    pub remove: Vec<usize>,
}

/// A WHIP source's options (none yet: `{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhipRequest {}

impl SourceRequest {
    /// The source as records show it: URI credentials redacted.
    pub fn redacted(&self) -> SourceRequest {
        SourceRequest {
            uri: self.uri.as_deref().map(redact::url),
            whip: self.whip.clone(),
            whep: self.whep.as_ref().map(|w| WhepRequest {
                url: redact::url(&w.url),
                token: w.token.as_ref().map(|_| upload::REDACTED.to_string()),
            }),
        }
    }

    /// A URI source.
    pub fn uri(uri: &str) -> SourceRequest {
        SourceRequest {
            uri: Some(uri.to_string()),
            whip: None,
            whep: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VideoRequest {
    /// Default 1280; odd values are rounded down to even.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 16, maximum = 3840)]
    pub width: Option<u32>,
    /// Default 720; odd values are rounded down to even.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 16, maximum = 2160)]
    pub height: Option<u32>,
    /// Default 30.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 1, maximum = 60)]
    pub fps: Option<u32>,
    /// Default 3000.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 100, maximum = 50000)]
    pub bitrate_kbps: Option<u32>,
}

/// `"audio": true|false` or `"audio": {"codec", "bitrate_kbps"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AudioField {
    Enabled(bool),
    Settings(AudioRequest),
}

impl AudioField {
    pub(super) fn settings(&self) -> AudioRequest {
        match self {
            AudioField::Settings(a) => a.clone(),
            AudioField::Enabled(_) => AudioRequest::default(),
        }
    }
    pub(super) fn enabled(&self) -> bool {
        !matches!(self, AudioField::Enabled(false))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AudioRequest {
    /// `aac` or `opus`; defaults by container (aac for mp4/mkv, opus for webm/ogg); webm and
    /// ogg take opus only.
    #[schema(pattern = "^(aac|opus)$")]
    pub codec: Option<String>,
    /// Default 128.
    #[serde(default, deserialize_with = "whole_u32")]
    #[schema(minimum = 8, maximum = 512)]
    pub bitrate_kbps: Option<u32>,
}

/// An optional whole number written `30` or `30.0`: JSON Schema's `integer` (and so the OpenAPI
/// document) allows both, and Python's `json` writes floats with `.0`.
pub(super) fn whole_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    match Option::<f64>::deserialize(d)? {
        None => Ok(None),
        Some(x) if x.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&x) => {
            Ok(Some(x as u32))
        }
        Some(x) => Err(D::Error::custom(format!(
            "expected a whole number in [0, {}], got {x}",
            u32::MAX
        ))),
    }
}

impl EgressRequest {
    /// The request as EgressInfo echoes it: every URL redacted (`model::redact`), upload
    /// secrets hidden.
    pub fn redacted(&self) -> EgressRequest {
        let mut r = self.clone();
        r.sources = r.sources.iter().map(SourceRequest::redacted).collect();
        r.url = r.url.map(|u| redact::url(&u));
        r.output = r
            .output
            .map(|o| outputs::redacted(std::slice::from_ref(&o)).remove(0));
        r.outputs = r.outputs.map(|l| outputs::redacted(&l));
        r.upload = r.upload.map(|u| u.redacted());
        r
    }
}
