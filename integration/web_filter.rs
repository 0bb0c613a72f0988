//! A web egress reaches only what `sources.allowed_web_hosts` allows, for every request its page
//! makes (issue 22, item 1): a 302 from an allowed page to an internal server, subresources,
//! `fetch`, frames and a navigation to one, all refused, and the internal server never hit; a
//! host allowed only by a pattern that is an internal address is refused at the request.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// The internal server: what a page must never reach.
fn internal(_: &str, _: u16) -> Answer {
    (
        "200 OK",
        String::new(),
        "text/html",
        "<body style='background:#f0f'>INTERNAL</body>".into(),
    )
}

/// The allowed page: a redirect to the internal server, or a page that reaches for it.
fn allowed_page(request_line: &str, internal: u16) -> Answer {
    let inside = format!("http://localhost:{internal}");
    match request_line.split(' ').nth(1).unwrap_or("") {
        "/redirect" => (
            "302 Found",
            format!("Location: {inside}/secret\r\n"),
            "text/html",
            String::new(),
        ),
        _ => (
            "200 OK",
            String::new(),
            "text/html",
            format!(
                "<!doctype html><body style='margin:0;background:#0a0'>\
                 <img src='{inside}/img.png'><iframe src='{inside}/frame'></iframe>\
                 <script>fetch('{inside}/fetch').catch(() => {{}});\
                 setTimeout(() => {{ location = '{inside}/navigated'; }}, 1500);</script></body>"
            ),
        ),
    }
}

fn web(url: &str, file: &str) -> Value {
    json!({"type": "web", "url": url, "video": {"width": 320, "height": 240, "fps": 15},
        "audio": false, "estimated_cpu": 0.5, "outputs": [{"file": {"filename": file}}]})
}

fn ended(svc: &Service, id: &str) -> Value {
    svc.wait_status(
        id,
        &["failed", "complete", "aborted"],
        Duration::from_secs(60),
    )
}

#[test]
fn a_page_never_reaches_an_internal_server_by_redirect_subresource_or_navigation() {
    let inside = TinyServer::start(internal, 0);
    let page = TinyServer::start(allowed_page, inside.port);
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "sources: { allowed_web_hosts: [\"127.0.0.1\"] }\npipeline: { start_timeout_s: 45 }",
    );
    // A 302 to a host the list does not name: the start fails, saying where it was sent.
    let id = svc.start_egress(&web(
        &format!("http://127.0.0.1:{}/redirect", page.port),
        "redirected.mp4",
    ));
    let done = ended(&svc, &id);
    assert_eq!(done["status"], "failed", "{done}");
    let err = done["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("'localhost'") && err.contains("allowed_web_hosts"),
        "{err}"
    );
    // The page records; everything it asks of the internal server is refused.
    let id = svc.start_egress(&web(
        &format!("http://127.0.0.1:{}/page", page.port),
        "page.mp4",
    ));
    svc.wait_active(&id);
    let log = || {
        std::fs::read_to_string(dirs.state().join("logs").join(format!("{id}.log")))
            .unwrap_or_default()
    };
    // The navigation comes 1.5 s after the load: the filter must have refused it.
    wait_for(Duration::from_secs(20), "the navigation refused", || {
        log().contains("/navigated").then_some(())
    });
    let (s, _) = svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    assert_eq!(s, 200);
    let done = ended(&svc, &id);
    assert_eq!(done["status"], "complete", "{done}\n{}", log());
    assert!(decoded(&dirs.output().join("page.mp4")).video_frames > 10);
    assert!(
        page.paths().iter().any(|p| p == "/page"),
        "{:?}",
        page.paths()
    );
    assert_eq!(
        inside.paths(),
        Vec::<String>::new(),
        "the internal server was reached"
    );
    let refused = log().matches("page request refused").count();
    assert!(refused >= 4, "{refused} refusals:\n{}", log());
}

#[test]
fn an_internal_address_allowed_only_by_a_pattern_is_refused_at_the_request() {
    let page = TinyServer::start(allowed_page, 1);
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "sources: { allowed_web_hosts: [\"*\"] }");
    for host in ["127.0.0.1", "localhost"] {
        let (s, v) = svc.post(
            "/v1/egress",
            &web(&format!("http://{host}:{}/page", page.port), "x.mp4"),
        );
        assert_eq!((s, v["error"]["field"].as_str()), (400, Some("url")), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("internal address"),
            "{v}"
        );
    }
    assert!(page.paths().is_empty());
}
