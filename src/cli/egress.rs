//! `egress-engine egress start|list|get|stop|kill|watch`.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::table::{bytes, duration, fields, number, table, utc};
use super::{CliError, Client, Connection, print_json};
use crate::model::now_ms;

#[derive(Subcommand, Debug)]
pub enum EgressCommand {
    /// Start an egress from a JSON request (--body) and/or flags; flags override the body.
    Start(StartArgs),
    /// List egresses (from a fleet node: the whole fleet's).
    List {
        /// Only these statuses, comma-separated (starting, active, ending, complete, failed,
        /// aborted, limit_reached).
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
    },
    /// Show one egress.
    Get { id: String },
    /// Stop an egress gracefully (its file is finalized).
    Stop { id: String },
    /// Kill an egress's handler at once.
    Kill { id: String },
    /// Follow an egress until it ends: status, elapsed time, file size. Exits 0 when the
    /// recording is complete (or reached its max duration), 1 when it failed or was aborted.
    Watch {
        id: String,
        /// Milliseconds between two looks.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
        interval_ms: u64,
    },
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// The request as JSON (the body of POST /v1/egress): a file, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub body: Option<String>,
    /// Egress type: track, track_composite, participant, room_composite.
    #[arg(long = "type", value_name = "TYPE")]
    pub egress_type: Option<String>,
    /// A source URI; repeat for several (they replace the body's sources).
    #[arg(long = "source", value_name = "URI")]
    pub sources: Vec<String>,
    /// Output file, relative to the node's storage.output_dir (.mp4, .mkv, .webm, .ogg).
    #[arg(long = "file", value_name = "NAME")]
    pub file: Option<String>,
    /// Stop the egress after this many seconds (status limit_reached).
    #[arg(long)]
    pub max_duration_s: Option<f64>,
    /// CPU cost for admission, in cores (overrides the type's configured cost).
    #[arg(long)]
    pub estimated_cpu: Option<f64>,
    /// Video width.
    #[arg(long)]
    pub width: Option<u32>,
    /// Video height.
    #[arg(long)]
    pub height: Option<u32>,
    /// Video frame rate.
    #[arg(long)]
    pub fps: Option<u32>,
}

pub fn run(conn: &Connection, cmd: EgressCommand) -> Result<(), CliError> {
    let client = Client::new(conn)?;
    match cmd {
        EgressCommand::Start(args) => {
            let body = start_body(&args, &mut std::io::stdin())?;
            show(conn, &client.post("/v1/egress", Some(&body))?)
        }
        EgressCommand::List { status } => {
            let path = if status.is_empty() {
                "/v1/egress".to_string()
            } else {
                format!("/v1/egress?status={}", status.join(","))
            };
            let v = client.get(&path)?;
            if conn.json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items(&v["egresses"]).iter().map(row).collect();
            if rows.is_empty() {
                println!("no egresses");
            } else {
                println!(
                    "{}",
                    table(
                        &[
                            "EGRESS",
                            "TYPE",
                            "STATUS",
                            "NODE",
                            "CREATED (UTC)",
                            "ELAPSED",
                            "SIZE",
                            "FILE"
                        ],
                        &rows
                    )
                );
            }
            if let Some(p) = v["partial"].as_str() {
                eprintln!("note: {p}");
            }
            Ok(())
        }
        EgressCommand::Get { id } => show(conn, &client.get(&egress_path(&id, "")?)?),
        EgressCommand::Stop { id } => show(conn, &client.post(&egress_path(&id, "/stop")?, None)?),
        EgressCommand::Kill { id } => show(conn, &client.post(&egress_path(&id, "/kill")?, None)?),
        EgressCommand::Watch { id, interval_ms } => watch(conn, &client, &id, interval_ms),
    }
}

/// `/v1/egress/{id}{rest}`, refusing an id that would change the path.
fn egress_path(id: &str, rest: &str) -> Result<String, CliError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(CliError::Usage(format!(
            "'{id}' is not an egress id (EG_...)"
        )));
    }
    Ok(format!("/v1/egress/{id}{rest}"))
}

