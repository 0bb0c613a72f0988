//! Typed errors, one enum per domain, and the single place where they become HTTP responses.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::model::EgressType;

pub use crate::model::validate::RequestError;

/// Why the node refuses to take a job.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AdmissionError {
    #[error(
        "not enough CPU for {egress_type}: needs {needed:.2} cores, {available:.2} available; \
         give a smaller estimated_cpu with the request, learn this machine's real costs with \
         `egress-engine calibrate`, or set cpu_cost.{egress_type} or cpu.capacity"
    )]
    Cpu {
        egress_type: EgressType,
        needed: f64,
        available: f64,
    },
    #[error("{egress_type} is at its limit: {active} active or claimed, limit {limit}")]
    TypeLimit {
        egress_type: EgressType,
        active: u32,
        limit: u32,
    },
    #[error("the node is draining and takes no new egress")]
    Draining,
    #[error(
        "not enough disk under storage.output_dir: {free_bytes} bytes free, {needed_bytes} needed \
         (storage.min_free_bytes + what running egresses write in storage.disk_horizon_s)"
    )]
    Disk { free_bytes: u64, needed_bytes: u64 },
    /// Fleet placement: no live node could take the job; `reason` is the most common refusal.
    #[error("no node of the fleet can take the {egress_type} egress: {detail}")]
    NoNode {
        egress_type: EgressType,
        reason: &'static str,
        detail: String,
    },
}

impl AdmissionError {
    pub fn reason(&self) -> &'static str {
        match self {
            AdmissionError::Cpu { .. } => "cpu",
            AdmissionError::TypeLimit { .. } => "type_limit",
            AdmissionError::Draining => "draining",
            AdmissionError::Disk { .. } => "disk",
            AdmissionError::NoNode { reason, .. } => reason,
        }
    }
}

