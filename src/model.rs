//! The egress data model: what a client asks for (`EgressRequest`), what the node resolved it to
//! after validation (`EgressSpec`, also what a handler process is given), and the record the API
//! reports (`EgressInfo`). Validation lives here so the API, the fleet and the handler agree on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod hosts;
pub mod numbered;
mod outputs;
mod record;
pub mod redact;
mod request;
mod spec;
pub mod upload;
pub mod validate;

pub use record::*;
pub use request::*;
pub use spec::*;
pub use validate::*;

pub use outputs::{
    FileOutputRequest, ImagesInfo, ImagesOutput, ImagesRequest, LivePlaylistRequest, MAX_STREAMS,
    OutputRequest, OutputsSpec, SegmentsInfo, SegmentsOutput, SegmentsRequest, StreamInfo,
    StreamRequest, StreamStatus, StreamsUpdate, TemplateValues, check_stream_url,
};

/// The kinds of recording job. Each has its own pipeline shape and so its own CPU cost.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EgressType {
    /// One source recorded as is where it is already encoded (remux), else encoded.
    Track,
    /// One video source and one audio source, encoded and muxed together.
    TrackComposite,
    /// One source carrying audio and video, transcoded.
    Participant,
    /// 1..16 sources composited into a grid with their audio mixed.
    RoomComposite,
    /// A web page rendered headless (WPE WebKit), with its audio when the element gives it.
    Web,
}

impl EgressType {
    pub const ALL: [EgressType; 5] = [
        EgressType::Track,
        EgressType::TrackComposite,
        EgressType::Participant,
        EgressType::RoomComposite,
        EgressType::Web,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EgressType::Track => "track",
            EgressType::TrackComposite => "track_composite",
            EgressType::Participant => "participant",
            EgressType::RoomComposite => "room_composite",
            EgressType::Web => "web",
        }
    }

    pub fn parse(s: &str) -> Option<EgressType> {
        EgressType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EgressType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an egress is in its life. The last four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EgressStatus {
    Starting,
    Active,
    Ending,
    Complete,
    Failed,
    Aborted,
    LimitReached,
}

impl EgressStatus {
    pub const ALL: [EgressStatus; 7] = [
        EgressStatus::Starting,
        EgressStatus::Active,
        EgressStatus::Ending,
        EgressStatus::Complete,
        EgressStatus::Failed,
        EgressStatus::Aborted,
        EgressStatus::LimitReached,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            EgressStatus::Complete
                | EgressStatus::Failed
                | EgressStatus::Aborted
                | EgressStatus::LimitReached
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EgressStatus::Starting => "starting",
            EgressStatus::Active => "active",
            EgressStatus::Ending => "ending",
            EgressStatus::Complete => "complete",
            EgressStatus::Failed => "failed",
            EgressStatus::Aborted => "aborted",
            EgressStatus::LimitReached => "limit_reached",
        }
    }
}

