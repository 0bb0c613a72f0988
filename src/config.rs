//! Service configuration: one YAML file (`--config`), every key overridable from the environment
//! as `EGRESS__SECTION__KEY` (e.g. `EGRESS__SERVER__LISTEN=0.0.0.0:7980`). The whole config is
//! validated before any actor starts, and every error names its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::EgressType;

mod cpu;
mod events;
mod fleet;
mod pipeline;
mod redis_url;
mod server;
mod storage;
mod webhook_keys;
mod webrtc;
pub use cpu::*;
pub use events::*;
pub use fleet::*;
pub use pipeline::*;
pub use redis_url::{DEFAULT_KEY_PREFIX, RedisTarget};
pub use server::*;
pub use storage::*;
pub use webhook_keys::{key_bytes, read_ca_file};
pub use webrtc::WebrtcConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("config key '{key}': {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's identity.
    #[serde(default)]
    pub node: NodeConfig,
    /// The HTTP admin API.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where recordings and the service's own state are kept.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Which source URIs are accepted.
    #[serde(default)]
    pub sources: SourcesConfig,
    /// Handler pipelines.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// CPU sampling and the admission budget.
    #[serde(default)]
    pub cpu: CpuConfig,
    /// CPU cost per egress type, in cores (LiveKit-compatible defaults).
    #[serde(default)]
    pub cpu_cost: CpuCostConfig,
    /// Hard per-type concurrency caps (0 = no limit).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Placement scoring and pending claims.
    #[serde(default)]
    pub affinity: AffinityConfig,
    /// Fleet coordination over Redis.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Overload escalation and drain.
    #[serde(default)]
    pub overload: OverloadConfig,
    /// The live event stream (`GET /v1/events`).
    #[serde(default)]
    pub events: EventsConfig,
    /// Events POSTed to receivers.
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    /// WHIP sources: ICE ports and addresses.
    #[serde(default)]
    pub webrtc: WebrtcConfig,
}

fn yes() -> bool {
    true
}
macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                serde_json::from_value(serde_json::json!({})).expect("all fields have defaults")
            }
        }
    )*};
}
default_from_serde!(
    Config,
    WebrtcConfig,
    ServerConfig,
    StorageConfig,
    SourcesConfig,
    PipelineConfig,
    LogConfig,
    CpuConfig,
    CpuCostConfig,
    AffinityConfig,
    FleetConfig,
    OverloadConfig,
    EventsConfig,
    WebhooksConfig
);

impl Config {
    /// Reads the file (if any), applies `EGRESS__...` environment overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As `load`, with an explicit environment (tests use this instead of the process's).
    pub fn load_with_env(
        path: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(p) = path {
            if !p.is_file() {
                return Err(ConfigError::File {
                    path: p.display().to_string(),
                    message: "no such file".into(),
                });
            }
            b = b.add_source(config::File::from(p).format(config::FileFormat::Yaml));
        }
        let mut envsrc = config::Environment::with_prefix("EGRESS")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("sources.allowed_schemes")
            .with_list_parse_key("sources.allowed_web_hosts")
            .with_list_parse_key("storage.allowed_endpoints")
            .with_list_parse_key("server.allowed_origins")
            .with_list_parse_key("webhooks.urls")
            .with_list_parse_key("webhooks.events");
        if let Some(e) = env {
            envsrc = envsrc.source(Some(e));
        }
        b = b.add_source(envsrc);
        let raw = b.build().map_err(|e| ConfigError::File {
            path: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "<env>".into()),
            message: e.to_string(),
        })?;
        let cfg: Config = raw
            .try_deserialize()
            .map_err(|e| describe_deser_error(&e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every rule a running service relies on, section by section (each in its own file);
    /// the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.webrtc.validate()?;
        self.server.validate()?;
        self.storage.validate()?;
        self.sources.validate()?;
        self.pipeline.validate()?;
        self.cpu.validate()?;
        self.cpu_cost.validate()?;
        self.affinity.validate()?;
        self.fleet.validate()?;
        self.overload.validate()?;
        self.events.validate()?;
        self.webhooks.validate()
    }

    /// The config as `check-config` prints it: the API token, the webhook signing key, storage
    /// credentials and the secrets of URLs (Redis password, webhook tokens) redacted.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.storage.upload = c.storage.upload.map(|t| t.redacted());
        c.storage.backup = c.storage.backup.map(|t| t.redacted());
        let hide = |s: &mut String| {
            if !s.is_empty() {
                *s = crate::model::redact::MARK.into();
            }
        };
        hide(&mut c.server.api_token);
        hide(&mut c.webhooks.signing_key);
        for u in &mut c.webhooks.urls {
            *u = crate::model::redact::url(u);
        }
        if !c.fleet.redis_url.is_empty() {
            c.fleet.redis_url = crate::model::redact::url(&c.fleet.redis_url);
        }
        c
    }

