//! The checks every request passes before its route, in this order:
//!
//! 1. **Host** (loopback listeners only): `localhost`, `127.0.0.1`, `[::1]` or the listen address,
//!    with the listener's port, else 403 `bad_host`. A page that rebinds its own DNS name to
//!    127.0.0.1 reaches a loopback port from the victim's browser, but under its own name: the
//!    `Host` header gives it away.
//! 2. **Origin**: browsers send `Origin` on cross-origin requests (and on every POST). One that is
//!    neither this service's own origin nor listed in `server.allowed_origins` is refused with 403
//!    `origin_not_allowed`, so no web page can drive the API. Listed origins get CORS answers.
//! 3. **Token**: `Authorization: Bearer <server.api_token>` (the scheme in any case) on everything
//!    but the probes, the OpenAPI document and the dashboard page, else 401.
//! 4. **Content type**: on a route that runs, a body or a declared content type must be
//!    `application/json`, else 415: an HTML form or a `fetch` without a preflight cannot send it.
//!    A route that reads a JSON body only gets a JSON object (400 `bad_json` for `[]`, `1`, ...).

use std::net::SocketAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, ResponseError, web};
use futures_util::StreamExt;

use crate::api::{allowed_methods, routes_for};
use crate::config::ServerConfig;

use crate::api::AppState;
use crate::error::ApiError;

/// Paths anyone may read without the token: probes, the document describing the API, and the
/// dashboard page (it holds no data: it asks for the token before it calls the API).
pub const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/v1/openapi.json", "/"];

/// Runs the checks above; see the module doc.
pub async fn guard<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let cfg = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.cfg.clone())
        .unwrap_or_default();
    let server = &cfg.server;
    let local = req.app_config().local_addr();
    // Publishers (WHIP) come from any page and show the egress's own token, which the route
    // checks: only the Host check applies to them here.
    if crate::api::whip::is_whip_path(route_path(&req)) {
        if let Err(e) = check_host(&req, local) {
            return Ok(reply(req, &e, None));
        }
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let cors = match check_host(&req, local).and_then(|()| check_origin(&req, server)) {
        Ok(cors) => cors,
        Err(e) => return Ok(reply(req, &e, None)),
    };
    if let Some(origin) = &cors
        && let Some(resp) = preflight(&req, origin)
    {
        return Ok(req.into_response(resp).map_into_right_body());
    }
    if let Err(e) = check_token(&req, &server.api_token).and_then(|()| check_content_type(&req)) {
        return Ok(reply(req, &e, cors.as_ref()));
    }
    if reads_json_body(&req)
        && let Err(e) = require_object_body(&mut req, server.max_body_bytes).await
    {
        return Ok(reply(req, &e, cors.as_ref()));
    }
    let mut res = next.call(req).await?.map_into_left_body();
    if let Some(origin) = &cors {
        add_cors(res.headers_mut(), origin);
    }
    Ok(res)
}

/// An error answer, with CORS headers when the caller is an allowed origin (so its page can read
/// why it was refused).
fn reply<B>(
    req: ServiceRequest,
    e: &ApiError,
    cors: Option<&HeaderValue>,
) -> ServiceResponse<EitherBody<B>> {
    let mut resp = e.error_response();
    if let Some(origin) = cors {
        add_cors(resp.headers_mut(), origin);
    }
    req.into_response(resp).map_into_right_body()
}