/// Why this node's actors (and the `Node` over them) refuse or fail a request: domain errors,
/// no HTTP in them. `api/` turns them into answers (`From<NodeError> for ApiError`, below).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request (or a stream change) is not one this node can take as it is.
    #[error("{0}")]
    Request(#[from] RequestError),
    /// No such egress on this node.
    #[error("{0}")]
    NotFound(String),
    /// A publisher's token is missing or not the egress's `whip_token`.
    #[error("missing or wrong token")]
    Unauthorized,
    /// The egress is not in a state that takes this (it ended, is ending, exists already...).
    #[error("{0}")]
    Conflict(String),
    /// An output file of the request exists already.
    #[error("{0}")]
    OutputExists(String),
    /// Admission (CPU, a type's limit, disk, draining) refused the job.
    #[error("{0}")]
    NoCapacity(#[from] AdmissionError),
    /// The node cannot do it now (shutting down, `state_dir` unusable).
    #[error("{0}")]
    Unavailable(String),
    /// Too many changes of one kind for one egress in a short time; the next one is allowed in
    /// `retry_after_s`.
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    /// An actor that no longer answers: the service is shutting down.
    pub fn from_mailbox(e: actix::MailboxError) -> Self {
        NodeError::Unavailable(format!("service is shutting down ({e})"))
    }
}

/// The one mapping of the node's errors to the API's (and so to codes and statuses).
impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        match e {
            NodeError::Request(r) => ApiError::BadRequest(r),
            NodeError::NotFound(m) => ApiError::NotFound(m),
            NodeError::Unauthorized => ApiError::Unauthorized,
            NodeError::Conflict(m) => ApiError::Conflict(m),
            NodeError::OutputExists(m) => ApiError::OutputExists(m),
            NodeError::NoCapacity(a) => ApiError::NoCapacity(a),
            NodeError::Unavailable(m) => ApiError::Unavailable(m),
            NodeError::RateLimited {
                message,
                retry_after_s,
            } => ApiError::RateLimited {
                message,
                retry_after_s,
            },
            // Displayed by `ApiError` with its own "internal error: " prefix.
            NodeError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// Every error answer of the API: `{"error": {"code", "message", ...}}`. The API renders it
/// (`ApiError::error_body`), and the CLI and the fleet's node client read it back.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct ErrorDetail {
    /// Machine-readable: invalid_field, unknown_type, unsupported, scheme_not_allowed, bad_json,
    /// bad_query, unauthorized, origin_not_allowed, bad_host, not_found, method_not_allowed,
    /// conflict, output_exists, already_placed, payload_too_large, unsupported_media_type,
    /// rate_limited, no_capacity, draining, unavailable, start_pending, internal.
    pub code: String,
    /// For people.
    pub message: String,
    /// `no_capacity`/`draining`: cpu, type_limit, disk or draining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `invalid_field`: the request field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `already_placed`, `start_pending`: the node that holds the egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `start_pending`: the egress to look up before a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_id: Option<String>,
}

impl ErrorBody {
    /// The error of an answer's body, when it is one of ours.
    pub fn parse(body: &[u8]) -> Option<ErrorBody> {
        serde_json::from_slice::<ErrorBody>(body).ok()
    }
}

/// Errors of the HTTP admin API. `ResponseError` below is the only mapping to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(#[from] RequestError),
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    #[error("{0}")]
    BadQuery(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    OutputExists(String),
    /// Fleet: another live node owns this egress id already (409 `already_placed`).
    #[error("egress {egress_id} is already placed on node {owner}")]
    AlreadyPlaced { egress_id: String, owner: String },
    /// Fleet: the node that holds this egress id neither started it nor gave it up in time. The
    /// job may still start there, so a client should look it up before it retries.
    #[error(
        "egress {egress_id} is held by node {owner}, which neither started it nor gave it up in time; \
         GET /v1/egress/{egress_id} before retrying: a new request could record it twice"
    )]
    StartPending { egress_id: String, owner: String },
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// A body (or a declared content type) that is not `application/json`: what a cross-site
    /// form or `fetch` without a preflight would send (415 `unsupported_media_type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A request from a web page of another origin not listed in `server.allowed_origins`
    /// (403 `origin_not_allowed`).
    #[error("{0}")]
    OriginNotAllowed(String),
    /// A `Host` that is not this loopback listener (DNS rebinding; 403 `bad_host`).
    #[error("{0}")]
    BadHost(String),
    /// A known path asked with a method it does not take; `allow` lists those it takes (405).
    #[error("{method} is not allowed on {path} (allowed: {allow})")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("{0}")]
    NoCapacity(#[from] AdmissionError),
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests of one kind for one egress in a short time (429 `rate_limited`);
    /// `retry_after_s` goes out as `Retry-After`.
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(RequestError::Invalid { .. }) => "invalid_field",
            ApiError::BadRequest(RequestError::UnknownType(_)) => "unknown_type",
            ApiError::BadRequest(RequestError::Unsupported(_)) => "unsupported",
            ApiError::BadRequest(RequestError::SchemeNotAllowed(_)) => "scheme_not_allowed",
            ApiError::BadJson(_) => "bad_json",
            ApiError::BadQuery(_) => "bad_query",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::OutputExists(_) => "output_exists",
            ApiError::AlreadyPlaced { .. } => "already_placed",
            ApiError::StartPending { .. } => "start_pending",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::BadHost(_) => "bad_host",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::NoCapacity(AdmissionError::Draining) => "draining",
            ApiError::NoCapacity(_) => "no_capacity",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The body of this error's answer.
    pub fn error_body(&self) -> ErrorBody {
        let mut d = ErrorDetail {
            code: self.code().to_string(),
            message: self.to_string(),
            ..ErrorDetail::default()
        };
        match self {
            ApiError::NoCapacity(a) => d.reason = Some(a.reason().to_string()),
            ApiError::AlreadyPlaced { owner, .. } => d.owner = Some(owner.clone()),
            ApiError::StartPending { egress_id, owner } => {
                d.egress_id = Some(egress_id.clone());
                d.owner = Some(owner.clone());
            }
            ApiError::BadRequest(RequestError::Invalid { field, .. }) => {
                d.field = Some(field.clone())
            }
            _ => {}
        }
        ErrorBody { error: d }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(self.error_body()).unwrap_or_else(|_| json!({}))
    }

    pub fn from_mailbox(e: actix::MailboxError) -> Self {
        ApiError::Unavailable(format!("service is shutting down ({e})"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadJson(_) | ApiError::BadQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::AlreadyPlaced { .. } | ApiError::OutputExists(_) => {
                StatusCode::CONFLICT
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::OriginNotAllowed(_) | ApiError::BadHost(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoCapacity(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StartPending { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            resp.insert_header(("Allow", allow.as_str()));
        }
        if let ApiError::RateLimited { retry_after_s, .. } = self {
            resp.insert_header(("Retry-After", retry_after_s.to_string()));
        }
        resp.json(self.body())
    }
}

/// Errors building or running a GStreamer pipeline inside a handler.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("missing GStreamer element '{0}': is the plugin installed? (scripts/setup)")]
    MissingElement(String),
    #[error("cannot build pipeline: {0}")]
    Build(String),
    #[error("cannot create output directory {path}: {source}")]
    OutputDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{element}: {message} ({debug})")]
    Bus {
        element: String,
        message: String,
        debug: String,
    },
    #[error("pipeline state change failed: {0}")]
    State(String),
    /// The output file cannot be opened (a symlink, not a regular file, no permission...).
    #[error("{0}")]
    Output(String),
}

impl From<gstreamer::glib::BoolError> for PipelineError {
    fn from(e: gstreamer::glib::BoolError) -> Self {
        PipelineError::Build(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_reads_back_as_it_was_rendered() {
        let e = ApiError::StartPending {
            egress_id: "EG_abcdefghijkl".into(),
            owner: "ND_b".into(),
        };
        let text = serde_json::to_vec(&e.body()).unwrap();
        let back = ErrorBody::parse(&text).unwrap();
        assert_eq!(back, e.error_body());
        assert_eq!(back.error.owner.as_deref(), Some("ND_b"));
        assert_eq!(ErrorBody::parse(b"<html>502</html>"), None);
    }

    #[test]
    fn a_node_error_answers_as_the_api_error_it_stands_for() {
        let cases: Vec<(NodeError, StatusCode, &str)> = vec![
            (
                RequestError::invalid("add_urls", "listed twice").into(),
                StatusCode::BAD_REQUEST,
                "invalid_field",
            ),
            (
                NodeError::NotFound("no egress EG_x".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                NodeError::Conflict("ended".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                NodeError::OutputExists("a.mp4".into()),
                StatusCode::CONFLICT,
                "output_exists",
            ),
            (
                AdmissionError::Draining.into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
            ),
            (
                NodeError::Unavailable("state_dir".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                NodeError::RateLimited {
                    message: "slow down".into(),
                    retry_after_s: 3,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
            ),
            (
                NodeError::Internal("spawn".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (n, status, code) in cases {
            let message = n.to_string();
            let a = ApiError::from(n);
            assert_eq!((a.status_code(), a.code()), (status, code), "{message}");
            assert_eq!(a.to_string(), message);
        }
    }

    #[test]
    fn a_rate_limit_says_when_to_retry() {
        let e = ApiError::RateLimited {
            message: "slow down".into(),
            retry_after_s: 7,
        };
        let r = e.error_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get("retry-after").unwrap(), "7");
        assert_eq!(e.body()["error"]["code"], "rate_limited");
    }

    #[test]
    fn a_pending_start_names_the_egress_to_look_up_before_a_retry() {
        let e = ApiError::StartPending {
            egress_id: "EG_x".into(),
            owner: "ND_b".into(),
        };
        assert_eq!(e.status_code(), StatusCode::GATEWAY_TIMEOUT);
        let body = e.body();
        assert_eq!(body["error"]["code"], "start_pending");
        assert_eq!(body["error"]["egress_id"], "EG_x");
        assert_eq!(body["error"]["owner"], "ND_b");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("GET /v1/egress/EG_x")
        );
    }
}
