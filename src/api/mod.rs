//! The HTTP admin API (actix-web), one file per resource. Every error is an `ApiError`, rendered
//! as `{"error": {"code", "message"}}`; nothing a client sends can produce a panic or a 5xx.

pub mod egress;
pub mod fleet;
pub mod node;
pub mod openapi;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::config::Config;
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::node::Node;

/// What every HTTP worker shares: the node, and the fleet when there is one. Routes parse,
/// call one of them, and render.
pub struct AppState {
    pub cfg: std::sync::Arc<Config>,
    pub node: Node,
    pub fleet: Option<std::sync::Arc<Fleet>>,
}

/// Routes, extractor error handlers and the JSON 404/405 answers.
pub fn configure(cfg: &mut web::ServiceConfig, max_body: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body)
            .content_type_required(false)
            .error_handler(move |err, _req| json_error(err, max_body).into()),
    )
    .app_data(web::PayloadConfig::default().limit(max_body))
    .app_data(
        web::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
            ApiError::BadQuery(err.to_string()).into()
        }),
    );
    egress::configure(cfg);
    node::configure(cfg);
    fleet::configure(cfg);
    openapi::configure(cfg);
}

fn json_error(err: JsonPayloadError, max_body: usize) -> ApiError {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::TooLarge(max_body)
        }
        JsonPayloadError::Deserialize(e) => ApiError::BadJson(e.to_string()),
        other => ApiError::BadJson(other.to_string()),
    }
}

/// Unknown paths.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Known paths with a method they do not take.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    HttpResponse::MethodNotAllowed().json(serde_json::json!({
        "error": {"code": "method_not_allowed", "message": format!("{} is not allowed on {}", req.method(), req.path())}
    }))
}

/// Bearer-token check for everything but the liveness/readiness probes.
pub async fn auth(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let open = matches!(req.path(), "/healthz" | "/readyz" | "/v1/openapi.json");
    let token = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.cfg.server.api_token.clone())
        .unwrap_or_default();
    if !open && !token.is_empty() {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return Err(ApiError::Unauthorized.into());
        }
    }
    next.call(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
