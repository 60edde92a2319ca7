//! The OpenAPI 3.1 document served at `/openapi.json`. A test checks that it documents
//! exactly the routes the router serves.

use schemars::generate::SchemaSettings;
use serde_json::{json, Value};

use crate::config::MonitorConfig;
use crate::server::monitors::{MonitorChange, MonitorList};
use crate::server::openai::{
    ChatChoice, ChatRequest, CompletionChoice, CompletionRequest, CompletionResponse,
    EmbeddingsRequest, EmbeddingsResponse, ErrorResponse,
};

/// An operation; `answer` is the schema of its 200 body, when it is JSON the document describes.
fn op(summary: &str, role: Option<&str>, body: Option<Value>, answer: Option<Value>) -> Value {
    let ok = match answer {
        Some(schema) => json!({"description": "success",
            "content": {"application/json": {"schema": schema}}}),
        None => json!({"description": "success"}),
    };
    let mut o = json!({
        "summary": summary,
        "responses": {
            "200": ok,
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "413": {"description": "request body over limits.max_body_bytes"},
            "default": {"$ref": "#/components/responses/Error"}
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

/// A completion route: JSON, or with `stream` server-sent events whose data are chunks of the
/// same schema (then `[DONE]`).
fn streaming_op(summary: &str, body: Value, answer: Value) -> Value {
    let mut o = op(summary, Some("viewer"), Some(body), Some(answer.clone()));
    o["responses"]["200"]["content"]["text/event-stream"] = json!({
        "schema": {"type": "string", "description": "with `stream`: one event per piece of text, each `data` a chunk of the JSON answer's schema (the last with `finish_reason` and `glassbox`), then `data: [DONE]`"},
        "x-glassbox-event-data": answer
    });
    o
}

pub fn document() -> Value {
    // Request bodies are the handlers' own types; shared parts (`Stop`, `ChatMessage`, …) go to
    // `components/schemas` and are referenced from there.
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    let embeddings = generator.subschema_for::<EmbeddingsRequest>().to_value();
    let completion = generator.subschema_for::<CompletionRequest>().to_value();
    let chat = generator.subschema_for::<ChatRequest>().to_value();
    let monitor = generator.subschema_for::<MonitorConfig>().to_value();
    let embeddings_answer = generator.subschema_for::<EmbeddingsResponse>().to_value();
    let completion_answer = generator
        .subschema_for::<CompletionResponse<CompletionChoice>>()
        .to_value();
    let chat_answer = generator
        .subschema_for::<CompletionResponse<ChatChoice>>()
        .to_value();
    let error = generator.subschema_for::<ErrorResponse>().to_value();
    let monitor_list = generator.subschema_for::<MonitorList>().to_value();
    let monitor_change = generator.subschema_for::<MonitorChange>().to_value();
    let mut add_monitor = op(
        "add a monitor (audited)",
        Some("operator"),
        Some(monitor),
        None,
    );
    if let Some(r) = add_monitor["responses"].as_object_mut() {
        r.remove("200");
        r.insert(
            "201".into(),
            json!({"description": "added",
            "content": {"application/json": {"schema": monitor_change.clone()}}}),
        );
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Glassbox server", "version": env!("CARGO_PKG_VERSION"),
                 "description": "OpenAI-compatible inference with per-token monitors. Inference responses carry `x-glassbox-request-id`, `x-glassbox-decisions` and a `glassbox` field with every firing and any block."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "error",
                "content": {"application/json": {"schema": error}}}}
        },
        "paths": {
            "/healthz": {"get": op("liveness", None, None, None)},
            "/readyz": {"get": op("readiness: the model is loaded", None, None, None)},
            "/metrics": {"get": op("Prometheus metrics", None, None, None)},
            "/openapi.json": {"get": op("this document", None, None, None)},
            "/v1/embeddings": {"post": op("sentence embeddings (encoders), monitored", Some("viewer"),
                Some(embeddings), Some(embeddings_answer))},
            "/v1/completions": {"post": streaming_op("text completion (decoders), monitored; SSE with stream",
                completion, completion_answer)},
            "/v1/chat/completions": {"post": streaming_op("chat completion (decoders), monitored; SSE with stream",
                chat, chat_answer)},
            "/v1/monitors": {
                "get": op("the monitors in force", Some("viewer"), None, Some(monitor_list)),
                "post": add_monitor
            },
            "/v1/monitors/{name}": {"delete": op("remove a monitor (audited)", Some("operator"), None, Some(monitor_change))},
            "/v1/events": {"get": op("rule firings as server-sent events", Some("viewer"), None, None)},
            "/v1/config": {"get": op("the configuration in force (keys as hashes)", Some("admin"), None, None)},
            "/v1/keys/reload": {"post": op("re-read the keys and the TLS certificate from the deployment file (audited; SIGHUP does the same)", Some("admin"), None, None)}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `v`, as JSON pointers into the document.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.trim_start_matches('#').to_string());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    /// Follows `$ref`s until a schema with content.
    fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
        while let Some(Value::String(r)) = v.get("$ref") {
            v = doc
                .pointer(r.trim_start_matches('#'))
                .expect("dangling $ref");
        }
        v
    }

    #[test]
    fn request_bodies_are_the_handlers_types_and_every_reference_resolves() {
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() >= 5, "shared schemas are referenced: {all:?}");
        for r in &all {
            assert!(doc.pointer(r).is_some(), "{r} does not resolve");
        }
        let body = |path: &str| {
            let b = &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"];
            resolve(&doc, &b["schema"]).clone()
        };
        let completion = body("/v1/completions");
        // Fields of the flattened generation parameters, with their documentation.
        for field in [
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "stream",
        ] {
            assert!(
                completion["properties"].get(field).is_some(),
                "{field} missing"
            );
        }
        assert!(completion["properties"]["temperature"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("greedily")));
        assert_eq!(completion["required"], json!(["prompt"]));
        assert!(body("/v1/chat/completions")["properties"]["messages"].is_object());
        let monitor = body("/v1/monitors");
        // Documented variants are listed one by one (`oneOf` of `const`s with descriptions).
        let action = resolve(&doc, &monitor["properties"]["action"]);
        let names: Vec<&Value> = action["oneOf"]
            .as_array()
            .map(|v| v.iter().map(|x| &x["const"]).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            ["log", "alert", "clamp", "steer", "block"],
            "{action}"
        );
        assert_eq!(monitor["additionalProperties"], json!(false));

        // Answers are the handlers' types too: the chat answer's choice carries the message and
        // the decisions name every firing's fields.
        let answer = |path: &str| {
            let ok = &doc["paths"][path]["post"]["responses"]["200"]["content"];
            resolve(&doc, &ok["application/json"]["schema"]).clone()
        };
        let chat = answer("/v1/chat/completions");
        let choice = resolve(&doc, &chat["properties"]["choices"]["items"]);
        assert!(choice["properties"]["message"].is_object(), "{choice}");
        let decisions = resolve(&doc, &chat["properties"]["glassbox"]);
        let decisions = resolve(&doc, &decisions["anyOf"][0]);
        let firing = resolve(&doc, &decisions["properties"]["firings"]["items"]);
        assert_eq!(
            firing["required"],
            json!(["monitor", "input", "position", "value", "action"])
        );
        assert_eq!(
            answer("/v1/embeddings")["required"]
                .as_array()
                .map(Vec::len),
            Some(5)
        );
        let error = &doc["components"]["responses"]["Error"]["content"]["application/json"];
        assert!(resolve(&doc, &error["schema"])["properties"]["error"].is_object());
    }
}
