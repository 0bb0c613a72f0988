//! Delivery against a real S3-compatible server (moto, see `s3.rs`): files uploaded after they
//! are finalized and decodable from the bucket, a store that goes away and comes back, refused
//! credentials (backup target, then `failed`), a service SIGKILLed mid-upload, a tiny tmpfs as
//! the output directory (admission `reason: disk`, "Disk full" stops), and retention.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Dirs, Service, decoded, request, wait_for};
use crate::s3::{Moto, Throttle};

/// Config lines for a service uploading to `target` (YAML flow, from JSON).
fn storage_extra(dirs: &Dirs, more: &str) -> String {
    format!(
        "storage: {{ output_dir: \"{}\", state_dir: \"{}\", allowed_endpoints: [\"127.0.0.1\"]{more} }}\n",
        dirs.output().display(),
        dirs.state().display()
    )
}

/// Starts the service with storage keys of our own (`storage_more`, appended inside the
/// `storage:` mapping) and `extra` sections; the rest as `common::test_config` sets it.
fn start(dirs: &Dirs, storage_more: &str, extra: &str) -> Service {
    let cfg = format!(
        "{}server: {{ listen: \"127.0.0.1:0\" }}\nlog: {{ level: debug }}\ncpu: {{ capacity: 64 }}\n\
         overload: {{ soft_threshold: 10, hard_threshold: 10 }}\n{extra}\n",
        storage_extra(dirs, storage_more)
    );
    Service::start_with(dirs, &cfg, &[])
}

/// Records `filename` from test sources for about `seconds`, stops it, returns its id.
fn record(svc: &Service, body: Value, seconds: f64) -> String {
    let id = svc.start_egress(&body);
    svc.wait_active(&id);
    std::thread::sleep(Duration::from_secs_f64(seconds)); // media for the file, not sync
    let (s, v) = svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    assert_eq!(s, 200, "stop: {v}");
    id
}

fn fetch_to(moto: &Moto, bucket: &str, key: &str, dir: &Path) -> PathBuf {
    let bytes = moto
        .get(bucket, key)
        .unwrap_or_else(|| panic!("s3://{bucket}/{key} is not in the bucket"));
    let p = dir.join(key.replace('/', "_"));
    std::fs::write(&p, bytes).expect("write fetched object");
    p
}

