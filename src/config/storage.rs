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