/// End reasons, as strings users see in `end_reason`.
pub mod reason {
    pub const STOP_API: &str = "StopEgress API";
    pub const KILL_API: &str = "KillEgress API";
    pub const SOURCE_CLOSED: &str = "Source closed";
    pub const SESSION_LIMIT: &str = "Session limit reached";
    pub const PROCESS_KILLED: &str = "Process killed";
    pub const FAILURE: &str = "Failure";
    pub const CPU_LIMIT: &str = "CPU limit reached";
    pub const CPU_EXHAUSTED: &str = "CPU exhausted";
    pub const SERVICE_STOPPED: &str = "Service stopped";
    pub const EOS_TIMEOUT: &str = "EOS timeout";
    pub const DRAIN_TIMEOUT: &str = "Drain timeout";
    pub const NODE_LOST: &str = "Node lost";
    /// A live source stopped sending and did not come back within `pipeline.source_reconnect_s`.
    pub const SOURCE_LOST: &str = "Source lost";
    /// The egress ended before any media reached its output: no file is kept.
    pub const STOPPED_BEFORE_START: &str = "Stopped before start";
    /// Free space under the output directory fell below `storage.stop_free_bytes`.
    pub const DISK_FULL: &str = "Disk full";
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `n` random alphanumerics (what ids, tokens and sessions are made of).
pub fn random_alnum(n: usize) -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A new WHIP token: `wt_` and 32 random alphanumerics (190 bits).
pub fn new_whip_token() -> String {
    format!("wt_{}", random_alnum(32))
}

/// A new egress id: `EG_` and 12 random alphanumerics.
pub fn new_egress_id() -> String {
    format!("EG_{}", random_alnum(12))
}

/// True for ids this engine issues; ids arrive in URLs, so anything else is refused early.
pub fn is_valid_egress_id(id: &str) -> bool {
    id.len() == 15 && id.starts_with("EG_") && id[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whep_source_is_an_http_endpoint_on_the_allow_list() {
        let allowed: Vec<String> = vec!["whep+https".into()];
        let w = |url: &str, token: Option<&str>| SourceRequest {
            uri: None,
            whip: None,
            whep: Some(WhepRequest {
                url: url.into(),
                token: token.map(str::to_string),
            }),
        };
        assert_eq!(
            w("https://sfu/whep/1", Some("t")).validate(&allowed, "sources[0]"),
            Ok(Source::Whep {
                url: "https://sfu/whep/1".into(),
                token: Some("t".into())
            })
        );
        assert_eq!(
            SourceRequest::uri("whep+https://sfu/x").validate(&allowed, "sources[0]"),
            Ok(Source::Whep {
                url: "https://sfu/x".into(),
                token: None
            })
        );
        // http is not on this list; an rtsp URL is no WHEP endpoint; an empty token says so.
        let e = w("http://sfu/x", None)
            .validate(&allowed, "sources[0]")
            .unwrap_err();
        assert!(matches!(e, RequestError::SchemeNotAllowed(_)), "{e}");
        let e = w("rtsp://sfu/x", None)
            .validate(&allowed, "sources[0]")
            .unwrap_err();
        assert!(e.to_string().contains("sources[0].whep.url"), "{e}");
        let e = w("https://sfu/x", Some(""))
            .validate(&allowed, "sources[0]")
            .unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
        // The record shows neither the token nor URL credentials.
        let shown = w("https://u:p@sfu/x", Some("t")).redacted();
        assert_eq!(
            shown.whep.as_ref().and_then(|w| w.token.as_deref()),
            Some("[redacted]")
        );
        assert!(!shown.whep.unwrap().url.contains(":p@"));
    }

    fn ctx_schemes() -> Vec<String> {
        ["test", "rtsp", "http"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn req(t: &str, uris: &[&str], filename: &str) -> EgressRequest {
        EgressRequest {
            egress_type: t.into(),
            sources: uris.iter().map(|u| SourceRequest::uri(u)).collect(),
            url: None,
            output: Some(OutputRequest::File(FileOutputRequest {
                filename: Some(filename.into()),
            })),
            outputs: None,
            video: None,
            audio: None,
            max_duration_s: None,
            estimated_cpu: None,
            upload: None,
        }
    }

    fn validate(r: &EgressRequest) -> Result<EgressSpec, RequestError> {
        let schemes = ctx_schemes();
        let ctx = ValidationContext {
            output_dir: Path::new("/rec"),
            state_dir: Path::new("/state"),
            allowed_schemes: &schemes,
            allowed_web_hosts: &[],
            allowed_endpoints: &[],
        };
        r.validate("EG_abcdefghijkl", &ctx)
    }

    #[test]
    fn valid_participant_resolves_defaults() {
        let s = validate(&req("participant", &["test://av?pattern=snow"], "a/b.mp4")).unwrap();
        let f = s.outputs.file.as_ref().unwrap();
        assert_eq!(f.path, Path::new("/rec/a/b.mp4"));
        assert_eq!(f.container, Container::Mp4);
        assert_eq!(s.manifest_path, Path::new("/rec/a/EG_abcdefghijkl.json"));
        assert_eq!(s.audio.codec, AudioCodec::Aac);
        assert_eq!(
            (s.video.width, s.video.height, s.video.fps),
            (1280, 720, 30)
        );
        assert!(matches!(&s.sources[0], Source::Test { pattern, .. } if pattern == "snow"));
    }

    #[test]
    fn rejects_escaping_paths_and_bad_extensions() {
        for f in ["../x.mp4", "/etc/x.mp4", "a/../../x.mp4", "x.avi", "", "x"] {
            let e = validate(&req("track", &["test://video"], f)).unwrap_err();
            assert_eq!(e.field(), Some("output.file.filename"), "{f}");
        }
    }

    #[test]
    fn rejects_schemes_not_allowed() {
        let e = validate(&req("track", &["file:///etc/passwd"], "x.mp4")).unwrap_err();
        assert!(matches!(e, RequestError::SchemeNotAllowed(_)));
        let e = validate(&req("track", &["nouri"], "x.mp4")).unwrap_err();
        assert_eq!(e.field(), Some("sources[0].uri"));
    }

    #[test]
    fn rejects_unknown_types_and_wrong_source_counts() {
        assert!(matches!(
            validate(&req("bogus", &["test://video"], "x.mp4")).unwrap_err(),
            RequestError::UnknownType(_)
        ));
        assert!(validate(&req("track", &[], "x.mp4")).is_err());
        assert!(validate(&req("participant", &["test://video"], "x.mp4")).is_err());
        let many: Vec<&str> = vec!["test://av"; 17];
        assert!(validate(&req("room_composite", &many, "x.mp4")).is_err());
        assert!(
            validate(&req(
                "track_composite",
                &["test://video", "test://audio"],
                "x.mkv"
            ))
            .is_ok()
        );
        assert!(
            validate(&req(
                "track_composite",
                &["test://audio", "test://video"],
                "x.mkv"
            ))
            .is_err()
        );
    }

    #[test]
    fn rejects_bad_test_parameters() {
        for u in [
            "test://video?pattern=nope",
            "test://video?width=0",
            "test://x",
            "test://audio?freq=abc",
            "test://video?foo=1",
        ] {
            assert!(validate(&req("track", &[u], "x.mp4")).is_err(), "{u}");
        }
    }

    #[test]
    fn aac_not_in_webm() {
        let mut r = req("participant", &["test://av"], "x.webm");
        r.audio = Some(AudioField::Settings(AudioRequest {
            codec: Some("aac".into()),
            bitrate_kbps: None,
        }));
        assert_eq!(validate(&r).unwrap_err().field(), Some("audio.codec"));
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        let v: VideoRequest = serde_json::from_str(r#"{"fps": 30.0, "width": 640}"#).unwrap();
        assert_eq!((v.fps, v.width, v.height), (Some(30), Some(640), None));
        for bad in [
            r#"{"fps": 30.5}"#,
            r#"{"fps": -1}"#,
            r#"{"fps": 1e20}"#,
            r#"{"fps": "30"}"#,
        ] {
            assert!(serde_json::from_str::<VideoRequest>(bad).is_err(), "{bad}");
        }
        let a: AudioRequest = serde_json::from_str(r#"{"bitrate_kbps": null}"#).unwrap();
        assert_eq!(a.bitrate_kbps, None);
    }

    #[test]
    fn egress_ids_round_trip() {
        let id = new_egress_id();
        assert!(is_valid_egress_id(&id), "{id}");
        assert!(!is_valid_egress_id("EG_../../etc"));
    }
}
