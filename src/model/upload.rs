//! Storage targets as requests and the config name them (`storage.upload`, `storage.backup`, a
//! request's `"upload"`): their fields, validation, object keys, locations and redaction.
//! Connecting to one is `delivery::target`'s.
//!
//! Credentials come from the target itself; the operator's own targets (`storage.upload`,
//! `storage.backup`) may also take them from the standard environment variables
//! (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `GOOGLE_SERVICE_ACCOUNT`,
//! `AZURE_STORAGE_ACCOUNT_KEY`, ...), a request's never. They are never shown: `redacted()` is
//! what records echo, and `Debug` prints the redacted form, so a target in a log line leaks
//! nothing.

use serde::{Deserialize, Serialize};

/// The smallest part of a multipart upload S3 takes (every part but the last).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// What a redacted secret reads as.
pub const REDACTED: &str = "[redacted]";

/// One object storage target: `{"s3": {...}}`, `{"gcs": {...}}` or `{"azure": {...}}`.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum UploadTarget {
    /// Amazon S3 or any S3-compatible store (MinIO, Ceph, R2, moto...).
    S3(S3Target),
    /// Google Cloud Storage.
    Gcs(GcsTarget),
    /// Azure Blob Storage.
    Azure(AzureTarget),
}

#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Target {
    #[schema(pattern = "^[a-z0-9._-]{3,255}$", example = "recordings")]
    pub bucket: String,
    /// Default: `AWS_REGION`/`AWS_DEFAULT_REGION`, else us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9-]{1,64}$")]
    pub region: Option<String>,
    /// `http(s)://host[:port]` of an S3-compatible store; default: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024, pattern = "^https?://[^@\\s]+$")]
    pub endpoint: Option<String>,
    /// Prepended to every key, e.g. `rooms/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 512)]
    pub prefix: Option<String>,
    /// `http://endpoint/bucket/key` instead of `http://bucket.endpoint/key` (default true with
    /// an `endpoint`, false on AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Default: `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 256)]
    pub access_key: Option<String>,
    /// Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 256)]
    pub secret: Option<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcsTarget {
    #[schema(pattern = "^[a-z0-9._-]{3,222}$")]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 512)]
    pub prefix: Option<String>,
    /// `http(s)://host[:port]` of an emulator or a private endpoint; default: Google's.
    /// Without `credentials_json` requests to it go unsigned (an emulator checks none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024, pattern = "^https?://[^@\\s]+$")]
    pub endpoint: Option<String>,
    /// A service account key (JSON); default: `GOOGLE_SERVICE_ACCOUNT` /
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 16384)]
    pub credentials_json: Option<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AzureTarget {
    /// Default: `AZURE_STORAGE_ACCOUNT_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub account_name: Option<String>,
    /// Default: `AZURE_STORAGE_ACCOUNT_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 256)]
    pub account_key: Option<String>,
    #[schema(pattern = "^[a-z0-9._-]{3,63}$")]
    pub container_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 512)]
    pub prefix: Option<String>,
    /// `http(s)://host[:port]` of an emulator (Azurite) or a private endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024, pattern = "^https?://[^@\\s]+$")]
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for UploadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only ever the redacted form: a target in a log line or an error leaks no secret.
        let shown = serde_json::to_string(&self.redacted()).unwrap_or_default();
        f.write_str(&shown)
    }
}

fn redact(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|_| REDACTED.to_string())
}

/// A `(field, message)` validation failure, the field relative to the target.
pub type TargetInvalid = (String, String);

fn bad(field: &str, message: impl Into<String>) -> TargetInvalid {
    (field.to_string(), message.into())
}

impl UploadTarget {
    /// The same target with every secret replaced by `[redacted]` (what records show).
    pub fn redacted(&self) -> UploadTarget {
        match self {
            UploadTarget::S3(t) => UploadTarget::S3(S3Target {
                access_key: redact(&t.access_key),
                secret: redact(&t.secret),
                ..t.clone()
            }),
            UploadTarget::Gcs(t) => UploadTarget::Gcs(GcsTarget {
                credentials_json: redact(&t.credentials_json),
                ..t.clone()
            }),
            UploadTarget::Azure(t) => UploadTarget::Azure(AzureTarget {
                account_key: redact(&t.account_key),
                ..t.clone()
            }),
        }
    }

