//! `[[openapi]]`: routes and their schemas imported from an OpenAPI 3.0 or
//! 3.1 document (JSON or YAML), so they are not written twice, and the
//! document itself served with what must stay internal taken out.
//!
//! Each operation becomes a route written as `[[routes]]` would be (a path
//! template, its method, the request body's JSON Schema, its query and
//! path parameters) and is compiled by the same code, so an imported route
//! is held to every rule a written one is. Schemas become standalone: every
//! `$ref` within the document is copied under `$defs`; OpenAPI 3.0's
//! `nullable` and boolean `exclusiveMinimum`/`exclusiveMaximum` are
//! rewritten into JSON Schema.

use std::sync::Arc;

use serde_json::Value;

use super::*;

mod redact;
mod refs;

use redact::{internal, redacted};
use refs::{resolve, standalone};

/// Methods an OpenAPI path item may hold, as its keys.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `[[openapi]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenApiFile {
    file: Spanned<PathBuf>,
    upstream: Spanned<String>,
    auth: Option<Spanned<AuthList>>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    rate_limits: Vec<Spanned<String>>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    docs: Option<DocsFile>,
    /// `route` (default) or `skip` operations marked `x-internal: true`.
    #[serde(default)]
    internal_operations: Internal,
    #[serde(default)]
    waf: Option<crate::config::WafMode>,
}

/// What becomes of operations marked `x-internal: true`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Internal {
    /// Routed like the others (only the served document leaves them out).
    #[default]
    Route,
    /// Not routed at all: this gateway does not reach them.
    Skip,
}

/// `docs = { path = "/openapi.json", ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocsFile {
    path: Spanned<String>,
    #[serde(default)]
    auth: Option<Spanned<AuthList>>,
    #[serde(default = "yes")]
    hide_servers: bool,
    #[serde(default = "yes")]
    hide_examples: bool,
}

/// What one `[[openapi]]` brought in, for `gateway check`.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The document.
    pub file: String,
    /// Its `info.title` and `openapi` version.
    pub title: String,
    /// Operations imported as routes, as `METHOD /path`.
    pub routes: Vec<String>,
    /// Operations or parts left out, and why.
    pub skipped: Vec<String>,
    /// Where the document is served, if it is.
    pub docs: Option<String>,
}

/// One imported route: how it reads in the file, and the name errors give it.
pub(super) struct Imported {
    pub(super) route: RouteFile,
    pub(super) name: String,
    /// For a docs route: the redacted document.
    pub(super) serve: Option<Arc<[u8]>>,
}

/// Reads every `[[openapi]]` document into routes, literal paths before
/// templated ones (`/users/me` before `/users/{id}`), else by path.
pub(super) fn import(
    files: &[OpenApiFile],
    config: &str,
    invalid: &Invalid<'_>,
) -> Result<(Vec<Imported>, Vec<ImportReport>), ConfigError> {
    let mut routes = Vec::new();
    let mut reports = Vec::new();
    for (k, o) in files.iter().enumerate() {
        let key = format!("openapi[{k}]");
        let fail = |m: String| invalid(Some(o.file.span()), key.clone(), m);
        let path = relative_to(config, o.file.get_ref());
        let doc = load(&path).map_err(&fail)?;
        let mut report = ImportReport {
            file: path.display().to_string(),
            title: format!(
                "{} (OpenAPI {})",
                doc.pointer("/info/title")
                    .and_then(Value::as_str)
                    .unwrap_or("untitled"),
                doc["openapi"].as_str().unwrap_or("?")
            ),
            routes: Vec::new(),
            skipped: Vec::new(),
            docs: None,
        };
        let mut ops = operations(&doc, o, &mut report).map_err(&fail)?;
        ops.sort_by_key(|(path, _)| template_rank(path));
        for (path, mut route) in ops {
            route.path = Some(Spanned::new(o.file.span(), path.clone()));
            let name = format!("{key} {} {path}", route.methods[0].get_ref());
            report
                .routes
                .push(format!("{} {path}", route.methods[0].get_ref()));
            routes.push(Imported {
                route,
                name,
                serve: None,
            });
        }
        if let Some(d) = &o.docs {
            let body = serde_json::to_vec(&redacted(&doc, d)).map_err(|e| fail(e.to_string()))?;
            let mut route = base_route(o);
            route.path = Some(d.path.clone());
            route.methods = ["GET", "HEAD"]
                .map(|m| Spanned::new(d.path.span(), m.to_owned()))
                .into();
            if let Some(auth) = &d.auth {
                route.auth = Some(auth.clone());
            }
            report.docs = Some(d.path.get_ref().clone());
            routes.push(Imported {
                route,
                name: format!("{key}.docs"),
                serve: Some(body.into()),
            });
        }
        reports.push(report);
    }
    Ok((routes, reports))
}

