//! Overload supervision under real load, and the service's signals: drain on SIGTERM (and
//! `POST /v1/node/drain`), graceful stop of everything on SIGINT.

use std::path::Path;
use std::time::{Duration, Instant};

use egress_engine::model::now_ms;
use serde_json::Value;

use crate::common::*;

fn location(v: &Value) -> &Path {
    Path::new(
        v["files"][0]["location"]
            .as_str()
            .unwrap_or_else(|| panic!("no file: {v}")),
    )
}

#[test]
fn overload_stops_one_egress_gracefully_and_the_others_record_on() {
    let _alone = cpu_exclusive();
    let dirs = Dirs::new();
    // One core of capacity, so a few 720p encodes of noise overload it for sure; costs small
    // enough that admission lets them all in; hard threshold out of reach (no kill here). A
    // start hold of 1 s: a victim is picked soon after it settles, before the encoders, behind
    // real time under this load, make its file much shorter than its recording time.
    let svc = Service::start_alone(
        &dirs,
        "cpu: { capacity: 1, sample_interval_ms: 250, max_utilization: 1, pending_hold_ms: 1000 }\n\
         cpu_cost: { participant: 0.1 }\n\
         overload: { soft_threshold: 0.6, hard_threshold: 9, sustain_samples: 3, kill_grace_s: 30 }",
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut req = request(
            "participant",
            &["test://av?pattern=snow&width=1280&height=720"],
            &format!("load{i}.mp4"),
        );
        req["video"] = serde_json::json!({"width": 1280, "height": 720, "fps": 30});
        ids.push(svc.start_egress(&req));
    }
    for id in &ids {
        svc.wait_active(id);
    }
    // Wait for the first overload stop.
    let victim = wait_for(Duration::from_secs(60), "an overload stop", || {
        ids.iter()
            .map(|id| svc.egress(id))
            .find(|v| v["status"] == "ending" || v["end_reason"] == "CPU limit reached")
    });
    let vid = victim["egress_id"].as_str().unwrap().to_string();
    let done = svc.wait_status(&vid, &["complete", "failed"], Duration::from_secs(40));
    let ended_at = Instant::now();
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(done["end_reason"], "CPU limit reached");
    // Its file was finalized: it decodes for its whole recorded length.
    let recorded =
        (done["ended_at"].as_u64().unwrap() - done["started_at"].as_u64().unwrap()) as f64 / 1000.0;
    let d = discovered_duration(location(&done));
    assert!(
        d >= recorded - 1.5 && d <= recorded + 0.5,
        "file {d:.2} s, recorded {recorded:.2} s"
    );
    assert!(decoded(location(&done)).video_frames > 0);
    // The others were still recording when the victim completed.
    let others: Vec<&String> = ids.iter().filter(|id| **id != vid).collect();
    let still = others.iter().filter(|id| {
        let v = svc.egress(id);
        v["status"] == "active" || v["status"] == "ending" || v["end_reason"] == "CPU limit reached"
    });
    assert_eq!(still.count(), 2);
    assert!(ended_at.elapsed() < Duration::from_secs(30));
    // At least one keeps recording to the end (a lone job is never an overload victim).
    let text = svc.raw("GET", "/metrics", None, &[]).1;
    assert!(
        text.contains(
            "egress_overload_actions_total{action=\"stop\",reason=\"CPU limit reached\"}"
        ),
        "{text}"
    );
    assert!(!text.contains("action=\"kill\""), "{text}");
    for id in &others {
        svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    }
    let mut survivors = 0;
    for id in &others {
        let v = svc.wait_status(id, &["complete", "failed"], Duration::from_secs(60));
        assert_eq!(v["status"], "complete", "{v}");
        if v["end_reason"] == "StopEgress API" {
            survivors += 1;
        }
        assert!(decoded(location(&v)).video_frames > 0);
    }
    assert!(survivors >= 1);
    assert!(
        svc.log().contains("CPU overload"),
        "the stop is logged with its load figures"
    );
}

