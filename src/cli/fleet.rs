//! `egress-engine fleet` (nodes, then capacity), `fleet nodes`, `fleet capacity`.

use serde_json::{Value, json};

use clap::Subcommand;

use super::table::{cell, fields, table};
use super::{CliError, Client, Connection, print_json};

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// The live nodes with their load, free CPU and running egresses per type.
    Nodes,
    /// The fleet's capacity: free CPU, what fits, desired nodes, drain candidates.
    Capacity,
}

pub fn run(conn: &Connection, cmd: Option<FleetCommand>) -> Result<(), CliError> {
    let client = Client::new(conn)?;
    match cmd {
        Some(FleetCommand::Nodes) => nodes(conn, &client.get("/v1/fleet/nodes")?),
        Some(FleetCommand::Capacity) => match client.get("/v1/fleet/capacity") {
            Ok(v) => capacity(conn, &v),
            Err(e) => Err(explain_capacity(e)),
        },
        None => {
            let n = client.get("/v1/fleet/nodes")?;
            let c = client.get("/v1/fleet/capacity").map_err(explain_capacity);
            if conn.json {
                let capacity = c.as_ref().ok().cloned().unwrap_or(Value::Null);
                print_json(&json!({ "nodes": n, "capacity": capacity }));
                return Ok(());
            }
            nodes(conn, &n)?;
            println!();
            match c {
                Ok(v) => {
                    println!("capacity:");
                    capacity(conn, &v)
                }
                // The node list is what was asked for first; a missing capacity is a note.
                Err(e) => {
                    println!("capacity: {e}");
                    Ok(())
                }
            }
        }
    }
}

/// A node without `/v1/fleet/capacity` (older than the route) answers 404 "no route": say that
/// rather than a bare not_found.
fn explain_capacity(e: CliError) -> CliError {
    match e {
        CliError::Api {
            status: 404,
            ref message,
            ..
        } if message.starts_with("no route") => CliError::Usage(
            "this node does not serve GET /v1/fleet/capacity (a version without fleet capacity); \
             `egress-engine fleet nodes` lists the nodes"
                .into(),
        ),
        e => e,
    }
}

fn nodes(conn: &Connection, v: &Value) -> Result<(), CliError> {
    if conn.json {
        print_json(v);
        return Ok(());
    }
    let list = v["nodes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            let running: Vec<String> = n["types"]
                .as_object()
                .map(|types| {
                    types
                        .iter()
                        .filter_map(|(t, s)| {
                            s["active"]
                                .as_u64()
                                .filter(|a| *a > 0)
                                .map(|a| format!("{t}={a}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                cell(&n["node_id"]),
                cell(&n["url"]),
                n["load"]
                    .as_f64()
                    .map(|l| format!("{:.0} %", l * 100.0))
                    .unwrap_or_default(),
                cell(&n["capacity_cores"]),
                cell(&n["available_cpu"]),
                cell(&n["draining"]),
                if running.is_empty() {
                    "-".into()
                } else {
                    running.join(" ")
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no live nodes");
    } else {
        println!(
            "{}",
            table(
                &[
                    "NODE", "URL", "LOAD", "CORES", "FREE", "DRAINING", "RUNNING"
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

/// Capacity as the node reports it: its scalar figures as fields, each list or map as a table
/// (or, for anything else, compact JSON), so a field added to the answer shows up here too.
fn capacity(conn: &Connection, v: &Value) -> Result<(), CliError> {
    if conn.json {
        print_json(v);
        return Ok(());
    }
    let Some(obj) = v.as_object() else {
        println!("{v}");
        return Ok(());
    };
    let scalars: Vec<(&str, String)> = obj
        .iter()
        .filter(|(_, x)| !x.is_object() && !x.is_array())
        .map(|(k, x)| (k.as_str(), cell(x)))
        .collect();
    println!("{}", fields(&scalars));
    for (k, x) in obj.iter().filter(|(_, x)| x.is_object() || x.is_array()) {
        println!("\n{k}:");
        println!("{}", nested(x));
    }
    Ok(())
}

/// A map of objects or a list of objects as a table of their scalar fields; a map or list of
/// scalars as `key: value` lines.
fn nested(x: &Value) -> String {
    let rows: Vec<(String, &Value)> = match x {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return cell(x),
    };
    if rows.iter().all(|(_, v)| !v.is_object()) {
        if let Value::Array(_) = x {
            return rows
                .iter()
                .map(|(_, v)| format!("  {}", cell(v)))
                .collect::<Vec<_>>()
                .join("\n");
        }
        return rows
            .iter()
            .map(|(k, v)| format!("  {k}: {}", cell(v)))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut cols: Vec<String> = Vec::new();
    for (_, v) in &rows {
        for k in v.as_object().into_iter().flat_map(|m| m.keys()) {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let keyed = matches!(x, Value::Object(_));
    let mut headers: Vec<String> = if keyed { vec![String::new()] } else { vec![] };
    headers.extend(cols.iter().map(|c| c.to_uppercase()));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| {
            let mut r = if keyed { vec![k.clone()] } else { vec![] };
            r.extend(cols.iter().map(|c| match &v[c] {
                x @ (Value::Object(_) | Value::Array(_)) => x.to_string(),
                x => cell(x),
            }));
            r
        })
        .collect();
    let h: Vec<&str> = headers.iter().map(String::as_str).collect();
    table(&h, &body)
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_tables_follow_the_answer() {
        let v = json!({"by_type": {"track": {"fits": 3, "limit": 0}, "web": {"fits": 0, "limit": 2}},
                       "drain_candidates": ["ND_a", "ND_b"]});
        assert_eq!(
            nested(&v["by_type"]),
            "         FITS  LIMIT\n  track  3     0\n  web    0     2"
        );
        assert_eq!(nested(&v["drain_candidates"]), "  ND_a\n  ND_b");
    }

    #[test]
    fn a_missing_route_is_explained() {
        let e = explain_capacity(CliError::Api {
            status: 404,
            code: "not_found".into(),
            message: "no route for GET /v1/fleet/capacity".into(),
        });
        assert!(
            e.to_string()
                .contains("does not serve GET /v1/fleet/capacity"),
            "{e}"
        );
        let alone = explain_capacity(CliError::Api {
            status: 404,
            code: "not_found".into(),
            message: "this node runs alone".into(),
        });
        assert_eq!(alone.api_code(), Some("not_found"));
    }
}
