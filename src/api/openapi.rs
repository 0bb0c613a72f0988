//! `GET /v1/openapi.json`: an OpenAPI 3 document of this API. An integration test checks that
//! every route the service answers is in it, and the other way round.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/openapi.json", web::get().to(openapi));
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(desc: &str, schema: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^EG_[A-Za-z0-9]{12}$"}}])
}

pub fn document() -> Value {
    let egress_types = json!(["track", "track_composite", "participant", "room_composite"]);
    let statuses = json!([
        "starting",
        "active",
        "ending",
        "complete",
        "failed",
        "aborted",
        "limit_reached"
    ]);
    json!({
        "openapi": "3.0.3",
        "info": {"title": "egress-engine admin API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                        "reason": {"type": "string", "enum": ["cpu", "type_limit", "draining"]},
                        "field": {"type": "string"}}}}},
                "EgressRequest": {"type": "object", "required": ["type", "sources", "output"], "additionalProperties": false,
                    "properties": {
                        "type": {"type": "string", "enum": egress_types},
                        "sources": {"type": "array", "minItems": 1, "maxItems": 16, "items": {"type": "object", "required": ["uri"],
                            "properties": {"uri": {"type": "string", "example": "test://av?pattern=ball&freq=440"}}}},
                        "output": {"type": "object", "properties": {"file": {"type": "object", "required": ["filename"],
                            "properties": {"filename": {"type": "string", "description": "relative to storage.output_dir; extension mp4, mkv, webm or ogg"}}}}},
                        "video": {"type": "object", "properties": {"width": {"type": "integer"}, "height": {"type": "integer"},
                            "fps": {"type": "integer"}, "bitrate_kbps": {"type": "integer"}}},
                        "audio": {"type": "object", "properties": {"codec": {"type": "string", "enum": ["aac", "opus"]}, "bitrate_kbps": {"type": "integer"}}},
                        "max_duration_s": {"type": "number"},
                        "estimated_cpu": {"type": "number", "description": "cores; overrides the type's cpu_cost"}}},
                "FileInfo": {"type": "object", "properties": {"filename": {"type": "string"}, "location": {"type": "string"},
                    "size_bytes": {"type": "integer"}, "duration_s": {"type": "number", "nullable": true}}},
                "EgressInfo": {"type": "object", "properties": {
                    "egress_id": {"type": "string"}, "node_id": {"type": "string"},
                    "type": {"type": "string", "enum": egress_types}, "status": {"type": "string", "enum": statuses},
                    "created_at": {"type": "integer", "description": "ms since the Unix epoch"},
                    "started_at": {"type": "integer", "nullable": true}, "ended_at": {"type": "integer", "nullable": true},
                    "end_reason": {"type": "string", "nullable": true}, "error": {"type": "string", "nullable": true},
                    "request": {"$ref": "#/components/schemas/EgressRequest"},
                    "files": {"type": "array", "items": {"$ref": "#/components/schemas/FileInfo"}},
                    "handler_pid": {"type": "integer", "nullable": true}, "cpu_cost": {"type": "number"}}},
                "EgressList": {"type": "object", "properties": {"egresses": {"type": "array", "items": {"$ref": "#/components/schemas/EgressInfo"}}}},
                "NodeState": {"type": "object", "properties": {
                    "node_id": {"type": "string"}, "capacity_cores": {"type": "number"}, "load": {"type": "number"},
                    "available_cpu": {"type": "number"}, "headroom_cpu": {"type": "number", "description": "available_cpu unclamped: negative when over budget"}, "draining": {"type": "boolean"},
                    "types": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                        "active": {"type": "integer"}, "limit": {"type": "integer"}, "cost": {"type": "number"}, "pending_claims": {"type": "integer"}}}}}},
                "Affinity": {"type": "object", "properties": {"node_id": {"type": "string"}, "egress_type": {"type": "string"},
                    "score": {"type": "number", "description": "[0, 1], or -1 when the node cannot take the job"},
                    "claim_id": {"type": "string", "nullable": true}, "reason": {"type": "string", "nullable": true}}},
                "FleetNodes": {"type": "object", "properties": {"nodes": {"type": "array", "items": {"type": "object"}}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/egress": {
                "post": {"summary": "Start an egress", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EgressRequest"}}}},
                    "responses": {"201": ok("admitted and launched", "EgressInfo"), "400": err("invalid request"), "401": err("missing or wrong token"),
                        "413": err("body too large"), "503": err("no capacity (reason cpu | type_limit) or draining"),
                        "504": err("start_pending: the node holding the egress id neither started it nor gave it up in time; GET the egress_id in the error before retrying")}},
                "get": {"summary": "List egresses", "parameters": [{"name": "status", "in": "query", "schema": {"type": "string"}, "description": "comma-separated statuses"}],
                    "responses": {"200": ok("egresses, newest first", "EgressList"), "400": err("bad query")}}
            },
            "/v1/egress/{id}": {"get": {"summary": "One egress", "parameters": id_param(),
                "responses": {"200": ok("the egress", "EgressInfo"), "404": err("unknown egress")}}},
            "/v1/egress/{id}/stop": {"post": {"summary": "Stop gracefully (EOS, then kill after pipeline.eos_timeout_s)", "parameters": id_param(),
                "responses": {"200": ok("stopping", "EgressInfo"), "404": err("unknown egress"), "409": err("already ended")}}},
            "/v1/egress/{id}/kill": {"post": {"summary": "Kill at once", "parameters": id_param(),
                "responses": {"200": ok("killed", "EgressInfo"), "404": err("unknown egress"), "409": err("already ended")}}},
            "/v1/node": {"get": {"summary": "This node's capacity, load and per-type counts", "responses": {"200": ok("node state", "NodeState")}}},
            "/v1/node/drain": {"post": {"summary": "Stop taking egresses; exit when idle", "responses": {"202": ok("draining", "NodeState")}}},
            "/v1/affinity": {"get": {"summary": "This node's placement score for a request (takes a pending claim)",
                "parameters": [{"name": "type", "in": "query", "required": true, "schema": {"type": "string"}},
                               {"name": "estimated_cpu", "in": "query", "schema": {"type": "number"}}],
                "responses": {"200": ok("score", "Affinity"), "400": err("bad query")}}},
            "/v1/fleet/nodes": {"get": {"summary": "Live nodes of the fleet", "responses": {"200": ok("nodes", "FleetNodes"), "404": err("no fleet configured")}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness", "security": [], "responses": {"200": {"description": "takes egresses"}, "503": err("draining")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition"}}}}
        }
    })
}
