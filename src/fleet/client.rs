//! Node-to-node calls over the admin API: start on the chosen node, and stop/kill forwarded to
//! the node that runs an egress.
//!
//! The HTTP client is awc, which is `!Send`: each worker thread keeps its own (`thread_local!`),
//! with a connection pool whose idle connections are dropped before the server's keep-alive
//! (5 s in actix-web) would close them under a request.

use std::time::Duration;

use actix_web::web::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{EgressInfo, EgressRequest};

/// Client-side limit on one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Below actix-web's default server keep-alive, so a pooled connection is never reused just as
/// the server closes it.
const POOL_KEEP_ALIVE: Duration = Duration::from_secs(3);

thread_local! {
    static CLIENT: awc::Client = awc::Client::builder()
        .connector(
            awc::Connector::new()
                .timeout(CONNECT_TIMEOUT)
                .conn_keep_alive(POOL_KEEP_ALIVE)
                .limit(1024),
        )
        .disable_timeout()
        .finish();
}

fn client() -> awc::Client {
    CLIENT.with(|c| c.clone())
}

/// How to reach one node: its advertised base URL and the fleet's shared token.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub url: &'a str,
    pub token: &'a str,
}

/// `POST /v1/node/egress` body: start this placed egress on the node that receives it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeStart {
    /// Chosen by the placer, kept across retries on other nodes.
    pub egress_id: String,
    /// A claim from this node's `GET /v1/affinity`, for clients that place jobs themselves
    /// (fleet placement reserves in Redis and sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_id: Option<String>,
    pub request: EgressRequest,
}

/// The `{"error": {...}}` body every node answers on failure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// For `no_capacity`/`draining`: cpu, type_limit or draining.
    pub reason: Option<String>,
    /// For `already_placed`: the node that owns the egress.
    pub owner: Option<String>,
    /// For `invalid_field`: the field.
    pub field: Option<String>,
}

impl RemoteError {
    /// What this node's own API would have answered with `e`: the placer that picks itself
    /// starts the job in-process and reads the refusal the same way as another node's.
    pub fn of_local(e: &crate::error::ApiError) -> RemoteError {
        use actix_web::ResponseError;
        let body = serde_json::to_vec(&e.body()).unwrap_or_default();
        RemoteError::parse(e.status_code().as_u16(), &body)
    }

    fn parse(status: u16, body: &[u8]) -> RemoteError {
        match crate::error::ErrorBody::parse(body) {
            Some(b) => RemoteError {
                status,
                code: b.error.code,
                message: b.error.message,
                reason: b.error.reason,
                owner: b.error.owner,
                field: b.error.field,
            },
            None => RemoteError {
                status,
                code: String::new(),
                message: String::from_utf8_lossy(body).chars().take(200).collect(),
                reason: None,
                owner: None,
                field: None,
            },
        }
    }
}

/// Why a call to another node did not give the expected answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No answer: connection refused or reset.
    Unreachable(String),
    /// No answer before the deadline (the node may be alive but slow).
    Timeout(String),
    /// An answer with an error status.
    Remote(Box<RemoteError>),
    /// An answer that does not parse.
    Garbled(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CallError::Timeout(e) => write!(f, "timed out: {e}"),
            CallError::Remote(r) => write!(f, "{} {}: {}", r.status, r.code, r.message),
            CallError::Garbled(e) => write!(f, "unreadable answer: {e}"),
        }
    }
}

/// Sends one request and reads the whole answer within `timeout`.
async fn call(
    method: awc::http::Method,
    target: &Target<'_>,
    path_and_query: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(u16, Bytes), CallError> {
    let url = format!("{}{}", target.url, path_and_query);
    let mut req = client().request(method, &url);
    if !target.token.is_empty() {
        req = req.insert_header(("authorization", format!("Bearer {}", target.token)));
    }
    let fut = async move {
        let mut resp = match body {
            Some(b) => {
                req.insert_header(("content-type", "application/json"))
                    .send_body(b)
                    .await
            }
            None => req.send().await,
        }
        .map_err(|e| CallError::Unreachable(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body()
            .limit(16 << 20)
            .await
            .map_err(|e| CallError::Unreachable(format!("{url}: reading the answer: {e}")))?;
        Ok((status, body))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout(format!(
            "{}{path_and_query}: no answer within {} ms",
            target.url,
            timeout.as_millis()
        ))),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    status: u16,
    body: &[u8],
    ok: &[u16],
) -> Result<T, CallError> {
    if !ok.contains(&status) {
        return Err(CallError::Remote(Box::new(RemoteError::parse(
            status, body,
        ))));
    }
    serde_json::from_slice(body).map_err(|e| CallError::Garbled(e.to_string()))
}

/// `POST /v1/node/egress`: starts the egress on that node only.
pub async fn start(
    target: Target<'_>,
    start: &NodeStart,
    timeout: Duration,
) -> Result<EgressInfo, CallError> {
    let body = serde_json::to_vec(start).map_err(|e| CallError::Garbled(e.to_string()))?;
    let (status, body) = call(
        awc::http::Method::POST,
        &target,
        "/v1/node/egress",
        Some(body),
        timeout,
    )
    .await?;
    parse(status, &body, &[201])
}

/// `POST /v1/egress/{id}/stop|kill` on the node that runs it.
pub async fn end(
    target: Target<'_>,
    egress_id: &str,
    action: &str,
    timeout: Duration,
) -> Result<EgressInfo, CallError> {
    let path = format!("/v1/egress/{egress_id}/{action}");
    let (status, body) = call(
        awc::http::Method::POST,
        &target,
        &path,
        Some(b"{}".to_vec()),
        timeout,
    )
    .await?;
    parse(status, &body, &[200])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_keep_code_reason_and_owner() {
        let e = RemoteError::parse(
            409,
            br#"{"error":{"code":"already_placed","message":"m","owner":"ND_b"}}"#,
        );
        assert_eq!(
            (e.status, e.code.as_str(), e.owner.as_deref()),
            (409, "already_placed", Some("ND_b"))
        );
        let e = RemoteError::parse(
            503,
            br#"{"error":{"code":"no_capacity","message":"m","reason":"cpu"}}"#,
        );
        assert_eq!(e.reason.as_deref(), Some("cpu"));
        let e = RemoteError::parse(502, b"bad gateway");
        assert_eq!((e.code.as_str(), e.message.as_str()), ("", "bad gateway"));
    }
}
