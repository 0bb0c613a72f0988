//! A long history (issue 22, item 7): the list comes in pages (`limit`, an opaque
//! `page_token`, newest first, filters kept), ended records past `storage.records_retention`
//! are pruned with their logs, and a restart reads the index, not every record.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const DAY_MS: u64 = 86_400_000;

/// An ended record as a previous run left it, with its handler log.
fn seed(state: &Path, id: &str, created_at: u64, status: &str) {
    let dir = state.join("egresses");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(state.join("logs")).unwrap();
    let info = json!({
        "egress_id": id, "node_id": "ND_seeded", "type": "track", "status": status,
        "created_at": created_at, "started_at": created_at + 100, "ended_at": created_at + 60_000,
        "end_reason": "StopEgress API", "error": null,
        "request": {"type": "track", "sources": [{"uri": "test://video"}],
                    "output": {"file": {"filename": format!("{id}.mp4")}}},
        "files": [], "cpu_cost": 0.5, "handler_pid": null,
    });
    std::fs::write(dir.join(format!("{id}.json")), info.to_string()).unwrap();
    std::fs::write(state.join("logs").join(format!("{id}.log")), "log\n").unwrap();
}

fn id(n: usize) -> String {
    format!("EG_seed{n:08}")
}

/// Every page from the first; the records in order and the number of pages.
fn all_pages(svc: &Service, query: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/egress?limit={limit}{query}");
        if let Some(t) = &token {
            path.push_str(&format!("&page_token={t}"));
        }
        let (s, v) = svc.get(&path);
        assert_eq!(s, 200, "{path}: {v}");
        let page = v["egresses"].as_array().unwrap().clone();
        assert!(page.len() <= limit);
        pages += 1;
        out.extend(page);
        match v["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
        assert!(pages < 100, "pages never end");
    }
    (out, pages)
}

#[test]
fn a_long_history_pages_newest_first_and_old_records_are_pruned() {
    let dirs = Dirs::new();
    let now = egress_engine::model::now_ms();
    // 240 recent records (every fourth failed), and 3 that ended 40 days ago.
    for n in 0..240 {
        let status = if n % 4 == 0 { "failed" } else { "complete" };
        seed(
            &dirs.state(),
            &id(n),
            now - DAY_MS + n as u64 * 1000,
            status,
        );
    }
    for n in 240..243 {
        seed(
            &dirs.state(),
            &id(n),
            now - 40 * DAY_MS - n as u64,
            "complete",
        );
    }
    let mut svc = Service::start(&dirs, "");
    // Pruned at start (default records_retention 30d): record and log gone.
    wait_for(Duration::from_secs(10), "the old records pruned", || {
        (240..243)
            .all(|n| {
                !dirs
                    .state()
                    .join(format!("egresses/{}.json", id(n)))
                    .exists()
                    && !dirs.state().join(format!("logs/{}.log", id(n))).exists()
            })
            .then_some(())
    });
    let (s, first) = svc.get("/v1/egress");
    assert_eq!(s, 200);
    assert_eq!(
        first["egresses"].as_array().unwrap().len(),
        100,
        "default limit"
    );
    let (all, pages) = all_pages(&svc, "", 50);
    assert_eq!((all.len(), pages), (240, 5));
    let ids: Vec<&str> = all
        .iter()
        .map(|v| v["egress_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        240,
        "no record twice"
    );
    assert_eq!(ids[0], id(239), "newest first");
    assert_eq!(ids[239], id(0));
    let (failed, _) = all_pages(&svc, "&status=failed", 25);
    assert_eq!(failed.len(), 60);
    assert!(failed.iter().all(|v| v["status"] == "failed"));
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "page_token=bogus",
        "page_token=MTIzLkVHX3g",
    ] {
        let (s, v) = svc.get(&format!("/v1/egress?{bad}"));
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("bad_query")),
            "{bad}: {v}"
        );
    }
    // A new egress comes first; an old record reads by id (from disk).
    let new = svc.start_egress(&request("track", &["test://video"], "new.mp4"));
    let (_, v) = svc.get("/v1/egress?limit=1");
    assert_eq!(v["egresses"][0]["egress_id"], new.as_str());
    assert_eq!(svc.egress(&id(3))["status"], "complete");
    let (s, _) = svc.post(&format!("/v1/egress/{new}/stop"), &json!({}));
    assert_eq!(s, 200);
    svc.wait_status(&new, &["complete", "aborted"], Duration::from_secs(30));
    // A restart reads the index: the same pages.
    svc.signal(libc::SIGTERM);
    svc.wait_exit(Duration::from_secs(20));
    assert!(dirs.state().join("egresses/index").is_file());
    let svc = Service::start(&dirs, "");
    let (again, _) = all_pages(&svc, "", 100);
    assert_eq!(again.len(), 241);
    assert_eq!(again[0]["egress_id"], new.as_str());
    assert_eq!(again[1]["egress_id"], id(239).as_str());
}
