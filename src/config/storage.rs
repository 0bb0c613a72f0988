//! `storage` and `sources`: where outputs and state go, uploads, disk limits, retention; which
//! sources and pages a request may name.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Every output file is written under this directory.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Egress records, handler logs and the node id live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Default object storage target for every output (`{s3: {bucket, region, endpoint, prefix,
    /// force_path_style, access_key, secret}}`, `{gcs: {...}}`, `{azure: {...}}`); a request's
    /// `upload` overrides it; unset = outputs stay local.
    #[serde(default)]
    pub upload: Option<crate::model::upload::UploadTarget>,
    /// Whether a request may name its own target (`upload`); false = such a request is a 400,
    /// so callers cannot make this node connect to endpoints of their choosing.
    #[serde(default = "yes")]
    pub request_upload: bool,
    /// Hosts a request's target may name as its `endpoint` (`*`, `*.example.com`, `host`);
    /// empty (the default): only the providers' own endpoints. A host that resolves to a
    /// loopback, private or link-local address must be listed by its own name.
    #[serde(default)]
    pub allowed_endpoints: Vec<String>,
    /// Second target, used when an upload still fails after `upload_retry_s`.
    #[serde(default)]
    pub backup: Option<crate::model::upload::UploadTarget>,
    /// How long one target is retried (exponential backoff) before the backup is tried.
    #[serde(default = "default_upload_retry")]
    pub upload_retry_s: f64,
    /// Parts of one file uploaded at once.
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// Bytes per multipart part (at least 5 MiB); smaller files go up in one PUT.
    #[serde(default = "default_upload_part_bytes")]
    pub upload_part_bytes: u64,
    /// Keep the local copy after a confirmed upload.
    #[serde(default)]
    pub keep_local: bool,
    /// Admission refuses a new egress (`reason: disk`) when free space under output_dir is below
    /// this plus what the running egresses write in `disk_horizon_s`.
    #[serde(default = "default_min_free")]
    pub min_free_bytes: u64,
    /// Below this much free space the egress writing fastest is stopped ("Disk full").
    #[serde(default = "default_stop_free")]
    pub stop_free_bytes: u64,
    /// Seconds of output at their measured rates that admission reserves for running egresses.
    #[serde(default = "default_disk_horizon")]
    pub disk_horizon_s: f64,
    /// Delete the local outputs of ended egresses this long after they ended (`7d`, `12h`,
    /// `30m`, `45s`); empty = keep forever. Never one still recording or queued for upload.
    #[serde(default)]
    pub delete_after: String,
    /// Prune the records (and handler logs) of egresses ended this long ago (`30d`, `12h`...);
    /// empty = keep every record forever. Outputs are `delete_after`'s, not this.
    #[serde(default = "default_records_retention")]
    pub records_retention: String,
}

fn default_records_retention() -> String {
    "30d".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// URI schemes a source may use; `file` only when listed here.
    #[serde(default = "default_schemes")]
    pub allowed_schemes: Vec<String>,
    /// Hosts a `web` egress may record: `*` for any, `*.example.com` for a domain and its
    /// subdomains. Empty (the default): web egress is off, so the service cannot be pointed at
    /// internal addresses until an operator says which pages it records.
    #[serde(default)]
    pub allowed_web_hosts: Vec<String>,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("./recordings")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./state")
}

fn default_upload_retry() -> f64 {
    300.0
}

fn default_upload_concurrency() -> usize {
    4
}

fn default_upload_part_bytes() -> u64 {
    8 * 1024 * 1024
}

fn default_min_free() -> u64 {
    1 << 30
}

fn default_stop_free() -> u64 {
    256 << 20
}

fn default_disk_horizon() -> f64 {
    60.0
}

fn default_schemes() -> Vec<String> {
    [
        "test",
        "rtsp",
        "rtmp",
        "srt",
        "http",
        "https",
        "whep+http",
        "whep+https",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl StorageConfig {
    /// The `storage` keys: directories, delivery and disk; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.output_dir.as_os_str().is_empty() {
            return Err(invalid("storage.output_dir", "must not be empty"));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("storage.state_dir", "must not be empty"));
        }
        for (key, t) in [
            ("storage.upload", &self.upload),
            ("storage.backup", &self.backup),
        ] {
            if let Some(t) = t {
                t.validate()
                    .map_err(|(field, m)| invalid(&format!("{key}.{field}"), m))?;
            }
        }
        positive("storage.upload_retry_s", self.upload_retry_s, 7.0 * 86400.0)?;
        if !(1..=64).contains(&self.upload_concurrency) {
            return Err(invalid("storage.upload_concurrency", "must be in [1, 64]"));
        }
        let min_part = crate::model::upload::MIN_PART_BYTES;
        if !(min_part..=(5u64 << 30)).contains(&self.upload_part_bytes) {
            return Err(invalid(
                "storage.upload_part_bytes",
                format!("must be in [{min_part}, 5368709120] (S3 parts are at least 5 MiB)"),
            ));
        }
        if self.stop_free_bytes > self.min_free_bytes {
            return Err(invalid(
                "storage.stop_free_bytes",
                "must not be larger than storage.min_free_bytes (egresses would be stopped while new ones are admitted)",
            ));
        }
        if !(self.disk_horizon_s.is_finite() && (0.0..=86400.0).contains(&self.disk_horizon_s)) {
            return Err(invalid(
                "storage.disk_horizon_s",
                "must be a number of seconds in [0, 86400]",
            ));
        }
        parse_duration(&self.delete_after).map_err(|m| invalid("storage.delete_after", m))?;
        parse_duration(&self.records_retention)
            .map_err(|m| invalid("storage.records_retention", m))?;
        Ok(())
    }
}

impl SourcesConfig {
    /// The `sources` keys; the error names the key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.allowed_schemes.is_empty() {
            return Err(invalid(
                "sources.allowed_schemes",
                "must list at least one scheme",
            ));
        }
        for s in &self.allowed_schemes {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+' || b == b'-')
            {
                return Err(invalid(
                    "sources.allowed_schemes",
                    format!("'{s}' is not a lowercase URI scheme"),
                ));
            }
        }
        Ok(())
    }
}
