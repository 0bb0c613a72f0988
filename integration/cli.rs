//! The CLI client (`egress-engine egress|node|fleet`) driven as a user runs it: the real binary
//! as a separate process against a real node (and a real two-node fleet on a real Redis), with
//! `EGRESS_URL`/`EGRESS_TOKEN` or the flags. What is asserted is what a user sees: exit codes,
//! tables, parseable `--json`, the API's error code on stderr.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const TOKEN: &str = "cli-test-token";

fn node_with_token(dirs: &Dirs) -> Service {
    Service::start(
        dirs,
        &format!("server: {{ listen: \"127.0.0.1:0\", api_token: \"{TOKEN}\" }}"),
    )
}

/// The CLI against `svc`, with the service's URL and token in the environment (as an operator
/// sets them once), and nothing else of the caller's `EGRESS_*`.
fn cli_cmd(svc: &Service, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("EGRESS_URL")
        .env_remove("EGRESS_TOKEN")
        .env("EGRESS_URL", &svc.base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = &svc.token {
        cmd.env("EGRESS_TOKEN", t);
    }
    cmd
}

fn cli(svc: &Service, args: &[&str]) -> Output {
    cli_cmd(svc, args).output().expect("run the CLI")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the CLI, asserts it exited 0 and returns its stdout.
fn ok(svc: &Service, args: &[&str]) -> String {
    let o = cli(svc, args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "egress-engine {args:?}: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs the CLI with `--json`, asserts it exited 0 and parses its stdout.
fn ok_json(svc: &Service, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = ok(svc, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Waits for a spawned CLI process to exit; returns its output.
fn finished(mut child: Child, timeout: Duration, what: &str) -> Output {
    wait_for(timeout, what, || child.try_wait().ok().flatten());
    child.wait_with_output().expect("output")
}

#[test]
fn cli_starts_lists_watches_and_stops_an_egress() {
    let dirs = Dirs::new();
    let svc = node_with_token(&dirs);

    // Start with flags only.
    let started = ok_json(
        &svc,
        &[
            "egress",
            "start",
            "--type",
            "track",
            "--source",
            "test://av?pattern=ball",
            "--file",
            "cli/a.mp4",
            "--width",
            "320",
            "--height",
            "240",
            "--fps",
            "15",
        ],
    );
    let id = started["egress_id"]
        .as_str()
        .expect("egress_id")
        .to_string();
    assert_eq!(started["type"], "track");
    assert_eq!(started["request"]["video"]["width"], 320);
    assert_eq!(
        started["request"]["output"]["file"]["filename"],
        "cli/a.mp4"
    );

    // The list, as a table and as JSON.
    let table = ok(&svc, &["egress", "list"]);
    let header = table.lines().next().unwrap_or_default();
    for col in [
        "EGRESS", "TYPE", "STATUS", "NODE", "ELAPSED", "SIZE", "FILE",
    ] {
        assert!(header.contains(col), "{table}");
    }
    let line = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("track") && line.contains("cli/a.mp4"),
        "{line}"
    );
    let list = ok_json(&svc, &["egress", "list", "--status", "starting,active"]);
    assert_eq!(list["egresses"][0]["egress_id"], id.as_str(), "{list}");
    assert_eq!(
        ok_json(&svc, &["egress", "list", "--status", "complete"])["egresses"],
        serde_json::json!([])
    );

    // While it records, get shows it active with the file growing.
    svc.wait_active(&id);
    let size = wait_for(
        Duration::from_secs(20),
        "the file to grow while recording",
        || {
            let v = ok_json(&svc, &["egress", "get", &id]);
            let s = v["files"][0]["size_bytes"].as_u64().unwrap_or(0);
            (v["status"] == "active" && s > 0).then_some(s)
        },
    );
    assert!(size > 0);
    let shown = ok(&svc, &["egress", "get", &id]);
    assert!(
        shown.contains("status:") && shown.contains("active"),
        "{shown}"
    );
    assert!(shown.contains("cli/a.mp4"), "{shown}");

    // Watch follows it; a stop from another CLI call ends it complete: watch exits 0.
    let watch = cli_cmd(&svc, &["egress", "watch", &id, "--interval-ms", "200"])
        .spawn()
        .expect("spawn watch");
    let stopped = ok_json(&svc, &["egress", "stop", &id]);
    assert_eq!(stopped["egress_id"], id.as_str());
    let out = finished(
        watch,
        Duration::from_secs(60),
        "watch to exit after the stop",
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{so}\n{se}");
    assert!(
        so.lines()
            .all(|l| l.starts_with(&id) && l.contains("elapsed") && l.contains("size")),
        "{so}"
    );
    assert!(
        so.lines().last().unwrap_or_default().contains("complete"),
        "{so}"
    );
    assert!(se.contains("ended complete (StopEgress API)"), "{se}");

    // The finished record: complete, its file there and decodable.
    let end = ok_json(&svc, &["egress", "get", &id]);
    assert_eq!(end["status"], "complete", "{end}");
    assert!(
        end["files"][0]["size_bytes"].as_u64().unwrap_or(0) > 0,
        "{end}"
    );
    discovered_duration(&dirs.output().join("cli/a.mp4"));

    // Stopping it again is the API's conflict, with its code on stderr and exit 1.
    let again = cli(&svc, &["egress", "stop", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("conflict"), "{}", stderr(&again));
}

#[test]
fn cli_kill_ends_an_egress_and_watch_exits_non_zero() {
    let dirs = Dirs::new();
    let svc = node_with_token(&dirs);

    // The request as JSON on stdin, a flag overriding its file name.
    let body = request("track", &["test://av"], "from-body.mp4");
    let mut child = cli_cmd(
        &svc,
        &[
            "egress",
            "start",
            "--body",
            "-",
            "--file",
            "cli/k.mkv",
            "--json",
        ],
    )
    .stdin(Stdio::piped())
    .spawn()
    .expect("spawn start");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.to_string().as_bytes())
        .expect("write body");
    let out = finished(child, Duration::from_secs(30), "start to answer");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let started: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = started["egress_id"].as_str().expect("id").to_string();
    assert_eq!(
        started["request"]["output"]["file"]["filename"],
        "cli/k.mkv"
    );
    assert_eq!(
        started["request"]["video"]["width"], 320,
        "the body's video is kept"
    );

    svc.wait_active(&id);
    let killed = ok(&svc, &["egress", "kill", &id]);
    assert!(killed.contains(&id), "{killed}");
    svc.wait_status(&id, &["aborted"], Duration::from_secs(20));

    let w = cli(&svc, &["egress", "watch", &id]);
    assert_eq!(w.status.code(), Some(1), "{}", stdout(&w));
    assert!(stdout(&w).contains("aborted"), "{}", stdout(&w));
    assert!(
        stderr(&w).contains("ended aborted (KillEgress API)"),
        "{}",
        stderr(&w)
    );
}

#[test]
fn cli_reports_api_errors_and_needs_the_token() {
    let dirs = Dirs::new();
    let svc = node_with_token(&dirs);

    // With the token: the node's state, as a table and as JSON.
    let state = ok_json(&svc, &["node"]);
    assert_eq!(state["node_id"], svc.node_id.as_str());
    let table = ok(&svc, &["node"]);
    assert!(
        table.contains(&svc.node_id) && table.contains("room_composite"),
        "{table}"
    );
    // The flags work as the environment does.
    let flags = Command::new(bin())
        .args(["node", "--json", "--url", &svc.base, "--token", TOKEN])
        .env_remove("EGRESS_URL")
        .env_remove("EGRESS_TOKEN")
        .output()
        .expect("run");
    assert_eq!(flags.status.code(), Some(0), "{}", stderr(&flags));

    // Without the token, or with a wrong one: the API's 401, code on stderr, exit 1.
    for token in [None, Some("wrong")] {
        let mut cmd = cli_cmd(&svc, &["egress", "list"]);
        cmd.env_remove("EGRESS_TOKEN");
        if let Some(t) = token {
            cmd.env("EGRESS_TOKEN", t);
        }
        let o = cmd.output().expect("run");
        assert_eq!(o.status.code(), Some(1), "{token:?}");
        assert!(stderr(&o).contains("unauthorized"), "{}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
    // The probes need no token.
    let mut health = cli_cmd(&svc, &["node", "health"]);
    health.env_remove("EGRESS_TOKEN");
    assert_eq!(health.output().expect("run").status.code(), Some(0));

    // API errors: the code and message on stderr, exit 1.
    for (args, code) in [
        (vec!["egress", "get", "EG_000000000000"], "not_found"),
        (
            vec![
                "egress",
                "start",
                "--type",
                "bogus",
                "--source",
                "test://av",
                "--file",
                "x.mp4",
            ],
            "unknown_type",
        ),
        (
            vec![
                "egress",
                "start",
                "--type",
                "track",
                "--source",
                "test://av",
                "--file",
                "../x.mp4",
            ],
            "invalid_field",
        ),
        (vec!["fleet", "nodes"], "not_found"),
    ] {
        let o = cli(&svc, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!("error: {code}: ")),
            "{args:?}: {err}"
        );
    }
    // A request the CLI can tell is incomplete never reaches the node: usage, exit 2.
    let o = cli(
        &svc,
        &["egress", "start", "--type", "track", "--file", "x.mp4"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--source"), "{}", stderr(&o));
    // No node there: exit 3.
    let o = Command::new(bin())
        .args([
            "node",
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach"));
}

#[test]
fn cli_drain_waits_until_the_node_is_idle() {
    let dirs = Dirs::new();
    let mut svc = node_with_token(&dirs);
    let id = svc.start_egress(&request("track", &["test://av"], "drain.mp4"));
    svc.wait_active(&id);

    // What a preStop hook runs: it returns only once no egress runs.
    let drain = cli_cmd(&svc, &["node", "drain", "--wait", "--interval-ms", "100"])
        .spawn()
        .expect("spawn drain");
    wait_for(Duration::from_secs(10), "the node to drain", || {
        let (s, v) = svc.get("/v1/node");
        (s == 200 && v["draining"] == true).then_some(())
    });
    let (s, _) = svc.get("/readyz");
    assert_eq!(s, 503, "a draining node is not ready");
    let mut drain = drain;
    assert!(
        drain.try_wait().expect("wait").is_none(),
        "drain --wait returned while an egress runs"
    );

    ok(&svc, &["egress", "stop", &id]);
    let out = finished(drain, Duration::from_secs(60), "drain --wait to return");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let so = stdout(&out);
    assert!(so.contains("waiting: 1 egress(es) still running"), "{so}");
    assert!(so.contains("drained:"), "{so}");
    // ...and the drained node exits by itself once idle.
    assert_eq!(svc.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn cli_lists_the_fleet() {
    let redis = Redis::start();
    let dirs = [Dirs::new(), Dirs::new()];
    let cfg = format!(
        "fleet: {{ redis_url: \"{}\", heartbeat_ms: 250, node_ttl_ms: 5000 }}",
        redis.url()
    );
    let a = Service::start(&dirs[0], &cfg);
    let b = Service::start(&dirs[1], &cfg);
    let v = wait_for(Duration::from_secs(10), "both nodes in the fleet", || {
        let v = ok_json(&a, &["fleet", "nodes"]);
        (v["nodes"].as_array().map_or(0, Vec::len) == 2).then_some(v)
    });
    let ids: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert!(
        ids.contains(&a.node_id.as_str()) && ids.contains(&b.node_id.as_str()),
        "{v}"
    );

    // `fleet`: the node table, then capacity (or a clear note where the node has none).
    let out = ok(&a, &["fleet"]);
    let header = out.lines().next().unwrap_or_default();
    for col in [
        "NODE", "URL", "LOAD", "CORES", "FREE", "DRAINING", "RUNNING",
    ] {
        assert!(header.contains(col), "{out}");
    }
    assert!(
        out.contains(&a.node_id) && out.contains(&b.node_id),
        "{out}"
    );
    assert!(out.contains("capacity"), "{out}");
    let both = ok_json(&a, &["fleet"]);
    assert_eq!(
        both["nodes"]["nodes"].as_array().map(Vec::len),
        Some(2),
        "{both}"
    );
    assert!(both["capacity"]["desired_nodes"].is_number(), "{both}");
}

/// The README's main example, a body with `"outputs"` (a file and HLS), started from a file
/// with `--body`: the CLI used to refuse it ("give --file (or --body with "output")").
#[test]
fn cli_starts_the_readme_outputs_example_from_a_body_file() {
    let dirs = Dirs::new();
    let svc = node_with_token(&dirs);
    let body = serde_json::json!({
        "type": "participant",
        "sources": [{"uri": "test://av"}],
        "outputs": [{"file": {"filename": "readme.mp4"}},
                    {"segments": {"prefix": "readme", "segment_duration_s": 2}}],
        "estimated_cpu": 0.2,
    });
    let path = dirs.root.path().join("request.json");
    std::fs::write(&path, body.to_string()).expect("request.json");
    let out = cli(
        &svc,
        &[
            "egress",
            "start",
            "--body",
            path.to_str().expect("path"),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let started: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = started["egress_id"].as_str().expect("id").to_string();
    assert_eq!(started["segments"]["playlist"], "readme.m3u8", "{started}");
    svc.wait_active(&id);
    ok(&svc, &["egress", "stop", &id]);
    svc.wait_status(&id, &["complete"], Duration::from_secs(20));
}
