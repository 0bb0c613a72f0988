//! WHIP (RFC 9725): publishers POST an SDP offer to a WHIP source's URL with the egress's
//! `whip_token` and get the answer and their session's `Location`; DELETE ends the session.
//! These routes are for publishers, not operators: the admin token and the JSON and origin
//! checks do not apply (`guard`), any origin may publish (CORS `*`), the WHIP token does.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::guard::bearer_token;
use crate::actors::pipeline::{WhipEnd, WhipPublish};
use crate::error::{ApiError, RequestError};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/whip/{id}/{source}")
            .route(web::post().to(publish))
            .route(web::method(actix_web::http::Method::OPTIONS).to(options))
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/v1/whip/{id}/{source}/{session}")
            .route(web::delete().to(end))
            .route(web::method(actix_web::http::Method::OPTIONS).to(options))
            .default_service(web::to(super::method_not_allowed)),
    );
}

/// Whether `path` is a publisher's (WHIP) route.
pub fn is_whip_path(path: &str) -> bool {
    path.starts_with("/v1/whip/")
}

/// The answers browsers need to publish from any page.
fn cors(b: &mut actix_web::HttpResponseBuilder) -> &mut actix_web::HttpResponseBuilder {
    b.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "Location, Accept-Post",
        ))
}

/// The publisher's bearer token; none at all is refused before anything else is looked at
/// (a wrong one is refused by the recording, which holds the egress's token).
fn token(req: &HttpRequest) -> Result<String, ApiError> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_string)
        .ok_or(ApiError::Unauthorized)
}

fn source_index(s: &str) -> Result<usize, ApiError> {
    s.parse::<usize>()
        .map_err(|_| ApiError::NotFound(format!("no WHIP source '{s}'")))
}

async fn options() -> HttpResponse {
    cors(&mut HttpResponse::NoContent())
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "POST, DELETE, OPTIONS",
        ))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "authorization, content-type",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .insert_header(("Accept-Post", "application/sdp"))
        .finish()
}

async fn publish(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req)?;
    let (id, source) = path.into_inner();
    let source = source_index(&source)?;
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/sdp"))
    {
        return Err(ApiError::UnsupportedMediaType(
            "a WHIP offer is sent as application/sdp".into(),
        ));
    }
    let sdp = String::from_utf8(body.to_vec())
        .map_err(|_| RequestError::invalid("sdp", "the offer is not UTF-8 text"))?;
    if !sdp.starts_with("v=0") {
        return Err(RequestError::invalid("sdp", "the body is not an SDP offer").into());
    }
    let s = state
        .node
        .whip_publish(
            &id,
            WhipPublish {
                source,
                token: Some(token),
                sdp,
            },
        )
        .await?;
    let location = format!("/v1/whip/{id}/{source}/{}", s.session);
    Ok(cors(&mut HttpResponse::Created())
        .content_type("application/sdp")
        .insert_header((header::LOCATION, location))
        .insert_header((header::ETAG, format!("\"{}\"", s.session)))
        .body(s.sdp))
}

async fn end(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let token = token(&req)?;
    let (id, source, session) = path.into_inner();
    let source = source_index(&source)?;
    state
        .node
        .whip_end(
            &id,
            WhipEnd {
                source,
                session,
                token: Some(token),
            },
        )
        .await?;
    Ok(cors(&mut HttpResponse::Ok()).finish())
}
