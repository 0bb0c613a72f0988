//! The fleet through real processes: a real redis-server on a free loopback port and three nodes
//! of the real binary pointing at it. Placement spreads jobs, any node lists and ends any job,
//! and a node killed in the middle of a burst costs retries, never a lost or duplicated job.
//!
//! Jobs are cheap audio tracks (`test://audio` into Ogg/Opus, a few % of a core each) with an
//! `estimated_cpu` of 0.5 on nodes of `cpu.capacity: 8`, so admission (12 per node) is the limit,
//! not this machine. Overload escalation is switched off: the machine's real load is not what
//! these tests are about.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use egress_engine::fleet::keys::Keys;

use crate::common::*;

/// A live node's registration lives this long after its last heartbeat: many heartbeats, so a
/// node whose arbiter or Redis calls are slowed by a loaded machine never drops out; the killed
/// node's expiry is polled for with a deadline above it.
const NODE_TTL: Duration = Duration::from_secs(5);

/// One node's YAML: spread placement, 8 cores, heartbeats every 250 ms, costs held at their
/// estimate.
fn node_config(redis: &Redis) -> String {
    format!(
        "cpu: {{ capacity: 8, pending_hold_ms: 600000 }}\n\
         affinity: {{ mode: spread }}\n\
         fleet: {{ redis_url: \"{}\", heartbeat_ms: 250, node_ttl_ms: {} }}\n\
         overload: {{ soft_threshold: 10, hard_threshold: 10 }}",
        redis.url(),
        NODE_TTL.as_millis()
    )
}

