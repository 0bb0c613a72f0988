//! `GET /`: the dashboard page (`dashboard::PAGE`). No token needed: the page holds no data, and
//! asks for the token itself when the API answers 401.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use crate::api::method_not_allowed;
use crate::dashboard::PAGE;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/")
            .route(web::get().to(page))
            .default_service(web::to(method_not_allowed)),
    );
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE.csp.as_str()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE.html.as_str())
}
