//! The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`): it asks
//! for the token, starts an egress from its form, shows it active without a reload, stops it and
//! shows `complete` with the file's size, and fits a phone's width. A screenshot of each state is
//! kept under `target/test-artifacts/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::webdriver::Browser;

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(name)
}

/// The status shown in the row of `id`, if the row is there.
fn shown_status(b: &Browser, id: &str) -> Option<String> {
    b.text(&format!("tr[data-egress-id='{id}'] .status"))
}

#[test]
fn the_dashboard_drives_an_egress_live_in_a_real_browser() {
    let browser = Browser::start(1280, 900);

    // Without a token the page opens straight on the node.
    let dirs = Dirs::new();
    let open = Service::start(&dirs, "");
    browser.goto(&format!("{}/", open.base));
    wait_for(
        Duration::from_secs(20),
        "the node id on the open page",
        || (browser.text("#node-id")? == open.node_id).then_some(()),
    );
    assert!(!browser.visible("#token-panel"));
    drop(open);

    // With a token: asked for, refused when wrong, kept for the tab when right.
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "server: { listen: \"127.0.0.1:0\", api_token: \"dash-token-1234\" }",
    );
    browser.goto(&format!("{}/", svc.base));
    wait_for(Duration::from_secs(20), "the token form", || {
        browser.visible("#token-panel").then_some(())
    });
    assert!(!browser.visible("#main"));
    browser.screenshot(&artifact("dashboard-1-token.png"));
    browser.type_into("#token-input", "wrong-token");
    browser.click("#token-btn");
    wait_for(Duration::from_secs(20), "the refusal", || {
        let t = browser.text("#token-error")?;
        (!t.is_empty() && browser.visible("#token-panel")).then_some(())
    });
    browser.type_into("#token-input", "dash-token-1234");
    browser.click("#token-btn");
    wait_for(Duration::from_secs(20), "the node after the token", || {
        (browser.visible("#main") && browser.text("#node-id")? == svc.node_id).then_some(())
    });
    let stored = browser.eval(
        "return [sessionStorage.getItem('egress-engine.token'), localStorage.length]",
        json!([]),
    );
    assert_eq!(stored, json!(["dash-token-1234", 0]));
    wait_for(Duration::from_secs(20), "the live stream", || {
        (browser.text("#live")? == "live").then_some(())
    });

    // Start from the form. A mark on `window` proves the page is never reloaded.
    browser.eval("window.__mark = 'same page'; return true", json!([]));
    browser.type_into("#sources", "test://av?pattern=ball&freq=440");
    browser.type_into("#filename", "dash/rec.mp4");
    browser.type_into(
        "#extra",
        r#"{"video": {"width": 320, "height": 240, "fps": 15, "bitrate_kbps": 500}}"#,
    );
    browser.click("#start-btn");
    let id = wait_for(Duration::from_secs(20), "the start's answer", || {
        let t = browser.text("#start-result")?;
        t.strip_prefix("Started ")
            .map(|r| r.split(' ').next().unwrap_or("").to_string())
    });
    let v = svc.egress(&id);
    assert_eq!(v["request"]["video"]["width"], 320, "{v}");
    wait_for(Duration::from_secs(30), "the row to show active", || {
        (shown_status(&browser, &id)? == "active").then_some(())
    });
    browser.screenshot(&artifact("dashboard-2-active.png"));
    let node_chart: Value = browser.eval(
        "const c = document.querySelector('#chart'); return [c.width > 0, document.querySelectorAll('#types tbody tr').length]",
        json!([]),
    );
    assert_eq!(node_chart[0], true);
    assert!(node_chart[1].as_u64().unwrap_or(0) >= 4, "{node_chart}");

    // Stop from the row; the end comes in over the event stream.
    browser.click(&format!("tr[data-egress-id='{id}'] button.stop"));
    wait_for(Duration::from_secs(30), "the row to show complete", || {
        (shown_status(&browser, &id)? == "complete").then_some(())
    });
    let record = svc.wait_status(&id, &["complete"], Duration::from_secs(5));
    let size = record["files"][0]["size_bytes"].as_u64().expect("a size");
    assert!(size > 0);
    let shown_size = wait_for(Duration::from_secs(10), "the file size", || {
        let v = browser.eval(
            "const f = document.querySelector(arguments[0]); return f && f.getAttribute('data-size-bytes')",
            json!([format!("tr[data-egress-id='{id}'] .file")]),
        );
        v.as_str().and_then(|s| s.parse::<u64>().ok())
    });
    assert_eq!(shown_size, size);
    let outputs = browser
        .text(&format!("tr[data-egress-id='{id}'] .outputs"))
        .unwrap_or_default();
    assert!(
        outputs.contains("dash/rec.mp4") && outputs.contains(&format!("{size} bytes")),
        "{outputs}"
    );
    assert!(
        browser
            .find(&format!("tr[data-egress-id='{id}'] button.stop"))
            .is_none()
    );
    browser.screenshot(&artifact("dashboard-3-complete.png"));
    // Output kinds the page does not know yet are shown as they come, in a list or grouped.
    // (serde_json sends the object's keys sorted.)
    let shown = browser.eval(
        "return outputs(arguments[0]).map(e => e.textContent)",
        json!([{"files": [], "segments": [{"playlist_name": "a.m3u8", "size_bytes": 2000}],
                "outputs": {"images": [{"prefix": "thumb", "count": 3}]}}]),
    );
    assert_eq!(
        shown,
        json!([
            "images: count=3, prefix=thumb",
            "segments: playlist_name=a.m3u8, size_bytes=2.0 kB"
        ])
    );
    assert_eq!(browser.eval("return window.__mark", json!([])), "same page");

    // Phone width: one column, nothing wider than the screen, the egress still there.
    browser.emulate_phone(390, 844);
    let mut last = Value::Null;
    let fits = poll_until(Duration::from_secs(10), || {
        last = browser.eval(
            "return [document.documentElement.scrollWidth, window.innerWidth, \
             getComputedStyle(document.querySelector('main')).gridTemplateColumns.split(' ').length]",
            json!([]),
        );
        let (w, inner, cols) = (last[0].as_u64()?, last[1].as_u64()?, last[2].as_u64()?);
        (inner == 390 && w <= inner && cols == 1).then_some(())
    });
    if fits.is_none() {
        let wide = browser.eval(
            "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 390)\
             .slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + e.getBoundingClientRect().right)",
            json!([]),
        );
        panic!("[scrollWidth, innerWidth, columns] at phone width: {last}; too wide: {wide}");
    }
    assert_eq!(shown_status(&browser, &id).as_deref(), Some("complete"));
    browser.screenshot(&artifact("dashboard-4-phone.png"));
}
