//! Query and path parameters, validated as the body is: each declared
//! parameter's value, percent-decoded strictly and read as the type its
//! schema names, against that schema.
//!
//! The query is split on `&`, each pair at its first `=`, `+` is a space
//! (form encoding) and `%XX` escapes must decode to UTF-8. A declared
//! parameter given twice is refused unless its schema is an array: backends
//! disagree on whether the first or the last one counts (parameter
//! pollution), so the gateway would judge another value than the backend reads.

use std::{borrow::Cow, sync::Arc};

use serde_json::Value;

pub use crate::http::query::{decode, pairs};
pub use crate::json::schema::{Kind, Location, Param};
use crate::respond::Failure;

/// A query parameter broke its rule.
pub const QUERY: Failure = Failure::client(400, "validation.query");
/// A path parameter broke its rule.
pub const PATH: Failure = Failure::client(400, "validation.path");

/// Why a parameter was refused, before its members are written.
struct Refusal<'a> {
    failure: Failure,
    name: &'a str,
    rule: &'a str,
    message: Cow<'a, str>,
}

/// Judges the declared parameters of a request: `path` is the routed path
/// (its segments as normalized), `query` the raw query without `?`.
pub fn check(
    params: &[Param],
    path: &str,
    query: &str,
    problem: &mut String,
) -> Result<(), Failure> {
    for p in params {
        if let Err(r) = check_one(p, path, query) {
            super::write_problem(problem, r.name, r.rule, &r.message);
            let at = match p.location {
                Location::Path => "path",
                Location::Query => "query",
            };
            problem.push_str(&format!(",\"in\":\"{at}\""));
            return Err(r.failure);
        }
    }
    Ok(())
}

fn check_one<'a>(p: &'a Param, path: &str, query: &str) -> Result<(), Refusal<'a>> {
    let refuse = |failure, rule, message: Cow<'a, str>| Refusal {
        failure,
        name: &p.name,
        rule,
        message,
    };
    let (failure, value) = match p.location {
        Location::Path => {
            let raw = path.split('/').nth(p.segment).unwrap_or("");
            let text = decode(raw, false)
                .ok_or_else(|| refuse(PATH, "encoding", "not UTF-8 once decoded".into()))?;
            (PATH, p.kind.read(&text))
        }
        Location::Query => {
            let mut values = Vec::new();
            let want = folded(&p.name);
            for (k, v) in pairs(query) {
                let bad = || refuse(QUERY, "encoding", "not UTF-8 once decoded".into());
                let name = decode(k, true).ok_or_else(bad)?;
                if name == p.name.as_str() {
                    values.push(p.kind.read(&decode(v, true).ok_or_else(bad)?));
                } else if folded(&name) == want {
                    // `Limit`, `limit[]`: a backend may read it as this one.
                    return Err(refuse(
                        QUERY,
                        "ambiguous",
                        "given under a name a backend may read as this parameter".into(),
                    ));
                }
            }
            let value = match (values.len(), p.array) {
                (0, _) if p.required => {
                    return Err(refuse(
                        QUERY,
                        "required",
                        "a required parameter is missing".into(),
                    ));
                }
                (0, _) => return Ok(()),
                (_, true) => Value::Array(values),
                (1, false) => values.remove(0),
                (_, false) => {
                    return Err(refuse(QUERY, "repeated", "given more than once".into()));
                }
            };
            (QUERY, value)
        }
    };
    p.validator.validate(&value).map_err(|e| Refusal {
        failure,
        name: &p.name,
        rule: keyword(e.kind().keyword()),
        message: e.masked().to_string().into(),
    })
}

/// The keyword as a `'static` name where it is a known one.
fn keyword(k: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "type",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minItems",
        "maxItems",
        "uniqueItems",
        "items",
    ];
    KNOWN.iter().find(|n| **n == k).copied().unwrap_or("schema")
}