/// The request: the --body JSON object (or an empty one), then each flag given.
pub fn start_body(args: &StartArgs, stdin: &mut dyn Read) -> Result<Value, CliError> {
    let mut body: Map<String, Value> = match &args.body {
        None => Map::new(),
        Some(src) => {
            let mut text = String::new();
            let read = if src == "-" {
                stdin.read_to_string(&mut text).map(|_| ())
            } else {
                std::fs::read_to_string(src).map(|t| text = t)
            };
            read.map_err(|e| CliError::Usage(format!("--body {src}: {e}")))?;
            match serde_json::from_str(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(CliError::Usage(format!("--body {src}: not a JSON object"))),
                Err(e) => return Err(CliError::Usage(format!("--body {src}: invalid JSON: {e}"))),
            }
        }
    };
    if let Some(t) = &args.egress_type {
        body.insert("type".into(), json!(t));
    }
    if !args.sources.is_empty() {
        let sources: Vec<Value> = args.sources.iter().map(|u| json!({ "uri": u })).collect();
        body.insert("sources".into(), Value::Array(sources));
    }
    if let Some(f) = &args.file {
        set_file(&mut body, f);
    }
    if let Some(d) = args.max_duration_s {
        body.insert("max_duration_s".into(), json!(d));
    }
    if let Some(c) = args.estimated_cpu {
        body.insert("estimated_cpu".into(), json!(c));
    }
    for (key, v) in [
        ("width", args.width),
        ("height", args.height),
        ("fps", args.fps),
    ] {
        if let Some(v) = v {
            let video = body.entry("video").or_insert_with(|| json!({}));
            if let Value::Object(m) = video {
                m.insert(key.into(), json!(v));
            }
        }
    }
    for (key, flag) in [("type", "--type"), ("sources", "--source")] {
        if !body.contains_key(key) {
            return Err(CliError::Usage(format!(
                "the request has no {key}: give {flag} (or --body with \"{key}\")"
            )));
        }
    }
    if !body.contains_key("output") && !body.contains_key("outputs") {
        return Err(CliError::Usage(
            "the request has no outputs: give --file (or --body with \"outputs\" or \"output\")"
                .into(),
        ));
    }
    Ok(Value::Object(body))
}

