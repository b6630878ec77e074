//! The `json_body` fuzz target's body, run on mutated seeds by the unit
//! tests too.

use std::{cell::RefCell, sync::OnceLock};

use super::{BodySchema, Scratch, check_body, compile, compile_reference};

/// A schema that touches most keywords, compiled for the tape and for
/// `serde_json` (the reference the tape must agree with).
fn schemas() -> &'static (BodySchema, jsonschema::Validator) {
    static S: OnceLock<(BodySchema, jsonschema::Validator)> = OnceLock::new();
    S.get_or_init(|| {
        let schema = serde_json::json!({
            "type": ["object", "array", "string", "number"],
            "properties": {
                "a": {"type": "integer", "minimum": -5, "maximum": 1000},
                "b": {"type": "string", "maxLength": 8, "pattern": "^[a-z]*$"},
                "c": {"type": "array", "items": {"enum": [1, "x", null, true, 2.5]}, "uniqueItems": true},
                "d": {"const": {"k": [1, 2]}},
                "e": {"type": "string", "format": "date-time"},
                "f": {"type": "object", "additionalProperties": {"type": "number"}, "propertyNames": {"maxLength": 3}}
            },
            "items": {"anyOf": [{"type": "number", "multipleOf": 0.5}, {"$ref": "#"}]},
            "minLength": 2,
            "required": ["a"]
        });
        let tape = BodySchema {
            validator: std::sync::Arc::new(compile(&schema).expect("fuzz schema")),
            source: "fuzz".into(),
            required: false,
        };
        let reference = compile_reference(&schema).expect("fuzz schema");
        (tape, reference)
    })
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new(32));
}

/// Whatever `data` is: no panic, the caller's bytes untouched, and a body
/// the gateway accepts as a document is one `serde_json` reads too, with
/// the same verdict from the same schema. Returns whether `data` got as
/// far as the schema (so the tests know the comparison ran).
pub fn fuzz_json_body(data: &[u8]) -> bool {
    let (tape, reference) = schemas();
    let before = data.to_vec();
    let mut problem = String::new();
    let verdict = SCRATCH.with_borrow_mut(|s| {
        let mut pointer = String::new();
        // The WAF walks every accepted document without a panic.
        let _ = s.with_document(data, |root| {
            crate::stages::waf::scan_json(root, &mut pointer)
        });
        check_body(tape, data, s, &mut problem)
    });
    assert_eq!(data, &before[..], "the body was changed");
    if data.is_empty() {
        return false;
    }
    match verdict {
        Err(f) if f.reason == super::BAD_JSON.reason => false,
        other => {
            let value: serde_json::Value = serde_json::from_slice(data)
                .unwrap_or_else(|e| panic!("simd-json took what serde_json refuses: {e}"));
            assert_eq!(
                other.is_ok(),
                reference.is_valid(&value),
                "tape and serde_json disagree on {value}: {problem}"
            );
            if other.is_err() {
                let members: serde_json::Value =
                    serde_json::from_str(&format!("{{\"x\":0{problem}}}")).expect("json members");
                assert!(members["field"].is_string() && members["rule"].is_string());
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fuzz_body_holds_on_mutated_seeds() {
        let seeds: &[&[u8]] = &[
            br#"{"a":3,"b":"abc","c":[1,"x",null],"d":{"k":[1,2]},"e":"2026-11-23T00:00:00Z","f":{"x":1.5}}"#,
            br#"{"a":3.0,"c":[1,1],"f":{"long":1}}"#,
            br#"[1,2.5,[0.5,{"a":1}],"xy"]"#,
            br#"{"a":1e2,"b":"A","a2":"\u00e9\ud83d\ude00"}"#,
            br#""a""#,
            b"-0.0",
        ];
        let mut inputs = crate::http::fuzz::mutated(seeds);
        // Documents that are JSON, to compare verdicts on: random values
        // over the schema's own names and edge values.
        let mut x: u32 = 0x2545_f491;
        for _ in 0..600 {
            let mut doc = String::new();
            random_value(&mut x, 0, &mut doc);
            inputs.push(doc.into_bytes());
        }
        let mut judged = (0, 0);
        for input in inputs {
            if super::fuzz_json_body(&input) {
                judged.0 += 1;
            }
            judged.1 += 1;
        }
        assert!(
            judged.0 >= 500,
            "only {} of {} reached the schema",
            judged.0,
            judged.1
        );
    }

    fn next(x: &mut u32) -> u32 {
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        *x
    }

    fn random_value(x: &mut u32, depth: u32, out: &mut String) {
        const SCALARS: &[&str] = &[
            "1",
            "-5",
            "-6",
            "1000",
            "1001",
            "2.5",
            "3.0",
            "0.5",
            "1e2",
            "-0",
            "null",
            "true",
            "\"x\"",
            "\"abc\"",
            "\"abcdefghi\"",
            "\"A\"",
            "\"2026-11-23T00:00:00Z\"",
            "\"2026-13-23\"",
            "\"\\u00e9\"",
            "18446744073709551615",
            "-9223372036854775808",
        ];
        const KEYS: &[&str] = &["a", "b", "c", "d", "e", "f", "k", "xy", "long"];
        match next(x) % if depth > 3 { 1 } else { 4 } {
            0 => out.push_str(SCALARS[next(x) as usize % SCALARS.len()]),
            1 | 2 => {
                out.push('{');
                let n = next(x) % 5;
                let mut used = Vec::new();
                for i in 0..n {
                    let k = KEYS[next(x) as usize % KEYS.len()];
                    if used.contains(&k) {
                        continue;
                    }
                    used.push(k);
                    if i > 0 && out.ends_with(|c| c != '{') {
                        out.push(',');
                    }
                    out.push_str(&format!("\"{k}\":"));
                    random_value(x, depth + 1, out);
                }
                out.push('}');
            }
            _ => {
                out.push('[');
                for i in 0..next(x) % 4 {
                    if i > 0 {
                        out.push(',');
                    }
                    random_value(x, depth + 1, out);
                }
                out.push(']');
            }
        }
    }
}
