//! A `room_composite` whose people come and go while it records (`POST /v1/egress/{id}/sources`):
//! it starts with a browser (headless Chromium publishing a red page through WHIP), real SRT
//! senders of one plain colour each (ffmpeg) join, the browser leaves, and a WHIP publisher
//! (aiortc) joins through the URL the answer gives it. The one file is decoded frame by frame
//! to see the tiles at each moment (told apart by colour), and its audio second by second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::producers::srt_colour;
use crate::webrtc::{browser, publisher};

/// The colour at each of `points` (fractions of the frame's width and height) of the frame
/// at `t` s: R, G, B, `.` (black: the background or a tile's border) or `?` (anything else).
fn colours(file: &Path, t: f64, points: &[(f64, f64)]) -> String {
    let (w, h) = (64usize, 36usize);
    let raw = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &format!("{t:.2}"), "-i"])
        .arg(file)
        .args(["-frames:v", "1", "-vf", "scale=64:36", "-f", "rawvideo"])
        .args(["-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg")
        .stdout;
    assert_eq!(raw.len(), w * h * 3, "no frame at {t} s");
    points
        .iter()
        .map(|(fx, fy)| {
            let (x, y) = ((fx * w as f64) as usize, (fy * h as f64) as usize);
            let p = &raw[(y * w + x) * 3..(y * w + x) * 3 + 3];
            match (p[0], p[1], p[2]) {
                (r, g, b) if r > 150 && g < 80 && b < 80 => 'R',
                (r, g, b) if g > 90 && r < 80 && b < 80 => 'G',
                (r, g, b) if b > 150 && r < 80 && g < 80 => 'B',
                (r, g, b) if r < 30 && g < 30 && b < 30 => '.',
                _ => '?',
            }
        })
        .collect()
}

/// RMS of each whole second of the file's audio (mono, 16-bit samples).
fn audio_rms_per_second(file: &Path) -> Vec<f64> {
    let pcm = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-vn", "-ac", "1", "-ar", "8000", "-f", "s16le", "-"])
        .output()
        .expect("ffmpeg")
        .stdout;
    let samples: Vec<f64> = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f64)
        .collect();
    samples
        .chunks_exact(8000)
        .map(|s| (s.iter().map(|x| x * x).sum::<f64>() / s.len() as f64).sqrt())
        .collect()
}

/// Stops egress `id`: its final record, `complete`, and its file.
fn stopped(svc: &Service, id: &str) -> (Value, PathBuf) {
    let (s, stopped) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    assert_eq!(s, 200, "{stopped}");
    let done = svc.wait_status(id, &["complete", "failed"], Duration::from_secs(30));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    let file = PathBuf::from(done["files"][0]["location"].as_str().expect("file"));
    (done, file)
}

fn change(svc: &Service, id: &str, body: Value) -> Value {
    let (s, info) = svc.post(&format!("/v1/egress/{id}/sources"), &body);
    assert_eq!(s, 200, "{body} -> {info}");
    info
}

/// Seconds into the file of wall time `ms` (the file starts at `started_at`).
fn at(info: &Value, ms: u64) -> f64 {
    (ms as f64 - info["started_at"].as_f64().expect("started_at")) / 1000.0
}

