//! Paths are normalized before routing and before any check, as Envoy's
//! `normalize_path` and `merge_slashes` do: otherwise `/api/../admin` is
//! routed (and judged) as `/api` while a backend that resolves dot segments
//! serves `/admin`. The upstream sees the normalized path.
//!
//! Percent-encoded unreserved characters are decoded (RFC 3986 §2.3), other
//! escapes are kept with upper-case hex (§6.2.2.1), `.` and `..` segments
//! are resolved without ever climbing above the root (§5.2.4), and repeated
//! slashes are merged. An encoded slash, backslash or semicolon (which
//! some backends decode into a separator: Tomcat and Spring decode `%3B`
//! and then cut `;parameters`, so `/admin%3Bx` would reach `/admin` while
//! routed by its literal form), an encoded NUL, a raw backslash (a
//! separator on Windows backends) and a broken escape are refused.

use crate::respond::Failure;

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F`, `%5C` or `%3B` while `proxy.encoded_slashes = "reject"`.
    #[error("encoded slash, backslash or semicolon")]
    EncodedSeparator,
    /// `%00`.
    #[error("encoded NUL")]
    EncodedNul,
    /// A raw `\`.
    #[error("backslash")]
    Backslash,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    BadEscape,
    /// A `.` or `..` segment with `;` parameters (`/public/..;/admin`):
    /// Java servlet containers drop the parameters and resolve the dot
    /// segment, serving another path than was routed.
    #[error("dot segment with parameters")]
    DotParams,
}

impl PathError {
    /// The answer: 400 with its reason code.
    pub fn failure(self) -> Failure {
        Failure::client(400, self.code())
    }

    /// Stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::EncodedSeparator => "path.encoded_separator",
            Self::EncodedNul => "path.encoded_nul",
            Self::Backslash => "path.backslash",
            Self::BadEscape => "path.bad_escape",
            Self::DotParams => "path.dot_segment_params",
        }
    }
}

pub use crate::config::EncodedSlashes;

/// Normalizes `path` (origin-form, before any `?`) into `out`, which is
/// cleared first and reused by the caller across requests.
pub fn normalize(path: &str, out: &mut String, slashes: EncodedSlashes) -> Result<(), PathError> {
    out.clear();
    if is_plain(path) {
        out.push_str(path);
        return Ok(());
    }
    let mut trailing = false;
    for raw in path.split('/').skip(1) {
        let start = out.len();
        out.push('/');
        decode_segment(raw, out, slashes)?;
        let seg = &out[start + 1..];
        trailing = false;
        if seg.contains(';') && matches!(seg.split(';').next(), Some("." | "..")) {
            return Err(PathError::DotParams);
        }
        match seg {
            // Repeated slash: merged, but a final empty segment keeps the
            // path's trailing slash.
            "" => {
                out.truncate(start);
                trailing = true;
            }
            "." => {
                out.truncate(start);
                trailing = true;
            }
            ".." => {
                out.truncate(start);
                // Drop the previous segment; at the root there is none.
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
                trailing = true;
            }
            _ => {}
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(())
}

/// The path routes match on: `;parameters` cut from every segment, as
/// servlet containers do before they map a path (`/admin;x` is `/admin`),
/// so a route's rule covers what such a backend serves. Written to `out`
/// only when `path` has a `;`; returns the path to match.
pub fn route_path<'a>(path: &'a str, out: &'a mut String) -> &'a str {
    if !path.contains(';') {
        return path;
    }
    out.clear();
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg.split(';').next().unwrap_or_default());
    }
    out
}

/// The common case, a path with nothing to normalize, is copied as is.
fn is_plain(path: &str) -> bool {
    let b = path.as_bytes();
    !b.iter().any(|&c| c == b'%' || c == b'\\') && !b.windows(2).any(|w| w == b"//" || w == b"/.")
}

fn decode_segment(raw: &str, out: &mut String, slashes: EncodedSlashes) -> Result<(), PathError> {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h << 4 | l;
                match v {
                    0 => return Err(PathError::EncodedNul),
                    b'/' | b'\\' | b';' if slashes == EncodedSlashes::Reject => {
                        return Err(PathError::EncodedSeparator);
                    }
                    v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => {
                        out.push(char::from(v))
                    }
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(char::from(HEX[usize::from(v >> 4)]));
                        out.push(char::from(HEX[usize::from(v & 15)]));
                    }
                }
                i += 3;
            }
            _ => {
                // Copy the run up to the next special byte whole (it may be UTF-8).
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'%' || c == b'\\')
                    .map_or(b.len(), |p| i + p);
                out.push_str(&raw[i..end]);
                i = end;
            }
        }
    }
    Ok(())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        let mut out = String::new();
        normalize(p, &mut out, EncodedSlashes::Reject).map(|()| out)
    }

    #[test]
    fn hostile_paths_table() {
        use PathError::*;
        let rows: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/api/v1", Ok("/api/v1")),
            ("/api/../admin", Ok("/admin")),
            ("/api/%2e%2e/admin", Ok("/admin")),
            ("/api/%2E%2E/admin", Ok("/admin")),
            ("/api/.%2e/admin", Ok("/admin")),
            ("/../../etc/passwd", Ok("/etc/passwd")),
            ("/..", Ok("/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/./b", Ok("/a/b")),
            ("/a/.", Ok("/a/")),
            ("//admin", Ok("/admin")),
            ("/api//..//admin", Ok("/admin")),
            ("/a///b/", Ok("/a/b/")),
            ("/%61dmin", Ok("/admin")),
            ("/a%7e%2d", Ok("/a~-")),
            ("/a%3f", Ok("/a%3F")),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            ("/...", Ok("/...")),
            ("/a/..b", Ok("/a/..b")),
            ("/api%2f..%2fadmin", Err(EncodedSeparator)),
            ("/api%5cadmin", Err(EncodedSeparator)),
            ("/public/..%3b/admin", Err(EncodedSeparator)),
            ("/admin%3Bx", Err(EncodedSeparator)),
            ("/admin%3bjsessionid=1", Err(EncodedSeparator)),
            ("/api\\..\\admin", Err(Backslash)),
            ("/public/..;/admin", Err(DotParams)),
            ("/public/.;x/admin", Err(DotParams)),
            ("/public/%2e%2e;/admin", Err(DotParams)),
            ("/a;b/c", Ok("/a;b/c")),
            ("/a%00", Err(EncodedNul)),
            ("/a%", Err(BadEscape)),
            ("/a%2", Err(BadEscape)),
            ("/a%zz", Err(BadEscape)),
        ];
        let mut failed = Vec::new();
        for (raw, want) in rows {
            let got = norm(raw);
            if got.as_deref().map_err(|e| *e) != *want {
                failed.push(format!("{raw}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn routes_match_without_segment_parameters() {
        let mut out = String::new();
        assert_eq!(route_path("/admin;jsessionid=1/x", &mut out), "/admin/x");
        assert_eq!(route_path("/admin;x", &mut out), "/admin");
        assert_eq!(route_path("/plain/path", &mut out), "/plain/path");
    }

    #[test]
    fn encoded_slashes_can_be_kept_encoded() {
        let mut out = String::new();
        normalize("/files/a%2fb/../c", &mut out, EncodedSlashes::Keep).expect("ok");
        // `a%2Fb` is one segment: `..` removes it whole.
        assert_eq!(out, "/files/c");
    }

    proptest::proptest! {
        #[test]
        fn normalizing_is_idempotent_and_never_climbs(
            segs in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::string_regex("[a-z]{1,3}").expect("regex"),
                    proptest::strategy::Just(".".to_owned()),
                    proptest::strategy::Just("..".to_owned()),
                    proptest::strategy::Just("".to_owned()),
                    proptest::strategy::Just("%2e%2e".to_owned()),
                    proptest::strategy::Just("%41".to_owned()),
                ],
                0..12,
            ),
            trailing in proptest::bool::ANY,
        ) {
            let mut path = String::from("/");
            path.push_str(&segs.join("/"));
            if trailing {
                path.push('/');
            }
            let once = norm(&path).expect("valid");
            proptest::prop_assert!(once.starts_with('/'));
            proptest::prop_assert!(!once.contains("//"), "{once}");
            proptest::prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{once}");
            let twice = norm(&once).expect("valid");
            proptest::prop_assert_eq!(once, twice);
        }
    }
}
