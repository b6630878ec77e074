//! The WAF: SQL injection and cross-site scripting detected with
//! libinjection's tokenizer and fingerprints (the pure-Rust port
//! `libinjectionrs`, pinned, held to our own corpus in `corpus/`), in the
//! path, the query, header values, cookies, and the strings (keys and
//! values) of a JSON or form body. Per route `off`, `detect` (logged and
//! counted toward escalation, let through) or `block` (403 as well).
//!
//! Values are decoded before they are judged, as a backend would read them:
//! percent-escapes (twice, so `%2527` is judged as `'`), `+` in queries and
//! forms, JSON escapes (simd-json's). Text of letters, digits and `-_.@`
//! only is never an injection and skips the tokenizer.

mod text;
mod xss;

pub use text::{scan_binary, scan_text};

use std::{borrow::Cow, fmt, fmt::Write as _};

use crate::{
    http::query::{decode, hex_pair, pairs},
    json::tape::TapeNode,
    respond::Failure,
};

/// 403 for SQL injection.
pub const SQLI: Failure = Failure::client(403, "waf.sqli");
/// 403 for cross-site scripting.
pub const XSS: Failure = Failure::client(403, "waf.xss");

/// What was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// SQL injection.
    Sqli,
    /// Cross-site scripting.
    Xss,
}

impl Attack {
    /// The 403 a blocking route answers with.
    pub fn failure(self) -> Failure {
        match self {
            Self::Sqli => SQLI,
            Self::Xss => XSS,
        }
    }
}

/// Where in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A path segment.
    Path,
    /// A query parameter (name or value).
    Query,
    /// A header value.
    Header,
    /// A cookie value.
    Cookie,
    /// A JSON string or a form field in the body.
    Body,
}

/// One detection, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// What.
    pub attack: Attack,
    /// Where.
    pub place: Place,
    /// The parameter, header or cookie name, or the JSON pointer (cut short).
    pub name: String,
    /// libinjection's fingerprint of a SQL injection (empty for XSS).
    pub fingerprint: String,
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attack = match self.attack {
            Attack::Sqli => "sql injection",
            Attack::Xss => "xss",
        };
        let place = match self.place {
            Place::Path => "path",
            Place::Query => "query",
            Place::Header => "header",
            Place::Cookie => "cookie",
            Place::Body => "body",
        };
        write!(f, "{attack} in {place} {:?}", self.name)?;
        if !self.fingerprint.is_empty() {
            write!(f, " (fingerprint {})", self.fingerprint)?;
        }
        Ok(())
    }
}

/// Header fields never scanned: framing and negotiation the gateway parses
/// strictly itself, credentials (never logged), and cookies (scanned one by
/// one instead).
const UNSCANNED: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "content-type",
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "cookie",
    "te",
    "expect",
];

/// Judges one decoded value.
pub fn judge(value: &[u8]) -> Option<(Attack, String)> {
    if value
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(b))
    {
        return None;
    }
    let sqli = libinjectionrs::detect_sqli(value);
    if sqli.is_injection() {
        let fp = sqli.fingerprint.map(|f| f.to_string()).unwrap_or_default();
        return Some((Attack::Sqli, fp));
    }
    (libinjectionrs::detect_xss(value).is_injection() || xss::xss_beyond_libinjection(value))
        .then(|| (Attack::Xss, String::new()))
}

/// Percent-decodes up to twice (lossy where the bytes are not UTF-8: the
/// tokenizer reads bytes), so a double-encoded quote is judged as a quote.
fn decoded(raw: &str, plus: bool) -> Cow<'_, str> {
    let once = lossy(raw, plus);
    if !once.contains('%') {
        return once;
    }
    Cow::Owned(lossy(&once, false).into_owned())
}

fn lossy(raw: &str, plus: bool) -> Cow<'_, str> {
    if let Some(d) = decode(raw, plus) {
        return d;
    }
    // Not UTF-8 once decoded, or a broken escape: decode what decodes.
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(hex_pair)) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) if plus => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hit(place: Place, name: &str, found: Option<(Attack, String)>) -> Option<Hit> {
    found.map(|(attack, fingerprint)| Hit {
        attack,
        place,
        name: name.chars().take(64).collect(),
        fingerprint,
    })
}