/// Red (the browser) alone, then green joins (two tiles side by side), then blue (a 4-grid of three), then
/// red leaves (two again: green and blue), then a WHIP publisher joins (three): each layout
/// is in the file from within 2.5 s of its change until the next, audio is there every
/// second, and it is one continuous file.
#[test]
fn people_join_and_leave_a_recorded_room() {
    // Alone: a browser encoding takes a core, which would slow other tests' recordings.
    let _alone = cpu_exclusive();
    let dirs = Dirs::new();
    let svc = Service::start_alone(&dirs, "");
    let (green, blue) = (srt_colour("green"), srt_colour("blue"));
    let (s, eg) = svc.post(
        "/v1/egress",
        &json!({"type": "room_composite", "sources": [{"whip": {}}],
                "video": {"width": 640, "height": 360},
                "outputs": [{"file": {"filename": "room.mp4"}}]}),
    );
    assert_eq!(s, 201, "{eg}");
    let id = eg["egress_id"].as_str().expect("id").to_string();
    assert_eq!(eg["sources"], json!([{"id": 0, "source": {"whip": {}}}]));
    // Before it records (its publisher has not come), a room takes no change: 409.
    let (s, e) = svc.post(
        &format!("/v1/egress/{id}/sources"),
        &json!({"add": [{"uri": green.url}]}),
    );
    assert_eq!(s, 409, "{e}");
    // The room starts with a browser: a red page and a tone, published through WHIP.
    let mut red = browser(
        eg["whip"][0]["url"].as_str().expect("url"),
        eg["whip_token"].as_str().expect("token"),
        120,
        &["--colour", "#ff0000"],
    );
    svc.wait_active(&id);

    // What a room refuses: an id not in it, the last source leaving, a test source, nothing.
    let path = format!("/v1/egress/{id}/sources");
    let (s, e) = svc.post(&path, &json!({"remove": [5]}));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_field")),
        "{e}"
    );
    let (s, e) = svc.post(&path, &json!({"remove": [0]}));
    assert_eq!(s, 409, "{e}");
    let (s, e) = svc.post(&path, &json!({"add": [{"uri": "test://av"}]}));
    assert_eq!(s, 400, "{e}");
    let (s, e) = svc.post(&path, &json!({}));
    assert_eq!(s, 400, "{e}");

    let hold = Duration::from_secs(6);
    std::thread::sleep(hold);
    let joined_green = change(&svc, &id, json!({"add": [{"uri": green.url}]}));
    assert_eq!(joined_green["sources"][1]["id"], 1, "{joined_green}");
    std::thread::sleep(hold);
    let joined_blue = change(&svc, &id, json!({"add": [{"uri": blue.url}]}));
    std::thread::sleep(hold);
    let left_red = change(&svc, &id, json!({"remove": [0]}));
    assert!(left_red["sources"][0]["removed_at"].is_u64(), "{left_red}");
    // Its URL takes no publisher any more.
    assert!(left_red.get("whip").is_none(), "{left_red}");
    // SIGTERM: the page ends its session and the script takes its browser down with it.
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(red.id() as i32, libc::SIGTERM);
    }
    let _ = red.wait();
    std::thread::sleep(hold);
    // A WHIP publisher joins through its own URL, with the egress's token.
    let joined_whip = change(&svc, &id, json!({"add": [{"whip": {}}]}));
    let whip = &joined_whip["whip"][0];
    assert_eq!(whip["source"], 3, "{joined_whip}");
    assert_eq!(
        joined_whip["whip_token"], eg["whip_token"],
        "one token per egress"
    );
    assert_eq!(whip["url"], format!("{}/v1/whip/{id}/3", svc.base));
    let token = joined_whip["whip_token"].as_str().expect("token");
    let mut p = publisher(whip["url"].as_str().expect("url"), token, 8);
    wait_for(
        Duration::from_secs(20),
        "the WHIP publisher to publish",
        || (svc.egress(&id)["whip"][0]["publishing"] == true).then_some(()),
    );
    let publishing_at = now_ms();
    std::thread::sleep(hold);
    let (s, stopped) = svc.post(&format!("/v1/egress/{id}/stop"), &Value::Null);
    assert_eq!(s, 200, "{stopped}");
    let _ = p.wait();
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(30));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    let file = PathBuf::from(done["files"][0]["location"].as_str().expect("file"));

    // Each layout, just before the next change. Tiles keep their 4:3 aspect (black borders).
    let when = |v: &Value, id: usize, key: &str| {
        at(&done, v["sources"][id][key].as_u64().expect("change time"))
    };
    let changes = [
        (when(&joined_green, 1, "added_at"), "red alone"),
        (when(&joined_blue, 2, "added_at"), "red and green"),
        (when(&left_red, 0, "removed_at"), "red, green, blue"),
        (when(&joined_whip, 3, "added_at"), "green and blue"),
    ];
    // Sampled at the tiles' centres and where a layout has only background (the page is
    // 16:9 like the frame, the SRT senders 4:3).
    let one = [(0.5, 0.5), (0.97, 0.97)];
    let two = [(0.25, 0.5), (0.75, 0.5), (0.5, 0.05)];
    let four = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
    let layouts: [(&[(f64, f64)], &str); 4] =
        [(&one, "RR"), (&two, "RG."), (&four, "RGB."), (&two, "GB.")];
    for (k, ((t, what), (points, want))) in changes.iter().zip(layouts).enumerate() {
        let got = colours(&file, t - 0.5, points);
        assert_eq!(got, want, "{what} before {:.1} s", t - 0.5);
        if k > 0 {
            // In place within 2.5 s of the change that made it.
            let from = changes[k - 1].0 + 2.5;
            assert_eq!(colours(&file, from, points), want, "{what} at {from:.1} s");
        }
    }
    // Then the publisher's test pattern in the third cell, beside green and blue.
    let t = at(&done, publishing_at) + 3.0;
    let got = colours(&file, t, &four);
    assert!(
        got.starts_with("GB") && got.ends_with('.'),
        "at {t:.1} s: {got}"
    );
    assert_ne!(&got[2..3], ".", "no WHIP tile at {t:.1} s: {got}");

    // No GStreamer critical in the handler's log (a dropped buffer once logged one each).
    let log = std::fs::read_to_string(dirs.state().join("logs").join(format!("{id}.log")))
        .expect("handler log");
    assert!(
        !log.contains("CRITICAL"),
        "criticals in the handler's log:\n{log}"
    );

    // One file with audio all along: every second holds the senders' tone.
    let rms = audio_rms_per_second(&file);
    let duration = crate::producers::duration(&crate::producers::ffprobe(&file));
    assert!(
        rms.len() as f64 >= duration - 1.5,
        "{} s of audio in {duration} s",
        rms.len()
    );
    for (s, r) in rms.iter().enumerate() {
        assert!(
            *r > 300.0,
            "second {s} of the audio is silent (RMS {r:.0}): {rms:?}"
        );
    }
}

