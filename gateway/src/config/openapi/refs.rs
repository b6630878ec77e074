//! `$ref`s within an OpenAPI document: followed, and copied under `$defs`
//! so each schema compiles on its own; 3.0's schema dialect rewritten into
//! JSON Schema on the way.

use serde_json::{Map, Value};

/// A `$ref` to a part of the document, followed (a chain of them too).
pub(super) fn resolve<'d>(doc: &'d Value, v: &'d Value) -> Result<&'d Value, String> {
    let mut v = v;
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(v);
        };
        v = doc
            .pointer(&fragment(r)?)
            .ok_or_else(|| format!("$ref `{r}` points at nothing"))?;
    }
    Err("$ref chain longer than 16".into())
}

/// The JSON pointer of a `#/...` reference.
fn fragment(r: &str) -> Result<String, String> {
    let Some(f) = r.strip_prefix('#') else {
        return Err(format!(
            "$ref `{r}` is outside the document; only references within it are imported"
        ));
    };
    crate::http::query::decode(f, false)
        .map(|d| d.into_owned())
        .ok_or_else(|| format!("$ref `{r}` is not a valid pointer"))
}

/// `schema` made standalone: every reference it reaches copied under
/// `$defs` (keyed by its pointer) and pointed at there.
pub(super) fn standalone(
    doc: &Value,
    schema: &Value,
    v30: bool,
) -> Result<Map<String, Value>, String> {
    let mut pending = Vec::new();
    let root = rewrite(schema, &mut pending, v30, None)?;
    let mut defs = Map::new();
    while let Some(ptr) = pending.pop() {
        if defs.contains_key(&ptr) {
            continue;
        }
        let target = doc
            .pointer(&ptr)
            .ok_or_else(|| format!("$ref `#{ptr}` points at nothing"))?;
        let copy = rewrite(target, &mut pending, v30, None)?;
        defs.insert(ptr, copy);
    }
    let mut root = match root {
        Value::Object(m) => m,
        // A boolean schema (3.1).
        other => Map::from_iter([("allOf".to_owned(), Value::Array(vec![other]))]),
    };
    if !defs.is_empty() {
        root.insert("$defs".into(), Value::Object(defs));
    }
    Ok(root)
}

/// Copies a schema, pointing references at `$defs` and turning 3.0's
/// dialect into JSON Schema. `parent` is the key this value sits under.
fn rewrite(
    v: &Value,
    pending: &mut Vec<String>,
    v30: bool,
    parent: Option<&str>,
) -> Result<Value, String> {
    let names = matches!(
        parent,
        Some("properties" | "patternProperties" | "$defs" | "definitions")
    );
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| rewrite(i, pending, v30, None))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(map) if names => {
            // Property names, not keywords.
            let mut out = Map::new();
            for (k, v) in map {
                out.insert(k.clone(), rewrite(v, pending, v30, None)?);
            }
            Ok(Value::Object(out))
        }
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if k == "$ref"
                    && let Some(r) = v.as_str()
                {
                    let ptr = fragment(r)?;
                    let token = ptr.replace('~', "~0").replace('/', "~1");
                    out.insert(k.clone(), Value::String(format!("#/$defs/{token}")));
                    pending.push(ptr);
                    continue;
                }
                out.insert(k.clone(), rewrite(v, pending, v30, Some(k))?);
            }
            if v30 {
                dialect_30(&mut out);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// OpenAPI 3.0's schema dialect in JSON Schema terms.
fn dialect_30(s: &mut Map<String, Value>) {
    if s.remove("nullable") == Some(Value::Bool(true))
        && let Some(Value::String(t)) = s.get("type").cloned()
    {
        s.insert(
            "type".into(),
            Value::Array(vec![Value::String(t), "null".into()]),
        );
    }
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if let Some(Value::Bool(on)) = s.get(flag).cloned() {
            s.remove(flag);
            if on && let Some(b) = s.remove(bound) {
                s.insert(flag.into(), b);
            }
        }
    }
}