/// Scans a request head: the routed path's segments, the query's names and
/// values, header values (but those in [`UNSCANNED`], `skip`, and the API
/// key header), and each cookie's value.
pub fn scan_head(
    path: &str,
    query: &str,
    headers: &[httparse::Header<'_>],
    skip: &[String],
) -> Option<Hit> {
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if let Some(h) = hit(Place::Path, seg, judge(decoded(seg, false).as_bytes())) {
            return Some(h);
        }
    }
    if let Some(h) = scan_pairs(query, Place::Query) {
        return Some(h);
    }
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("cookie") {
            for c in h.value.split(|&b| b == b';') {
                let text = String::from_utf8_lossy(c);
                let (k, v) = text.trim().split_once('=').unwrap_or(("", text.trim()));
                if let Some(h) = hit(Place::Cookie, k, judge(decoded(v, false).as_bytes())) {
                    return Some(h);
                }
            }
            continue;
        }
        let skipped = UNSCANNED.iter().any(|u| u.eq_ignore_ascii_case(name))
            || skip.iter().any(|s| s.eq_ignore_ascii_case(name));
        if !skipped && let Some(h) = hit(Place::Header, name, judge(h.value)) {
            return Some(h);
        }
    }
    None
}

/// Scans `name=value&...` pairs (a query, or a form body).
pub fn scan_pairs(text: &str, place: Place) -> Option<Hit> {
    for (k, v) in pairs(text) {
        let name = decoded(k, true);
        let found = judge(name.as_bytes()).or_else(|| judge(decoded(v, true).as_bytes()));
        if let Some(h) = hit(place, &name, found) {
            return Some(h);
        }
    }
    None
}