/// The value of one sample line of `/metrics` (`name{labels}` exactly as rendered), 0 if absent.
fn metric(node: &Service, series: &str) -> f64 {
    let (_, text) = node.raw("GET", "/metrics", None, &[]);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Three nodes on one Redis, each in its own directories; returns when all see each other.
fn start_fleet(redis: &Redis, dirs: &[Dirs]) -> Vec<Service> {
    let nodes: Vec<Service> = dirs
        .iter()
        .map(|d| Service::start(d, &node_config(redis)))
        .collect();
    for n in &nodes {
        wait_for(
            Duration::from_secs(10),
            "every node to see the whole fleet",
            || {
                let (s, v) = n.get("/v1/fleet/nodes");
                (s == 200
                    && v["nodes"]
                        .as_array()
                        .is_some_and(|a| a.len() == nodes.len()))
                .then_some(())
            },
        );
    }
    nodes
}

fn audio_job(filename: &str) -> Value {
    json!({
        "type": "track",
        "sources": [{"uri": "test://audio?wave=sine"}],
        "output": {"file": {"filename": filename}},
        "estimated_cpu": 0.5,
    })
}

/// Placement reservations left in Redis, per node id.
fn reservations(redis: &Redis) -> HashMap<String, usize> {
    let mut con = redis.connect();
    let prefix = Keys::default().reserved("");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut con)
        .unwrap();
    keys.into_iter()
        .map(|k| {
            let n: usize = redis::cmd("HLEN").arg(&k).query(&mut con).unwrap();
            (k.trim_start_matches(&prefix).to_string(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn fleet_list(node: &Service, query: &str) -> Vec<Value> {
    let (s, v) = node.get(&format!("/v1/egress{query}"));
    assert_eq!(s, 200, "{v}");
    v["egresses"].as_array().cloned().unwrap_or_default()
}

/// Live handler processes per egress id (from /proc command lines).
fn handlers_running(ids: &[String]) -> HashMap<String, usize> {
    let mut out: HashMap<String, usize> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains("handler") {
            continue;
        }
        for id in ids {
            if cmd.contains(id.as_str()) {
                *out.entry(id.clone()).or_default() += 1;
            }
        }
    }
    out
}

#[test]
fn fleet_spreads_jobs_lists_them_everywhere_and_ends_them_through_any_node() {
    let redis = Redis::start();
    let dirs: Vec<Dirs> = (0..3).map(|_| Dirs::new()).collect();
    let nodes = start_fleet(&redis, &dirs);
    let (_, v) = nodes[0].get("/v1/fleet/nodes");
    for n in v["nodes"].as_array().unwrap() {
        assert_eq!(n["capacity_cores"], 8.0, "{n}");
        assert!(
            n["url"].as_str().unwrap().starts_with("http://127.0.0.1:"),
            "{n}"
        );
        assert_eq!(n["draining"], false);
    }

    // A bad request is answered by the node it was sent to: 400, nothing fans out.
    let (s, v) = nodes[1].post(
        "/v1/egress",
        &json!({"type": "track", "sources": [], "output": {"file": {}}}),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_field")),
        "{v}"
    );
    assert!(reservations(&redis).is_empty(), "a 400 reserves nothing");

    // Six equal jobs, sent to the three nodes in turn: spread places two on each.
    let mut placed: Vec<(String, String)> = Vec::new();
    for i in 0..6 {
        let via = &nodes[i % 3];
        let (s, v) = via.post("/v1/egress", &audio_job(&format!("spread-{i}.ogg")));
        assert_eq!(s, 201, "{v}\n{}", via.log());
        placed.push((
            v["egress_id"].as_str().unwrap().to_string(),
            v["node_id"].as_str().unwrap().to_string(),
        ));
    }
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for (_, n) in &placed {
        *per_node.entry(n.as_str()).or_default() += 1;
    }
    for n in &nodes {
        assert_eq!(
            per_node.get(n.node_id.as_str()),
            Some(&2),
            "spread: {per_node:?}"
        );
    }

    // Every node sees the whole fleet's egresses, each on the node that runs it.
    for n in &nodes {
        let list = fleet_list(n, "");
        let seen: HashMap<&str, &str> = list
            .iter()
            .map(|e| {
                (
                    e["egress_id"].as_str().unwrap(),
                    e["node_id"].as_str().unwrap(),
                )
            })
            .collect();
        for (id, on) in &placed {
            assert_eq!(
                seen.get(id.as_str()),
                Some(&on.as_str()),
                "{id} from {}: {list:?}",
                n.node_id
            );
        }
    }
    // The registry reports each node's jobs (at its next heartbeat).
    wait_for(
        Duration::from_secs(5),
        "the registry to count two tracks per node",
        || {
            let (_, v) = nodes[2].get("/v1/fleet/nodes");
            v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["types"]["track"]["active"] == 2)
                .then_some(())
        },
    );

    // GET, stop and kill through nodes that do not run the egress.
    let owner_of = |node_id: &str| nodes.iter().position(|n| n.node_id == node_id).unwrap();
    let (stop_id, stop_on) = placed[0].clone();
    let other = &nodes[(owner_of(&stop_on) + 1) % 3];
    let third = &nodes[(owner_of(&stop_on) + 2) % 3];
    other.wait_status(&stop_id, &["active"], Duration::from_secs(30));
    let (s, v) = third.post(&format!("/v1/egress/{stop_id}/stop"), &Value::Null);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["node_id"], stop_on.as_str());
    let done = other.wait_status(
        &stop_id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(30),
    );
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(done["end_reason"], "StopEgress API");
    let file = done["files"][0]["location"].as_str().unwrap();
    assert!(decoded(Path::new(file)).audio_samples > 0, "{done}");
    // Stopping it again, through yet another node: the owner's 409 comes back.
    let (s, v) =
        nodes[owner_of(&stop_on)].post(&format!("/v1/egress/{stop_id}/stop"), &Value::Null);
    assert_eq!(s, 409, "{v}");

    let (kill_id, kill_on) = placed[1].clone();
    let via = &nodes[(owner_of(&kill_on) + 1) % 3];
    let (s, v) = via.post(&format!("/v1/egress/{kill_id}/kill"), &Value::Null);
    assert_eq!(s, 200, "{v}");
    let done = via.wait_status(
        &kill_id,
        &["aborted", "failed", "complete"],
        Duration::from_secs(30),
    );
    assert_eq!(
        (done["status"].as_str(), done["end_reason"].as_str()),
        (Some("aborted"), Some("KillEgress API"))
    );

    // Unknown ids are 404 everywhere.
    let (s, v) = nodes[0].get("/v1/egress/EG_aaaaaaaaaaaa");
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = nodes[0].post("/v1/egress/EG_aaaaaaaaaaaa/stop", &Value::Null);
    assert_eq!(s, 404);

    // A job no node can take: 503 no_capacity with the dominant reason, at once.
    let mut huge = audio_job("huge.ogg");
    huge["estimated_cpu"] = json!(7.0);
    let retried = r#"egress_placements_total{outcome="retried"}"#;
    let retries = metric(&nodes[2], retried);
    let (s, v) = nodes[2].post("/v1/egress", &huge);
    assert_eq!(
        (
            s,
            v["error"]["code"].as_str(),
            v["error"]["reason"].as_str()
        ),
        (503, Some("no_capacity"), Some("cpu")),
        "{v}"
    );
    assert_eq!(
        metric(&nodes[2], retried),
        retries,
        "a full fleet answers without retrying"
    );

    // Stop the rest through node 0; everything ends complete.
    for (id, _) in &placed[2..] {
        let (s, v) = nodes[0].post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        assert_eq!(s, 200, "{v}");
    }
    for (id, _) in &placed[2..] {
        assert_eq!(
            nodes[1].wait_status(
                id,
                &["complete", "failed", "aborted"],
                Duration::from_secs(30)
            )["status"],
            "complete"
        );
    }
    // The node that placed the huge job counts its failure; every placing node counts placements.
    let (_, text) = nodes[2].raw("GET", "/metrics", None, &[]);
    assert!(
        text.contains("egress_placements_total{outcome=\"placed\"}"),
        "{text}"
    );
    assert!(
        text.contains("egress_placements_total{outcome=\"failed\"} 1"),
        "{text}"
    );
}

#[test]
fn a_node_killed_mid_burst_loses_no_job_and_runs_none_twice() {
    let redis = Redis::start();
    let dirs: Vec<Dirs> = (0..3).map(|_| Dirs::new()).collect();
    let mut nodes = start_fleet(&redis, &dirs);
    let victim_id = nodes[2].node_id.clone();
    let survivors = [nodes[0].base.clone(), nodes[1].base.clone()];
    let token = nodes[0].token.clone();

    // 6 clients x 3 jobs, sent to the two nodes that survive; node 2 is killed after the 4th 201.
    let (tx, rx) = mpsc::channel::<(u16, Value)>();
    let mut clients = Vec::new();
    for c in 0..6 {
        let tx = tx.clone();
        let base = survivors[c % 2].clone();
        let token = token.clone();
        clients.push(std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            for j in 0..3 {
                let mut r = agent.post(format!("{base}/v1/egress"));
                if let Some(t) = &token {
                    r = r.header("authorization", format!("Bearer {t}"));
                }
                let body = audio_job(&format!("burst-{c}-{j}.ogg"));
                let (s, v) = match r.send_json(&body) {
                    Ok(mut resp) => {
                        let s = resp.status().as_u16();
                        (
                            s,
                            resp.body_mut().read_json::<Value>().unwrap_or(Value::Null),
                        )
                    }
                    Err(e) => (0, Value::String(e.to_string())),
                };
                let _ = tx.send((s, v));
            }
        }));
    }
    drop(tx);
    let mut answers = Vec::new();
    let mut killed = false;
    for a in rx.iter() {
        answers.push(a);
        if !killed && answers.iter().filter(|(s, _)| *s == 201).count() >= 4 {
            nodes[2].signal(libc::SIGKILL);
            killed = true;
        }
    }
    for c in clients {
        c.join().expect("client thread");
    }
    assert!(
        killed,
        "the burst ended before 4 jobs were placed: {answers:?}"
    );
    nodes[2].wait_exit(Duration::from_secs(10));

    // Every request was placed, each under its own id.
    for (s, v) in &answers {
        assert_eq!(
            *s,
            201,
            "{v}\n--- node 0 ---\n{}\n--- node 1 ---\n{}",
            nodes[0].log(),
            nodes[1].log()
        );
    }
    let ids: Vec<String> = answers
        .iter()
        .map(|(_, v)| v["egress_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "an egress id was given twice: {ids:?}"
    );

    // Once the dead node's registration has expired, the fleet is the two survivors...
    wait_for(
        NODE_TTL + Duration::from_secs(20),
        "the killed node to leave the registry",
        || {
            let (_, v) = nodes[0].get("/v1/fleet/nodes");
            (v["nodes"].as_array().unwrap().len() == 2).then_some(())
        },
    );
    // ...the orphaned handlers of the dead node have finished on their own...
    wait_for(
        Duration::from_secs(60),
        "the dead node's handlers to exit",
        || {
            let list = fleet_list(&nodes[0], "");
            let theirs: Vec<String> = list
                .iter()
                .filter(|e| e["node_id"] == victim_id.as_str())
                .map(|e| e["egress_id"].as_str().unwrap().to_string())
                .collect();
            handlers_running(&theirs).is_empty().then_some(())
        },
    );
    // ...and every placed egress has exactly one record: live ones on a live node with exactly
    // one handler, the dead node's ones reported aborted ("Node lost").
    for via in [&nodes[0], &nodes[1]] {
        let list = fleet_list(via, "");
        let mut count: HashMap<&str, usize> = HashMap::new();
        for e in &list {
            *count.entry(e["egress_id"].as_str().unwrap()).or_default() += 1;
        }
        let running = handlers_running(&ids);
        for id in &ids {
            assert_eq!(
                count.get(id.as_str()),
                Some(&1),
                "{id} in the list of {}: {list:?}",
                via.node_id
            );
            let e = list.iter().find(|e| e["egress_id"] == id.as_str()).unwrap();
            if e["node_id"] == victim_id.as_str() {
                assert_eq!(
                    (e["status"].as_str(), e["end_reason"].as_str()),
                    (Some("aborted"), Some("Node lost")),
                    "{e}"
                );
            } else {
                assert!(
                    ["starting", "active"].contains(&e["status"].as_str().unwrap()),
                    "{e}"
                );
                assert_eq!(
                    running.get(id.as_str()),
                    Some(&1),
                    "{id} handlers: {running:?}"
                );
            }
        }
    }
    // Admission on the survivors counts exactly the live jobs.
    let live = fleet_list(&nodes[0], "?status=starting,active");
    let admitted: u64 = nodes[..2]
        .iter()
        .map(|n| {
            n.get("/v1/node").1["types"]["track"]["active"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(admitted as usize, live.len(), "{live:?}");

    for e in &live {
        let id = e["egress_id"].as_str().unwrap();
        // Recording before the stop: a job stopped while still starting ends "Stopped before
        // start" with no file, by design; this test is about jobs that record on.
        nodes[0].wait_active(id);
        let (s, v) = nodes[1].post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        assert_eq!(s, 200, "{v}");
    }
    for e in &live {
        let id = e["egress_id"].as_str().unwrap();
        assert_eq!(
            nodes[0].wait_status(
                id,
                &["complete", "failed", "aborted"],
                Duration::from_secs(30)
            )["status"],
            "complete"
        );
    }
    nodes.truncate(2);
}

#[test]
fn two_fleets_share_one_redis_under_their_own_key_prefixes() {
    let redis = Redis::start();
    let cfg = |prefix: &str| {
        format!(
            "cpu: {{ capacity: 8 }}\n\
             fleet: {{ redis_url: \"{}\", key_prefix: \"{prefix}\", heartbeat_ms: 250, node_ttl_ms: 5000 }}",
            redis.url()
        )
    };
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = Service::start(&da, &cfg("one:"));
    let b = Service::start(&db, &cfg("two:"));
    // Each fleet is its one node.
    for n in [&a, &b] {
        let (s, v) = n.get("/v1/fleet/nodes");
        assert_eq!(s, 200, "{v}");
        let ids: Vec<&str> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["node_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [n.node_id.as_str()], "{v}");
    }
    let ea = a.start_egress(&audio_job("a.ogg"));
    let eb = b.start_egress(&audio_job("b.ogg"));
    assert_eq!(a.egress(&ea)["node_id"], a.node_id.as_str());
    assert_eq!(b.egress(&eb)["node_id"], b.node_id.as_str());
    // Neither fleet sees the other's egress.
    let (s, v) = a.get(&format!("/v1/egress/{eb}"));
    assert_eq!(s, 404, "{v}");
    let (s, v) = b.get(&format!("/v1/egress/{ea}"));
    assert_eq!(s, 404, "{v}");
    // Redis holds each fleet under its own prefix, nothing under the default one.
    let mut con = redis.connect();
    let count = |pattern: &str, con: &mut redis::Connection| -> usize {
        redis::cmd("KEYS")
            .arg(pattern)
            .query::<Vec<String>>(con)
            .unwrap()
            .len()
    };
    assert!(count("one:*", &mut con) > 0 && count("two:*", &mut con) > 0);
    assert_eq!(count("egress:*", &mut con), 0);
    for (n, id) in [(&a, &ea), (&b, &eb)] {
        n.wait_active(id);
        n.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
        assert_eq!(
            n.wait_status(id, &["complete", "failed"], Duration::from_secs(30))["status"],
            "complete"
        );
    }
}

/// A placer that picks itself starts the job in-process: here its advertised URL leads
/// nowhere, so a start over HTTP to itself (as before) could not succeed.
#[test]
fn a_placer_that_picks_itself_starts_the_job_without_calling_itself() {
    let redis = Redis::start();
    let dirs = Dirs::new();
    let nowhere = format!("http://127.0.0.1:{}", crate::producers::free_tcp_port());
    let cfg = node_config(&redis).replace(
        "fleet: {",
        &format!("fleet: {{ advertise_url: \"{nowhere}\","),
    );
    let node = Service::start(&dirs, &cfg);
    wait_for(Duration::from_secs(10), "the node in the fleet", || {
        let (s, v) = node.get("/v1/fleet/nodes");
        (s == 200 && v["nodes"].as_array().is_some_and(|a| a.len() == 1)).then_some(())
    });
    let (s, v) = node.post("/v1/egress", &audio_job("self.mp4"));
    assert_eq!(s, 201, "{v}\n{}", node.log());
    assert_eq!(v["node_id"], node.node_id.as_str(), "{v}");
    assert!(
        v.get("placement").is_none(),
        "placed through the fleet, not degraded: {v}"
    );
    let id = v["egress_id"].as_str().unwrap().to_string();
    node.wait_active(&id);
    let (s, _) = node.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    assert_eq!(s, 200);
}
