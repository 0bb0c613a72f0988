//! A fleet that outlives its Redis: two nodes of the real binary on a real redis-server (with an
//! append-only file, as a production Redis keeps its data) that is killed mid-recording and
//! started again. Recordings go on, starts keep working on both nodes (placed locally, and
//! saying so), `/readyz` says degraded, fleet-wide reads say they are partial, and once Redis is
//! back every egress started in between is listed fleet-wide exactly once with its final status.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

fn node_config(redis: &Redis) -> String {
    format!(
        "cpu: {{ capacity: 8 }}\n\
         fleet: {{ redis_url: \"{}\", heartbeat_ms: 250, node_ttl_ms: 5000 }}",
        redis.url()
    )
}

/// A cheap audio track with an estimate of 0.5 cores.
fn job(name: &str) -> Value {
    json!({"type": "track", "sources": [{"uri": "test://audio"}],
           "output": {"file": {"filename": name}}, "estimated_cpu": 0.5})
}

fn readiness(n: &Service) -> (u16, Value) {
    n.get("/readyz")
}

#[test]
fn a_fleet_keeps_recording_and_starting_while_its_redis_is_down() {
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start_persistent(redis_dir.path(), 0);
    let port = redis.port;
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = Service::start(&da, &node_config(&redis));
    let b = Service::start(&db, &node_config(&redis));
    for n in [&a, &b] {
        wait_for(Duration::from_secs(10), "both nodes in the fleet", || {
            let (_, v) = n.get("/v1/fleet/nodes");
            (v["nodes"].as_array().map(|x| x.len()) == Some(2)).then_some(())
        });
    }
    let before = a.start_egress(&job("before.ogg"));
    owner_of_local(&a, &b, &before).wait_active(&before);

    redis.kill();

    // Starts keep working on both nodes: placed locally, and the answer says so.
    let mut during = Vec::new();
    for (n, name) in [(&a, "a1.ogg"), (&b, "b1.ogg"), (&a, "a2.ogg")] {
        let (s, v) = n.post("/v1/egress", &job(name));
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["placement"], "local", "{v}");
        assert_eq!(v["node_id"], n.node_id.as_str(), "{v}");
        let id = v["egress_id"].as_str().unwrap().to_string();
        n.wait_active(&id);
        during.push((id, n));
    }
    // Both say degraded, still 200: they take work.
    for n in [&a, &b] {
        let v = wait_for(Duration::from_secs(15), "readyz to say degraded", || {
            let (s, v) = readiness(n);
            (s == 200 && v["status"] == "degraded").then_some(v)
        });
        assert!(v["reason"].as_str().unwrap().contains("Redis"), "{v}");
    }
    // Fleet-wide reads say they are partial; each node serves its own records.
    let (s, list) = a.get("/v1/egress");
    assert_eq!(s, 200, "{list}");
    assert!(list["partial"].is_string(), "{list}");
    let (s, nodes) = b.get("/v1/fleet/nodes");
    assert_eq!(s, 200, "{nodes}");
    assert!(nodes["partial"].is_string(), "{nodes}");
    for (id, n) in &during {
        assert_eq!(n.egress(id)["status"], "active");
    }
    let (_, m) = a.raw("GET", "/metrics", None, &[]);
    assert!(m.contains("egress_fleet_degraded 1"), "{m}");
    assert!(
        m.contains("egress_placements_total{outcome=\"local\"} 2"),
        "{m}"
    );

    // Everything ends while Redis is still away.
    let mut all: Vec<(String, &Service)> = during.clone();
    all.push((before.clone(), owner_of_local(&a, &b, &before)));
    for (id, n) in &all {
        let (s, v) = n.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        assert_eq!(s, 200, "{v}");
    }
    for (id, n) in &all {
        let v = n.wait_status(id, &["complete", "failed"], Duration::from_secs(30));
        assert_eq!(v["status"], "complete", "{v}");
    }

    // Redis comes back (same port, same data): the nodes are ready again and publish what
    // they recorded meanwhile.
    let _redis = Redis::start_persistent(redis_dir.path(), port);
    for n in [&a, &b] {
        wait_for(Duration::from_secs(20), "readyz to say ready", || {
            let (s, v) = readiness(n);
            (s == 200 && v["status"] == "ready").then_some(())
        });
    }
    let want: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    for n in [&a, &b] {
        let seen = wait_listed_once(n, &want, "complete");
        assert!(want.iter().all(|id| seen.contains_key(*id)), "{seen:?}");
    }
    let (_, nodes) = a.get("/v1/fleet/nodes");
    assert_eq!(
        nodes["nodes"].as_array().map(|x| x.len()),
        Some(2),
        "{nodes}"
    );
}

/// The node that runs `id`, asked of each node's own records (no Redis needed).
fn owner_of_local<'a>(a: &'a Service, b: &'a Service, id: &str) -> &'a Service {
    let (s, v) = a.get(&format!("/v1/egress/{id}"));
    if s == 200 && v["node_id"] == a.node_id.as_str() {
        a
    } else {
        b
    }
}