/// A parameter name as lenient backends fold it: ASP.NET ignores case, PHP
/// turns `.` and spaces into `_` and reads `name[]` as `name`.
fn folded(name: &str) -> String {
    name.strip_suffix("[]")
        .unwrap_or(name)
        .chars()
        .map(|c| match c {
            '.' | ' ' | '[' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The body of the `query` fuzz target: decoding never panics, a decoded
/// value re-encoded decodes to itself, and a declared parameter's verdict
/// never depends on pairs of other names. Whether the declared parameter
/// passed (for the unit tests' count).
pub fn fuzz_query(data: &[u8]) -> bool {
    let Ok(query) = std::str::from_utf8(data) else {
        return false;
    };
    for (k, v) in pairs(query) {
        for raw in [k, v] {
            if let Some(d) = decode(raw, true) {
                let again: String = d
                    .bytes()
                    .map(|b| match b {
                        b'%' | b'+' | b'&' | b'=' => format!("%{b:02X}"),
                        b' ' => "+".into(),
                        _ => (b as char).to_string(),
                    })
                    .collect::<String>();
                // Non-ASCII went through `char` per byte above: compare bytes.
                if d.is_ascii() {
                    assert_eq!(decode(&again, true).as_deref(), Some(&*d));
                }
            }
        }
    }
    let schema = serde_json::json!({"type": "integer", "minimum": 1, "maximum": 100});
    let param = Param {
        name: "limit".into(),
        location: Location::Query,
        required: false,
        array: false,
        kind: Kind::Integer,
        segment: 0,
        validator: Arc::new(super::compile_reference(&schema).expect("schema")),
    };
    let mut problem = String::new();
    let alone = check(std::slice::from_ref(&param), "/", query, &mut problem);
    let others: String = pairs(query)
        .filter(|(k, _)| decode(k, true).as_deref() != Some("limit"))
        .map(|(k, v)| format!("&x{k}={v}"))
        .collect();
    let mixed = format!("{query}{others}");
    let with = check(std::slice::from_ref(&param), "/", &mixed, &mut problem);
    assert_eq!(alone, with, "{query:?} vs {mixed:?}");
    alone.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, location: Location, schema: Value, required: bool) -> Param {
        Param {
            name: name.into(),
            location,
            required,
            array: schema.get("type").and_then(Value::as_str) == Some("array"),
            kind: Kind::of(schema.get("items").unwrap_or(&schema)),
            segment: 2,
            validator: Arc::new(super::super::compile_reference(&schema).expect("schema")),
        }
    }

    fn judge(params: &[Param], path: &str, query: &str) -> Result<(), (Failure, Value)> {
        let mut problem = String::new();
        check(params, path, query, &mut problem).map_err(|f| {
            let v = serde_json::from_str(&format!("{{\"x\":0{problem}}}")).expect("members");
            (f, v)
        })
    }

    #[test]
    fn query_parameters_are_read_as_their_schema_types() {
        let ps = [
            param(
                "limit",
                Location::Query,
                serde_json::json!({"type": "integer", "minimum": 1, "maximum": 100}),
                false,
            ),
            param(
                "q",
                Location::Query,
                serde_json::json!({"type": "string", "maxLength": 5}),
                true,
            ),
            param(
                "tag",
                Location::Query,
                serde_json::json!({"type": "array", "items": {"enum": ["a", "b"]}}),
                false,
            ),
            param(
                "all",
                Location::Query,
                serde_json::json!({"type": "boolean"}),
                false,
            ),
        ];
        assert_eq!(
            judge(&ps, "/", "q=hi&limit=10&tag=a&tag=b&all=true&other=%ff"),
            Ok(())
        );
        assert_eq!(judge(&ps, "/", "q=a+b"), Ok(()));
        let cases = [
            ("q=x&limit=0", "limit", "minimum"),
            ("q=x&limit=ten", "limit", "type"),
            ("q=x&limit=1&limit=500", "limit", "repeated"),
            ("limit=5", "q", "required"),
            ("q=toolong", "q", "maxLength"),
            ("q=%e9%20x%zz", "q", "encoding"),
            ("q=%ff", "q", "encoding"),
            ("q=x&tag=c", "tag", "enum"),
            ("q=x&all=yes", "all", "type"),
            ("q=x&li%6dit=1000", "limit", "maximum"),
            // Names a lenient backend folds into `limit`.
            ("q=x&limit=1&Limit=1000", "limit", "ambiguous"),
            ("q=x&limit[]=1000", "limit", "ambiguous"),
            ("q=x&limit=%+5", "limit", "encoding"),
        ];
        for (query, field, rule) in cases {
            let (f, p) = judge(&ps, "/", query).expect_err(query);
            assert_eq!(f, QUERY, "{query}");
            assert_eq!(
                (p["field"].as_str(), p["rule"].as_str(), p["in"].as_str()),
                (Some(field), Some(rule), Some("query")),
                "{query}: {p}"
            );
        }
    }

    #[test]
    fn kinds_follow_type_lists_refs_and_numeric_keywords() {
        use serde_json::json;
        assert_eq!(
            Kind::of(&json!({"type": ["integer", "null"]})),
            Kind::Integer
        );
        assert_eq!(
            Kind::of(&json!({"type": ["null", "boolean"]})),
            Kind::Boolean
        );
        assert_eq!(Kind::of(&json!({"minimum": 1})), Kind::Number);
        let by_ref = json!({"$ref": "#/$defs/~1components~1schemas~1Id", "$defs": {"/components/schemas/Id": {"type": "integer"}}});
        assert_eq!(Kind::of(&by_ref), Kind::Integer);
        assert_eq!(Kind::of(&json!({"enum": ["a"]})), Kind::String);
    }

    #[test]
    fn path_parameters_are_decoded_and_judged() {
        let ps = [param(
            "id",
            Location::Path,
            serde_json::json!({"type": "integer", "minimum": 1}),
            true,
        )];
        assert_eq!(judge(&ps, "/users/42", ""), Ok(()));
        let (f, p) = judge(&ps, "/users/0", "").expect_err("0");
        assert_eq!((f, p["rule"].as_str()), (PATH, Some("minimum")));
        let (_, p) = judge(&ps, "/users/1%20OR%201=1", "").expect_err("sqli");
        assert_eq!(p["rule"], "type");
        let (_, p) = judge(&ps, "/users/%C0%AF", "").expect_err("overlong");
        assert_eq!(p["rule"], "encoding");
    }

    #[test]
    fn the_query_fuzz_body_holds_on_mutated_seeds() {
        let seeds: &[&[u8]] = &[
            b"limit=5&q=a+b",
            b"limit=%31%30&limit=2",
            b"a=%zz&limit=101&=&&",
            b"limit",
        ];
        let passed = crate::http::fuzz::mutated(seeds)
            .iter()
            .filter(|input| fuzz_query(input))
            .count();
        assert!(passed >= 40, "only {passed} queries passed");
    }
}
