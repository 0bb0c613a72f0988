//! `/v1/fleet/...`: the fleet as seen from this node.

use actix_web::{HttpResponse, web};

use crate::api::method_not_allowed;
use crate::error::ApiError;
use crate::service::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/fleet/nodes")
            .route(web::get().to(nodes))
            .default_service(web::to(method_not_allowed)),
    );
}

async fn nodes(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match &state.fleet {
        None => Err(ApiError::NotFound("this node runs alone: no fleet.redis_url is configured".into())),
        Some(_) => Err(ApiError::Unavailable("fleet listing is not available".into())),
    }
}
