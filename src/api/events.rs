//! `GET /v1/events`: the live event stream (Server-Sent Events) of this node, or in a fleet of
//! every node. The stream itself is built in `events::sse`.
//!
//! The token is the same `Authorization: Bearer` header as everywhere: a browser's `EventSource`
//! cannot send it, so the dashboard reads the stream with `fetch` (and reconnects with
//! `Last-Event-ID` itself). A `?token=` parameter would put the token in proxy and access logs.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use crate::api::{AppState, method_not_allowed};
use crate::error::ApiError;
use crate::events::sse;

/// Most events one request may ask for with `max_events`.
pub const MAX_EVENTS: usize = 1_000_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/events")
            .route(web::get().to(events))
            .default_service(web::to(method_not_allowed)),
    );
}

/// `?max_events=N` ends the stream after N events (replayed ones count); `Last-Event-ID` (header)
/// replays what came after that id first.
async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    if let Some(k) = q.keys().find(|k| *k != "max_events") {
        return Err(ApiError::BadQuery(format!("unknown query parameter '{k}'")));
    }
    let max = match q.get("max_events") {
        None => None,
        Some(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_EVENTS).contains(n))
                .ok_or_else(|| {
                    ApiError::BadQuery(format!(
                        "max_events must be a whole number in [1, {MAX_EVENTS}]"
                    ))
                })?,
        ),
    };
    let slot = state.events.client_slot().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "{} event streams are open (events.max_clients): try again later",
            state.events.max_clients()
        ))
    })?;
    // An id that is not text is no id of ours: the stream says so with its marker.
    let last = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string());
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx would otherwise buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(
            sse::stream(state.events.clone(), last.as_deref(), max).map(move |chunk| {
                // The slot is freed when the stream (and this closure) is dropped.
                let _held = &slot;
                chunk
            }),
        ))
}