/// `--file`: the file output of the request, in whichever form the body gives its outputs
/// (`"outputs": [...]`, or the older `"output": {"file": ...}`).
fn set_file(body: &mut Map<String, Value>, filename: &str) {
    let file = json!({ "filename": filename });
    if let Some(Value::Array(outputs)) = body.get_mut("outputs") {
        match outputs.iter_mut().find(|o| o.get("file").is_some()) {
            Some(o) => o["file"] = file,
            None => outputs.push(json!({ "file": file })),
        }
    } else {
        body.insert("output".into(), json!({ "file": file }));
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Time recorded so far (or in all, once ended): from start (or creation) to end (or now).
fn elapsed_ms(e: &Value) -> u64 {
    let from = e["started_at"]
        .as_u64()
        .or(e["created_at"].as_u64())
        .unwrap_or(0);
    let to = e["ended_at"].as_u64().unwrap_or_else(now_ms);
    to.saturating_sub(from)
}

fn size(e: &Value) -> u64 {
    items(&e["files"])
        .iter()
        .filter_map(|f| f["size_bytes"].as_u64())
        .sum()
}

fn row(e: &Value) -> Vec<String> {
    let files: Vec<&str> = items(&e["files"])
        .iter()
        .filter_map(|f| f["filename"].as_str())
        .collect();
    let file = if files.is_empty() {
        e["request"]["output"]["file"]["filename"]
            .as_str()
            .unwrap_or("")
            .to_string()
    } else {
        files.join(",")
    };
    vec![
        e["egress_id"].as_str().unwrap_or("").to_string(),
        e["type"].as_str().unwrap_or("").to_string(),
        e["status"].as_str().unwrap_or("").to_string(),
        e["node_id"].as_str().unwrap_or("").to_string(),
        e["created_at"].as_u64().map(utc).unwrap_or_default(),
        duration(elapsed_ms(e)),
        bytes(size(e)),
        file,
    ]
}

/// One egress: its JSON with --json, else its fields and files.
fn show(conn: &Connection, e: &Value) -> Result<(), CliError> {
    if conn.json {
        print_json(e);
        return Ok(());
    }
    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
    let t = |k: &str| e[k].as_u64().map(utc).unwrap_or_default();
    let sources: Vec<&str> = items(&e["request"]["sources"])
        .iter()
        .filter_map(|s| s["uri"].as_str())
        .collect();
    println!(
        "{}",
        fields(&[
            ("egress", s("egress_id")),
            ("type", s("type")),
            ("status", s("status")),
            ("node", s("node_id")),
            ("created", t("created_at")),
            ("started", t("started_at")),
            ("ended", t("ended_at")),
            ("elapsed", duration(elapsed_ms(e))),
            ("end reason", s("end_reason")),
            ("error", s("error")),
            (
                "cpu cost",
                e["cpu_cost"]
                    .as_f64()
                    .map(|c| format!("{} cores", number(c)))
                    .unwrap_or_default()
            ),
            (
                "handler pid",
                e["handler_pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_default()
            ),
            ("placement", s("placement")),
            ("sources", sources.join(" ")),
        ])
    );
    let files: Vec<Vec<String>> = items(&e["files"])
        .iter()
        .map(|f| {
            vec![
                f["filename"].as_str().unwrap_or("").to_string(),
                bytes(f["size_bytes"].as_u64().unwrap_or(0)),
                f["duration_s"]
                    .as_f64()
                    .map(|d| format!("{d:.1} s"))
                    .unwrap_or_default(),
                f["location"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if !files.is_empty() {
        println!(
            "\n{}",
            table(&["FILE", "SIZE", "DURATION", "LOCATION"], &files)
        );
    }
    Ok(())
}

/// Polls the egress until its status is final; one line per look (rewritten in place on a
/// terminal), or one JSON record per line with --json.
fn watch(conn: &Connection, client: &Client, id: &str, interval_ms: u64) -> Result<(), CliError> {
    let path = egress_path(id, "")?;
    let tty = std::io::stdout().is_terminal() && !conn.json;
    let mut out = std::io::stdout();
    let mut last_status = String::new();
    let mut last_line = String::new();
    loop {
        let e = client.get(&path)?;
        let status = e["status"].as_str().unwrap_or("?").to_string();
        if conn.json {
            let _ = writeln!(out, "{e}");
        } else {
            let line = format!(
                "{id}  {status:<13}  elapsed {:>8}  size {:>10}",
                duration(elapsed_ms(&e)),
                bytes(size(&e))
            );
            if tty {
                // Keep the line of each status change; rewrite the current one in place.
                if !last_status.is_empty() && status != last_status {
                    let _ = writeln!(out);
                }
                let _ = write!(out, "\r{line}\x1b[K");
            } else if line != last_line {
                let _ = writeln!(out, "{line}");
            }
            last_line = line;
        }
        let _ = out.flush();
        last_status = status.clone();
        if is_final(&status) {
            if tty {
                let _ = writeln!(out);
            }
            return outcome(&e);
        }
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
}

fn is_final(status: &str) -> bool {
    crate::model::EgressStatus::ALL
        .iter()
        .any(|s| s.as_str() == status && s.is_final())
}

/// Complete or limit_reached is a recording to keep (exit 0); failed or aborted is not.
fn outcome(e: &Value) -> Result<(), CliError> {
    let status = e["status"].as_str().unwrap_or("");
    let why = [e["end_reason"].as_str(), e["error"].as_str()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": ");
    let msg = format!(
        "{} ended {status}{}",
        e["egress_id"].as_str().unwrap_or(""),
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        }
    );
    match status {
        "complete" | "limit_reached" => {
            eprintln!("{msg}");
            Ok(())
        }
        _ => Err(CliError::EndedBadly(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> StartArgs {
        StartArgs {
            body: None,
            egress_type: None,
            sources: vec![],
            file: None,
            max_duration_s: None,
            estimated_cpu: None,
            width: None,
            height: None,
            fps: None,
        }
    }

    #[test]
    fn flags_make_a_request() {
        let mut a = args();
        a.egress_type = Some("room_composite".into());
        a.sources = vec!["test://av".into(), "test://video?pattern=ball".into()];
        a.file = Some("r/a.mp4".into());
        a.max_duration_s = Some(5.0);
        a.width = Some(640);
        let b = start_body(&a, &mut std::io::empty()).unwrap();
        assert_eq!(
            b,
            json!({"type": "room_composite",
                   "sources": [{"uri": "test://av"}, {"uri": "test://video?pattern=ball"}],
                   "output": {"file": {"filename": "r/a.mp4"}},
                   "max_duration_s": 5.0, "video": {"width": 640}})
        );
    }

    #[test]
    fn flags_override_the_body_from_stdin() {
        let mut a = args();
        a.body = Some("-".into());
        a.file = Some("b.mkv".into());
        a.fps = Some(25);
        let mut stdin = r#"{"type":"track","sources":[{"uri":"test://av"}],
            "output":{"file":{"filename":"a.mp4"}},"video":{"width":320}}"#
            .as_bytes();
        let b = start_body(&a, &mut stdin).unwrap();
        assert_eq!(b["output"]["file"]["filename"], "b.mkv");
        assert_eq!(b["video"], json!({"width": 320, "fps": 25}));
        assert_eq!(b["type"], "track");
    }

    #[test]
    fn a_body_with_outputs_is_taken_as_it_is_and_file_sets_its_file() {
        let mut a = args();
        a.body = Some("-".into());
        let readme = r#"{"type":"participant","sources":[{"uri":"test://av"}],
            "outputs":[{"file":{"filename":"a.mp4"}},{"segments":{"prefix":"a"}}]}"#;
        let b = start_body(&a, &mut readme.as_bytes()).unwrap();
        assert_eq!(b["outputs"][1]["segments"]["prefix"], "a");
        assert!(b.get("output").is_none(), "{b}");
        a.file = Some("b.mkv".into());
        let b = start_body(&a, &mut readme.as_bytes()).unwrap();
        assert_eq!(b["outputs"][0]["file"]["filename"], "b.mkv");
        let only_hls =
            r#"{"type":"track","sources":[{"uri":"test://av"}],"outputs":[{"segments":{}}]}"#;
        let b = start_body(&a, &mut only_hls.as_bytes()).unwrap();
        assert_eq!(b["outputs"][1]["file"]["filename"], "b.mkv");
    }

    #[test]
    fn a_request_missing_a_part_is_a_usage_error() {
        let mut a = args();
        a.egress_type = Some("track".into());
        let Err(CliError::Usage(m)) = start_body(&a, &mut std::io::empty()) else {
            panic!("accepted");
        };
        assert!(m.contains("--source"), "{m}");
        a.body = Some("-".into());
        assert!(matches!(
            start_body(&a, &mut "[1]".as_bytes()),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn ids_cannot_change_the_path() {
        assert_eq!(
            egress_path("EG_abc", "/stop").unwrap(),
            "/v1/egress/EG_abc/stop"
        );
        for bad in ["", "../node/drain", "EG_a?x=1", "EG a"] {
            assert!(egress_path(bad, "").is_err(), "{bad}");
        }
    }

    #[test]
    fn only_complete_recordings_exit_zero() {
        assert!(outcome(&json!({"status": "complete"})).is_ok());
        assert!(outcome(&json!({"status": "limit_reached"})).is_ok());
        let e = outcome(&json!({"egress_id": "EG_1", "status": "failed", "error": "boom"}))
            .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "EG_1 ended failed (boom)");
        assert!(outcome(&json!({"status": "aborted"})).is_err());
    }
}