    /// Checks names, endpoints and prefixes; the error names the field (e.g. `s3.bucket`).
    pub fn validate(&self) -> Result<(), TargetInvalid> {
        match self {
            UploadTarget::S3(t) => {
                name_ok("s3.bucket", &t.bucket, 3, 255)?;
                endpoint_ok("s3.endpoint", t.endpoint.as_deref())?;
                prefix_ok("s3.prefix", t.prefix.as_deref())?;
                if t.access_key.is_some() != t.secret.is_some() {
                    return Err(bad(
                        "s3.secret",
                        "access_key and secret go together: give both or neither",
                    ));
                }
                if let Some(r) = &t.region
                    && (r.is_empty()
                        || r.len() > 64
                        || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                {
                    return Err(bad("s3.region", "must be a region name like eu-west-1"));
                }
                Ok(())
            }
            UploadTarget::Gcs(t) => {
                name_ok("gcs.bucket", &t.bucket, 3, 222)?;
                endpoint_ok("gcs.endpoint", t.endpoint.as_deref())?;
                prefix_ok("gcs.prefix", t.prefix.as_deref())
            }
            UploadTarget::Azure(t) => {
                name_ok("azure.container_name", &t.container_name, 3, 63)?;
                endpoint_ok("azure.endpoint", t.endpoint.as_deref())?;
                prefix_ok("azure.prefix", t.prefix.as_deref())
            }
        }
    }

    /// The endpoint the target names, with its field (`s3.endpoint`); None = the provider's.
    pub fn endpoint(&self) -> Option<(&'static str, &str)> {
        match self {
            UploadTarget::S3(t) => t.endpoint.as_deref().map(|e| ("s3.endpoint", e)),
            UploadTarget::Azure(t) => t.endpoint.as_deref().map(|e| ("azure.endpoint", e)),
            UploadTarget::Gcs(t) => t.endpoint.as_deref().map(|e| ("gcs.endpoint", e)),
        }
    }

    fn prefix(&self) -> &str {
        match self {
            UploadTarget::S3(t) => t.prefix.as_deref(),
            UploadTarget::Gcs(t) => t.prefix.as_deref(),
            UploadTarget::Azure(t) => t.prefix.as_deref(),
        }
        .unwrap_or("")
    }

    /// The object key of an output: the prefix, then its name relative to the output directory.
    pub fn key_for(&self, relative: &str) -> String {
        let p = self.prefix();
        let rel = relative.trim_start_matches("./");
        if p.is_empty() {
            rel.to_string()
        } else if p.ends_with('/') {
            format!("{p}{rel}")
        } else {
            format!("{p}/{rel}")
        }
    }

    /// Where an uploaded object is, as users see it: `s3://bucket/key`, `gs://bucket/key`, or
    /// the blob's URL.
    pub fn location(&self, key: &str) -> String {
        match self {
            UploadTarget::S3(t) => format!("s3://{}/{key}", t.bucket),
            UploadTarget::Gcs(t) => format!("gs://{}/{key}", t.bucket),
            UploadTarget::Azure(t) => {
                let account = t
                    .account_name
                    .clone()
                    .or_else(|| std::env::var("AZURE_STORAGE_ACCOUNT_NAME").ok())
                    .unwrap_or_default();
                match &t.endpoint {
                    // The endpoint is the account's URL (Azurite's `http://host:10000/
                    // devstoreaccount1`, a private endpoint): blobs are under it directly.
                    Some(e) => format!("{}/{}/{key}", e.trim_end_matches('/'), t.container_name),
                    None => format!(
                        "https://{account}.blob.core.windows.net/{}/{key}",
                        t.container_name
                    ),
                }
            }
        }
    }

    /// A short name for logs and errors: `s3://bucket`, never a secret.
    pub fn label(&self) -> String {
        match self {
            UploadTarget::S3(t) => format!("s3://{}", t.bucket),
            UploadTarget::Gcs(t) => format!("gs://{}", t.bucket),
            UploadTarget::Azure(t) => format!("azure container {}", t.container_name),
        }
    }
}

fn name_ok(field: &str, v: &str, min: usize, max: usize) -> Result<(), TargetInvalid> {
    if v.len() < min
        || v.len() > max
        || !v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err(bad(
            field,
            format!("'{v}' is not a bucket/container name ({min}-{max} of a-z 0-9 - . _)"),
        ));
    }
    Ok(())
}

