//! `/v1/egress`: start, list, get, stop and kill egresses.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::actors::admission::{AdmitJob, EndJob};
use crate::actors::pipeline::{KillReason, PipelineSetup, StopReason};
use crate::actors::supervisor::{GetEgress, KillEgress, LaunchEgress, ListEgresses, StopEgress};
use crate::api::method_not_allowed;
use crate::error::ApiError;
use crate::model::{
    EgressInfo, EgressRequest, EgressStatus, PipelineOptions, ValidationContext,
    is_valid_egress_id, new_egress_id, now_ms,
};
use crate::service::AppState;

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
    );
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EgressList {
    pub egresses: Vec<EgressInfo>,
}

async fn start(
    state: web::Data<AppState>,
    req: web::Json<EgressRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    match &state.fleet {
        Some(fleet) => {
            let p = fleet.place(&state, req).await?;
            Ok(HttpResponse::Created()
                .insert_header(("Server-Timing", p.server_timing()))
                .json(p.info))
        }
        None => Ok(HttpResponse::Created().json(start_local(&state, req, None, None).await?)),
    }
}

/// Validates, admits and launches an egress on this node. `egress_id` is given when the fleet
/// placed the job (so a retry elsewhere keeps its id); `claim_id` is the claim this node gave when
/// asked for its affinity.
pub async fn start_local(
    state: &AppState,
    req: EgressRequest,
    egress_id: Option<String>,
    claim_id: Option<String>,
) -> Result<EgressInfo, ApiError> {
    let id = egress_id.unwrap_or_else(new_egress_id);
    let cfg = &state.cfg;
    let ctx = ValidationContext {
        output_dir: &state.output_dir,
        state_dir: &cfg.storage.state_dir,
        allowed_schemes: &cfg.sources.allowed_schemes,
    };
    let mut spec = req.validate(&id, &ctx)?;
    spec.result_path = state.store.result_path(&id);
    let cost = req
        .estimated_cpu
        .unwrap_or_else(|| cfg.cpu_cost.cost(spec.egress_type));
    state
        .admission
        .send(AdmitJob {
            egress_id: id.clone(),
            egress_type: spec.egress_type,
            cost,
            claim_id,
        })
        .await
        .map_err(ApiError::from_mailbox)??;
    let info = EgressInfo {
        egress_id: id.clone(),
        node_id: state.node_id.clone(),
        egress_type: spec.egress_type,
        status: EgressStatus::Starting,
        created_at: now_ms(),
        started_at: None,
        ended_at: None,
        end_reason: None,
        error: None,
        request: req.clone(),
        files: Vec::new(),
        handler_pid: None,
        cpu_cost: cost,
    };
    let setup = PipelineSetup {
        info,
        log_path: state.store.log_path(&id),
        nice: cfg.pipeline.handler_nice,
        options: PipelineOptions::from(&cfg.pipeline),
        spec,
        eos_timeout: Duration::from_secs_f64(cfg.pipeline.eos_timeout_s),
        start_timeout: Duration::from_secs_f64(cfg.pipeline.start_timeout_s),
        max_duration: req.max_duration_s.map(Duration::from_secs_f64),
    };
    let launched = state
        .supervisor
        .send(LaunchEgress(Box::new(setup)))
        .await
        .map_err(ApiError::from_mailbox)
        .and_then(|r| r);
    // A conflict means this id runs here already: its reservation is the running job's.
    if matches!(&launched, Err(e) if !matches!(e, ApiError::Conflict(_))) {
        state.admission.do_send(EndJob { egress_id: id });
    }
    launched
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
    let egresses = match &state.fleet {
        Some(fleet) => fleet.list(&state, statuses).await?,
        None => list_local(&state, statuses).await?,
    };
    Ok(HttpResponse::Ok().json(EgressList { egresses }))
}

pub async fn list_local(
    state: &AppState,
    statuses: Option<Vec<EgressStatus>>,
) -> Result<Vec<EgressInfo>, ApiError> {
    state
        .supervisor
        .send(ListEgresses { statuses })
        .await
        .map_err(ApiError::from_mailbox)
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
    if let Some(info) = state
        .supervisor
        .send(GetEgress(id.clone()))
        .await
        .map_err(ApiError::from_mailbox)?
    {
        return Ok(HttpResponse::Ok().json(info));
    }
    if let Some(fleet) = &state.fleet
        && let Some(info) = fleet.get(&id).await?
    {
        return Ok(HttpResponse::Ok().json(info));
    }
    Err(ApiError::NotFound(format!("no egress {id}")))
}

/// Which of stop/kill a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndAction {
    Stop,
    Kill,
}

/// Stops or kills an egress that runs on this node.
pub async fn end_local(
    state: &AppState,
    id: &str,
    action: EndAction,
) -> Result<Option<EgressInfo>, ApiError> {
    let r = match action {
        EndAction::Stop => state
            .supervisor
            .send(StopEgress {
                egress_id: id.to_string(),
                reason: StopReason::Api,
            })
            .await
            .map_err(ApiError::from_mailbox)?,
        EndAction::Kill => state
            .supervisor
            .send(KillEgress {
                egress_id: id.to_string(),
                reason: KillReason::Api,
            })
            .await
            .map_err(ApiError::from_mailbox)?,
    };
    match r {
        Ok(info) => Ok(Some(info)),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn end(state: &AppState, id: &str, action: EndAction) -> Result<HttpResponse, ApiError> {
    check_id(id)?;
    if let Some(info) = end_local(state, id, action).await? {
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