fn metric(svc: &Service, name: &str) -> f64 {
    let (_, text) = svc.raw("GET", "/metrics", None, &[]);
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_finished_file_is_uploaded_whole_and_decodes_from_the_bucket() {
    let moto = Moto::start();
    moto.create_bucket("rec");
    let dirs = Dirs::new();
    let svc = start(&dirs, "", "");
    // The request names its own target (credentials included): they must never show.
    let mut body = request(
        "track_composite",
        &["test://video?pattern=ball", "test://audio?freq=440"],
        "rooms/a.mp4",
    );
    body["upload"] = moto.target("rec", "up");
    let id = record(&svc, body, 3.0);
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    let f = &done["files"][0];
    assert_eq!(f["location"], "s3://rec/up/rooms/a.mp4", "{done}");
    assert_eq!(f["upload"], "done", "{done}");
    // Uploaded and confirmed: the local copy is gone (storage.keep_local is false).
    assert!(!dirs.output().join("rooms/a.mp4").exists());
    let got = fetch_to(&moto, "rec", "up/rooms/a.mp4", dirs.root.path());
    assert_eq!(
        std::fs::metadata(&got).unwrap().len(),
        f["size_bytes"].as_u64().unwrap()
    );
    let r = decoded(&got);
    assert!(r.video_frames > 10 && r.audio_samples > 0, "{r:?}");
    // Secrets are redacted in the record and absent from the log.
    let shown = done["request"]["upload"]["s3"].clone();
    assert_eq!(shown["secret"], "[redacted]", "{shown}");
    assert_eq!(shown["access_key"], "[redacted]", "{shown}");
    let all = serde_json::to_string(&svc.get("/v1/egress").1).unwrap();
    assert!(!all.contains("test-secret-never-shown"));
    assert!(!svc.log().contains("test-secret-never-shown"));
    assert!(metric(&svc, "egress_upload_bytes_total") >= f["size_bytes"].as_f64().unwrap());
    assert_eq!(metric(&svc, "egress_upload_queue_depth"), 0.0);
    // Nothing is left in the durable queue.
    let left: Vec<_> = std::fs::read_dir(dirs.state().join("uploads"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_store_down_for_20_s_is_retried_until_everything_arrives() {
    let mut moto = Moto::start();
    moto.create_bucket("rec");
    let dirs = Dirs::new();
    let target = serde_json::to_string(&moto.target("rec", "")).unwrap();
    let svc = start(
        &dirs,
        &format!(", upload: {target}, upload_retry_s: 120"),
        "",
    );
    let id = svc.start_egress(&request(
        "track_composite",
        &["test://video?pattern=ball", "test://audio?freq=440"],
        "down.mkv",
    ));
    svc.wait_active(&id);
    // The store goes away while the egress records, and stays away past its end.
    moto.stop();
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3)); // media for the file, not sync
    svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    // While the store is down the egress waits in `ending`, its upload queued or retrying.
    let waiting = wait_for(Duration::from_secs(15), "the upload to be retrying", || {
        let v = svc.egress(&id);
        (v["status"] == "ending" && v["files"][0]["upload"] == "uploading").then_some(v)
    });
    assert!(waiting["ended_at"].is_null(), "{waiting}");
    while down_at.elapsed() < Duration::from_secs(20) {
        let v = svc.egress(&id);
        assert_eq!(v["status"], "ending", "ended while the store was down: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Back on the same port; moto keeps nothing in memory, so the bucket is made again.
    moto.restart();
    moto.create_bucket("rec");
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert_eq!(done["files"][0]["location"], "s3://rec/down.mkv");
    let got = fetch_to(&moto, "rec", "down.mkv", dirs.root.path());
    assert!(decoded(&got).video_frames > 10);
    assert!(metric(&svc, "egress_upload_retries_total") >= 1.0);
    assert_eq!(metric(&svc, "egress_upload_failures_total"), 0.0);
}

#[test]
fn refused_credentials_go_to_the_backup_then_fail_clearly_keeping_the_file() {
    let refusing = Moto::start_refusing();
    let backup = Moto::start();
    backup.create_bucket("spare");
    let bad = serde_json::to_string(&refusing.target("rec", "")).unwrap();
    let good = serde_json::to_string(&backup.target("spare", "b")).unwrap();

    // Primary refuses the key, backup takes it: complete, the object in the backup bucket.
    let dirs = Dirs::new();
    let svc = start(
        &dirs,
        &format!(", upload: {bad}, backup: {good}, upload_retry_s: 60"),
        "",
    );
    let started = Instant::now();
    let id = record(
        &svc,
        request("track", &["test://video?pattern=ball"], "x.mkv"),
        2.0,
    );
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert_eq!(done["files"][0]["location"], "s3://spare/b/x.mkv");
    // Refused credentials are not retried for upload_retry_s (60 s): straight to the backup.
    assert!(started.elapsed() < Duration::from_secs(40));
    assert!(decoded(&fetch_to(&backup, "spare", "b/x.mkv", dirs.root.path())).video_frames > 10);
    drop(svc);

    // Both refuse: failed, a clear error, the local copy kept (and decodable).
    let dirs = Dirs::new();
    let also_bad = serde_json::to_string(&refusing.target("spare", "")).unwrap();
    let svc = start(
        &dirs,
        &format!(", upload: {bad}, backup: {also_bad}, upload_retry_s: 60"),
        "",
    );
    let id = record(
        &svc,
        request("track", &["test://video?pattern=ball"], "y.mkv"),
        2.0,
    );
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "failed", "{done}");
    let err = done["error"].as_str().unwrap();
    assert!(err.starts_with("upload failed: s3://rec: "), "{err}");
    assert!(
        err.contains("InvalidAccessKeyId") && err.contains("backup s3://spare"),
        "{err}"
    );
    assert!(!err.contains("test-secret-never-shown"));
    assert_eq!(done["files"][0]["upload"], "failed", "{done}");
    let local = dirs.output().join("y.mkv");
    assert_eq!(done["files"][0]["location"], local.display().to_string());
    assert!(decoded(&local).video_frames > 10);
    assert!(metric(&svc, "egress_upload_failures_total") >= 1.0);
    assert!(!svc.log().contains("test-secret-never-shown"));
}

/// An H.264/AAC MP4 of about `mb` megabytes made by ffmpeg (a `track` of it remuxes at disk
/// speed: a big recording in seconds).
pub fn big_source(dir: &Path, mb: u32) -> PathBuf {
    let p = dir.join(format!("source-{mb}.mp4"));
    let seconds = 20;
    let kbps = mb * 8 * 1000 / seconds;
    let st = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=640x360:rate=30:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-b:v",
        ])
        .arg(format!("{kbps}k"))
        .args([
            "-minrate",
            &format!("{kbps}k"),
            "-maxrate",
            &format!("{kbps}k"),
        ])
        .args(["-bufsize", &format!("{}k", kbps / 2)])
        // CBR with filler data: the file has the size asked for, whatever the picture.
        .args(["-x264-params", "nal-hrd=cbr"])
        .args(["-c:a", "aac", "-shortest"])
        .arg(&p)
        .status()
        .expect("ffmpeg");
    assert!(st.success(), "ffmpeg could not make the source");
    p
}

#[test]
fn a_service_killed_mid_upload_finishes_the_queue_on_restart_with_one_whole_object() {
    let moto = Moto::start();
    moto.create_bucket("rec");
    // 4 MB/s to the store: a ~40 MB file takes ~10 s, time to kill the service mid-way.
    let slow = Throttle::start(moto.port, 4 << 20);
    let dirs = Dirs::new();
    std::fs::create_dir_all(dirs.root.path().join("src")).unwrap();
    let source = big_source(&dirs.root.path().join("src"), 40);
    let mut target = moto.target("rec", "");
    target["s3"]["endpoint"] = json!(format!("http://127.0.0.1:{}", slow.port));
    let target = serde_json::to_string(&target).unwrap();
    let more = format!(", upload: {target}, upload_concurrency: 1, upload_part_bytes: 5242880");
    let extra = "sources: { allowed_schemes: [test, file] }";
    let mut svc = start(&dirs, &more, extra);
    let body = json!({"type": "track", "sources": [{"uri": format!("file://{}", source.display())}],
                      "output": {"file": {"filename": "big.mp4"}}});
    let id = svc.start_egress(&body);
    // The remux ends by itself ("Source closed"); the upload starts.
    // In flight, and its id in the queue entry (written right after the store created it; a
    // crash between the two leaves the upload to the bucket's lifecycle rule).
    let journaled = || {
        std::fs::read_dir(dirs.state().join("uploads"))
            .ok()?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .find_map(|e| {
                let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                v["multipart"].is_array().then_some(())
            })
    };
    wait_for(
        Duration::from_secs(60),
        "a multipart upload in flight",
        || {
            (moto.open_multipart_uploads("rec") == 1).then_some(())?;
            journaled()
        },
    );
    let v = svc.egress(&id);
    assert_eq!(v["status"], "ending", "{v}");
    assert_eq!(v["files"][0]["upload"], "uploading", "{v}");
    let size = std::fs::metadata(dirs.output().join("big.mp4"))
        .unwrap()
        .len();
    assert!(size > 20 << 20, "{size}");
    svc.signal(libc::SIGKILL);
    svc.wait_exit(Duration::from_secs(10));
    assert!(moto.keys("rec").is_empty(), "nothing complete yet");
    assert_eq!(
        moto.open_multipart_uploads("rec"),
        1,
        "the killed upload is left open"
    );

    let svc = start(&dirs, &more, extra);
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(90));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert_eq!(done["end_reason"], "Source closed", "{done}");
    assert_eq!(done["files"][0]["location"], "s3://rec/big.mp4");
    assert_eq!(done["files"][0]["upload"], "done");
    // One object, whole; the stale multipart upload aborted, none left open.
    assert_eq!(moto.keys("rec"), vec!["big.mp4".to_string()]);
    assert_eq!(moto.open_multipart_uploads("rec"), 0);
    let got = fetch_to(&moto, "rec", "big.mp4", dirs.root.path());
    assert_eq!(std::fs::metadata(&got).unwrap().len(), size);
    let r = decoded(&got);
    assert!(r.last_pts_s.unwrap_or(0.0) > 19.0, "{r:?}");
    assert!(
        svc.log()
            .contains("aborted a multipart upload left by a previous run")
    );
}

