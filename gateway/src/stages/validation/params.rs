//! Query and path parameters, validated as the body is: each declared
//! parameter's value, percent-decoded strictly and read as the type its
//! schema names, against that schema.
//!
//! The query is split on `&`, each pair at its first `=`, `+` is a space
//! (form encoding) and `%XX` escapes must decode to UTF-8. A declared
//! parameter given twice is refused unless its schema is an array: backends
//! disagree on whether the first or the last one counts (parameter
//! pollution), so the gateway would judge another value than the backend reads.

use std::{borrow::Cow, fmt, sync::Arc};

use serde_json::Value;

use crate::respond::Failure;

/// A query parameter broke its rule.
pub const QUERY: Failure = Failure::client(400, "validation.query");
/// A path parameter broke its rule.
pub const PATH: Failure = Failure::client(400, "validation.path");

/// Where a parameter is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A `{name}` segment of the route's path template.
    Path,
    /// The query string.
    Query,
}

/// How a parameter's text is read before its schema judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// As text.
    String,
    /// As an integer when it is one (else the schema's `type` refuses it).
    Integer,
    /// As a number when it is one.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl Kind {
    /// The kind a schema's `type` asks for (the first that is not
    /// `null` in a list), following a `$ref` into its `$defs`; without a
    /// type, numeric keywords ask for a number.
    pub fn of(schema: &Value) -> Self {
        let target = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|k| {
                schema
                    .get("$defs")?
                    .get(k.replace("~1", "/").replace("~0", "~"))
            })
            .unwrap_or(schema);
        let ty = match target.get("type") {
            Some(Value::String(t)) => Some(t.as_str()),
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
            _ => None,
        };
        let numeric = [
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
        ];
        match ty {
            Some("integer") => Self::Integer,
            Some("number") => Self::Number,
            Some("boolean") => Self::Boolean,
            None if numeric.iter().any(|k| target.get(k).is_some()) => Self::Number,
            _ => Self::String,
        }
    }

    fn read(self, text: &str) -> Value {
        let parsed = match self {
            Self::String => None,
            Self::Integer => text
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| text.parse::<u64>().map(Value::from))
                .ok(),
            Self::Number => text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && !text.contains(['i', 'n', 'I', 'N']))
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            Self::Boolean => match text {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
        };
        parsed.unwrap_or_else(|| Value::String(text.to_owned()))
    }
}

/// One declared parameter.
#[derive(Clone)]
pub struct Param {
    /// Its name.
    pub name: String,
    /// Where it is read.
    pub location: Location,
    /// Absent: refused.
    pub required: bool,
    /// The schema takes an array: every occurrence, in order.
    pub array: bool,
    /// How each value's text is read.
    pub kind: Kind,
    /// For a path parameter: its segment in the template.
    pub segment: usize,
    /// The schema, on `serde_json` (values are small and built per request).
    pub validator: Arc<jsonschema::Validator>,
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Param")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("required", &self.required)
            .finish()
    }
}

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

/// The query's `name=value` pairs (a pair without `=` has an empty value).
pub fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Percent-decodes `s` (and `+` as a space in a query), strictly: a broken
/// escape or bytes that are not UTF-8 give `None`.
pub fn decode(s: &str, plus_is_space: bool) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(hex_pair(bytes.get(i + 1..i + 3)?)?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The byte two ASCII hex digits spell (no sign, unlike `from_str_radix`).
pub fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    match pair {
        [a, b] => Some((digit(*a)? * 16 + digit(*b)?) as u8),
        _ => None,
    }
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
