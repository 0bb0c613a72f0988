#!/usr/bin/env python3
"""Writes deploy/grafana/egress-engine.json, the Grafana dashboard: edit the panels here, then run
it (python3 deploy/grafana/dashboard.py). scripts/check-deploy checks the JSON is what this writes.
Usage: dashboard.py [OUT]   (default: deploy/grafana/egress-engine.json next to this file)"""
import json, os, sys

# Every query goes to the data source picked in the dashboard's `datasource` variable.
ds = {"type": "prometheus", "uid": "${datasource}"}
panels = []
pid = [0]


def panel(title, typ, exprs, x, y, w=12, h=8, unit=None, desc="", stack=False, thresholds=None, minv=None, maxv=None):
    pid[0] += 1
    targets = [{"datasource": ds, "expr": e, "legendFormat": l, "refId": chr(65+i)} for i,(e,l) in enumerate(exprs)]
    defaults = {}
    if unit: defaults["unit"] = unit
    if minv is not None: defaults["min"] = minv
    if maxv is not None: defaults["max"] = maxv
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None}] + [{"color": c, "value": v} for v,c in thresholds]}
    if typ == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 0,
                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
        if thresholds:
            defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
    p = {"id": pid[0], "type": typ, "title": title, "description": desc, "datasource": ds,
         "gridPos": {"h": h, "w": w, "x": x, "y": y}, "targets": targets,
         "fieldConfig": {"defaults": defaults, "overrides": []}}
    if typ == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}, "tooltip": {"mode": "multi", "sort": "desc"}}
    if typ == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    panels.append(p)