/// Literal segments sort before parameters, segment by segment.
fn template_rank(path: &str) -> Vec<u8> {
    path.split('/')
        .map(|s| u8::from(s.starts_with('{')))
        .collect()
}

/// The document, JSON or YAML, if it is OpenAPI 3.0 or 3.1.
fn load(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    match doc.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0.") || v.starts_with("3.1.") => Ok(doc),
        Some(v) => Err(format!(
            "{}: OpenAPI {v}; 3.0 and 3.1 are imported",
            path.display()
        )),
        None => Err(format!(
            "{}: no `openapi` version (Swagger 2.0 is not imported: convert it to 3.x)",
            path.display()
        )),
    }
}

/// A route with the `[[openapi]]` entry's settings and nothing of an operation yet.
fn base_route(o: &OpenApiFile) -> RouteFile {
    RouteFile {
        name: None,
        host: None,
        path_prefix: None,
        path: None,
        methods: Vec::new(),
        upstream: o.upstream.clone(),
        max_body_bytes: o.max_body_bytes,
        auth: o.auth.clone(),
        roles: o.roles.clone(),
        consumers: Vec::new(),
        scopes: Vec::new(),
        claims: Default::default(),
        rate_limits: o.rate_limits.clone(),
        response_headers: None,
        cors: None,
        content_types: Vec::new(),
        body_schema: None,
        body_required: false,
        params: Vec::new(),
        waf: o.waf,
        grpc: None,
        websocket: None,
    }
}

/// Every operation as (path, route).
fn operations(
    doc: &Value,
    o: &OpenApiFile,
    report: &mut ImportReport,
) -> Result<Vec<(String, RouteFile)>, String> {
    let v30 = doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.0."));
    let span = o.file.span();
    let mut out = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (path, item) in paths {
        let item = resolve(doc, item)?;
        let partial = path
            .split('/')
            .any(|s| s.contains('{') && !(s.starts_with('{') && s.ends_with('}')));
        if partial {
            report.skipped.push(format!(
                "{path}: a parameter inside a segment (only whole `{{name}}` segments are routed)"
            ));
            continue;
        }
        for method in METHODS {
            let Some(op) = item.get(method) else {
                continue;
            };
            let upper = method.to_ascii_uppercase();
            let mut route = base_route(o);
            route.methods = vec![Spanned::new(span.clone(), upper.clone())];
            let skip = |report: &mut ImportReport, why: String| {
                report.skipped.push(format!("{upper} {path}: {why}"));
            };
            if o.internal_operations == Internal::Skip && (internal(item) || internal(op)) {
                skip(report, "x-internal (internal_operations = \"skip\")".into());
                continue;
            }
            let here = |e: String| format!("{upper} {path}: {e}");
            let mut notes = Vec::new();
            body(doc, op, v30, &span, &mut route, &mut notes).map_err(here)?;
            let shared = item.get("parameters");
            route.params = parameters(doc, shared, op.get("parameters"), v30, &span, &mut notes)
                .map_err(here)?;
            for n in notes {
                skip(report, n);
            }
            out.push((path.clone(), route));
        }
    }
    Ok(out)
}

