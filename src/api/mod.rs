//! The HTTP admin API (actix-web), one file per resource. Every error is an `ApiError`, rendered
//! as `{"error": {"code", "message"}}`; nothing a client sends can produce a panic or a 5xx.
//! `guard` holds the checks every request passes first (host, origin, token, content type);
//! `ROUTES` below is the one list of what the API serves, which the 405 `Allow` header, the body
//! checks and the tests of the OpenAPI document read.

pub mod dashboard;
pub mod egress;
pub mod events;
pub mod fleet;
mod guard;
pub mod node;
pub mod openapi;
pub mod whip;

use actix_web::error::{JsonPayloadError, QueryPayloadError};
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
    /// The live event hub (`GET /v1/events`).
    pub events: crate::events::Events,
}

pub use guard::guard;

/// One route: method, path pattern (`{name}` is one path segment), and whether it reads a JSON
/// object body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub json_body: bool,
}

const fn route(method: &'static str, path: &'static str, json_body: bool) -> Route {
    Route {
        method,
        path,
        json_body,
    }
}

/// Every route the API serves. A unit test checks it against the app `configure` builds, and
/// another against the OpenAPI document, so the three cannot drift apart.
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/egress", true),
    route("GET", "/v1/egress", false),
    route("GET", "/v1/egress/{id}", false),
    route("POST", "/v1/egress/{id}/stop", false),
    route("POST", "/v1/egress/{id}/kill", false),
    route("POST", "/v1/egress/{id}/streams", true),
    route("POST", "/v1/egress/{id}/sources", true),
    route("GET", "/v1/egress/{id}/thumbnail.jpg", false),
    route("GET", "/v1/node", false),
    route("POST", "/v1/node/drain", false),
    route("GET", "/v1/node/costs", false),
    route("POST", "/v1/node/egress", true),
    route("GET", "/v1/affinity", false),
    route("POST", "/v1/affinity", true),
    route("POST", "/v1/affinity/release", true),
    route("GET", "/v1/fleet/nodes", false),
    route("GET", "/v1/fleet/capacity", false),
    route("GET", "/v1/events", false),
    route("GET", "/", false),
    route("GET", "/v1/openapi.json", false),
    route("GET", "/healthz", false),
    route("GET", "/readyz", false),
    route("GET", "/metrics", false),
    route("POST", "/v1/whip/{id}/{source}", false),
    route("OPTIONS", "/v1/whip/{id}/{source}", false),
    route("DELETE", "/v1/whip/{id}/{source}/{session}", false),
    route("OPTIONS", "/v1/whip/{id}/{source}/{session}", false),
];

/// Whether a concrete path matches a route pattern, segment by segment (as actix matches them).
fn matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) => {
                let ok = if a.starts_with('{') {
                    !b.is_empty()
                } else {
                    a == b
                };
                if !ok {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The routes whose pattern matches `path`, in table order.
pub fn routes_for(path: &str) -> impl Iterator<Item = &'static Route> + '_ {
    ROUTES.iter().filter(move |r| matches(r.path, path))
}

/// The methods `path` takes, comma-separated (`Allow` header), or None for an unknown path.
pub fn allowed_methods(path: &str) -> Option<String> {
    let methods: Vec<&str> = routes_for(path).map(|r| r.method).collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

/// Routes, extractor error handlers and the JSON 404/405 answers.
pub fn configure(cfg: &mut web::ServiceConfig, max_body: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body)
            // `guard` has refused any body that is not declared JSON before this runs; an
            // empty body without a content type reaches the extractor and is `bad_json`.
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
    events::configure(cfg);
    dashboard::configure(cfg);
    openapi::configure(cfg);
    whip::configure(cfg);
}

fn json_error(err: JsonPayloadError, max_body: usize) -> ApiError {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::TooLarge(max_body)
        }
        JsonPayloadError::ContentType => {
            ApiError::UnsupportedMediaType("the body must be application/json".into())
        }
        JsonPayloadError::Deserialize(e) => ApiError::BadJson(e.to_string()),
        other => ApiError::BadJson(other.to_string()),
    }
}

/// Unknown paths; a known path with a method no route of it takes is a 405 (routes registered
/// with `cfg.route` have no per-resource default and fall through to here).
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(match allowed_methods(req.path()) {
        Some(allow) => ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            path: req.path().to_string(),
            allow,
        },
        None => ApiError::NotFound(format!("no route for {} {}", req.method(), req.path())),
    })
}

/// Known paths with a method they do not take: 405 with `Allow`.
pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    not_found(req).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use actix_web::{App, test as atest};

    use super::*;

    #[test]
    fn patterns_match_one_segment_per_parameter() {
        assert!(matches("/v1/egress/{id}", "/v1/egress/EG_x"));
        assert!(!matches("/v1/egress/{id}", "/v1/egress/"));
        assert!(!matches("/v1/egress/{id}", "/v1/egress/a/b"));
        assert!(!matches("/v1/egress", "/v1/egress/"));
        assert_eq!(allowed_methods("/v1/egress").as_deref(), Some("POST, GET"));
        assert_eq!(allowed_methods("/healthz").as_deref(), Some("GET"));
        assert_eq!(allowed_methods("/nope"), None);
    }

    /// Every resource pattern the real `configure` registers, read from actix's resource map
    /// (its Debug output is the only way to list it; the version is pinned by Cargo.lock).
    #[actix_rt::test]
    async fn the_route_table_is_what_configure_registers() {
        let app = atest::init_service(
            App::new()
                .configure(|c| configure(c, 1024))
                .default_service(web::to(|req: HttpRequest| async move {
                    HttpResponse::Ok().body(format!("{:?}", req.resource_map()))
                })),
        )
        .await;
        let dump =
            atest::call_and_read_body(&app, atest::TestRequest::get().uri("/zz").to_request())
                .await;
        let dump = String::from_utf8_lossy(&dump);
        let registered: BTreeSet<&str> = dump
            .split("Single(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .filter(|p| !p.is_empty())
            .collect();
        let table: BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
        assert_eq!(registered, table, "{dump}");
    }
}
