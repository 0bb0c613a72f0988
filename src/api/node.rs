//! The node itself: probes, state, drain, affinity, metrics.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::actors::affinity::GetAffinity;
use crate::api::{AppState, method_not_allowed};
use crate::error::{ApiError, RequestError};
use crate::metrics::METRICS;
use crate::model::EgressType;
use crate::node::Readiness;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .service(
            web::resource("/v1/node")
                .route(web::get().to(node))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/node/drain")
                .route(web::post().to(drain))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/node/costs")
                .route(web::get().to(costs))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/affinity")
                .route(web::get().to(affinity))
                .route(web::post().to(claim))
                .default_service(web::to(method_not_allowed)),
        );
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 while the node takes new egresses; 503 (with the reason) while draining, while the state
/// or output directory cannot be written or is full, or when its actors do not answer.
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.node.readiness().await? {
        // Degraded still takes work (placed on this node alone), so it is ready: 200.
        Readiness::Ready => match state.fleet.as_ref().and_then(|f| f.degraded()) {
            Some(reason) => Ok(HttpResponse::Ok()
                .json(json!({"status": "degraded", "node_id": state.node.id(), "reason": reason}))),
            None => {
                Ok(HttpResponse::Ok().json(json!({"status": "ready", "node_id": state.node.id()})))
            }
        },
        Readiness::NotReady(why) => Err(ApiError::Unavailable(why)),
    }
}

async fn node(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.node.state().await?))
}

/// Per cost class: configured cost, learned figures, and the price admission charges now.
async fn costs(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.node.pricer().report())
}

async fn drain(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.node.drain().await;
    Ok(HttpResponse::Accepted().json(state.node.state().await?))
}

/// `?type=track[&estimated_cpu=1.5]`: this node's score for such a request. Takes no claim: a
/// GET is what an `<img>` tag on any web page can send.
async fn affinity(
    state: web::Data<AppState>,
    q: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    for k in q.keys() {
        if k != "type" && k != "estimated_cpu" {
            return Err(ApiError::BadQuery(format!("unknown query parameter '{k}'")));
        }
    }
    let t = q
        .get("type")
        .ok_or_else(|| ApiError::BadQuery("missing 'type'".into()))?;
    let egress_type =
        EgressType::parse(t).ok_or_else(|| ApiError::BadQuery(format!("unknown type '{t}'")))?;
    let cost = match q.get("estimated_cpu") {
        None => None,
        Some(v) => Some(
            v.parse::<f64>()
                .ok()
                .filter(|c| c.is_finite() && (0.0..=256.0).contains(c))
                .ok_or_else(|| {
                    ApiError::BadQuery("estimated_cpu must be a number in [0, 256]".into())
                })?,
        ),
    };
    let a = state
        .node
        .affinity(GetAffinity {
            egress_type,
            cost,
            take_claim: false,
        })
        .await?;
    Ok(HttpResponse::Ok().json(a))
}

/// `POST /v1/affinity` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AffinityRequest {
    #[serde(rename = "type")]
    pub egress_type: EgressType,
    /// Cores the request would cost; defaults to the type's configured cost.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 256)]
    pub estimated_cpu: Option<f64>,
}

/// This node's score for a request, and a claim holding its slot and CPU for
/// `affinity.pending_claim_ttl_ms` (pass `claim_id` with the start; `/v1/affinity/release` frees it).
async fn claim(
    state: web::Data<AppState>,
    body: web::Json<AffinityRequest>,
) -> Result<HttpResponse, ApiError> {
    let AffinityRequest {
        egress_type,
        estimated_cpu,
    } = body.into_inner();
    if let Some(c) = estimated_cpu
        && !(c.is_finite() && (0.0..=256.0).contains(&c))
    {
        return Err(RequestError::invalid(
            "estimated_cpu",
            "must be a number of cores in [0, 256]",
        )
        .into());
    }
    let a = state
        .node
        .affinity(GetAffinity {
            egress_type,
            cost: estimated_cpu,
            take_claim: true,
        })
        .await?;
    Ok(HttpResponse::Ok().json(a))
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(METRICS.render())
}
