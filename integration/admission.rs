//! Admission through the real service: per-type limits, the CPU budget, refusals that leave
//! nothing behind, and the node report.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

fn handler_processes(egress_ids: &[String]) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).to_string())
        .filter(|c| c.contains("handler") && egress_ids.iter().any(|id| c.contains(id.as_str())))
        .count()
}

fn output_files(dirs: &Dirs) -> Vec<String> {
    std::fs::read_dir(dirs.output())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn type_limit_refuses_a_third_participant_until_one_stops() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        "cpu: { capacity: 64 }\nlimits: { max_concurrent_participant: 2 }",
    );
    let a = svc.start_egress(&request("participant", &["test://av"], "a.mkv"));
    let b = svc.start_egress(&request("participant", &["test://av"], "b.mkv"));
    svc.wait_active(&a);
    svc.wait_active(&b);

    let (s, v) = svc.post(
        "/v1/egress",
        &request("participant", &["test://av"], "c.mkv"),
    );
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "no_capacity");
    assert_eq!(v["error"]["reason"], "type_limit");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("participant") && msg.contains('2'), "{msg}");
    // Other types are not limited by it.
    let t = svc.start_egress(&request("track", &["test://video"], "t.mkv"));

    // The refusal left nothing behind.
    let (_, active) = svc.get("/v1/egress?status=starting,active");
    assert_eq!(active["egresses"].as_array().unwrap().len(), 3, "{active}");
    assert!(!output_files(&dirs).contains(&"c.mkv".to_string()));
    let (_, node) = svc.get("/v1/node");
    assert_eq!(node["types"]["participant"]["active"], 2, "{node}");
    assert_eq!(node["types"]["participant"]["limit"], 2);

    svc.post(&format!("/v1/egress/{a}/stop"), &Value::Null);
    svc.wait_status(&a, &["complete"], Duration::from_secs(30));
    let c = svc.start_egress(&request("participant", &["test://av"], "c.mkv"));
    svc.wait_active(&c);
    // Recording before the stop (a job stopped while starting ends "Stopped before start").
    svc.wait_active(&t);
    for id in [&b, &c, &t] {
        svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    }
    for id in [&b, &c, &t] {
        assert_eq!(
            svc.wait_status(id, &["complete", "failed"], Duration::from_secs(30))["status"],
            "complete"
        );
    }
    let text = svc.raw("GET", "/metrics", None, &[]).1;
    assert!(
        text.contains("egress_admissions_total{outcome=\"type_limit\",type=\"participant\"} 1"),
        "{text}"
    );
}

#[test]
fn cpu_budget_refuses_once_costs_fill_it() {
    let dirs = Dirs::new();
    // Budget: 1 core x 0.8 = 0.8. A track costs 0.5, a participant 2.
    let svc = Service::start(&dirs, "cpu: { capacity: 1, pending_hold_ms: 60000 }");
    let (_, node) = svc.get("/v1/node");
    assert_eq!(node["capacity_cores"], 1.0, "{node}");
    assert!(
        (node["available_cpu"].as_f64().unwrap() - 0.8).abs() < 1e-9,
        "{node}"
    );

    let (s, v) = svc.post(
        "/v1/egress",
        &request("participant", &["test://av"], "p.mkv"),
    );
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["reason"], "cpu");
    // The refusal says what to do about it (issue 22 item 14).
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("participant"), "{v}");
    for hint in [
        "estimated_cpu",
        "calibrate",
        "cpu.capacity",
        "cpu_cost.participant",
    ] {
        assert!(msg.contains(hint), "{hint}: {msg}");
    }

    let first = svc.start_egress(&request("track", &["test://video"], "t1.mkv"));
    let (s, v) = svc.post("/v1/egress", &request("track", &["test://video"], "t2.mkv"));
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "no_capacity");
    assert_eq!(v["error"]["reason"], "cpu");
    // A request's estimated_cpu overrides its type's cost.
    let mut small = request("track", &["test://video"], "t3.mkv");
    small["estimated_cpu"] = Value::from(0.25);
    let third = svc.start_egress(&small);

    let (_, list) = svc.get("/v1/egress");
    let ids: Vec<String> = list["egresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["egress_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert_eq!(handler_processes(&ids), 2);
    let files = output_files(&dirs);
    assert!(
        !files.contains(&"t2.mkv".to_string()) && !files.contains(&"p.mkv".to_string()),
        "{files:?}"
    );

    svc.wait_active(&first);
    svc.post(&format!("/v1/egress/{first}/kill"), &Value::Null);
    svc.wait_status(&first, &["aborted"], Duration::from_secs(20));
    // Its CPU is free again.
    let again = svc.start_egress(&request("track", &["test://video"], "t4.mkv"));
    for id in [&third, &again] {
        svc.wait_active(id);
        svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        svc.wait_status(id, &["complete"], Duration::from_secs(30));
    }
}

#[test]
fn affinity_takes_a_claim_that_counts_until_it_expires() {
    // The claim must outlive the three calls that check it holds the slot, on a loaded machine:
    // a TTL far above what they take, then its expiry polled for with a deadline.
    const TTL: Duration = Duration::from_secs(4);
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        &format!(
            "cpu: {{ capacity: 64 }}\nlimits: {{ max_concurrent_track: 1 }}\n\
             affinity: {{ pending_claim_ttl_ms: {} }}",
            TTL.as_millis()
        ),
    );
    let asked = Instant::now();
    let (s, a) = svc.post("/v1/affinity", &json!({"type": "track"}));
    assert_eq!(s, 200, "{a}");
    assert!(a["score"].as_f64().unwrap() >= 0.0, "{a}");
    assert!(a["claim_id"].is_string(), "{a}");
    // The claim holds the only track slot: a second ask and a start are refused.
    let (_, b) = svc.post("/v1/affinity", &json!({"type": "track"}));
    assert_eq!(b["score"], -1.0, "{b}");
    let (_, b) = svc.get("/v1/affinity?type=track");
    assert_eq!(b["score"], -1.0, "{b} after {:?}", asked.elapsed());
    let (s, v) = svc.post("/v1/egress", &request("track", &["test://video"], "x.mkv"));
    assert_eq!(s, 503, "{v} after {:?}", asked.elapsed());
    assert_eq!(v["error"]["reason"], "type_limit");
    let (_, node) = svc.get("/v1/node");
    assert_eq!(
        node["types"]["track"]["pending_claims"],
        1,
        "{node} after {:?}",
        asked.elapsed()
    );
    // Unused, it expires (not before its TTL) and the slot is free again.
    wait_for(TTL + Duration::from_secs(10), "claim expiry", || {
        let (_, node) = svc.get("/v1/node");
        (node["types"]["track"]["pending_claims"] == 0).then_some(())
    });
    assert!(
        asked.elapsed() >= TTL,
        "expired after {:?}",
        asked.elapsed()
    );
    let id = svc.start_egress(&request("track", &["test://video"], "x.mkv"));
    svc.post(&format!("/v1/egress/{id}/kill"), &Value::Null);
    let (s, v) = svc.get("/v1/affinity?type=hologram");
    assert_eq!(s, 400, "{v}");
    let (s, v) = svc.post("/v1/affinity", &json!({"type": "hologram"}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("bad_json")),
        "{v}"
    );
}
