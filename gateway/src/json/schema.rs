//! The schemas a route holds, compiled once at load: the body's JSON
//! Schema on the simd-json tape, and each declared query or path
//! parameter with the kind its text is read as.

use std::{fmt, sync::Arc};

use serde_json::Value;

use super::TapeJson;

/// A route's compiled body schema.
#[derive(Clone)]
pub struct BodySchema {
    /// The validator, on the simd-json tape.
    pub validator: Arc<jsonschema::Validator<TapeJson>>,
    /// Where it came from (a file, `inline`, an OpenAPI operation), for `gateway check`.
    pub source: String,
    /// A request without a body is refused.
    pub required: bool,
}

impl fmt::Debug for BodySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySchema")
            .field("source", &self.source)
            .field("required", &self.required)
            .finish()
    }
}

/// Compiles a draft 2020-12 schema (unless it names another draft in
/// `$schema`), with formats checked and patterns on a linear-time engine:
/// an operator's pattern can never make a request backtrack for long.
pub fn compile(schema: &serde_json::Value) -> Result<jsonschema::Validator<TapeJson>, String> {
    jsonschema::options_for::<TapeJson>()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|e| match e.instance_path().as_str() {
            "" => e.to_string(),
            at => format!("{e} (at {at})"),
        })
}

/// The same schema compiled the same way for `serde_json::Value`: the
/// reference the tape is held to (fuzz target, benchmark), and the
/// validator of query and path parameters (small values built per request).
pub fn compile_reference(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|e| e.to_string())
}

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

    /// The JSON value `text` reads as: the kind's type when it parses as
    /// one, else the text itself (for the schema to refuse).
    pub fn read(self, text: &str) -> Value {
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