/// Scans every string of a JSON document, keys included; the hit names
/// the JSON pointer. `pointer` is scratch, reused.
pub fn scan_json(root: TapeNode<'_>, pointer: &mut String) -> Option<Hit> {
    use jsonschema::json::{Array, Node, Object};
    pointer.clear();
    // Depth is bounded by `limits.json_max_depth` at parse.
    fn walk(node: TapeNode<'_>, pointer: &mut String) -> Option<Hit> {
        if let Some(s) = node.as_string() {
            return hit(Place::Body, pointer, judge(s.as_bytes()));
        }
        let len = pointer.len();
        if let Some(o) = node.as_object() {
            for (k, v) in o.members() {
                pointer.truncate(len);
                let _ = write!(pointer, "/{}", k.replace('~', "~0").replace('/', "~1"));
                if let Some(h) = hit(Place::Body, pointer, judge(k.as_bytes())) {
                    return Some(h);
                }
                if let Some(h) = walk(v, pointer) {
                    return Some(h);
                }
            }
        } else if let Some(a) = node.as_array() {
            for (i, v) in a.elements().enumerate() {
                pointer.truncate(len);
                let _ = write!(pointer, "/{i}");
                if let Some(h) = walk(v, pointer) {
                    return Some(h);
                }
            }
        }
        pointer.truncate(len);
        None
    }
    walk(root, pointer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> impl Iterator<Item = &str> {
        text.lines().filter(|l| !l.is_empty())
    }

    #[test]
    fn a_broken_escape_still_decodes_what_decodes() {
        // `%FF` is no UTF-8 and `%ZZ` no escape: the strict decoder gives
        // up, and an attacker would love the WAF to give up with it.
        assert_eq!(decoded("%FF%27+OR+1%3D1--", true), "\u{FFFD}' OR 1=1--");
        assert_eq!(decoded("%ZZ%27+OR+1%3D1--", false), "%ZZ'+OR+1=1--");
        assert_eq!(decoded("a%2", true), "a%2");
        // Double encoding through a broken escape: decoded twice.
        assert_eq!(decoded("%FF%2527", true), "\u{FFFD}'");
        for (path, query) in [
            ("/x", "q=%FF%27+OR+1%3D1--"),
            ("/%FF%27%20OR%201%3D1--", ""),
        ] {
            let hit = scan_head(path, query, &[], &[]).expect("detected through a broken escape");
            assert_eq!(hit.attack, Attack::Sqli, "{path}?{query}");
        }
    }

    #[test]
    fn a_hit_says_what_where_and_its_fingerprint() {
        let hit = scan_pairs("id=1%27+OR+1%3D1--", Place::Query).expect("sqli");
        let shown = hit.to_string();
        assert!(
            shown.starts_with("sql injection in query \"id\" (fingerprint "),
            "{shown}"
        );
        let hit = scan_pairs("q=%3Cscript%3Ealert(1)%3C/script%3E", Place::Query).expect("xss");
        assert_eq!(hit.to_string(), "xss in query \"q\"");
    }

    #[test]
    fn the_corpus_is_detected_and_look_alikes_pass() {
        let sqli = include_str!("corpus/sqli.txt");
        let xss = include_str!("corpus/xss.txt");
        assert!(lines(sqli).count() + lines(xss).count() >= 60);
        for p in lines(sqli) {
            assert!(
                judge(p.as_bytes()).is_some_and(|h| h.0 == Attack::Sqli),
                "missed {p:?}"
            );
        }
        for p in lines(xss) {
            assert!(judge(p.as_bytes()).is_some(), "missed {p:?}");
        }
        for b in lines(include_str!("corpus/benign.txt")) {
            assert_eq!(judge(b.as_bytes()), None, "flagged {b:?}");
        }
        // Known limits of the tokenizer, pinned so a change shows.
        for p in lines(include_str!("corpus/missed.txt")) {
            assert_eq!(
                judge(p.as_bytes()),
                None,
                "now detected: {p:?} (move it to sqli.txt)"
            );
        }
        for p in lines(include_str!("corpus/flagged.txt")) {
            assert!(
                judge(p.as_bytes()).is_some(),
                "no longer flagged: {p:?} (move it to benign.txt)"
            );
        }
    }

    #[test]
    fn encoded_payloads_are_judged_decoded() {
        let h = scan_pairs("q=%27%20OR%20%271%27%3D%271", Place::Query).expect("single");
        assert_eq!((h.attack, h.name.as_str()), (Attack::Sqli, "q"));
        assert!(scan_pairs("q=%2527%2520OR%25201%253D1--", Place::Query).is_some());
        assert!(scan_pairs("q=1'+OR+'1'%3D'1", Place::Query).is_some());
        assert!(scan_pairs("%3Cscript%3Ealert(1)%3C/script%3E=1", Place::Query).is_some());
        assert!(scan_pairs("name=O%27Brien&note=select+a+size&x=%ff", Place::Query).is_none());
        let h = scan_head("/users/1%27%20OR%20%271%27=%271", "", &[], &[]).expect("path");
        assert_eq!(h.place, Place::Path);
    }

    #[test]
    fn headers_and_cookies_are_scanned_but_credentials_are_not() {
        let hs = [
            httparse::Header {
                name: "User-Agent",
                value: b"Mozilla/5.0 (X11; Linux x86_64)",
            },
            httparse::Header {
                name: "Authorization",
                value: b"Bearer ' OR 1=1--",
            },
            httparse::Header {
                name: "Cookie",
                value: b"theme=dark; session=abc",
            },
        ];
        assert_eq!(scan_head("/", "", &hs, &[]), None);
        let bad = [httparse::Header {
            name: "Referer",
            value: b"<script>alert(1)</script>",
        }];
        let h = scan_head("/", "", &bad, &[]).expect("referer");
        assert_eq!((h.place, h.name.as_str()), (Place::Header, "Referer"));
        assert_eq!(scan_head("/", "", &bad, &["referer".into()]), None);
        let c = [httparse::Header {
            name: "Cookie",
            value: b"a=1; pref=%27%20OR%201%3D1--",
        }];
        let h = scan_head("/", "", &c, &[]).expect("cookie");
        assert_eq!((h.place, h.name.as_str()), (Place::Cookie, "pref"));
    }

    #[test]
    fn text_bodies_are_scanned_piece_by_piece() {
        let cases: &[(&str, &[u8])] = &[
            (
                "duplicate key",
                br#"{"comment":"' UNION SELECT password FROM users--","comment":"x"}"#,
            ),
            (
                "trailing byte",
                br#"{"comment":"' UNION SELECT password FROM users--"}x"#,
            ),
            (
                "escaped",
                br#"{"comment":"' UNION SELECT password FROM users--"}x"#,
            ),
            (
                "deep in long text",
                format!(
                    "{}
' OR '1'='1
",
                    "lorem ipsum ".repeat(500)
                )
                .as_bytes()
                .to_vec()
                .leak(),
            ),
            ("plain", b"' OR '1'='1"),
            ("form-like", b"a=1&b=2&c=%27%20OR%20%271%27%3D%271"),
            ("script url", b"javascript:alert(1)"),
        ];
        for (name, body) in cases {
            assert!(scan_text(body).is_some(), "{name}");
        }
        for benign in [
            &b"Dear team, please select a size for Dan O'Neil's order."[..],
            br#"{"name":"O'Brien","note":"I <3 it"} trailing"#,
            b"key=value&other=thing",
        ] {
            assert_eq!(
                scan_text(benign),
                None,
                "{:?}",
                String::from_utf8_lossy(benign)
            );
        }
    }

    #[test]
    fn json_strings_are_scanned_with_their_pointer() {
        let mut scratch = crate::stages::validation::Scratch::new(16);
        let mut pointer = String::new();
        let found = scratch
            .with_document(
                br#"{"a":{"b/c":["ok","' OR '1'='1"]},"note":"O'Brien"}"#,
                |root| scan_json(root, &mut pointer),
            )
            .expect("json");
        let h = found.expect("hit");
        assert_eq!((h.place, h.name.as_str()), (Place::Body, "/a/b~1c/1"));
        let clean = scratch
            .with_document(
                br#"{"name":"O'Brien","msg":"I <3 select","n":[1,2]}"#,
                |root| scan_json(root, &mut pointer),
            )
            .expect("json");
        assert_eq!(clean, None);
    }
}