/// A test source of the request leaves a room too: its tile goes and the other one takes the
/// whole frame, in the same file.
#[test]
fn a_test_source_leaves_a_room() {
    let dirs = Dirs::new();
    let svc = Service::start(&dirs, "");
    let (s, eg) = svc.post(
        "/v1/egress",
        &json!({"type": "room_composite",
                "sources": [{"uri": "test://av?pattern=red&width=640&height=360"},
                            {"uri": "test://av?pattern=blue&width=640&height=360"}],
                "video": {"width": 640, "height": 360},
                "outputs": [{"file": {"filename": "tests.mp4"}}]}),
    );
    assert_eq!(s, 201, "{eg}");
    let id = eg["egress_id"].as_str().expect("id").to_string();
    svc.wait_active(&id);
    std::thread::sleep(Duration::from_secs(3));
    let left = change(&svc, &id, json!({"remove": [0]}));
    std::thread::sleep(Duration::from_secs(3));
    let (done, file) = stopped(&svc, &id);
    let removed = at(
        &done,
        left["sources"][0]["removed_at"]
            .as_u64()
            .expect("removed_at"),
    );
    let points = [(0.25, 0.5), (0.75, 0.5)];
    assert_eq!(
        colours(&file, removed - 0.5, &points),
        "RB",
        "before the removal"
    );
    assert_eq!(
        colours(&file, removed + 2.0, &points),
        "BB",
        "after the removal"
    );
}

/// A room whose source is lost while the other still sends goes on, one file: the lost
/// source's tile keeps its last frame (the default) or, with `pipeline.lost_tile: black`,
/// shows the background; the record marks it `lost_at`.
#[test]
fn a_lost_source_keeps_its_tile_while_the_room_goes_on() {
    for (mode, want) in [("last_frame", "RG"), ("black", "R.")] {
        let dirs = Dirs::new();
        let svc = Service::start(
            &dirs,
            &format!("pipeline: {{ source_stall_s: 1, source_reconnect_s: 2, lost_tile: {mode} }}"),
        );
        let (red, mut green) = (srt_colour("red"), srt_colour("green"));
        let (s, eg) = svc.post(
            "/v1/egress",
            &json!({"type": "room_composite",
                    "sources": [{"uri": red.url}, {"uri": green.url}],
                    "video": {"width": 640, "height": 360},
                    "outputs": [{"file": {"filename": "lost.mp4"}}]}),
        );
        assert_eq!(s, 201, "{eg}");
        let id = eg["egress_id"].as_str().expect("id").to_string();
        svc.wait_active(&id);
        std::thread::sleep(Duration::from_secs(3));
        // The green sender goes away for good.
        let _ = green.child.kill();
        let _ = green.child.wait();
        let lost = wait_for(Duration::from_secs(20), "green to be lost", || {
            let e = svc.egress(&id);
            e["sources"][1]["lost_at"].as_u64().map(|t| (t, e))
        });
        assert_eq!(lost.1["status"], "active", "{}", lost.1);
        std::thread::sleep(Duration::from_secs(3));
        let (done, file) = stopped(&svc, &id);
        let points = [(0.25, 0.5), (0.75, 0.5)];
        let lost_at = at(&done, lost.0);
        assert_eq!(colours(&file, 2.0, &points), "RG", "{mode}: both before");
        assert_eq!(
            colours(&file, lost_at + 2.0, &points),
            want,
            "{mode}: after the loss"
        );
    }
}

