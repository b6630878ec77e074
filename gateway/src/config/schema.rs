//! A route's `body_schema`: a JSON Schema file (beside the configuration)
//! or an inline table, compiled once at load.

use super::*;
use crate::{
    http::is_json,
    json::{BodySchema, Kind, Location, Param, compile, compile_reference},
};

/// Largest body a validating route may buffer: the whole body is read
/// before it is judged.
pub const MAX_VALIDATED_BODY: u64 = 16 * 1024 * 1024;

/// `body_schema = "file.json"` or `body_schema = { type = "object", ... }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SchemaSource {
    /// A JSON file, relative to the configuration.
    File(PathBuf),
    /// The schema itself, written in TOML.
    Inline(serde_json::Map<String, serde_json::Value>),
}

/// `[[routes.params]]`: a query or path parameter and its schema.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ParamFile {
    name: Spanned<String>,
    #[serde(rename = "in")]
    location: Spanned<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    schema: serde_json::Map<String, serde_json::Value>,
}

impl ParamFile {
    /// A parameter as an OpenAPI document declares it.
    pub(super) fn new(
        name: Spanned<String>,
        location: Spanned<String>,
        required: bool,
        schema: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Self {
            name,
            location,
            required,
            schema,
        }
    }
}

/// What a body schema holds a route to: its media types (JSON only; the
/// default becomes `application/json`) and its body limit.
pub(super) struct BodyRules<'a> {
    pub(super) content_types: &'a mut Vec<String>,
    pub(super) max_body_bytes: u64,
}

/// Compiles route `i`'s body schema, if it has one, and holds the route to
/// what validation needs: JSON media types only (a body of another type
/// would pass unjudged) and a body limit that fits in memory.
pub(super) fn route_body_schema(
    i: usize,
    (body_schema, body_required): (Option<&Spanned<SchemaSource>>, bool),
    route: &mut BodyRules<'_>,
    file: &str,
    invalid: &Invalid<'_>,
) -> Result<Option<BodySchema>, ConfigError> {
    let Some(source) = body_schema else {
        if body_required {
            return Err(invalid(
                None,
                format!("routes[{i}].body_required"),
                "needs a body_schema".into(),
            ));
        }
        return Ok(None);
    };
    let key = format!("routes[{i}].body_schema");
    let fail = |m: String| invalid(Some(source.span()), key.clone(), m);
    let (schema, from) = match source.get_ref() {
        SchemaSource::Inline(map) => (serde_json::Value::Object(map.clone()), "inline".to_owned()),
        SchemaSource::File(p) => {
            let path = relative_to(file, p);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            let value = serde_json::from_str(&text)
                .map_err(|e| fail(format!("{} is not JSON: {e}", path.display())))?;
            (value, path.display().to_string())
        }
    };
    let validator = compile(&schema).map_err(|e| fail(format!("{from}: {e}")))?;
    if route.content_types.is_empty() {
        route.content_types.push("application/json".into());
    }
    if let Some(t) = route.content_types.iter().find(|t| !is_json(t)) {
        return Err(invalid(
            None,
            format!("routes[{i}].content_types"),
            format!("`{t}` is not JSON, and a body_schema judges JSON bodies only"),
        ));
    }
    if route.max_body_bytes > MAX_VALIDATED_BODY {
        return Err(invalid(
            None,
            format!("routes[{i}].max_body_bytes"),
            format!(
                "{} bytes: a route with a body_schema reads the whole body first; give it at most {MAX_VALIDATED_BODY}",
                route.max_body_bytes
            ),
        ));
    }
    Ok(Some(BodySchema {
        validator: std::sync::Arc::new(validator),
        source: from,
        required: body_required,
    }))
}

