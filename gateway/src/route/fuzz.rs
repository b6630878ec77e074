//! The `path_query` fuzz target's body (a request target through path
//! normalization, parameter validation and the WAF's head scan), run on
//! mutated seeds by the unit tests too.

use crate::stages::{validation, waf};

/// The body of the `path_query` fuzz target: a request target as routing,
/// path and query validation and the WAF read it. Normalizing never panics and is
/// idempotent, a path parameter is judged on the normalized path without a
/// panic whatever it holds, and the query holds to
/// [`validation::fuzz_query`].
/// Whether the path normalized (for the unit tests' count).
pub fn fuzz_path_query(data: &[u8]) -> bool {
    let Ok(target) = std::str::from_utf8(data) else {
        return false;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut normal = String::new();
    let slashes = super::normalize::EncodedSlashes::Reject;
    let normalized = super::normalize::normalize(path, &mut normal, slashes).is_ok();
    if normalized {
        let mut again = String::new();
        super::normalize::normalize(&normal, &mut again, slashes).expect("normal stays normal");
        assert_eq!(normal, again);
        let schema = serde_json::json!({"type": "integer", "minimum": 1});
        let id = validation::Param {
            name: "id".into(),
            location: validation::params::Location::Path,
            required: true,
            array: false,
            kind: validation::params::Kind::Integer,
            segment: 2,
            validator: std::sync::Arc::new(validation::compile_reference(&schema).expect("schema")),
        };
        let mut problem = String::new();
        if validation::params::check(std::slice::from_ref(&id), &normal, "", &mut problem).is_ok() {
            let seg = normal.split('/').nth(2).unwrap_or("");
            assert!(seg.parse::<u64>().is_ok_and(|n| n >= 1), "{seg:?} passed");
        }
    }
    validation::fuzz_query(query.as_bytes());
    // The WAF reads the same text: it judges without a panic.
    let _ = waf::scan_head(&normal, query, &[], &[]);
    normalized
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_path_query_fuzz_body_holds_on_mutated_seeds() {
        let seeds: &[&[u8]] = &[
            b"/users/42?limit=5",
            b"/users/%34%32/x/../y?q=a+b&limit=%31",
            b"/users/0;x=1?limit=1&limit=2",
            b"//users/./1%20OR%201=1?",
        ];
        let normalized = crate::http::fuzz::mutated(seeds)
            .iter()
            .filter(|input| super::fuzz_path_query(input))
            .count();
        assert!(normalized >= 40, "only {normalized} paths normalized");
    }
}