def row(title, y):
    pid[0] += 1
    panels.append({"id": pid[0], "type": "row", "title": title, "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})


ST = 'status=~"starting|active|ending"'
NA = 'outcome!="admitted"'


def m(name, extra=""):
    """`name{instance=~"$instance", extra}`: every series follows the dashboard's node picker."""
    return name + ('{instance=~"$instance"' + (", " + extra if extra else "") + "}")
row("Fleet", 0)
panel("Nodes reporting", "stat", [(f'count({m("egress_node_load")})', "nodes")], 0, 1, w=4, h=4)
panel("Desired nodes", "stat", [("max(egress_fleet_desired_nodes)", "desired")], 4, 1, w=4, h=4,
      desc="Nodes the fleet needs for fleet.target_free_fraction of free budget (what the autoscaler follows).")
panel("Draining nodes", "stat", [(f'sum({m("egress_draining")})', "draining")], 8, 1, w=4, h=4)
panel("Nodes without Redis", "stat", [(f'sum({m("egress_fleet_degraded")})', "degraded")], 12, 1, w=4, h=4, thresholds=[(1, "red")])
panel("Running egresses", "stat", [(f'sum({m("egress_type_active")})', "running")], 16, 1, w=4, h=4)
panel("Free CPU (cores)", "stat", [(f'sum({m("egress_available_cpu_cores")})', "free")], 20, 1, w=4, h=4, unit="none")
panel("Fleet capacity (cores)", "timeseries", [
    (f'sum({m("egress_capacity_cores")})', "capacity"),
    (f'sum({m("egress_available_cpu_cores")})', "admission can still commit"),
    (f'sum({m("egress_process_cpu_cores")})', "used (service + handlers)")], 0, 5, unit="none",
    desc="Capacity, what admission can still commit, and what is measured.")
panel("Nodes: desired vs reporting", "timeseries", [
    ("max(egress_fleet_desired_nodes)", "desired"),
    (f'count({m("egress_node_load")})', "reporting")], 12, 5, unit="none")
row("Nodes", 13)
panel("Node load", "timeseries", [(m("egress_node_load"), "{{instance}}")], 0, 14, unit="percentunit", minv=0,
      thresholds=[(0.85, "orange"), (0.95, "red")],
      desc="max(host busy fraction, node CPU / capacity); overload acts above 0.85 (soft) and 0.95 (hard) by default.")
panel("CPU by process (cores)", "timeseries", [(f'sum by (instance, process) ({m("egress_process_cpu_cores")})', "{{instance}} {{process}}")], 12, 14, unit="none")
panel("Memory by process", "timeseries", [(f'sum by (instance, process) ({m("egress_process_memory_bytes")})', "{{instance}} {{process}}")], 0, 22, unit="bytes")
panel("Available CPU per node (cores)", "timeseries", [(m("egress_available_cpu_cores"), "{{instance}}")], 12, 22, unit="none")
row("Jobs", 30)
panel("Running jobs by type", "timeseries", [(f'sum by (type) ({m("egress_type_active")})', "{{type}}")], 0, 31, stack=True, unit="none")
panel("Egresses by status", "timeseries", [(f'sum by (status) ({m("egress_egresses", ST)})', "{{status}}")], 12, 31, stack=True, unit="none")
panel("Ended egresses by reason (per minute)", "timeseries", [(f'sum by (reason) (rate({m("egress_results_total")}[$__rate_interval])) * 60', "{{reason}}")], 0, 39, unit="none")
panel("Live-source events (per minute)", "timeseries", [(f'sum by (event) (rate({m("egress_source_events_total")}[$__rate_interval])) * 60', "{{event}}")], 12, 39, unit="none")
row("Admission, overload and placement", 47)
panel("Admissions and refusals (per minute)", "timeseries", [(f'sum by (outcome) (rate({m("egress_admissions_total")}[$__rate_interval])) * 60', "{{outcome}}")], 0, 48, unit="none",
      desc="admitted, or refused: cpu, type_limit, draining.")
panel("Refusals by type (per minute)", "timeseries", [(f'sum by (type, outcome) (rate({m("egress_admissions_total", NA)}[$__rate_interval])) * 60', "{{type}} {{outcome}}")], 12, 48, unit="none")
panel("Overload stops and CPU kills", "timeseries", [(f'sum by (action, reason) (increase({m("egress_overload_actions_total")}[$__rate_interval]))', "{{action}} ({{reason}})")], 0, 56, unit="none",
      desc="A kill cuts a recording short: there should be none.")
panel("Placements (per minute)", "timeseries", [(f'sum by (outcome) (rate({m("egress_placements_total")}[$__rate_interval])) * 60', "{{outcome}}")], 12, 56, unit="none",
      desc="placed, retried, failed, local (placed on the receiving node while Redis was unreachable).")
panel("Pending placement claims by type", "timeseries", [(f'sum by (type) ({m("egress_pending_claims")})', "{{type}}")], 0, 64, unit="none")
panel("Type limits", "timeseries", [(f'max by (type) ({m("egress_type_limit")})', "{{type}}")], 12, 64, unit="none")
row("Delivery", 72)
panel("Delivery failures", "timeseries", [
    (f'sum(increase({m("egress_upload_failures_total")}[$__rate_interval]))', "uploads"),
    (f'sum by (type) (increase({m("egress_stream_failures_total")}[$__rate_interval]))', "stream URLs ({{type}})"),
    (f'sum(increase({m("egress_webhook_failures_total")}[$__rate_interval]))', "webhooks")], 0, 73, unit="none",
      desc="Uploads that failed, stream URLs given up on after pipeline.stream_retry_s, webhook deliveries that failed.")
panel("Records not yet in Redis", "timeseries", [(m("egress_fleet_unpublished_records"), "{{instance}}")], 12, 73, unit="none")
dash = {
  "annotations": {"list": []},
  "description": "egress-engine: node load, fleet capacity, jobs per type, admissions, overload, placement, delivery.",
  "editable": True, "graphTooltip": 1, "links": [], "panels": panels,
  "refresh": "30s", "schemaVersion": 39, "tags": ["egress-engine"],
  "templating": {"list": [
    {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0, "refresh": 1},
    {"name": "instance", "label": "Node", "type": "query", "datasource": ds,
     "query": {"query": "label_values(egress_node_load, instance)", "refId": "instance"},
     "definition": "label_values(egress_node_load, instance)",
     "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1, "hide": 0}]},
  "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "timezone": "utc",
  "title": "egress-engine", "uid": "egress-engine", "version": 1}
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "egress-engine.json")
open(out, "w").write(json.dumps(dash, indent=2) + "\n")

