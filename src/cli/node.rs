//! `egress-engine node` (this node's state), `node drain [--wait]`, `node health`, `node ready`,
//! `node costs`.

use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::Value;

use super::table::{cell, fields, table};
use super::{CliError, Client, Connection, print_json};

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// The node's capacity, load, free CPU and per-type counts (the default).
    Show,
    /// Drain: the node takes no new egress and exits once its egresses have ended.
    Drain {
        /// Then wait until no egress runs on the node (or it has exited): what a Kubernetes
        /// preStop hook or a deploy script needs before it removes the node.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1); default: wait as long as it takes.
        #[arg(long, requires = "wait")]
        max_wait_s: Option<f64>,
        /// Milliseconds between two looks while waiting.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
        interval_ms: u64,
    },
    /// Liveness: GET /healthz (exit 0 when the service answers).
    Health,
    /// Readiness: GET /readyz (exit 0 when the node takes new egresses, 1 with the reason if not).
    Ready,
    /// Learned costs: per cost class the configured cost, learned p50/p95/max, jobs measured
    /// and the price admission charges (GET /v1/node/costs).
    Costs,
}

pub fn run(conn: &Connection, cmd: Option<NodeCommand>) -> Result<(), CliError> {
    let client = Client::new(conn)?;
    match cmd.unwrap_or(NodeCommand::Show) {
        NodeCommand::Show => show(conn, &client.get("/v1/node")?),
        NodeCommand::Drain {
            wait,
            max_wait_s,
            interval_ms,
        } => {
            let state = client.post("/v1/node/drain", None)?;
            if !wait {
                return show(conn, &state);
            }
            if !conn.json {
                println!("{}: draining", state["node_id"].as_str().unwrap_or("node"));
            }
            wait_idle(conn, &client, max_wait_s, interval_ms)
        }
        NodeCommand::Health => probe(conn, &client, "/healthz"),
        NodeCommand::Ready => probe(conn, &client, "/readyz"),
        NodeCommand::Costs => costs(conn, &client.get("/v1/node/costs")?),
    }
}

fn costs(conn: &Connection, v: &Value) -> Result<(), CliError> {
    if conn.json {
        print_json(v);
        return Ok(());
    }
    let f = |k: &str| cell(&v[k]);
    println!(
        "{}",
        fields(&[
            ("mode", f("mode")),
            ("margin", f("cost_margin")),
            ("floor", format!("{} cores", f("learned_cost_floor"))),
            ("learned after", format!("{} jobs", f("learn_min_jobs"))),
        ])
    );
    let rows: Vec<Vec<String>> = v["classes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|c| {
            let num = |k: &str| c[k].as_f64().map(|x| format!("{x:.2}")).unwrap_or_default();
            vec![
                cell(&c["class"]),
                num("configured_cost"),
                num("p50"),
                num("p95"),
                num("max"),
                cell(&c["samples"]),
                match (c["learned"].as_bool(), c["calibrated"].as_bool()) {
                    (Some(true), Some(true)) => "calibrated".into(),
                    (Some(true), _) => "yes".into(),
                    _ => "no".into(),
                },
                num("price"),
            ]
        })
        .collect();
    println!(
        "\n{}",
        table(
            &[
                "CLASS",
                "CONFIGURED",
                "P50",
                "P95",
                "MAX",
                "JOBS",
                "LEARNED",
                "PRICE"
            ],
            &rows
        )
    );
    Ok(())
}

fn probe(conn: &Connection, client: &Client, path: &str) -> Result<(), CliError> {
    let v = client.get(path)?;
    if conn.json {
        print_json(&v);
    } else {
        let mut line = v["status"].as_str().unwrap_or("ok").to_string();
        if let Some(r) = v["reason"].as_str() {
            line.push_str(&format!(": {r}"));
        }
        println!("{line}");
    }
    Ok(())
}

/// Polls `GET /v1/node` until it lists no running egress. A node that no longer answers has
/// exited, which a drained node does once idle: that is done too.
fn wait_idle(
    conn: &Connection,
    client: &Client,
    max_wait_s: Option<f64>,
    interval_ms: u64,
) -> Result<(), CliError> {
    let t0 = Instant::now();
    let mut last: Option<usize> = None;
    loop {
        let running = match client.get("/v1/node") {
            Ok(v) => v["egress_ids"].as_array().map_or(0, Vec::len),
            // The drain was accepted just before, so a node that stops answering has exited.
            Err(CliError::Unreachable { .. }) => {
                report(conn, "exited", 0, t0);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if running == 0 {
            report(conn, "idle", 0, t0);
            return Ok(());
        }
        if last != Some(running) && !conn.json {
            println!("waiting: {running} egress(es) still running");
        }
        last = Some(running);
        if let Some(max) = max_wait_s
            && t0.elapsed() >= Duration::from_secs_f64(max.max(0.0))
        {
            return Err(CliError::EndedBadly(format!(
                "the node still runs {running} egress(es) after {max} s of draining"
            )));
        }
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
}

fn report(conn: &Connection, how: &str, running: usize, t0: Instant) {
    let waited = t0.elapsed().as_secs_f64();
    if conn.json {
        print_json(&serde_json::json!({"drained": how, "running": running, "waited_s": waited}));
    } else if how == "exited" {
        println!("drained: the node has exited (after {waited:.1} s)");
    } else {
        println!("drained: no egress runs on the node (after {waited:.1} s)");
    }
}

fn show(conn: &Connection, v: &Value) -> Result<(), CliError> {
    if conn.json {
        print_json(v);
        return Ok(());
    }
    let f = |k: &str| cell(&v[k]);
    let running = v["egress_ids"].as_array().map_or(0, Vec::len);
    println!(
        "{}",
        fields(&[
            ("node", f("node_id")),
            ("capacity", format!("{} cores", f("capacity_cores"))),
            ("budget", format!("{} cores", f("budget_cores"))),
            (
                "load",
                v["load"]
                    .as_f64()
                    .map(|l| format!("{:.0} %", l * 100.0))
                    .unwrap_or_default()
            ),
            ("available", format!("{} cores", f("available_cpu"))),
            ("draining", f("draining")),
            ("running", running.to_string()),
        ])
    );
    if let Some(types) = v["types"].as_object() {
        let rows: Vec<Vec<String>> = types
            .iter()
            .map(|(name, t)| {
                vec![
                    name.clone(),
                    cell(&t["active"]),
                    match t["limit"].as_u64() {
                        Some(0) | None => "-".into(),
                        Some(l) => l.to_string(),
                    },
                    cell(&t["cost"]),
                    cell(&t["pending_claims"]),
                ]
            })
            .collect();
        println!(
            "\n{}",
            table(&["TYPE", "ACTIVE", "LIMIT", "COST", "CLAIMS"], &rows)
        );
    }
    Ok(())
}