    /// `storage.records_retention` in seconds; None = keep forever (validated at load).
    pub fn records_retention_s(&self) -> Option<f64> {
        parse_duration(&self.storage.records_retention)
            .ok()
            .flatten()
    }

    /// `storage.delete_after` in seconds; None = keep forever (validated at load).
    pub fn delete_after_s(&self) -> Option<f64> {
        parse_duration(&self.storage.delete_after).ok().flatten()
    }

    pub fn cost_mode(&self) -> CostMode {
        self.cpu.cost_mode
    }

    pub fn affinity_mode(&self) -> AffinityMode {
        self.affinity.mode
    }

    pub fn listen_is_loopback(&self) -> bool {
        self.server
            .listen
            .parse::<SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(false)
    }
}

fn positive(key: &str, v: f64, max: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v <= max {
        Ok(())
    } else {
        Err(invalid(key, format!("must be a number in (0, {max}]")))
    }
}

/// The config crate reports type errors with their key, but serde's unknown-field errors without
/// the section; give both a key.
/// The values a key takes, as serde spells them.
type Choices = fn() -> String;

/// The keys whose values are one of a fixed set (serde enums), with those values.
const CHOICE_KEYS: &[(&str, Choices)] = &[
    ("cpu.cost_mode", choices::<CostMode>),
    ("affinity.mode", choices::<AffinityMode>),
    ("affinity.load_distribution", choices::<AffinityMode>),
    ("log.format", choices::<crate::logging::LogFormat>),
    ("log.level", choices::<crate::logging::LogLevel>),
    ("pipeline.x264_speed_preset", choices::<X264Preset>),
    ("webhooks.events", choices::<crate::model::EventKind>),
];

/// "`static` or `learned`": the values enum `T` takes, from serde's own error for one it does
/// not.
fn choices<T: serde::de::DeserializeOwned>() -> String {
    let e = serde_json::from_value::<T>(serde_json::Value::String(String::new()))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    e.split("expected ").nth(1).unwrap_or(&e).to_string()
}

fn describe_deser_error(e: &config::ConfigError) -> ConfigError {
    let msg = e.to_string();
    // A value that is not one of a key's choices (or not a word at all): say which they are.
    // A list's element is reported as `key[i]`: the key is the list's.
    if let Some((key, of)) = CHOICE_KEYS.iter().find(|(k, _)| {
        msg.contains(&format!("for key `{k}`")) || msg.contains(&format!("for key `{k}["))
    }) {
        return match msg.split("does not have variant constructor ").nth(1) {
            Some(rest) => {
                let got = rest.split(" for key `").next().unwrap_or("?");
                invalid(key, format!("must be {} (got '{got}')", of()))
            }
            None => invalid(key, format!("must be {}", of())),
        };
    }
    if let Some(rest) = msg.split("unknown field `").nth(1) {
        let field = rest.split('`').next().unwrap_or("?");
        let section = msg
            .rsplit("for key `")
            .next()
            .filter(|_| msg.contains("for key `"))
            .map(|s| {
                s.trim_end_matches('`')
                    .trim_end_matches('`')
                    .split('`')
                    .next()
                    .unwrap_or("")
            })
            .unwrap_or("");
        let key = if section.is_empty() {
            field.to_string()
        } else {
            format!("{section}.{field}")
        };
        return invalid(&key, format!("unknown key ({msg})"));
    }
    if let config::ConfigError::Type { key: Some(k), .. } = e {
        return invalid(k, msg.clone());
    }
    if let Some(rest) = msg.split("for key `").nth(1) {
        let key = rest.split('`').next().unwrap_or("?");
        return invalid(key, msg.clone());
    }
    invalid("<config>", msg)
}