/// The operation's request body: its media types, and its JSON Schema when
/// every media type is JSON.
fn body(
    doc: &Value,
    op: &Value,
    v30: bool,
    span: &std::ops::Range<usize>,
    route: &mut RouteFile,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let Some(rb) = op.get("requestBody") else {
        return Ok(());
    };
    let rb = resolve(doc, rb)?;
    let content = rb.get("content").and_then(Value::as_object);
    // `application/json; charset=utf-8` is `application/json`.
    let types: Vec<(String, &Value)> = content
        .map(|c| {
            c.iter()
                .map(|(t, m)| {
                    (
                        t.split(';')
                            .next()
                            .unwrap_or("")
                            .trim()
                            .to_ascii_lowercase(),
                        m,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if types.iter().any(|(t, _)| t.contains('*')) {
        notes.push("a media range in the request body: any media type, not validated".into());
        return Ok(());
    }
    route.content_types = types
        .iter()
        .map(|(t, _)| Spanned::new(span.clone(), t.clone()))
        .collect();
    if types.is_empty() || !types.iter().all(|(t, _)| crate::http::is_json(t)) {
        // Other media types pass unjudged: say so rather than half-validate.
        if !types.is_empty() {
            notes
                .push("a body that is not JSON: media types checked, content not validated".into());
        }
        return Ok(());
    }
    // One schema judges every JSON type: `application/json`'s if given.
    let schema = types
        .iter()
        .find(|(t, m)| t == "application/json" && m.get("schema").is_some())
        .or_else(|| types.iter().find(|(_, m)| m.get("schema").is_some()))
        .and_then(|(_, m)| m.get("schema"))
        .map(|s| standalone(doc, s, v30))
        .transpose()?;
    if let Some(schema) = schema {
        route.body_schema = Some(Spanned::new(span.clone(), SchemaSource::Inline(schema)));
        route.body_required = rb.get("required").and_then(Value::as_bool).unwrap_or(false);
    }
    Ok(())
}

/// Query and path parameters of a path item and its operation (the
/// operation's win on the same name and place); header and cookie ones
/// are noted and left out.
fn parameters(
    doc: &Value,
    shared: Option<&Value>,
    own: Option<&Value>,
    v30: bool,
    span: &std::ops::Range<usize>,
    notes: &mut Vec<String>,
) -> Result<Vec<ParamFile>, String> {
    let mut merged: Vec<&Value> = Vec::new();
    for list in [shared, own].into_iter().flatten() {
        for p in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            let p = resolve(doc, p)?;
            let same = |q: &&Value| q.get("name") == p.get("name") && q.get("in") == p.get("in");
            merged.retain(|q| !same(q));
            merged.push(p);
        }
    }
    let mut out = Vec::new();
    for p in merged {
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        let at = p.get("in").and_then(Value::as_str).unwrap_or_default();
        if at != "query" && at != "path" {
            notes.push(format!("{at} parameter `{name}` not validated"));
            continue;
        }
        let Some(schema) = p.get("schema") else {
            notes.push(format!(
                "{at} parameter `{name}` has no schema (`content` is not imported)"
            ));
            continue;
        };
        let style = p.get("style").and_then(Value::as_str);
        if style.is_some_and(|s| s != "form" && s != "simple")
            || p.get("explode") == Some(&Value::Bool(false))
        {
            notes.push(format!(
                "{at} parameter `{name}`: only the default style is validated"
            ));
            continue;
        }
        out.push(ParamFile::new(
            Spanned::new(span.clone(), name.to_owned()),
            Spanned::new(span.clone(), at.to_owned()),
            p.get("required").and_then(Value::as_bool).unwrap_or(false),
            standalone(doc, schema, v30)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_doc(doc: &str) -> Result<Config, String> {
        let dir =
            std::env::temp_dir().join(format!("gw-openapi-{}-{}", std::process::id(), doc.len()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("api.json"), doc).map_err(|e| e.to_string())?;
        let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:9000\"]\n[[openapi]]\nfile = \"api.json\"\nupstream = \"app\"\nauth = \"none\"\n";
        let parsed = Config::parse(text, &dir.join("gw.toml").display().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        parsed.map_err(|e| e.to_string())
    }

    #[test]
    fn a_recursive_31_schema_becomes_standalone() {
        let doc = r##"{"openapi": "3.1.0", "info": {"title": "Tree", "version": "1"},
          "paths": {"/trees": {"put": {"requestBody": {"content": {"application/json":
            {"schema": {"$ref": "#/components/schemas/Node"}}}}}}},
          "components": {"schemas": {"Node": {"type": "object", "required": ["name"],
            "properties": {"name": {"type": ["string", "null"]}, "any": true,
              "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}}}}}"##;
        let cfg = load_doc(doc).expect("imports");
        let r = &cfg.routes[0];
        assert_eq!(r.methods, ["PUT"]);
        assert_eq!(r.path, PathMatch::Exact("/trees".into()));
        let s = r.body_schema.as_ref().expect("schema");
        let mut scratch = crate::stages::validation::Scratch::new(32);
        let mut problem = String::new();
        let mut judge = |b: &str| {
            crate::stages::validation::check_body(s, b.as_bytes(), &mut scratch, &mut problem)
        };
        assert!(judge(r#"{"name":"a","children":[{"name":null,"children":[]}]}"#).is_ok());
        assert!(judge(r#"{"name":"a","children":[{"children":[]}]}"#).is_err());
        assert_eq!(cfg.openapi[0].title, "Tree (OpenAPI 3.1.0)");
    }

    #[test]
    fn documents_it_cannot_import_are_refused_clearly() {
        let e = load_doc(r#"{"swagger": "2.0", "paths": {}}"#).expect_err("swagger");
        assert!(e.contains("Swagger 2.0 is not imported"), "{e}");
        let e = load_doc(r##"{"openapi": "3.0.0", "paths": {"/a": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Gone"}}}}}}}}"##)
            .expect_err("dangling");
        assert!(
            e.contains("openapi[0]: POST /a: $ref `#/components/schemas/Gone` points at nothing"),
            "{e}"
        );
        let e = load_doc(r#"{"openapi": "3.0.0", "paths": {"/a/{id}": {"get": {"parameters": [{"name": "other", "in": "path", "schema": {"type": "string"}}]}}}}"#)
            .expect_err("path parameter without a segment");
        assert!(e.contains("openapi[0] GET /a/{id}.params[0]"), "{e}");
        // `; charset` is no other media type; a media range is any.
        let cfg = load_doc(r#"{"openapi": "3.1.0", "paths": {"/j": {"post": {"requestBody": {"content": {"application/json; charset=utf-8": {"schema": {"type": "object"}}}}}}, "/any": {"post": {"requestBody": {"content": {"*/*": {"schema": {"type": "string"}}}}}}}}"#)
            .expect("imports");
        let at = |p: &str| {
            cfg.routes
                .iter()
                .find(|r| r.path == PathMatch::Exact(p.into()))
                .expect("route")
        };
        assert_eq!(at("/j").content_types, ["application/json"]);
        assert!(at("/j").body_schema.is_some());
        assert!(at("/any").content_types.is_empty() && at("/any").body_schema.is_none());
        assert!(
            cfg.openapi[0]
                .skipped
                .iter()
                .any(|s| s.contains("media range")),
            "{:?}",
            cfg.openapi[0].skipped
        );
        // A form body passes unjudged, and says so.
        let cfg = load_doc(r#"{"openapi": "3.0.0", "paths": {"/f": {"post": {"requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object"}}}}}}}}"#)
            .expect("imports");
        assert!(cfg.routes[0].body_schema.is_none());
        assert_eq!(cfg.routes[0].content_types, ["multipart/form-data"]);
    }
}
