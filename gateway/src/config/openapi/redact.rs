//! The OpenAPI document as the gateway serves it: internal operations,
//! server URLs and examples taken out.

use serde_json::Value;

use super::{DocsFile, METHODS, refs::resolve};

/// The document as served: operations marked `x-internal: true` (and path
/// items so marked) removed, then, as configured, every `servers` list and
/// every `example`/`examples`.
pub(super) fn redacted(doc: &Value, d: &DocsFile) -> Value {
    let mut doc = doc.clone();
    let source = doc.clone();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        // A path item given by `$ref` is judged (and served) as what it names.
        for item in paths.values_mut() {
            if item.get("$ref").is_some()
                && let Ok(target) = resolve(&source, item)
            {
                *item = target.clone();
            }
        }
        paths.retain(|_, item| !internal(item));
        for item in paths.values_mut() {
            if let Some(item) = item.as_object_mut() {
                item.retain(|k, op| !(METHODS.contains(&k.as_str()) && internal(op)));
            }
        }
        paths.retain(|_, item| {
            item.as_object()
                .is_some_and(|m| m.keys().any(|k| METHODS.contains(&k.as_str())))
        });
    }
    if let Some(c) = doc.get_mut("components").and_then(Value::as_object_mut) {
        // Inlined into `paths`; an internal one must not be served from here.
        c.remove("pathItems");
    }
    strip(&mut doc, d, None);
    doc
}

pub(super) fn internal(v: &Value) -> bool {
    v.get("x-internal") == Some(&Value::Bool(true))
}

/// Removes `servers` and examples (never a property that has such a name).
fn strip(v: &mut Value, d: &DocsFile, parent: Option<&str>) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| strip(i, d, None)),
        Value::Object(map) => {
            let names = matches!(parent, Some("properties" | "patternProperties" | "schemas"));
            if !names {
                if d.hide_servers {
                    map.remove("servers");
                }
                if d.hide_examples {
                    map.remove("example");
                    map.remove("examples");
                }
            }
            for (k, v) in map.iter_mut() {
                strip(v, d, Some(k));
            }
        }
        _ => {}
    }
}
