//! Cross-site scripting libinjection's XSS tokenizer lets through, found
//! by trying the running gateway: script URLs as browsers read them, and
//! `<script` hidden in a tag a filter that strips tags once would rebuild.

/// URL schemes that run script where a page puts the value in `href`,
/// `src` or `action`.
const SCRIPT_SCHEMES: [&[u8]; 6] = [
    b"javascript:",
    b"vbscript:",
    b"livescript:",
    b"data:text/html",
    b"data:application/xhtml",
    b"data:image/svg+xml",
];

/// What libinjection's XSS tokenizer lets through (found by trying the
/// running gateway): a value that is a script URL (`javascript:alert(1)`,
/// also spelt with entities, tabs or mixed case, as browsers read them),
/// or one attribute of a markup-looking value pointing at one; and
/// `<script` anywhere, which a filter that strips tags once turns into a
/// tag (`<scr<script>ipt>`), where libinjection reads `<scr<script>` as
/// one odd tag name.
pub(super) fn xss_beyond_libinjection(value: &[u8]) -> bool {
    if !value.iter().any(|&b| b == b':' || b == b'<' || b == b'&') {
        return false;
    }
    let folded = fold_markup(value);
    if folded.windows(7).any(|w| w == b"<script") {
        return true;
    }
    // The value itself, or after `=`, a quote or `(` (an attribute or
    // `url(` inside it), names a script scheme.
    let starts_scheme = |at: &[u8]| SCRIPT_SCHEMES.iter().any(|s| at.starts_with(s));
    if starts_scheme(&folded) {
        return true;
    }
    folded
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'=' | b'"' | b'\'' | b'(' | b'`'))
        .any(|(i, _)| starts_scheme(&folded[i + 1..]))
}

/// The value as a browser's URL and tag parsers see it: HTML character
/// references decoded (`&#106;`, `&#x6a;`, `&colon;`, `&tab;`,
/// `&newline;`), ASCII lower-cased, and controls, spaces, tabs and line
/// breaks dropped (a browser drops them from a URL's scheme).
fn fold_markup(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'&'
            && let Some((decoded, used)) = char_reference(&value[i..])
        {
            i += used;
            if decoded > 0x20 && decoded < 0x80 {
                out.push((decoded as u8).to_ascii_lowercase());
            } else if decoded >= 0x80 {
                out.push(0x80);
            }
            continue;
        }
        i += 1;
        if b > 0x20 {
            out.push(b.to_ascii_lowercase());
        }
    }
    out
}

/// An HTML character reference at the start of `s`: its code point and
/// length (the `;` is optional, as browsers allow for numeric ones).
fn char_reference(s: &[u8]) -> Option<(u32, usize)> {
    const NAMED: [(&[u8], u32); 5] = [
        (b"&colon;", b':' as u32),
        (b"&tab;", 9),
        (b"&newline;", 10),
        (b"&lt;", b'<' as u32),
        (b"&sol;", b'/' as u32),
    ];
    for (name, c) in NAMED {
        if s.len() >= name.len() && s[..name.len()].eq_ignore_ascii_case(name) {
            return Some((c, name.len()));
        }
    }
    let rest = s.strip_prefix(b"&#")?;
    let (radix, digits_at) = match rest.first() {
        Some(b'x' | b'X') => (16, 3),
        _ => (10, 2),
    };
    let digits = s[digits_at..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit() && (radix == 16 || b.is_ascii_digit()))
        .count();
    if digits == 0 || digits > 8 {
        return None;
    }
    let text = std::str::from_utf8(&s[digits_at..digits_at + digits]).ok()?;
    let code = u32::from_str_radix(text, radix).ok()?;
    let mut used = digits_at + digits;
    if s.get(used) == Some(&b';') {
        used += 1;
    }
    Some((code, used))
}
