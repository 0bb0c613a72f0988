//! A web egress reaches only what `sources.allowed_web_hosts` allows, for every request its page
//! makes (issue 22, item 1): a 302 from an allowed page to an internal server, subresources,
//! `fetch`, frames and a navigation to one, all refused, and the internal server never hit; a
//! host allowed only by a pattern that is an internal address is refused at the request.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// A tiny HTTP server on 127.0.0.1: `route(path)` gives status, extra headers and body; every
/// request's path is kept.
struct Server {
    port: u16,
    hits: Arc<Mutex<Vec<String>>>,
}

type Route = fn(&str, u16) -> (u16, String, String);

impl Server {
    fn start(route: Route, other_port: u16) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hits: Arc<Mutex<Vec<String>>> = Default::default();
        let seen = hits.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut first = String::new();
                    if r.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    let path = first.split(' ').nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(path.clone());
                    let (status, headers, body) = route(&path, other_port);
                    let mut conn = conn;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status} X\r\n{headers}Content-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Server { port, hits }
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

/// The internal server: what a page must never reach.
fn internal(_: &str, _: u16) -> (u16, String, String) {
    (
        200,
        String::new(),
        "<body style='background:#f0f'>INTERNAL</body>".into(),
    )
}

/// The allowed page: a redirect to the internal server, or a page that reaches for it.
fn allowed_page(path: &str, internal: u16) -> (u16, String, String) {
    let inside = format!("http://localhost:{internal}");
    match path {
        "/redirect" => (302, format!("Location: {inside}/secret\r\n"), String::new()),
        _ => (
            200,
            String::new(),
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
    let inside = Server::start(internal, 0);
    let page = Server::start(allowed_page, inside.port);
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
        page.hits().iter().any(|p| p == "/page"),
        "{:?}",
        page.hits()
    );
    assert_eq!(
        inside.hits(),
        Vec::<String>::new(),
        "the internal server was reached"
    );
    let refused = log().matches("page request refused").count();
    assert!(refused >= 4, "{refused} refusals:\n{}", log());
}

#[test]
fn an_internal_address_allowed_only_by_a_pattern_is_refused_at_the_request() {
    let page = Server::start(allowed_page, 1);
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
    assert!(page.hits().is_empty());
}
