//! The fleet behind Redis Sentinel: a primary, a replica and a `redis-sentinel` (Debian's
//! packages), two nodes of the real binary given `redis+sentinel://.../mymaster`. The primary is
//! killed mid-recording; the sentinel promotes the replica; the nodes follow it and place
//! through the fleet again within seconds, with no egress lost or listed twice.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

fn job(name: &str) -> Value {
    json!({"type": "track", "sources": [{"uri": "test://audio"}],
           "output": {"file": {"filename": name}}, "estimated_cpu": 0.5})
}

fn node_of<'a>(nodes: &'a [Service], id: &str) -> &'a Service {
    nodes
        .iter()
        .find(|n| {
            let (s, v) = n.get(&format!("/v1/egress/{id}"));
            s == 200 && v["node_id"] == n.node_id.as_str()
        })
        .expect("a node runs it")
}

#[test]
fn the_fleet_follows_a_sentinel_failover() {
    let mut primary = Redis::start();
    let replica = Redis::start_args(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let sentinel = Sentinel::start(primary.port);
    // A failover needs the sentinel to know the replica (it asks the primary every few s).
    wait_for(
        Duration::from_secs(30),
        "the sentinel to see the replica",
        || (sentinel.replicas() == 1).then_some(()),
    );
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    let cfg = format!(
        "cpu: {{ capacity: 8 }}\nfleet: {{ redis_url: \"{url}\", heartbeat_ms: 250, node_ttl_ms: 5000 }}"
    );
    let (da, db) = (Dirs::new(), Dirs::new());
    let nodes = vec![Service::start(&da, &cfg), Service::start(&db, &cfg)];
    for n in &nodes {
        wait_for(Duration::from_secs(10), "both nodes in the fleet", || {
            let (_, v) = n.get("/v1/fleet/nodes");
            (v["nodes"].as_array().map(|x| x.len()) == Some(2)).then_some(())
        });
    }
    let (s, v) = nodes[0].post("/v1/egress", &job("before.ogg"));
    assert_eq!(s, 201, "{v}");
    assert!(v["placement"].is_null(), "placed through the fleet: {v}");
    let before = v["egress_id"].as_str().unwrap().to_string();
    node_of(&nodes, &before).wait_active(&before);

    primary.kill();
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "the sentinel to promote the replica",
        || (sentinel.primary_port() == Some(replica.port)).then_some(()),
    );
    // Both nodes follow: ready (not degraded), and a start is placed through the fleet again.
    for n in &nodes {
        wait_for(
            Duration::from_secs(20),
            "the node to use the new primary",
            || {
                let (s, v) = n.get("/readyz");
                (s == 200 && v["status"] == "ready").then_some(())
            },
        );
    }
    let (s, v) = nodes[1].post("/v1/egress", &job("after.ogg"));
    assert_eq!(s, 201, "{v}");
    assert!(v["placement"].is_null(), "placed through the fleet: {v}");
    let after = v["egress_id"].as_str().unwrap().to_string();
    let placing_again = killed.elapsed();
    node_of(&nodes, &after).wait_active(&after);
    eprintln!("placing through the fleet again {placing_again:?} after the primary was killed");

    for id in [&before, &after] {
        let (s, v) = nodes[0].post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        assert_eq!(s, 200, "{v}");
    }
    for n in &nodes {
        wait_listed_once(n, &[before.as_str(), after.as_str()], "complete");
    }
}
