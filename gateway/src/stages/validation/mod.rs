//! Request validation: what a route accepts in a request before anything
//! goes upstream: the body's media type (`content_types`) and, on routes
//! with a `body_schema`, the JSON body against its JSON Schema.

mod fuzz;
pub mod params;

use std::fmt::Write as _;

use crate::{config::RouteSettings, http::request::RequestHead, respond::Failure};

pub use crate::http::is_json;
pub use crate::json::{BodySchema, Scratch, compile, compile_reference};
pub use fuzz::fuzz_json_body;
pub use params::{Param, fuzz_query};

/// The body is not a JSON document we validate (syntax, encoding, depth,
/// duplicate keys).
pub const BAD_JSON: Failure = Failure::client(400, "validation.json");
/// The body is JSON but breaks the route's schema.
pub const SCHEMA: Failure = Failure::client(400, "validation.schema");
/// The route requires a body and none came.
pub const BODY_MISSING: Failure = Failure::client(400, "validation.body_missing");

/// Judges a whole body against `schema`. On refusal, `problem` gets the
/// JSON members that name the field and the rule for the error body.
pub fn check_body(
    schema: &BodySchema,
    body: &[u8],
    scratch: &mut Scratch,
    problem: &mut String,
) -> Result<(), Failure> {
    judge_body(Some(schema), body, scratch, problem, |_| None::<()>).map(|_| ())
}

/// Parses a whole body once and judges it against `schema` (if any), then
/// hands the document to `also` (the WAF), whose finding is returned.
pub fn judge_body<T>(
    schema: Option<&BodySchema>,
    body: &[u8],
    scratch: &mut Scratch,
    problem: &mut String,
    also: impl FnOnce(crate::json::tape::TapeNode<'_>) -> Option<T>,
) -> Result<Option<T>, Failure> {
    if body.is_empty() {
        return match schema {
            Some(s) if s.required => Err(BODY_MISSING),
            _ => Ok(None),
        };
    }
    let verdict = scratch.with_document(body, |root| {
        if let Some(s) = schema {
            s.validator
                .validate(root)
                .map_err(|e| describe_schema_error(&e, problem))?;
        }
        Ok(also(root))
    });
    match verdict {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(())) => Err(SCHEMA),
        Err(e) => {
            write_problem(problem, "", e.rule(), &e.to_string());
            Err(BAD_JSON)
        }
    }
}

fn describe_schema_error(e: &jsonschema::ValidationError<'_>, problem: &mut String) {
    let message = e.masked().to_string();
    write_problem(
        problem,
        e.instance_path().as_str(),
        e.kind().keyword(),
        &message,
    );
}

/// `,"field":"<pointer>","rule":"<rule>","message":"<message>"`, each cut
/// short: the input is never echoed at length.
fn write_problem(problem: &mut String, field: &str, rule: &str, message: &str) {
    problem.clear();
    let field = cut(field, 128);
    let message = cut(message, 160);
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let _ = write!(
        problem,
        ",\"field\":{},\"rule\":{},\"message\":{}",
        quoted(field),
        quoted(rule),
        quoted(message)
    );
}

/// `s` up to `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Refuses a body whose `Content-Type` (exactly one field; its media type
/// without parameters, case-insensitive) the route does not list. A route
/// without `content_types`, or a request without a body, passes.
pub fn content_type(route: &RouteSettings, head: &RequestHead<'_, '_>) -> Result<(), Failure> {
    if route.content_types.is_empty() || !head.framing.has_body() {
        return Ok(());
    }
    let Ok(Some(media)) = media_type(head) else {
        return Err(Failure::CONTENT_TYPE);
    };
    if route
        .content_types
        .iter()
        .any(|t| t.eq_ignore_ascii_case(media))
    {
        Ok(())
    } else {
        Err(Failure::CONTENT_TYPE)
    }
}