fn endpoint_ok(field: &str, v: Option<&str>) -> Result<(), TargetInvalid> {
    let Some(e) = v else { return Ok(()) };
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"));
    match rest {
        Some(r)
            if !r.is_empty()
                && e.len() <= 1024
                && !e.chars().any(|c| c.is_control() || c.is_whitespace())
                && !r.contains('@') =>
        {
            Ok(())
        }
        _ => Err(bad(
            field,
            "must be http(s)://host[:port] (no credentials in the URL)",
        )),
    }
}

fn prefix_ok(field: &str, v: Option<&str>) -> Result<(), TargetInvalid> {
    let Some(p) = v else { return Ok(()) };
    if p.len() > 512
        || p.starts_with('/')
        || p.split('/').any(|c| c == "..")
        || p.chars().any(|c| c.is_control())
    {
        return Err(bad(
            field,
            "must be a relative key prefix without '..' (e.g. rooms/)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(json: &str) -> UploadTarget {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn secrets_are_redacted_everywhere_they_show() {
        let t = s3(
            r#"{"s3": {"bucket": "rec", "access_key": "AKIASECRET", "secret": "s3cr3t", "endpoint": "http://127.0.0.1:9000"}}"#,
        );
        let shown = serde_json::to_string(&t.redacted()).unwrap();
        assert!(
            !shown.contains("AKIASECRET") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(shown.contains(REDACTED));
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("s3cr3t") && dbg.contains("rec"), "{dbg}");
    }

    #[test]
    fn keys_and_locations() {
        let t = s3(r#"{"s3": {"bucket": "rec", "prefix": "rooms"}}"#);
        assert_eq!(t.key_for("a/b.mp4"), "rooms/a/b.mp4");
        assert_eq!(t.location("rooms/a/b.mp4"), "s3://rec/rooms/a/b.mp4");
        let t = s3(r#"{"gcs": {"bucket": "rec", "prefix": "x/"}}"#);
        assert_eq!(t.key_for("./b.mp4"), "x/b.mp4");
        assert_eq!(t.location("x/b.mp4"), "gs://rec/x/b.mp4");
    }

    #[test]
    fn validation_names_the_field() {
        for (json, field) in [
            (r#"{"s3": {"bucket": "A B"}}"#, "s3.bucket"),
            (
                r#"{"s3": {"bucket": "rec", "endpoint": "ftp://x"}}"#,
                "s3.endpoint",
            ),
            (
                r#"{"s3": {"bucket": "rec", "endpoint": "http://k:s@x"}}"#,
                "s3.endpoint",
            ),
            (
                r#"{"s3": {"bucket": "rec", "prefix": "../x"}}"#,
                "s3.prefix",
            ),
            (
                r#"{"s3": {"bucket": "rec", "access_key": "k"}}"#,
                "s3.secret",
            ),
            (
                r#"{"azure": {"container_name": "c"}}"#,
                "azure.container_name",
            ),
        ] {
            assert_eq!(s3(json).validate().unwrap_err().0, field, "{json}");
        }
        assert!(
            serde_json::from_str::<UploadTarget>(r#"{"s3": {"bucket": "r", "x": 1}}"#).is_err()
        );
        assert!(serde_json::from_str::<UploadTarget>(r#"{"ftp": {"bucket": "r"}}"#).is_err());
        s3(r#"{"s3": {"bucket": "rec", "endpoint": "http://127.0.0.1:9000", "force_path_style": true}}"#)
            .validate()
            .unwrap();
    }
}