/// Compiles route `i`'s parameters: path ones must name a `{segment}` of
/// its template (and are required), query ones are named once.
pub(super) fn route_params(
    i: usize,
    params: &[ParamFile],
    segment_of: impl Fn(&str) -> Option<usize>,
    invalid: &Invalid<'_>,
) -> Result<Vec<Param>, ConfigError> {
    let mut out: Vec<Param> = Vec::new();
    for (n, p) in params.iter().enumerate() {
        let key = format!("routes[{i}].params[{n}]");
        let name = p.name.get_ref();
        let fail = |span: std::ops::Range<usize>, m: String| invalid(Some(span), key.clone(), m);
        let (location, segment) = match p.location.get_ref().as_str() {
            "query" => (Location::Query, 0),
            "path" => {
                let Some(at) = segment_of(name) else {
                    return Err(fail(
                        p.name.span(),
                        format!("the route's path has no `{{{name}}}` segment"),
                    ));
                };
                // Segment 0 is the empty text before the first `/`.
                (Location::Path, at + 1)
            }
            other => {
                return Err(fail(
                    p.location.span(),
                    format!(
                        "`{other}`: parameters are `query` or `path` (headers and cookies are not validated)"
                    ),
                ));
            }
        };
        if out
            .iter()
            .any(|q| q.name == *name && q.location == location)
        {
            return Err(fail(p.name.span(), format!("`{name}` is declared twice")));
        }
        let schema = serde_json::Value::Object(p.schema.clone());
        let validator =
            compile_reference(&schema).map_err(|e| fail(p.name.span(), format!("schema: {e}")))?;
        let array = schema.get("type").and_then(|t| t.as_str()) == Some("array");
        let items = if array {
            schema.get("items").unwrap_or(&schema)
        } else {
            &schema
        };
        out.push(Param {
            name: name.clone(),
            location,
            required: p.required || location == Location::Path,
            array,
            kind: Kind::of(items),
            segment,
            validator: std::sync::Arc::new(validator),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nupstream = \"app\"\nauth = \"none\"\n";

    fn parse(route: &str) -> Result<Config, String> {
        Config::parse(&format!("{HEAD}{route}"), "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn an_inline_schema_compiles_and_implies_json() {
        let c = parse("body_schema = { type = \"object\", required = [\"a\"] }\n").expect("valid");
        let r = &c.routes[0];
        assert_eq!(r.content_types, ["application/json"]);
        let s = r.body_schema.as_ref().expect("schema");
        assert_eq!(s.source, "inline");
        assert!(!s.required);
    }

    #[test]
    fn schema_mistakes_name_their_line() {
        let e = parse("content_types = [\"text/plain\"]\nbody_schema = { type = \"object\" }\n")
            .expect_err("text");
        assert!(e.contains("`text/plain` is not JSON"), "{e}");
        let e = parse("body_schema = { type = \"objekt\" }\n").expect_err("bad schema");
        assert!(
            e.starts_with("t.toml:9: routes[0].body_schema: inline: "),
            "{e}"
        );
        assert!(e.contains("at /type"), "{e}");
        let e = parse("body_schema = { properties = { a = { pattern = \"(\" } } }\n")
            .expect_err("bad pattern");
        assert!(e.contains("routes[0].body_schema"), "{e}");
        let e = parse("body_schema = \"/nonexistent/s.json\"\n").expect_err("no file");
        assert!(e.contains("cannot read /nonexistent/s.json"), "{e}");
        let e = parse("body_required = true\n").expect_err("no schema");
        assert!(
            e.contains("routes[0].body_required: needs a body_schema"),
            "{e}"
        );
        let e = parse("max_body_bytes = 104857600\nbody_schema = { type = \"object\" }\n")
            .expect_err("too big");
        assert!(e.contains("reads the whole body first"), "{e}");
    }

    #[test]
    fn a_schema_file_is_read_beside_the_configuration() {
        let dir = std::env::temp_dir().join(format!("gw-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("s.json"), r#"{"type":"array"}"#).expect("write");
        std::fs::write(dir.join("bad.json"), "{nope").expect("write");
        let file = dir.join("gw.toml");
        let text = format!("{HEAD}body_schema = \"s.json\"\n");
        let c = Config::parse(&text, &file.display().to_string()).expect("valid");
        let source = &c.routes[0].body_schema.as_ref().expect("schema").source;
        assert_eq!(source, &dir.join("s.json").display().to_string());
        let text = format!("{HEAD}body_schema = \"bad.json\"\n");
        let e = Config::parse(&text, &file.display().to_string()).expect_err("not json");
        assert!(e.to_string().contains("bad.json is not JSON"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