fn add_cors(h: &mut HeaderMap, origin: &HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

fn header_str(req: &ServiceRequest, name: header::HeaderName) -> Option<&str> {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// The `Host` a client addressed (HTTP/1.1 header, or the authority of an absolute URI).
fn request_host(req: &ServiceRequest) -> Option<&str> {
    header_str(req, header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str()))
}

fn check_host(req: &ServiceRequest, local: SocketAddr) -> Result<(), ApiError> {
    if !local.ip().is_loopback() {
        // Off loopback the token is required (config validation), which a rebinding page lacks.
        return Ok(());
    }
    match request_host(req) {
        // HTTP/1.0 without Host: no browser sends that.
        None => Ok(()),
        Some(host) if loopback_host_allowed(host, local) => Ok(()),
        Some(host) => Err(ApiError::BadHost(format!(
            "Host '{host}' is not this service: on a loopback listener use localhost, 127.0.0.1 \
             or [::1] with port {}",
            local.port()
        ))),
    }
}

/// Whether `host` names the loopback listener `local`: a loopback name or its own address, with
/// its port (which may be left out only when it is 80).
pub fn loopback_host_allowed(host: &str, local: SocketAddr) -> bool {
    let own = match local {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let port = local.port().to_string();
    let (name, given_port) = match host.rsplit_once(':') {
        Some((n, p)) if !p.contains(']') => (n, Some(p)),
        _ => (host, None),
    };
    let port_ok = match given_port {
        Some(p) => p == port,
        None => local.port() == 80,
    };
    let names = ["localhost", "127.0.0.1", "[::1]", own.as_str()];
    port_ok && names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// None for a request without `Origin` or from this service's own origin; the origin (to echo in
/// CORS headers) when it is listed in `server.allowed_origins`; 403 otherwise.
fn check_origin(
    req: &ServiceRequest,
    server: &ServerConfig,
) -> Result<Option<HeaderValue>, ApiError> {
    let Some(value) = req.headers().get(header::ORIGIN) else {
        return Ok(None);
    };
    let origin = value.to_str().unwrap_or("");
    // https too: behind a TLS-terminating proxy that passes Host on, the page's origin is https.
    let same_origin = request_host(req).is_some_and(|host| {
        ["http://", "https://"].iter().any(|scheme| {
            origin
                .get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                && origin
                    .get(scheme.len()..)
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
        })
    });
    if same_origin {
        return Ok(None);
    }
    if server
        .allowed_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
    {
        return Ok(Some(value.clone()));
    }
    Err(ApiError::OriginNotAllowed(format!(
        "requests from origin '{origin}' are not allowed: list it in server.allowed_origins to \
         let its pages call this API"
    )))
}

/// The answer to a CORS preflight from an allowed origin, for a known path.
fn preflight(req: &ServiceRequest, origin: &HeaderValue) -> Option<HttpResponse> {
    let asks = req.method() == actix_web::http::Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let methods = allowed_methods(route_path(req)).filter(|_| asks)?;
    Some(
        HttpResponse::NoContent()
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type",
            ))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
            .insert_header((header::VARY, "Origin"))
            .finish(),
    )
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 section 11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

fn check_token(req: &ServiceRequest, token: &str) -> Result<(), ApiError> {
    if token.is_empty() || OPEN_PATHS.contains(&req.path()) {
        return Ok(());
    }
    let given = header_str(req, header::AUTHORIZATION)
        .and_then(bearer_token)
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The path as the router matches it: percent-escapes of unreserved characters decoded
/// (`/v1/%65gress` is `/v1/egress` to the router, so it must be to every check here too).
fn route_path(req: &ServiceRequest) -> &str {
    req.match_info().as_str()
}

/// Whether a route of the table takes this method and path (others end as 404/405 anyway).
fn routed(req: &ServiceRequest) -> bool {
    routes_for(route_path(req)).any(|r| r.method == req.method().as_str())
}

fn reads_json_body(req: &ServiceRequest) -> bool {
    routes_for(route_path(req)).any(|r| r.json_body && r.method == req.method().as_str())
}

/// True for `application/json`, with any parameters (`; charset=utf-8`).
pub fn is_json_content_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

fn check_content_type(req: &ServiceRequest) -> Result<(), ApiError> {
    if !routed(req) {
        return Ok(());
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || header_str(req, header::CONTENT_LENGTH)
            .is_some_and(|n| n.trim().parse::<u64>().map_or(true, |n| n > 0));
    match header_str(req, header::CONTENT_TYPE) {
        Some(ct) if is_json_content_type(ct) => Ok(()),
        Some(ct) => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type '{ct}' is not accepted: send the body as application/json"
        ))),
        None if has_body => Err(ApiError::UnsupportedMediaType(
            "a request body needs Content-Type: application/json".into(),
        )),
        None => Ok(()),
    }
}

/// Reads the body (at most `limit` bytes) and puts it back for the route's extractor, refusing
/// any JSON value that is not an object: serde would otherwise read a struct from an array.
async fn require_object_body(req: &mut ServiceRequest, limit: usize) -> Result<(), ApiError> {
    let mut payload = req.take_payload();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadJson(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    req.set_payload(Payload::from(body.freeze()));
    let kind = match first {
        // Empty: the extractor says what is missing.
        None | Some(b'{') => return Ok(()),
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'-' | b'0'..=b'9') => "a number",
        Some(_) => "not JSON",
    };
    Err(ApiError::BadJson(format!(
        "the body must be a JSON object ({{...}}), got {kind}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer t",
            "bearer t",
            "BEARER t",
            "Bearer   t",
            " bearer\tt",
        ] {
            assert_eq!(bearer_token(v), Some("t"), "{v}");
        }
        for v in ["Basic t", "Bearert", "Bearer", ""] {
            assert_ne!(bearer_token(v), Some("t"), "{v}");
        }
    }

    #[test]
    fn loopback_hosts_need_a_loopback_name_and_the_port() {
        let v4: SocketAddr = "127.0.0.1:7980".parse().unwrap();
        for h in [
            "localhost:7980",
            "LOCALHOST:7980",
            "127.0.0.1:7980",
            "[::1]:7980",
        ] {
            assert!(loopback_host_allowed(h, v4), "{h}");
        }
        for h in [
            "evil.example:7980",
            "localhost:7981",
            "localhost",
            "127.0.0.1.nip.io:7980",
        ] {
            assert!(!loopback_host_allowed(h, v4), "{h}");
        }
        let own: SocketAddr = "127.0.0.2:80".parse().unwrap();
        assert!(loopback_host_allowed("127.0.0.2", own));
        assert!(loopback_host_allowed("localhost:80", own));
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        assert!(loopback_host_allowed("[::1]:9000", v6));
        assert!(!loopback_host_allowed("[::1]", v6));
    }

    #[test]
    fn only_json_content_types_pass() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "",
        ] {
            assert!(!is_json_content_type(ct), "{ct}");
        }
    }
}
