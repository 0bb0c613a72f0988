//! `/v1/fleet/...`: the fleet as seen from this node, and the two routes other nodes call during
//! a placement (`POST /v1/node/egress`, `POST /v1/affinity/release`). They sit behind the same
//! bearer token as everything else: the nodes of a fleet share `server.api_token`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::api::{AppState, method_not_allowed};
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::fleet::client::NodeStart;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/fleet/nodes")
            .route(web::get().to(nodes))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/fleet/capacity")
            .route(web::get().to(capacity))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/node/egress")
            .route(web::post().to(node_egress))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/affinity/release")
            .route(web::post().to(release))
            .default_service(web::to(method_not_allowed)),
    );
}

fn fleet(state: &AppState) -> Result<&Fleet, ApiError> {
    state.fleet.as_deref().ok_or_else(|| {
        ApiError::NotFound("this node runs alone: no fleet.redis_url is configured".into())
    })
}

/// Live nodes with their load and per-type counts, as their last heartbeat reported them.
async fn nodes(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match fleet(&state)?.nodes().await {
        Ok(nodes) => Ok(HttpResponse::Ok().json(json!({ "nodes": nodes }))),
        // Degraded: no node list without Redis; say so rather than fail.
        Err(e) if e.is_unreachable() => Ok(HttpResponse::Ok().json(json!({
            "nodes": [],
            "partial": format!("the fleet's nodes are unknown: {}", ApiError::from(e)),
        }))),
        Err(e) => Err(e.into()),
    }
}

/// Autoscaling signals: budget, used and free cores of the nodes that take work, what fits,
/// desired nodes and drain candidates.
async fn capacity(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let c = fleet(&state)?.capacity(state.node.pricer()).await?;
    Ok(HttpResponse::Ok().json(c))
}

/// Internal (placement): start this placed egress here, and only here.
async fn node_egress(
    state: web::Data<AppState>,
    body: web::Json<NodeStart>,
) -> Result<HttpResponse, ApiError> {
    let info = fleet(&state)?
        .start_owned(&state.node, body.into_inner())
        .await?;
    Ok(HttpResponse::Created().json(info))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    claim_id: String,
}

/// Gives back a claim that `GET /v1/affinity` took (idempotent; unknown claims are ignored).
async fn release(
    state: web::Data<AppState>,
    body: web::Json<Release>,
) -> Result<HttpResponse, ApiError> {
    state.node.release_claim(body.into_inner().claim_id).await?;
    Ok(HttpResponse::NoContent().finish())
}