/// A tmpfs of `mb` MiB mounted on `dir` for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mb: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "THIS TEST NEEDS ROOT TO MOUNT A TMPFS and could not: {} -- the disk-full behaviour \
             is NOT tested on this machine",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` until `leave` bytes are free.
fn fill_until(dir: &Path, leave: u64) -> PathBuf {
    let p = dir.join("filler.bin");
    let free = egress_engine::store::free_bytes(dir).unwrap();
    let n = free.saturating_sub(leave);
    let f = std::fs::File::create(&p).unwrap();
    use std::io::Write;
    let mut w = std::io::BufWriter::new(f);
    let block = vec![7u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        w.write_all(&block[..k]).unwrap();
        left -= k as u64;
    }
    w.flush().unwrap();
    p
}

#[test]
fn a_tiny_disk_refuses_new_egresses_and_stops_the_fastest_writer_with_a_decodable_file() {
    let dirs = Dirs::new();
    let _tmpfs = Tmpfs::mount(&dirs.output(), 64);
    let mib = 1u64 << 20;
    let svc = start(
        &dirs,
        &format!(
            ", min_free_bytes: {}, stop_free_bytes: {}, disk_horizon_s: 10",
            40 * mib,
            16 * mib
        ),
        "",
    );
    // Below min_free_bytes: refused, reason disk, nothing left behind.
    let filler = fill_until(&dirs.output(), 30 * mib);
    let body = request("track", &["test://video?pattern=snow"], "refused.mkv");
    let (s, v) = svc.post("/v1/egress", &body);
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "no_capacity", "{v}");
    assert_eq!(v["error"]["reason"], "disk", "{v}");
    assert!(!dirs.output().join("refused.mkv").exists());
    // Room again: a fast writer (snow at a high bitrate, ~1 MB/s) starts...
    std::fs::remove_file(&filler).unwrap();
    let mut fast = request("track", &["test://video?pattern=snow"], "fast.mkv");
    fast["video"] = json!({"width": 640, "height": 360, "fps": 30, "bitrate_kbps": 8000});
    let slow_body = request("track", &["test://video?pattern=ball"], "slow.mkv");
    let fast_id = wait_for(
        Duration::from_secs(5),
        "admission once the disk has room",
        || {
            let (s, v) = svc.post("/v1/egress", &fast);
            (s == 201).then(|| v["egress_id"].as_str().unwrap().to_string())
        },
    );
    let slow_id = svc.start_egress(&slow_body);
    svc.wait_active(&fast_id);
    svc.wait_active(&slow_id);
    // ...GET /v1/node shows the disk and what the running egresses are expected to write...
    let node = wait_for(Duration::from_secs(15), "a measured write rate", || {
        let (_, n) = svc.get("/v1/node");
        (n["disk"]["reserved_bytes"].as_u64()? > 0).then_some(n)
    });
    assert!(node["disk"]["free_bytes"].as_u64().unwrap() > 0, "{node}");
    // ...and the disk fills until free space is under stop_free_bytes: the fastest writer is
    // stopped gracefully first, its file finalized.
    let filler = fill_until(&dirs.output(), 24 * mib);
    let done = svc.wait_status(&fast_id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert_eq!(done["end_reason"], "Disk full", "{done}");
    assert!(decoded(&dirs.output().join("fast.mkv")).video_frames > 10);
    // The disk stays under the line, so the next writer goes too, after the first ended.
    let slow = svc.wait_status(&slow_id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(slow["status"], "complete", "{slow}");
    assert_eq!(slow["end_reason"], "Disk full", "{slow}");
    assert!(
        slow["ended_at"].as_u64() > done["ended_at"].as_u64(),
        "{slow}\n{done}"
    );
    assert!(decoded(&dirs.output().join("slow.mkv")).video_frames > 5);
    // The service stays healthy, and takes work again once there is room.
    let (s, _) = svc.get("/healthz");
    assert_eq!(s, 200);
    std::fs::remove_file(&filler).unwrap();
    let again = svc.start_egress(&request(
        "track",
        &["test://video?pattern=ball"],
        "again.mkv",
    ));
    svc.wait_active(&again);
    svc.post(&format!("/v1/egress/{again}/stop"), &json!({}));
    let v = svc.wait_status(&again, &["complete", "failed"], Duration::from_secs(30));
    assert_eq!(v["status"], "complete", "{v}");
}

#[test]
fn retention_deletes_only_old_ended_outputs_and_keeps_the_records() {
    let dirs = Dirs::new();
    let svc = start(&dirs, ", delete_after: 2s", "");
    std::fs::create_dir_all(dirs.output()).unwrap();
    let foreign = dirs.output().join("not-an-egress.mkv");
    std::fs::write(&foreign, b"someone else's file").unwrap();
    // A file and HLS segments: retention deletes both.
    let mut body = request("track", &["test://video?pattern=ball"], "old.mkv");
    body.as_object_mut().unwrap().remove("output");
    body["outputs"] = json!([{"file": {"filename": "old.mkv"}},
                             {"segments": {"prefix": "hls/old", "segment_duration_s": 1}}]);
    let old = record(&svc, body, 2.5);
    svc.wait_status(&old, &["complete"], Duration::from_secs(30));
    assert!(dirs.output().join("old.mkv").exists());
    let hls = |d: &Path| -> usize {
        std::fs::read_dir(d.join("hls"))
            .map(|rd| rd.flatten().count())
            .unwrap_or(0)
    };
    assert!(hls(&dirs.output()) >= 2, "segments and a playlist");
    // One still recording, however old its start.
    let live = svc.start_egress(&request(
        "track",
        &["test://video?pattern=ball"],
        "live.mkv",
    ));
    svc.wait_active(&live);
    let ended = Instant::now();
    let gone = svc.wait_status(&old, &["complete"], Duration::from_secs(1));
    let v = wait_for(
        Duration::from_secs(15),
        "retention to delete the old output",
        || {
            let v = svc.egress(&old);
            v["deleted_at"].as_u64().map(|_| v)
        },
    );
    assert!(
        ended.elapsed() >= Duration::from_secs(1),
        "deleted before delete_after"
    );
    assert!(v["deleted_at"].as_u64().unwrap() >= gone["ended_at"].as_u64().unwrap() + 2000);
    assert!(!dirs.output().join("old.mkv").exists());
    assert_eq!(hls(&dirs.output()), 0, "segments and playlists deleted");
    assert_eq!(v["status"], "complete", "the record stays: {v}");
    assert!(dirs.output().join("live.mkv").exists());
    assert!(foreign.exists());
    assert_eq!(svc.egress(&live)["status"], "active");
    assert!(svc.egress(&live)["deleted_at"].is_null());
    svc.post(&format!("/v1/egress/{live}/stop"), &json!({}));
    svc.wait_status(&live, &["complete"], Duration::from_secs(30));
}

#[test]
fn a_recording_finalized_while_the_service_was_dead_is_uploaded_on_restart() {
    let moto = Moto::start();
    moto.create_bucket("rec");
    let dirs = Dirs::new();
    let mut svc = start(&dirs, "", "");
    // The request's own target (with credentials) must survive the crash: records only show it
    // redacted.
    let mut body = request("track", &["test://video?pattern=ball"], "orphan.mkv");
    body["upload"] = moto.target("rec", "o");
    body.as_object_mut().unwrap().remove("output");
    body["outputs"] = json!([{"file": {"filename": "orphan.mkv"}},
                             {"segments": {"prefix": "hls/orphan", "segment_duration_s": 1}},
                             {"images": {"prefix": "img/orphan", "interval_s": 1, "width": 160, "height": 120}}]);
    let id = svc.start_egress(&body);
    svc.wait_active(&id);
    wait_for(Duration::from_secs(30), "media in the file", || {
        let len = std::fs::metadata(dirs.output().join("orphan.mkv"))
            .ok()?
            .len();
        (len > 100_000).then_some(())
    });
    svc.signal(libc::SIGKILL);
    svc.wait_exit(Duration::from_secs(10));
    // The handler finalizes on its own; the next run settles the egress and uploads its file.
    let svc = start(&dirs, "", "");
    let done = svc.wait_status(
        &id,
        &["complete", "failed", "aborted"],
        Duration::from_secs(60),
    );
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert_eq!(done["end_reason"], "Service stopped", "{done}");
    assert_eq!(
        done["files"][0]["location"], "s3://rec/o/orphan.mkv",
        "{done}"
    );
    assert_eq!(done["files"][0]["upload"], "done", "{done}");
    let got = fetch_to(&moto, "rec", "o/orphan.mkv", dirs.root.path());
    assert!(decoded(&got).video_frames > 10);
    assert!(!svc.log().contains("test-secret-never-shown"));
    // Everything a normal finish delivers: every segment and the final playlist, every image,
    // the manifest (a previous run uploaded only the file).
    let text = String::from_utf8(moto.get("rec", "o/hls/orphan.m3u8").expect("playlist")).unwrap();
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
    let segs: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
    assert_eq!(
        segs.len() as u64,
        done["segments"]["count"].as_u64().unwrap(),
        "{text}
{done}"
    );
    assert!(segs.len() >= 2, "{text}");
    for seg in &segs {
        assert!(moto.get("rec", &format!("o/hls/{seg}")).is_some(), "{seg}");
    }
    assert_eq!(done["segments"]["upload"], "done", "{done}");
    let images = done["images"]["count"].as_u64().unwrap();
    assert!(images >= 2, "{done}");
    for n in 0..images {
        let key = format!("o/img/orphan_{n:05}.jpg");
        assert!(moto.get("rec", &key).is_some(), "{key}");
    }
    assert_eq!(done["images"]["upload"], "done", "{done}");
    let key = format!("o/{id}.json");
    assert_eq!(done["manifest"], format!("s3://rec/{key}"), "{done}");
    let m: Value = serde_json::from_slice(&moto.get("rec", &key).expect("manifest")).unwrap();
    assert_eq!(m["status"], "complete", "{m}");
}

#[test]
fn hls_segments_go_up_as_they_close_and_the_bucket_playlist_is_always_playable() {
    let moto = Moto::start();
    moto.create_bucket("rec");
    let dirs = Dirs::new();
    let target = serde_json::to_string(&moto.target("rec", "live")).unwrap();
    let svc = start(&dirs, &format!(", upload: {target}"), "");
    let mut body = request("track", &["test://video?pattern=ball"], "show.mkv");
    body.as_object_mut().unwrap().remove("output");
    body["outputs"] = json!([{"file": {"filename": "show.mkv"}},
                             {"segments": {"prefix": "hls/show", "segment_duration_s": 1}}]);
    let id = svc.start_egress(&body);
    svc.wait_active(&id);
    // While it records: each playlist the bucket holds names only segments the bucket holds.
    let mut checked = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while checked < 3 && Instant::now() < deadline {
        if let Some(p) = moto.get("rec", "live/hls/show.m3u8") {
            let text = String::from_utf8(p).unwrap();
            let segs: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
            if !segs.is_empty() {
                for s in &segs {
                    assert!(
                        moto.get("rec", &format!("live/hls/{s}")).is_some(),
                        "the bucket's playlist names {s}, which is not in the bucket:\n{text}"
                    );
                }
                checked = segs.len();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(checked >= 3, "segments went up while recording");
    svc.post(&format!("/v1/egress/{id}/stop"), &json!({}));
    let done = svc.wait_status(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done["status"], "complete", "{done}\n{}", svc.log());
    assert_eq!(done["segments"]["upload"], "done", "{done}");
    assert_eq!(
        done["segments"]["location"], "s3://rec/live/hls/show.m3u8",
        "{done}"
    );
    assert_eq!(
        done["files"][0]["location"], "s3://rec/live/show.mkv",
        "{done}"
    );
    let text = String::from_utf8(moto.get("rec", "live/hls/show.m3u8").unwrap()).unwrap();
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
    let segs: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
    assert_eq!(
        segs.len() as u64,
        done["segments"]["count"].as_u64().unwrap(),
        "{text}"
    );
    for s in &segs {
        assert!(moto.get("rec", &format!("live/hls/{s}")).is_some(), "{s}");
    }
    // The manifest went up last, saying where everything is.
    let key = format!("live/{id}.json");
    assert_eq!(done["manifest"], format!("s3://rec/{key}"), "{done}");
    let m: Value = serde_json::from_slice(&moto.get("rec", &key).expect("manifest")).unwrap();
    assert_eq!(m["status"], "complete", "{m}");
    assert_eq!(m["files"][0]["location"], "s3://rec/live/show.mkv", "{m}");
    assert_eq!(m["segments"]["upload"], "done", "{m}");
    assert!(!dirs.output().join(format!("{id}.json")).exists());
    let first = fetch_to(
        &moto,
        "rec",
        &format!("live/hls/{}", segs[0]),
        dirs.root.path(),
    );
    assert!(decoded(&first).video_frames > 5);
    // Uploaded and confirmed: the local segments are gone once the egress is finished.
    let left = std::fs::read_dir(dirs.output().join("hls"))
        .map(|rd| rd.flatten().count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}
