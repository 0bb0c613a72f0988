//! How a storage target (`model::upload`) becomes an `object_store` client.

use std::sync::Arc;
use std::time::Duration;

use object_store::multipart::MultipartStore;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

pub use crate::model::upload::*;

impl UploadTarget {
    /// An `object_store` client for this target. Its own retries are short: the delivery queue
    /// retries with backoff up to `storage.upload_retry_s` itself. `env` says whether the
    /// node's credentials (environment, instance metadata) may sign for it: only for the
    /// operator's own targets (`storage.upload`, `storage.backup`). A target a request named
    /// uses the credentials in it, or none (unsigned requests), so a request cannot make the
    /// node sign for a store it points at.
    pub fn connect(&self, env: bool) -> Result<Connected, object_store::Error> {
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        match self {
            UploadTarget::S3(t) => {
                let b = if env {
                    object_store::aws::AmazonS3Builder::from_env()
                } else {
                    object_store::aws::AmazonS3Builder::new()
                        .with_region("us-east-1")
                        .with_skip_signature(t.access_key.is_none())
                };
                let mut b = b
                    .with_bucket_name(&t.bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(r) = &t.region {
                    b = b.with_region(r);
                }
                if let Some(e) = &t.endpoint {
                    b = b
                        .with_endpoint(e.trim_end_matches('/'))
                        .with_allow_http(e.starts_with("http://"))
                        .with_virtual_hosted_style_request(!t.force_path_style.unwrap_or(true));
                } else if t.force_path_style == Some(true) {
                    b = b.with_virtual_hosted_style_request(false);
                }
                if let (Some(k), Some(s)) = (&t.access_key, &t.secret) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                let s = Arc::new(b.build()?);
                Ok(Connected {
                    object: s.clone(),
                    multipart: s,
                })
            }
            UploadTarget::Gcs(t) => {
                // An emulator (an endpoint without a key) checks no signature.
                let unsigned = t.credentials_json.is_none() && (!env || t.endpoint.is_some());
                let b = if env {
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                } else {
                    object_store::gcp::GoogleCloudStorageBuilder::new()
                };
                let client = match &t.endpoint {
                    Some(e) => client.with_allow_http(e.starts_with("http://")),
                    None => client,
                };
                let mut b = b
                    .with_skip_signature(unsigned)
                    .with_bucket_name(&t.bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(e) = &t.endpoint {
                    b = b.with_base_url(e.trim_end_matches('/'));
                }
                if unsigned {
                    // object_store 0.14's GCS PUT asks its credential provider even with
                    // skip_signature: an empty bearer keeps it off the metadata server.
                    b = b.with_credentials(Arc::new(object_store::StaticCredentialProvider::new(
                        object_store::gcp::GcpCredential {
                            bearer: String::new(),
                        },
                    )));
                }
                if let Some(c) = &t.credentials_json {
                    b = b.with_service_account_key(c);
                }
                let s = Arc::new(b.build()?);
                Ok(Connected {
                    object: s.clone(),
                    multipart: s,
                })
            }
            UploadTarget::Azure(t) => {
                let b = if env {
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                } else {
                    object_store::azure::MicrosoftAzureBuilder::new()
                        .with_skip_signature(t.account_key.is_none())
                };
                let mut b = b
                    .with_container_name(&t.container_name)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(a) = &t.account_name {
                    b = b.with_account(a);
                }
                if let Some(k) = &t.account_key {
                    b = b.with_access_key(k);
                }
                if let Some(e) = &t.endpoint {
                    b = b
                        .with_endpoint(e.trim_end_matches('/').to_string())
                        .with_allow_http(e.starts_with("http://"));
                }
                let s = Arc::new(b.build()?);
                Ok(Connected {
                    object: s.clone(),
                    multipart: s,
                })
            }
        }
    }
}

/// A target's client, as the two traits the uploader needs.
#[derive(Clone)]
pub struct Connected {
    pub object: Arc<dyn ObjectStore>,
    pub multipart: Arc<dyn MultipartStore>,
}
