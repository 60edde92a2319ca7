//! The OpenAPI 3.1 document served at `/openapi.json`. A test checks that it documents
//! exactly the routes the router serves.

use serde_json::{json, Value};

fn op(summary: &str, role: Option<&str>, body: Option<Value>) -> Value {
    let mut o = json!({
        "summary": summary,
        "responses": {
            "200": {"description": "success"},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "413": {"description": "request body over limits.max_body_bytes"}
        }
    });
    if let Some(r) = role {
        o["security"] = json!([{"bearer": []}]);
        o["x-glassbox-role"] = json!(r);
    }
    if let Some(schema) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    o
}

pub fn document() -> Value {
    let text_or_list =
        json!({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]});
    let monitor = json!({"type": "object", "required": ["name", "when", "action"], "properties": {
        "name": {"type": "string"}, "dictionary": {"type": "string"},
        "when": {"type": "string", "description": "rule, e.g. `feature 1234 > 3.0`, `mean(feature 7, 8) > 1`, `count(feature 7 > 0, 16) >= 3`, `anomaly > 0.5`, `probe credentials > 0.9`"},
        "action": {"enum": ["log", "alert", "clamp", "steer", "block"]},
        "feature": {"type": "integer"}, "value": {"type": "number"}, "strength": {"type": "number"},
        "reason": {"type": "string"}}});
    let gen = |prompt: Value| {
        json!({"type": "object", "properties": {
        "max_tokens": {"type": "integer"}, "stream": {"type": "boolean"}}, "allOf": [prompt]})
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Glassbox server", "version": env!("CARGO_PKG_VERSION"),
                 "description": "OpenAI-compatible inference with per-token monitors. Inference responses carry `x-glassbox-request-id`, `x-glassbox-decisions` and a `glassbox` field with every firing and any block."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"error": {"type": "object", "properties": {
                    "type": {"type": "string"}, "message": {"type": "string"}}}}}}}}}
        },
        "paths": {
            "/healthz": {"get": op("liveness", None, None)},
            "/readyz": {"get": op("readiness: the model is loaded", None, None)},
            "/metrics": {"get": op("Prometheus metrics", None, None)},
            "/openapi.json": {"get": op("this document", None, None)},
            "/v1/embeddings": {"post": op("sentence embeddings (encoders), monitored", Some("viewer"),
                Some(json!({"type": "object", "required": ["input"], "properties": {"input": text_or_list, "model": {"type": "string"}}})))},
            "/v1/completions": {"post": op("text completion (decoders), monitored; SSE with stream", Some("viewer"),
                Some(gen(json!({"required": ["prompt"], "properties": {"prompt": {"type": "string"}}}))))},
            "/v1/chat/completions": {"post": op("chat completion (decoders), monitored; SSE with stream", Some("viewer"),
                Some(gen(json!({"required": ["messages"], "properties": {"messages": {"type": "array", "items": {
                    "type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}}}}))))},
            "/v1/monitors": {
                "get": op("the monitors in force", Some("viewer"), None),
                "post": op("add a monitor (audited)", Some("operator"), Some(monitor))
            },
            "/v1/monitors/{name}": {"delete": op("remove a monitor (audited)", Some("operator"), None)},
            "/v1/events": {"get": op("rule firings as server-sent events", Some("viewer"), None)},
            "/v1/config": {"get": op("the configuration in force (keys as hashes)", Some("admin"), None)},
            "/v1/keys/reload": {"post": op("re-read the keys and the TLS certificate from the deployment file (audited; SIGHUP does the same)", Some("admin"), None)}
        }
    })
}