#[test]
fn overload_stops_a_settled_job_not_the_one_that_just_launched() {
    let _alone = cpu_exclusive();
    let dirs = Dirs::new();
    // A light job (audio, a few % of a core) runs alone (never a victim alone) until its start
    // hold is over; then a heavy one launches and overloads the node within its own 5 s hold:
    // the settled light job is the one stopped, though the new one uses far more CPU above its
    // cost. A fifth of a core of capacity and a soft threshold of 1.5 (0.3 cores of service and
    // handlers): only the heavy job's measured usage crosses it, never the host's busy fraction
    // (at most 1), whatever else loads this machine.
    let svc = Service::start_alone(
        &dirs,
        "cpu: { capacity: 0.2, sample_interval_ms: 250, max_utilization: 1, pending_hold_ms: 5000 }\n\
         cpu_cost: { participant: 0.05, track: 0.05 }\n\
         overload: { soft_threshold: 1.5, hard_threshold: 9, sustain_samples: 2, kill_grace_s: 30 }",
    );
    let light = svc.start_egress(&serde_json::json!({
        "type": "track",
        "sources": [{"uri": "test://audio?wave=sine"}],
        "output": {"file": {"filename": "light.ogg"}},
    }));
    let active = svc.wait_status(&light, &["active"], Duration::from_secs(30));
    let settled_at = active["started_at"].as_u64().unwrap() + 5000;
    wait_for(Duration::from_secs(30), "the light job to settle", || {
        (now_ms() >= settled_at).then_some(())
    });
    let mut req = request(
        "participant",
        &["test://av?pattern=snow&width=1280&height=720"],
        "heavy.mp4",
    );
    req["video"] = serde_json::json!({"width": 1280, "height": 720, "fps": 30});
    let heavy = svc.start_egress(&req);
    let victim = wait_for(Duration::from_secs(60), "an overload stop", || {
        [&light, &heavy]
            .iter()
            .map(|id| svc.egress(id))
            .find(|v| v["status"] == "ending" || v["end_reason"] == "CPU limit reached")
    });
    assert_eq!(
        victim["egress_id"],
        light.as_str(),
        "{victim}\n{}",
        svc.log()
    );
    let done = svc.wait_status(&light, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(
        (done["status"].as_str(), done["end_reason"].as_str()),
        (Some("complete"), Some("CPU limit reached")),
        "{done}"
    );
    assert!(decoded(location(&done)).audio_samples > 0);
    let h = svc.egress(&heavy);
    assert!(
        h["status"] == "starting" || h["status"] == "active",
        "the new job was stopped: {h}"
    );
    // Recording before the stop (a job stopped while starting ends "Stopped before start").
    svc.wait_active(&heavy);
    svc.post(&format!("/v1/egress/{heavy}/stop"), &Value::Null);
    let h = svc.wait_status(
        &heavy,
        &["complete", "failed", "aborted"],
        Duration::from_secs(60),
    );
    assert_eq!(h["end_reason"], "StopEgress API", "{h}");
}

#[test]
fn sigterm_drains_then_exits_with_every_file_complete() {
    let dirs = Dirs::new();
    let mut svc = Service::start(&dirs, "");
    let mut ids = Vec::new();
    for (i, t) in ["track", "participant"].iter().enumerate() {
        let uri = if *t == "track" {
            "test://video"
        } else {
            "test://av"
        };
        let mut req = request(t, &[uri], &format!("d{i}.mp4"));
        req["max_duration_s"] = Value::from(4.0);
        ids.push(svc.start_egress(&req));
    }
    for id in &ids {
        svc.wait_active(id);
    }
    svc.signal(libc::SIGTERM);
    wait_for(Duration::from_secs(5), "readyz 503", || {
        (svc.get("/readyz").0 == 503).then_some(())
    });
    let (s, v) = svc.post(
        "/v1/egress",
        &request("track", &["test://video"], "late.mp4"),
    );
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "draining");
    let (_, a) = svc.get("/v1/affinity?type=track");
    assert_eq!(a["score"], -1.0, "{a}");
    // Running egresses finish on their own terms.
    for id in &ids {
        assert_eq!(svc.egress(id)["status"], "active");
    }
    assert_eq!(svc.wait_exit(Duration::from_secs(40)), Some(0));

    let svc2 = Service::start(&dirs, "");
    for id in &ids {
        let v = svc2.egress(id);
        assert_eq!(v["status"], "limit_reached", "{v}");
        let d = discovered_duration(location(&v));
        assert!((d - 4.0).abs() <= 0.5, "{d}");
    }
}

#[test]
fn sigint_stops_everything_gracefully_and_exits() {
    let dirs = Dirs::new();
    let mut svc = Service::start(&dirs, "");
    let a = svc.start_egress(&request("participant", &["test://av"], "a.mp4"));
    let b = svc.start_egress(&request(
        "room_composite",
        &["test://av", "test://video"],
        "b.mp4",
    ));
    svc.wait_active(&a);
    svc.wait_active(&b);
    // Each has recorded 2 s by its own `started_at` (the service's clock is this machine's).
    wait_for(Duration::from_secs(30), "2 s recorded by each", || {
        [&a, &b]
            .iter()
            .all(|id| {
                svc.egress(id)["started_at"]
                    .as_u64()
                    .is_some_and(|t| now_ms() >= t + 2000)
            })
            .then_some(())
    });
    svc.signal(libc::SIGINT);
    assert_eq!(svc.wait_exit(Duration::from_secs(40)), Some(0));
    let svc2 = Service::start(&dirs, "");
    for id in [&a, &b] {
        let v = svc2.egress(id);
        assert_eq!(v["status"], "complete", "{v}");
        assert_eq!(v["end_reason"], "Service stopped");
        assert!(discovered_duration(location(&v)) >= 1.5);
    }
}

#[test]
fn drain_api_with_timeout_stops_the_rest() {
    let dirs = Dirs::new();
    let mut svc = Service::start(
        &dirs,
        "overload: { drain_timeout_s: 2, soft_threshold: 10, hard_threshold: 10 }",
    );
    let id = svc.start_egress(&request("track", &["test://video"], "long.mkv"));
    svc.wait_active(&id);
    let (s, node) = svc.post("/v1/node/drain", &Value::Null);
    assert_eq!(s, 202, "{node}");
    assert_eq!(node["draining"], true);
    assert_eq!(svc.wait_exit(Duration::from_secs(40)), Some(0));
    let svc2 = Service::start(&dirs, "");
    let v = svc2.egress(&id);
    assert_eq!(v["status"], "complete", "{v}");
    assert_eq!(v["end_reason"], "Drain timeout");
    assert!(discovered_duration(location(&v)) >= 1.5);
}