/// The body's media type: the one `Content-Type` field's `type/subtype`,
/// without parameters, as written (compare case-insensitively);
/// [`Repeated`](crate::http::request::Repeated) for two fields.
pub fn media_type<'b>(
    head: &RequestHead<'b, '_>,
) -> Result<Option<&'b str>, crate::http::request::Repeated> {
    Ok(head.single("content-type")?.map(|v| {
        std::str::from_utf8(v)
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn schema(s: serde_json::Value) -> BodySchema {
        BodySchema {
            validator: Arc::new(compile(&s).expect("compiles")),
            source: "test".into(),
            required: false,
        }
    }

    fn judge(s: &BodySchema, body: &str) -> Result<(), (Failure, serde_json::Value)> {
        let mut scratch = Scratch::new(16);
        let mut problem = String::new();
        check_body(s, body.as_bytes(), &mut scratch, &mut problem).map_err(|f| {
            let members: serde_json::Value =
                serde_json::from_str(&format!("{{\"x\":0{problem}}}")).expect("json members");
            (f, members)
        })
    }

    fn order() -> BodySchema {
        schema(serde_json::json!({
            "type": "object",
            "required": ["id", "items"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "email": {"type": "string", "format": "email", "maxLength": 64},
                "at": {"type": "string", "format": "date-time"},
                "kind": {"enum": ["retail", "wholesale"]},
                "v": {"const": 2},
                "code": {"type": "string", "pattern": "^[A-Z]{3}$", "minLength": 3},
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["qty"],
                        "properties": {"qty": {"type": "integer", "minimum": 1, "maximum": 99}}
                    }
                }
            }
        }))
    }

    const ID: &str = "9b2d3c4e-1f2a-4b5c-8d6e-7f8091a2b3c4";

    #[test]
    fn a_valid_body_passes_every_rule() {
        let body = format!(
            r#"{{"id":"{ID}","email":"a@example.com","at":"2026-11-23T12:00:00Z","kind":"retail","v":2.0,"code":"ABC","items":[{{"qty":1}},{{"qty":99}}]}}"#
        );
        assert_eq!(judge(&order(), &body), Ok(()));
    }

    #[test]
    fn each_rule_names_its_field() {
        let s = order();
        let cases = [
            (r#""items":[{"qty":0}]"#, "/items/0/qty", "minimum"),
            (r#""items":[{"qty":100}]"#, "/items/0/qty", "maximum"),
            (r#""items":[{"qty":1.5}]"#, "/items/0/qty", "type"),
            (r#""items":[{}]"#, "/items/0", "required"),
            (r#""items":[]"#, "/items", "minItems"),
            (r#""items":[{"qty":1}],"kind":"x""#, "/kind", "enum"),
            (r#""items":[{"qty":1}],"v":3"#, "/v", "const"),
            (r#""items":[{"qty":1}],"code":"abc""#, "/code", "pattern"),
            (r#""items":[{"qty":1}],"email":"nope""#, "/email", "format"),
            (r#""items":[{"qty":1}],"at":"yesterday""#, "/at", "format"),
            (
                r#""items":[{"qty":1}],"admin":true"#,
                "",
                "additionalProperties",
            ),
        ];
        for (rest, field, rule) in cases {
            let body = format!(r#"{{"id":"{ID}",{rest}}}"#);
            let (f, p) = judge(&s, &body).expect_err(rest);
            assert_eq!(f, SCHEMA, "{rest}");
            assert_eq!(p["field"], field, "{rest}");
            assert_eq!(p["rule"], rule, "{rest}: {p}");
        }
        let (_, p) = judge(&s, r#"{"id":"not-a-uuid","items":[{"qty":1}]}"#).expect_err("uuid");
        assert_eq!(
            (p["field"].as_str(), p["rule"].as_str()),
            (Some("/id"), Some("format"))
        );
    }

    #[test]
    fn errors_never_echo_the_input_at_length() {
        let s = order();
        let long = "x".repeat(10_000);
        let body = format!(r#"{{"id":"{ID}","items":[{{"qty":1}}],"email":"{long}"}}"#);
        let (_, p) = judge(&s, &body).expect_err("too long");
        assert_eq!(p["rule"], "maxLength");
        assert!(!p.to_string().contains("xxxxxxxxxx"), "{p}");
        let key = "k".repeat(10_000);
        let body = format!(r#"{{"id":"{ID}","items":[{{"qty":1}}],"{key}":1}}"#);
        let (_, p) = judge(&s, &body).expect_err("extra key");
        assert!(p.to_string().len() < 400, "{p}");
    }

    #[test]
    fn documents_that_are_not_json_get_validation_json() {
        let s = order();
        for body in [
            "{",
            "{} x",
            r#"{"id":1,"id":2}"#,
            "[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]",
        ] {
            let (f, p) = judge(&s, body).expect_err(body);
            assert_eq!(f, BAD_JSON, "{body}");
            assert!(p["rule"].is_string(), "{p}");
        }
    }

    #[test]
    fn a_missing_body_passes_unless_required() {
        let mut s = order();
        assert_eq!(judge(&s, ""), Ok(()));
        s.required = true;
        assert_eq!(judge(&s, "").map_err(|e| e.0), Err(BODY_MISSING));
    }
}
