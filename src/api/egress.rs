//! `/v1/egress`: start, list, get, stop and kill egresses.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::api::{AppState, method_not_allowed};
use crate::error::ApiError;
use crate::model::{
    EgressInfo, EgressRequest, EgressStatus, SourcesUpdate, StreamsUpdate, is_valid_egress_id,
};
use crate::node::EndAction;
use crate::store::index::{self, Cursor};

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
        web::resource("/v1/egress/{id}/sources")
            .route(web::post().to(sources))
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
    /// Newest first: at most `limit` (default 100).
    pub egresses: Vec<EgressInfo>,
    /// Pass it as `page_token` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
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
        if !["status", "limit", "page_token"].contains(&k.as_str()) {
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

/// A page's size when `limit` is not given, and the largest one may ask for.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// `limit` and `page_token` of a list request.
pub fn parse_page(q: &HashMap<String, String>) -> Result<(Option<Cursor>, usize), ApiError> {
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadQuery(format!("limit must be a whole number in [1, {MAX_LIMIT}]"))
            })?,
    };
    let after =
        match q.get("page_token") {
            None => None,
            Some(t) => Some(index::cursor(t).ok_or_else(|| {
                ApiError::BadQuery("page_token is not one this service gave".into())
            })?),
        };
    Ok((after, limit))
}

/// The page of `all` (newest first) after `after`: for the fleet's merged list.
fn page_of(all: Vec<EgressInfo>, after: Option<&Cursor>, limit: usize) -> EgressList {
    let start = match after {
        Some((c, id)) => all
            .iter()
            .position(|i| {
                (std::cmp::Reverse(i.created_at), &i.egress_id) > (std::cmp::Reverse(*c), id)
            })
            .unwrap_or(all.len()),
        None => 0,
    };
    let rest = all.len().saturating_sub(start);
    let egresses: Vec<EgressInfo> = all.into_iter().skip(start).take(limit).collect();
    let next_page_token = (rest > limit)
        .then(|| {
            egresses
                .last()
                .map(|i| index::token(&(i.created_at, i.egress_id.clone())))
        })
        .flatten();
    EgressList {
        egresses,
        next_page_token,
        partial: None,
    }
}

async fn list(
    state: web::Data<AppState>,
    q: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let statuses = parse_statuses(&q)?;
    let (after, limit) = parse_page(&q)?;
    let local = || async {
        let page = state
            .node
            .list_page(statuses.clone(), after.clone(), limit)
            .await?;
        Ok::<_, ApiError>(EgressList {
            egresses: page.egresses,
            next_page_token: page.next.as_ref().map(index::token),
            partial: None,
        })
    };
    let list = match &state.fleet {
        Some(fleet) => match fleet.list(&state.node, statuses.clone()).await {
            Ok(all) => page_of(all, after.as_ref(), limit),
            // Degraded: what this node knows, said to be partial.
            Err(e) if e.is_unreachable() => EgressList {
                partial: Some(format!("this node's egresses only: {}", ApiError::from(e))),
                ..local().await?
            },
            Err(e) => return Err(e.into()),
        },
        None => local().await?,
    };
    Ok(HttpResponse::Ok().json(list))
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

/// Sources join or leave a recording room (on this node; in a fleet, the node that runs it).
async fn sources(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<SourcesUpdate>,
) -> Result<HttpResponse, ApiError> {
    check_id(&id)?;
    let update = body.into_inner();
    if update.add.is_empty() && update.remove.is_empty() {
        return Err(crate::error::RequestError::invalid(
            "add",
            "give sources to add and/or ids to remove",
        )
        .into());
    }
    if let Some(info) = state.node.change_sources(&id, update).await? {
        return Ok(HttpResponse::Ok().json(info));
    }
    if let Some(fleet) = &state.fleet
        && let Some(info) = fleet.get(&id).await?
    {
        return Err(ApiError::Conflict(format!(
            "egress {id} runs on node {}: send source changes to that node",
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
