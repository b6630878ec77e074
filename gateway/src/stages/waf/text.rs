//! Bodies read as text: a media type that is not JSON or a form, or JSON
//! a strict parser refused. libinjection fingerprints the first tokens of
//! a value, so a long text is judged piece by piece.

use super::{Hit, Place, hit, judge, scan_pairs};

/// Scans a body read as text (a media type that is not JSON or a form,
/// or JSON that does not parse): the whole text, each quoted string in it
/// (the values of JSON a strict parser refused), each line, and its
/// `name=value` pairs when it has any. libinjection fingerprints the
/// first tokens of a value, so an injection deep in a long text is found
/// in the piece that holds it.
pub fn scan_text(body: &[u8]) -> Option<Hit> {
    /// A longer text of several lines is judged line by line only: the
    /// whole would cost as much again and find what its first line does.
    const WHOLE: usize = 64 * 1024;
    let found = |name: &str, value: &[u8]| hit(Place::Body, name, judge(value));
    if (body.len() <= WHOLE || !body.contains(&b'\n'))
        && let Some(h) = found("(text)", body)
    {
        return Some(h);
    }
    for s in quoted_strings(body) {
        if let Some(h) = found("(quoted string)", &s) {
            return Some(h);
        }
    }
    if body.contains(&b'\n') {
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(h) = found("(line)", line) {
                return Some(h);
            }
        }
    }
    if body.contains(&b'=') {
        return scan_pairs(&String::from_utf8_lossy(body), Place::Body);
    }
    None
}

/// Scans binary data (a NUL in it) as the text runs it holds: each
/// stretch of printable ASCII (tabs and line breaks too) long enough to
/// carry an attack, as [`scan_text`] scans a text. Compressed or image
/// data is random bytes, whose short ASCII runs are noise.
pub fn scan_binary(body: &[u8]) -> Option<Hit> {
    /// The shortest run judged: `' OR 1=1 --` fits; in 64 MiB of random
    /// bytes, none of the 408 runs this long was taken for an attack
    /// (shorter runs were).
    const MIN_RUN: usize = 12;
    body.split(|&b| !(b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\n' | b'\r')))
        .filter(|run| run.len() >= MIN_RUN)
        .find_map(scan_text)
}

/// The `"..."` strings of a text, JSON escapes decoded, whatever else is
/// around them.
fn quoted_strings(text: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let open = i + text.get(i..)?.iter().position(|&b| b == b'"')?;
        let mut out = Vec::new();
        let mut j = open + 1;
        while j < text.len() {
            match text[j] {
                b'"' => break,
                b'\\' => {
                    match text.get(j + 1) {
                        Some(b'n') => out.push(b'\n'),
                        Some(b't') => out.push(b'\t'),
                        Some(b'r') => out.push(b'\r'),
                        Some(b'u') => {
                            let hex = text
                                .get(j + 2..j + 6)
                                .and_then(|h| std::str::from_utf8(h).ok());
                            match hex
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32)
                            {
                                Some(c) => {
                                    let mut b = [0u8; 4];
                                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                                    j += 4;
                                }
                                None => out.push(b'u'),
                            }
                        }
                        Some(&c) => out.push(c),
                        None => {}
                    }
                    j += 2;
                    continue;
                }
                c => out.push(c),
            }
            j += 1;
        }
        i = j + 1;
        Some(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_data_is_scanned_run_by_run_and_noise_passes() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0".to_vec();
        png.extend_from_slice(b"' UNION SELECT password FROM users--");
        assert!(scan_binary(&png).is_some());
        assert!(scan_binary(b"\0<script>alert(1)</script>").is_some());
        // Four MiB of random bytes, as compressed or image data is.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(scan_binary(&noise), None);
    }
}
