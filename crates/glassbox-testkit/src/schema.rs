//! Does a JSON value conform to a JSON Schema (2020-12) of an OpenAPI document? The subset
//! `schemars` writes: `$ref`, `type`, `const`, `enum`, `anyOf`/`oneOf`/`allOf`, `properties`,
//! `required`, `additionalProperties`, `items`, `minimum`/`maximum`. Stricter than the standard
//! in one way: an object may hold only the properties its schema names (unless
//! `additionalProperties` says otherwise), so a field the server sends but the document does not
//! describe is a failure — drift in either direction is caught.

use serde_json::Value;

/// `Ok` when `value` conforms to `schema`; `$ref`s resolve against `doc`. The error names the
/// JSON pointer of the first place that does not conform.
pub fn conforms(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    check(doc, schema, value, "")
}

fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let fail = |why: String| Err(format!("{}: {why}", if at.is_empty() { "/" } else { at }));
    match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return fail("no value is allowed here".into()),
        Value::Object(_) => {}
        _ => return fail(format!("not a schema: {schema}")),
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = doc
            .pointer(r.trim_start_matches('#'))
            .ok_or_else(|| format!("{at}: dangling $ref {r}"))?;
        check(doc, target, v, at)?;
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.iter().any(|t| is_type(v, t)) {
            return fail(format!("{v} is not of type {t}"));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != v {
            return fail(format!("{v} is not the constant {c}"));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(v) {
            return fail(format!("{v} is not one of {options:?}"));
        }
    }
    let matching = |key: &str| -> Option<(usize, usize, Vec<String>)> {
        let Value::Array(subs) = schema.get(key)? else {
            return None;
        };
        let results: Vec<_> = subs.iter().map(|s| check(doc, s, v, at)).collect();
        let errors = results.iter().filter_map(|r| r.clone().err()).collect();
        Some((
            results.iter().filter(|r| r.is_ok()).count(),
            subs.len(),
            errors,
        ))
    };
    if let Some((ok, _, errors)) = matching("anyOf") {
        if ok == 0 {
            return fail(format!("matches none of anyOf: {errors:?}"));
        }
    }
    if let Some((ok, _, errors)) = matching("oneOf") {
        if ok != 1 {
            return fail(format!(
                "matches {ok} of oneOf (needs exactly 1): {errors:?}"
            ));
        }
    }
    if let Some((ok, n, errors)) = matching("allOf") {
        if ok != n {
            return fail(format!("fails allOf: {errors:?}"));
        }
    }
    if let (Some(min), Some(x)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            return fail(format!("{x} is below the minimum {min}"));
        }
    }
    if let (Some(max), Some(x)) = (schema.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if x > max {
            return fail(format!("{x} is above the maximum {max}"));
        }
    }
    if let Value::Array(items) = v {
        if let Some(item) = schema.get("items") {
            for (i, x) in items.iter().enumerate() {
                check(doc, item, x, &format!("{at}/{i}"))?;
            }
        }
    }
    if let Value::Object(fields) = v {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    return fail(format!("required property `{name}` is missing"));
                }
            }
        }
        for (name, x) in fields {
            let here = format!("{at}/{name}");
            match (
                props.and_then(|p| p.get(name)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => check(doc, s, x, &here)?,
                (None, Some(extra)) => check(doc, extra, x, &here)?,
                // A schema that names properties names them all (see the module doc).
                (None, None) if props.is_some() => {
                    return fail(format!("property `{name}` is not in the schema"))
                }
                (None, None) => {}
            }
        }
    }
    Ok(())
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64() || v.as_f64().is_some_and(|x| x.fract() == 0.0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conformance_catches_missing_extra_and_mistyped_fields() {
        let doc = json!({"defs": {"Usage": {"type": "object",
            "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]}}});
        let schema = json!({"type": "object", "properties": {
            "usage": {"$ref": "#/defs/Usage"},
            "why": {"anyOf": [{"type": "string", "enum": ["stop", "length"]}, {"type": "null"}]},
            "map": {"type": "object", "additionalProperties": {"type": "number"}}}});
        let ok = json!({"usage": {"n": 3}, "why": null, "map": {"a": 1.5}});
        assert_eq!(conforms(&doc, &schema, &ok), Ok(()));
        for (bad, place) in [
            (json!({"usage": {}}), "/usage"),
            (json!({"usage": {"n": 3, "extra": 1}}), "/usage"),
            (json!({"usage": {"n": -1}}), "/usage/n"),
            (json!({"why": "maybe"}), "/why"),
            (json!({"map": {"a": "x"}}), "/map/a"),
            (json!({"other": 1}), "/"),
        ] {
            let e = conforms(&doc, &schema, &bad).unwrap_err();
            assert!(e.starts_with(&format!("{place}:")), "{bad} gave {e}");
        }
    }
}