/// `7d`, `12h`, `30m`, `45s` (or a plain number of seconds) → seconds; "" = never.
pub fn parse_duration(s: &str) -> Result<Option<f64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let mult = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "w" => 7.0 * 86400.0,
        _ => {
            return Err(format!(
                "unknown unit '{unit}': use s, m, h, d or w (e.g. 7d)"
            ));
        }
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 7d, 12h or 30s"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{s}' must be more than 0"));
    }
    Ok(Some(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn load_yaml(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(Some(f.path()), Some(env))
    }

    #[test]
    fn fleet_urls_and_key_prefixes_are_checked_naming_the_key() {
        for (yaml, key) in [
            ("fleet: { key_prefix: \"\" }", "fleet.key_prefix"),
            ("fleet: { key_prefix: \"a b\" }", "fleet.key_prefix"),
            (
                "fleet: { redis_url: \"redis+sentinel://a:1\" }",
                "fleet.redis_url",
            ),
            ("fleet: { redis_url: \"http://a\" }", "fleet.redis_url"),
        ] {
            assert_eq!(key_of(load_yaml(yaml, &[]).unwrap_err()), key, "{yaml}");
        }
        let ok = "fleet: { key_prefix: \"eu-1:\", redis_url: \"redis+sentinel://a,b:26380/m\" }";
        assert_eq!(load_yaml(ok, &[]).unwrap().fleet.key_prefix, "eu-1:");
        assert_eq!(Config::default().fleet.key_prefix, "egress:");
    }

    #[test]
    fn blank_tokens_and_malformed_origins_are_refused_naming_the_key() {
        for yaml in [
            "server: { api_token: \"   \" }",
            "server: { api_token: \" x\" }",
        ] {
            assert_eq!(
                key_of(load_yaml(yaml, &[]).unwrap_err()),
                "server.api_token"
            );
        }
        for bad in [
            "*",
            "https://a.example/",
            "a.example",
            "https://a.example/x",
            "ftp://a",
        ] {
            let yaml = format!("server: {{ allowed_origins: [\"{bad}\"] }}");
            assert_eq!(
                key_of(load_yaml(&yaml, &[]).unwrap_err()),
                "server.allowed_origins",
                "{bad}"
            );
        }
        let ok = "server: { allowed_origins: [\"https://a.example\", \"http://127.0.0.1:3000\", \"http://[::1]:8080\"] }";
        assert_eq!(load_yaml(ok, &[]).unwrap().server.allowed_origins.len(), 3);
        let env = load_yaml(
            "",
            &[(
                "EGRESS__SERVER__ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            )],
        )
        .unwrap();
        assert_eq!(
            env.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = load_yaml("{}", &[]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7980");
        assert_eq!(c.cpu_cost.cost(EgressType::Participant), 2.0);
        assert!(c.listen_is_loopback());
    }

    #[test]
    fn env_overrides_file() {
        let c = load_yaml(
            "server: { listen: \"127.0.0.1:1\" }\nlimits: { max_concurrent_participant: 1 }\n",
            &[
                ("EGRESS__SERVER__LISTEN", "127.0.0.1:2"),
                ("EGRESS__LIMITS__MAX_CONCURRENT_PARTICIPANT", "3"),
                ("EGRESS__SOURCES__ALLOWED_SCHEMES", "test,file"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:2");
        assert_eq!(c.limits.max_concurrent_participant, 3);
        assert_eq!(c.sources.allowed_schemes, vec!["test", "file"]);
    }

    #[test]
    fn a_value_outside_a_keys_choices_names_the_key_and_the_choices() {
        for (yaml, key, says) in [
            (
                "cpu: { cost_mode: guess }",
                "cpu.cost_mode",
                "`static` or `learned`",
            ),
            ("log: { format: xml }", "log.format", "`term` or `json`"),
            ("log: { level: loud }", "log.level", "`warning`"),
            ("affinity: { mode: 3 }", "affinity.mode", "`type_aware`"),
        ] {
            match load_yaml(yaml, &[]).unwrap_err() {
                ConfigError::Invalid { key: k, message } => {
                    assert_eq!(k, key, "{yaml}");
                    assert!(message.contains(says), "{yaml}: {message}");
                }
                other => panic!("{yaml}: {other}"),
            }
        }
        let c = load_yaml("log: { level: warn }\naffinity: { mode: consolidate }", &[]).unwrap();
        assert_eq!(
            (c.log.level, c.affinity_mode()),
            (crate::logging::LogLevel::Warning, AffinityMode::Pack)
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            key_of(load_yaml("server: { listen: nope }", &[]).unwrap_err()),
            "server.listen"
        );
        assert_eq!(
            key_of(load_yaml("server: { listen: \"0.0.0.0:80\" }", &[]).unwrap_err()),
            "server.api_token"
        );
        assert_eq!(
            key_of(load_yaml("affinity: { mode: random }", &[]).unwrap_err()),
            "affinity.mode"
        );
        assert_eq!(
            key_of(load_yaml("cpu: { max_utilization: 2 }", &[]).unwrap_err()),
            "cpu.max_utilization"
        );
        for (yaml, key) in [
            ("cpu: { cost_mode: guess }", "cpu.cost_mode"),
            ("cpu: { cost_margin: 0.5 }", "cpu.cost_margin"),
            ("cpu: { learned_cost_floor: -1 }", "cpu.learned_cost_floor"),
            ("cpu: { learn_min_jobs: 0 }", "cpu.learn_min_jobs"),
            (
                "fleet: { target_free_fraction: 1 }",
                "fleet.target_free_fraction",
            ),
        ] {
            assert_eq!(key_of(load_yaml(yaml, &[]).unwrap_err()), key, "{yaml}");
        }
        assert!(load_yaml("cpu: { cost_mode: learned, cost_margin: 1 }", &[]).is_ok());
        assert_eq!(
            key_of(load_yaml("fleet: { reservation_ttl_ms: 100 }", &[]).unwrap_err()),
            "fleet.reservation_ttl_ms"
        );
        // As long as the placer waits for a start is not long enough: a slow start would lose
        // its reservation while it still counts on the node.
        assert_eq!(
            key_of(load_yaml("fleet: { reservation_ttl_ms: 5000 }", &[]).unwrap_err()),
            "fleet.reservation_ttl_ms"
        );
        assert!(load_yaml("fleet: { reservation_ttl_ms: 6000 }", &[]).is_ok());
        assert_eq!(
            key_of(load_yaml("pipeline: { handler_nice: 20 }", &[]).unwrap_err()),
            "pipeline.handler_nice"
        );
        // Keys of earlier versions are named, not ignored.
        let k = key_of(load_yaml("fleet: { decision_lock_ms: 1000 }", &[]).unwrap_err());
        assert!(k.contains("decision_lock_ms"), "{k}");
        let k = key_of(load_yaml("server: { lisen: x }", &[]).unwrap_err());
        assert!(k.contains("lisen"), "{k}");
        let k = key_of(load_yaml("cpu: { capacity: lots }", &[]).unwrap_err());
        assert!(k.contains("capacity"), "{k}");
    }

    #[test]
    fn storage_targets_and_disk_keys_are_checked_naming_the_key() {
        let c = load_yaml(
            "storage: { upload: { s3: { bucket: rec, endpoint: \"http://127.0.0.1:9000\" } }, delete_after: 7d }",
            &[],
        )
        .unwrap();
        assert!(matches!(
            c.storage.upload,
            Some(crate::model::upload::UploadTarget::S3(_))
        ));
        assert_eq!(c.delete_after_s(), Some(604800.0));
        assert_eq!(c.storage.min_free_bytes, 1 << 30);
        for (yaml, key) in [
            (
                "storage: { upload: { s3: { bucket: \"A\" } } }",
                "storage.upload.s3.bucket",
            ),
            (
                "storage: { backup: { gcs: { bucket: x } } }",
                "storage.backup.gcs.bucket",
            ),
            ("storage: { delete_after: 7y }", "storage.delete_after"),
            (
                "storage: { upload_part_bytes: 1000 }",
                "storage.upload_part_bytes",
            ),
            (
                "storage: { stop_free_bytes: 2000000000 }",
                "storage.stop_free_bytes",
            ),
            ("storage: { upload_retry_s: 0 }", "storage.upload_retry_s"),
        ] {
            assert_eq!(key_of(load_yaml(yaml, &[]).unwrap_err()), key, "{yaml}");
        }
        let env = load_yaml(
            "",
            &[
                ("EGRESS__STORAGE__UPLOAD__S3__BUCKET", "rec"),
                (
                    "EGRESS__STORAGE__UPLOAD__S3__ENDPOINT",
                    "http://127.0.0.1:1",
                ),
            ],
        )
        .unwrap();
        assert!(env.storage.upload.is_some());
    }

    #[test]
    fn events_and_webhook_keys_are_checked_naming_the_key() {
        for (yaml, key) in [
            ("events: { buffer: 0 }", "events.buffer"),
            ("events: { keepalive_ms: 1 }", "events.keepalive_ms"),
            (
                "webhooks: { ca_file: \"/nonexistent/ca.pem\" }",
                "webhooks.ca_file",
            ),
            (
                "webhooks: { signing_key: \"whsec_c2hvcnQ=\" }",
                "webhooks.signing_key",
            ),
            (
                "webhooks: { urls: [\"ftp://a\"], signing_key: \"0123456789abcdef\" }",
                "webhooks.urls",
            ),
            (
                "webhooks: { urls: [\"http://u:p@a/x\"], signing_key: \"0123456789abcdef\" }",
                "webhooks.urls",
            ),
            (
                "webhooks: { urls: [\"http://a/x\"] }",
                "webhooks.signing_key",
            ),
            ("webhooks: { events: [egress_exploded] }", "webhooks.events"),
            (
                "webhooks: { backoff_initial_ms: 5000, backoff_max_ms: 1000 }",
                "webhooks.backoff_max_ms",
            ),
        ] {
            assert_eq!(key_of(load_yaml(yaml, &[]).unwrap_err()), key, "{yaml}");
        }
        let ok = load_yaml(
            "",
            &[
                (
                    "EGRESS__WEBHOOKS__URLS",
                    "http://127.0.0.1:9/a,http://h.example/b?x=1",
                ),
                ("EGRESS__WEBHOOKS__SIGNING_KEY", "0123456789abcdef"),
                ("EGRESS__WEBHOOKS__EVENTS", "egress_ended,node_updated"),
            ],
        )
        .unwrap();
        assert_eq!(ok.webhooks.urls.len(), 2);
        let events: Vec<&str> = ok.webhooks.events.iter().map(|k| k.as_str()).collect();
        assert_eq!(events, ["egress_ended", "node_updated"]);
        assert_eq!(Config::default().events.buffer, 1000);
    }

    #[test]
    fn an_x264_preset_outside_the_presets_names_the_key_and_the_presets() {
        for bad in ["turbo", "placebo", "Fast", "3"] {
            let yaml = format!("pipeline: {{ x264_speed_preset: {bad} }}");
            match load_yaml(&yaml, &[]).unwrap_err() {
                ConfigError::Invalid { key, message } => {
                    assert_eq!(key, "pipeline.x264_speed_preset", "{bad}");
                    assert!(message.contains("`ultrafast`"), "{bad}: {message}");
                    assert!(message.contains("`veryslow`"), "{bad}: {message}");
                }
                other => panic!("{bad}: {other}"),
            }
        }
        let env = [("EGRESS__PIPELINE__X264_SPEED_PRESET", "bogus")];
        assert_eq!(
            key_of(load_yaml("", &env).unwrap_err()),
            "pipeline.x264_speed_preset"
        );
        let c = load_yaml("pipeline: { x264_speed_preset: slower }", &[]).unwrap();
        assert_eq!(c.pipeline.x264_speed_preset, X264Preset::Slower);
        let o = crate::model::PipelineOptions::from(&c.pipeline);
        assert_eq!(o.x264_speed_preset, "slower");
        let env = [("EGRESS__PIPELINE__X264_SPEED_PRESET", "ultrafast")];
        let c = load_yaml("", &env).unwrap();
        assert_eq!(c.pipeline.x264_speed_preset, X264Preset::Ultrafast);
        assert_eq!(
            Config::default().pipeline.x264_speed_preset,
            X264Preset::Veryfast
        );
    }

    #[test]
    fn a_webhook_event_outside_the_kinds_names_the_key_and_the_kinds() {
        for (yaml, got) in [
            ("webhooks: { events: [egress_exploded] }", "egress_exploded"),
            (
                "webhooks: { events: [egress_ended, Node_Updated] }",
                "Node_Updated",
            ),
        ] {
            match load_yaml(yaml, &[]).unwrap_err() {
                ConfigError::Invalid { key, message } => {
                    assert_eq!(key, "webhooks.events", "{yaml}");
                    assert!(message.contains("`node_updated`"), "{yaml}: {message}");
                    assert!(message.contains(&format!("'{got}'")), "{yaml}: {message}");
                }
                other => panic!("{yaml}: {other}"),
            }
        }
        for env in ["egress_ended,bogus", ""] {
            let env = [("EGRESS__WEBHOOKS__EVENTS", env)];
            assert_eq!(key_of(load_yaml("", &env).unwrap_err()), "webhooks.events");
        }
        let c = load_yaml("webhooks: { events: [node_updated, egress_ended] }", &[]).unwrap();
        assert_eq!(
            c.webhooks.events,
            [
                crate::model::EventKind::NodeUpdated,
                crate::model::EventKind::EgressEnded
            ]
        );
        assert_eq!(
            Config::default().webhooks.events,
            [
                crate::model::EventKind::EgressStarted,
                crate::model::EventKind::EgressUpdated,
                crate::model::EventKind::EgressEnded
            ]
        );
    }

    #[test]
    fn consolidate_is_pack() {
        let c = load_yaml("affinity: { load_distribution: consolidate }", &[]).unwrap();
        assert_eq!(c.affinity_mode(), AffinityMode::Pack);
    }
}
