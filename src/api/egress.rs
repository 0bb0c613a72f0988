//! `/v1/egress`: start, list, get, stop and kill egresses.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::api::{AppState, method_not_allowed};
use crate::error::ApiError;
use crate::model::{EgressInfo, EgressRequest, EgressStatus, StreamsUpdate, is_valid_egress_id};
use crate::node::EndAction;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/egress")
            .route(web::post().to(start))
            .route(web::get().to(list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/egress/{id}")
            .route(web::get().to(get))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/egress/{id}/stop")
            .route(web::post().to(stop))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/egress/{id}/kill")
            .route(web::post().to(kill))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/egress/{id}/streams")
            .route(web::post().to(streams))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/egress/{id}/thumbnail.jpg")
            .route(web::get().to(thumbnail))
            .default_service(web::to(method_not_allowed)),
    );
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EgressList {
    pub egresses: Vec<EgressInfo>,
    /// Set when the list is this node's alone because the fleet's Redis does not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

async fn start(
    state: web::Data<AppState>,
    req: web::Json<EgressRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    match &state.fleet {
        Some(fleet) => {
            let p = fleet.place(&state.node, req).await?;
            Ok(HttpResponse::Created()
                .insert_header(("Server-Timing", p.server_timing()))
                .json(p.info))
        }
        None => Ok(HttpResponse::Created().json(state.node.start(req, None, None).await?)),
    }
}

/// `?status=active` or `?status=active,ending`.
pub fn parse_statuses(q: &HashMap<String, String>) -> Result<Option<Vec<EgressStatus>>, ApiError> {
    for k in q.keys() {
        if k != "status" {
            return Err(ApiError::BadQuery(format!("unknown query parameter '{k}'")));
        }
    }
    let Some(s) = q.get("status") else {
        return Ok(None);
    };
    s.split(',')
        .map(|w| {
            EgressStatus::ALL
                .into_iter()
                .find(|st| st.as_str() == w)
                .ok_or_else(|| ApiError::BadQuery(format!("unknown status '{w}'")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

async fn list(
    state: web::Data<AppState>,
    q: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let statuses = parse_statuses(&q)?;
    let (egresses, partial) = match &state.fleet {
        Some(fleet) => match fleet.list(&state.node, statuses.clone()).await {
            Ok(all) => (all, None),
            // Degraded: what this node knows, said to be partial.
            Err(e) if e.is_unreachable() => (
                state.node.list(statuses).await?,
                Some(format!("this node's egresses only: {}", ApiError::from(e))),
            ),
            Err(e) => return Err(e.into()),
        },
        None => (state.node.list(statuses).await?, None),
    };
    Ok(HttpResponse::Ok().json(EgressList { egresses, partial }))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if is_valid_egress_id(id) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no egress {id}")))
    }
}

async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    check_id(&id)?;
    if let Some(info) = state.node.get(&id).await? {
        return Ok(HttpResponse::Ok().json(info));
    }
    if let Some(fleet) = &state.fleet
        && let Some(info) = fleet.get(&id).await?
    {
        return Ok(HttpResponse::Ok().json(info));
    }
    Err(ApiError::NotFound(format!("no egress {id}")))
}

/// Stop or kill: on this node if it runs here, else on the node of the fleet that runs it.
async fn end(state: &AppState, id: &str, action: EndAction) -> Result<HttpResponse, ApiError> {
    check_id(id)?;
    if let Some(info) = state.node.end(id, action).await? {
        return Ok(HttpResponse::Ok().json(info));
    }
    if let Some(fleet) = &state.fleet
        && let Some(info) = fleet.end_remote(id, action).await?
    {
        return Ok(HttpResponse::Ok().json(info));
    }
    Err(ApiError::NotFound(format!("no egress {id}")))
}

async fn stop(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    end(&state, &id, EndAction::Stop).await
}

async fn kill(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    end(&state, &id, EndAction::Kill).await
}

/// Add or remove stream URLs while recording (on this node; in a fleet, send it to the node
/// that runs the egress: `node_id` in its record).
async fn streams(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<StreamsUpdate>,
) -> Result<HttpResponse, ApiError> {
    check_id(&id)?;
    let update = body.into_inner();
    if update.add_urls.is_empty() && update.remove_urls.is_empty() {
        return Err(crate::error::RequestError::invalid(
            "add_urls",
            "give add_urls and/or remove_urls",
        )
        .into());
    }
    if let Some(info) = state.node.change_streams(&id, update).await? {
        return Ok(HttpResponse::Ok().json(info));
    }
    if let Some(fleet) = &state.fleet
        && let Some(info) = fleet.get(&id).await?
    {
        return Err(ApiError::Conflict(format!(
            "egress {id} runs on node {}: send stream changes to that node",
            info.node_id
        )));
    }
    Err(ApiError::NotFound(format!("no egress {id}")))
}

/// The latest picture of an egress of this node (`pipeline.thumbnail_s`): taken while it
/// records, kept after it ends.
async fn thumbnail(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    check_id(&id)?;
    if state.node.get(&id).await?.is_none() {
        if let Some(fleet) = &state.fleet
            && let Some(info) = fleet.get(&id).await?
        {
            return Err(ApiError::Conflict(format!(
                "egress {id} runs on node {}: ask that node for its picture",
                info.node_id
            )));
        }
        return Err(ApiError::NotFound(format!("no egress {id}")));
    }
    let path = crate::timeline::thumbnail_path(&state.cfg.storage.state_dir, &id);
    match web::block(move || std::fs::read(path)).await {
        Ok(Ok(jpeg)) => Ok(HttpResponse::Ok()
            .content_type("image/jpeg")
            .insert_header(("Cache-Control", "no-store"))
            .body(jpeg)),
        _ => Err(ApiError::NotFound(format!(
            "no picture of egress {id} yet: it has no video, none has reached it, or \
             pipeline.thumbnail_s is 0"
        ))),
    }
}
