//! Stream URLs changed in a loop (issue 22, item 2): the changes are rate-limited per egress
//! (429 `rate_limited`), removed URLs leave the record (a count stays), late handler events
//! bring none back, and the record, its events and the webhook queue stay small.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::producers::free_tcp_port;

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        n += if p.is_dir() {
            dir_bytes(&p)
        } else {
            std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
        };
    }
    n
}

#[test]
fn stream_changes_in_a_loop_are_rate_limited_and_the_record_stays_small() {
    let dirs = Dirs::new();
    let hook = format!("http://127.0.0.1:{}/hook", free_tcp_port());
    let svc = Service::start(
        &dirs,
        &format!("webhooks: {{ urls: [\"{hook}\"], signing_key: \"0123456789abcdef\" }}"),
    );
    let id = svc.start_egress(&json!({
        "type": "track", "sources": [{"uri": "test://av"}],
        "video": {"width": 320, "height": 240, "fps": 15, "bitrate_kbps": 300},
        "outputs": [{"file": {"filename": "a.mp4"}}, {"stream": {"urls": []}}],
    }));
    svc.wait_active(&id);
    let path = format!("/v1/egress/{id}/streams");
    let receivers = free_tcp_port();
    let (mut ok, mut limited) = (0, 0);
    let mut largest = 0;
    for n in 0..100 {
        let urls: Vec<String> = (0..8)
            .map(|j| format!("rtmp://127.0.0.1:{receivers}/live/key{n}x{j}"))
            .collect();
        for body in [json!({"add_urls": urls}), json!({"remove_urls": urls})] {
            let (s, v) = svc.post(&path, &body);
            match s {
                200 => {
                    ok += 1;
                    largest = largest.max(v.to_string().len());
                }
                429 => {
                    limited += 1;
                    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
                    break;
                }
                _ => panic!("{s}: {v}"),
            }
        }
    }
    assert_eq!(ok, 30, "{ok} changes taken, {limited} refused");
    assert!(limited >= 80, "{limited}");
    // 15 add/remove cycles of 8: every removed URL left the record, counted.
    let v = svc.egress(&id);
    assert_eq!(v["streams_removed"], 120, "{v}");
    assert!(largest < 6_000, "an answer of {largest} bytes");
    // Late events of removed streams (they were retrying) bring none back.
    std::thread::sleep(Duration::from_secs(2)); // handler events in flight, not sync
    let v = svc.egress(&id);
    assert_eq!(v["streams"].as_array().map_or(0, Vec::len), 0, "{v}");
    let (s, _) = svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    assert_eq!(s, 200);
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(30));
    assert_eq!(done["status"], "complete", "{done}");
    assert!(done.to_string().len() < 6_000, "{done}");
    let record = dirs.state().join("egresses").join(format!("{id}.json"));
    let size = std::fs::metadata(&record).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0 && size < 8_000, "record of {size} bytes");
    // Every change was one event; the queue of a receiver that is down holds them all.
    let queued = dir_bytes(&dirs.state().join("webhooks"));
    assert!(queued < 400_000, "webhook queue of {queued} bytes");
}
