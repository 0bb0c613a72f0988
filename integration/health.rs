//! See what is recorded (issue 21): every running egress's latest picture, and warnings raised
//! and cleared live for a picture that stays black or frozen and sound that stays silent.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::conformance::{CONFIG, Profile, SOURCES, body, srt_listener, srt_sender, stop};
use crate::producers::*;

/// Every running egress shows its latest picture at `GET /v1/egress/{id}/thumbnail.jpg`: a
/// `track` copying H.264 (a keyframe decoded at most every `pipeline.thumbnail_s`) and a
/// `participant` (off its raw frames), both 320 px wide JPEGs that change as the recording
/// goes on; an audio-only egress has none (404), nor has an unknown one.
#[test]
fn a_running_egress_shows_its_latest_picture() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, CONFIG);
    let sender = srt_sender(Profile {
        video: Some(("libx264", 2, 2)),
        audio: Some("aac"),
        sync: false,
    });
    let track = svc.start_egress(&body("track", &sender.url, "thumb_track"));
    let participant = svc.start_egress(&body("participant", "test://av", "thumb_participant"));
    let radio = svc.start_egress(&body("track", "test://audio", "thumb_radio"));
    let picture = |id: &str| {
        let (s, ct, jpeg) = svc.get_bytes(&format!("/v1/egress/{id}/thumbnail.jpg"));
        (s == 200).then(|| {
            assert_eq!(ct, "image/jpeg");
            jpeg
        })
    };
    for id in [&track, &participant] {
        let first = wait_for(Duration::from_secs(20), "a picture", || picture(id));
        let path = dirs.root.path().join(format!("{id}.jpg"));
        std::fs::write(&path, &first).expect("jpeg");
        let probe = ffprobe(&path);
        assert_eq!(probe["streams"][0]["codec_name"], "mjpeg", "{probe}");
        assert_eq!(probe["streams"][0]["width"], 320, "{probe}");
        // Taken again while it records: testsrc moves every frame.
        wait_for(Duration::from_secs(10), "a newer picture", || {
            picture(id).filter(|p| *p != first)
        });
    }
    svc.wait_status(&radio, &["active"], Duration::from_secs(15));
    let (s, _, body) = svc.get_bytes(&format!("/v1/egress/{radio}/thumbnail.jpg"));
    assert_eq!(s, 404, "{}", String::from_utf8_lossy(&body));
    let (s, v) = svc.get("/v1/egress/EG_AAAAAAAAAAAA/thumbnail.jpg");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    for id in [&track, &participant, &radio] {
        stop(&svc, id);
    }
}

/// An SRT sender of `seconds` of lavfi `video` (x264 `veryfast`, a keyframe every second at
/// 30 fps; not `zerolatency`: its still picture's decoded frames differ by more than the
/// frozen threshold, noted on issue 21) and `audio` (AAC).
fn lavfi_sender(video: &str, audio: &str, seconds: u32) -> Producer {
    let args: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        video,
        "-f",
        "lavfi",
        "-i",
        audio,
        "-t",
        &seconds.to_string(),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "30",
        "-c:a",
        "aac",
        "-ar",
        "48000",
    ]
    .map(String::from)
    .to_vec();
    srt_listener(args)
}

fn warnings(svc: &Service, id: &str) -> Vec<String> {
    let (_, v) = svc.get(&format!("/v1/egress/{id}"));
    v["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn metric(svc: &Service, line: &str) -> Option<f64> {
    let (_, text) = svc.raw("GET", "/metrics", None, &[]);
    text.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A sender whose picture is black and whose sound is silent for its first 9 s, then moves and
/// sounds: the egress carries "video black ..." and "audio silent ..." warnings (and the
/// `egress_health_active` gauge counts them) once they held for `pipeline.health_window_s`,
/// and both clear when the picture and the sound come; a still grey picture is "frozen", not
/// black, and stays in the ended record; a black picture that flashes once a second is neither.
#[test]
fn black_frozen_and_silent_are_warned_live_and_cleared() {
    let dirs = Dirs::new();
    let svc = Service::start(
        &dirs,
        &format!("{SOURCES}\npipeline: {{ health_window_s: 3, thumbnail_s: 1 }}"),
    );
    let dark = lavfi_sender(
        "testsrc=size=320x240:rate=30,drawbox=c=black:t=fill:enable='lt(t,9)'",
        "sine=frequency=440:sample_rate=48000,volume=volume=0:enable='lt(t,9)'",
        40,
    );
    let still = lavfi_sender(
        "color=c=gray:s=320x240:r=30",
        "sine=frequency=440:sample_rate=48000",
        40,
    );
    // Black but for a flash once a second (as the sync producer): neither black nor frozen.
    // Judged on one frame a second, it was seen at the same phase each time.
    let flashing = lavfi_sender(
        "color=c=black:s=320x240:r=30,drawbox=c=white:t=fill:enable='lt(mod(t,1),0.1)'",
        "sine=frequency=440:sample_rate=48000",
        40,
    );
    let participant = svc.start_egress(&body("participant", &dark.url, "dark"));
    let track = svc.start_egress(&body("participant", &still.url, "still"));
    let flashes = svc.start_egress(&body("participant", &flashing.url, "flashing"));
    let black = "video black for more than 3 s".to_string();
    let silent = "audio silent for more than 3 s".to_string();
    wait_for(Duration::from_secs(9), "black and silent warnings", || {
        let w = warnings(&svc, &participant);
        (w.contains(&black) && w.contains(&silent)).then_some(())
    });
    assert!(metric(&svc, "egress_health_active{condition=\"black\"}") >= Some(1.0));
    wait_for(Duration::from_secs(15), "the warnings to clear", || {
        warnings(&svc, &participant).is_empty().then_some(())
    });
    let w = wait_for(Duration::from_secs(15), "a frozen warning", || {
        let w = warnings(&svc, &track);
        w.contains(&"video frozen for more than 3 s".to_string())
            .then_some(w)
    });
    assert!(!w.contains(&black) && !w.contains(&silent), "{w:?}");
    let w = warnings(&svc, &flashes);
    assert!(w.is_empty(), "a flashing picture: {w:?}");
    // Counted: at least once (seen once in a full run, under load: 2, the warning cleared by
    // one sample and raised again; which sample was not kept).
    assert!(metric(&svc, "egress_health_warnings_total{condition=\"frozen\"}") >= Some(1.0));
    for id in [&participant, &track, &flashes] {
        stop(&svc, id);
    }
    let done = svc.wait_status(&track, &["complete", "failed"], Duration::from_secs(20));
    let w: Vec<Value> = done["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        w.contains(&Value::String("video frozen for more than 3 s".into())),
        "{done}"
    );
    let done = svc.wait_status(&flashes, &["complete", "failed"], Duration::from_secs(20));
    assert!(done["warnings"].is_null(), "a flashing picture: {done}");
}