/// The mean luma of every frame of `file` in its `w`x`h` region at x `x` (y 0), in order.
fn region_lumas(file: &Path, x: u32, w: u32, h: u32) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!(
            "movie={},crop={w}:{h}:{x}:0,signalstats",
            file.display()
        ))
        .args(["-show_entries", "frame_tags=lavfi.signalstats.YAVG"])
        .args(["-of", "csv=p=0"])
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect()
}

/// An RTSP camera with B-frames (15 fps, a keyframe every 4 s; its picture flashes white while
/// its sound beeps), already streaming to a viewer, joins a room of a plain sender (dark blue,
/// silent) somewhere in its GOP. Its tile shows from its first
/// keyframe: it is decoded in the graph, after its decode times are derived (decoded inside
/// its source, the tile showed the decoder's grey guesses until the next keyframe). Its
/// picture is in sync with its sound: each frame goes to the output slot nearest its time
/// (the compositor took the slot before, 0-33 ms off, a different figure each run).
#[test]
fn an_rtsp_camera_joins_a_room_from_its_keyframe_and_in_sync() {
    let dirs = Dirs::new();
    let file = dirs.root.path().join("camera.mp4");
    crate::producers::flash_beep_file(&file, 40);
    let svc = Service::start(
        &dirs,
        "sources: { allowed_schemes: [rtsp, srt] }\npipeline: { health_window_s: 3600 }",
    );
    let cam = crate::producers::rtsp_file(&file);
    let plain = crate::conformance::srt_listener(crate::producers::ffmpeg_lavfi(
        "color=c=blue:size=320x240:rate=30",
        "anullsrc=r=48000:cl=stereo",
        60,
    ));
    // Another viewer plays the camera first, so the room joins it mid-GOP, as one joins a
    // camera that is already streaming.
    let _viewer = crate::producers::viewer(&cam.url);
    let id = svc.start_egress(&json!({
        "type": "room_composite",
        "sources": [{"uri": plain.url}],
        "outputs": [{"file": {"filename": "room.mp4"}}],
        "video": {"width": 640, "height": 240, "fps": 30, "bitrate_kbps": 800},
        "estimated_cpu": 0.3,
    }));
    svc.wait_status(&id, &["active"], Duration::from_secs(15));
    crate::conformance::somewhere_in_the_gop(3000);
    change(&svc, &id, json!({"add": [{"uri": cam.url}]}));
    // Its tile shows at a keyframe (every 4 s) after its streams are lined up: 4-12 s in.
    std::thread::sleep(Duration::from_secs(20));
    let run = crate::conformance::stop(&svc, &id);
    let (done, _) =
        crate::conformance::check(&svc, &run, (true, true), crate::conformance::DURATION_SLACK);
    let file = PathBuf::from(done["files"][0]["location"].as_str().expect("file"));

    // The right half: the blue tile's half and black until the camera's first keyframe, then
    // its black picture and white flashes; nothing in between.
    let tile = region_lumas(&file, 320, 320, 240);
    assert!(tile.len() > 300, "{} frames", tile.len());
    let grey: Vec<(usize, f64)> = tile
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, y)| (40.0..200.0).contains(y))
        .collect();
    assert!(grey.is_empty(), "frames neither black nor white: {grey:?}");
    assert!(tile.iter().any(|y| *y >= 200.0), "the camera never showed");

    // In sync from its first flash: within 20 ms (half an output frame of the slot's rounding,
    // and the camera's own 1-2 ms). Its video waited for the camera's RTCP reports, which line
    // its streams up (before them, the picture led by up to a frame: 69 ms). The first beep
    // starts with the picture it starts in: where its sound reached the gate before that
    // picture, up to an audio frame (21.3 ms) of its onset is not recorded.
    let v = crate::producers::av_offsets(&file);
    eprintln!("{}: {v}", file.display());
    let offsets: Vec<f64> = v["offsets_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    assert!(offsets.len() >= 6, "{v}");
    assert!(offsets.iter().skip(1).all(|o| o.abs() <= 20.0), "{v}");
    assert!(offsets[0].abs() <= 20.0 + 21.4, "{v}");
}
