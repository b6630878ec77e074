//! Cross-site scripting libinjection's XSS tokenizer lets through, found
//! by trying the running gateway: script URLs as browsers read them, and
//! `<script` hidden in a tag a filter that strips tags once would rebuild.

/// URL schemes that run script where a page puts the value in `href`,
/// `src` or `action`. (An SVG in an `<img>` runs none.)
const SCRIPT_SCHEMES: [&[u8]; 5] = [
    b"javascript:",
    b"vbscript:",
    b"livescript:",
    b"data:text/html",
    b"data:application/xhtml",
];

/// What libinjection's XSS tokenizer lets through (found by trying the
/// running gateway): a value that is a script URL (`javascript:alert(1)`,
/// also spelt with entities, tabs or mixed case, as browsers read them),
/// or one attribute of a markup-looking value pointing at one; and a
/// `<script` tag anywhere, which a filter that strips tags once turns into
/// a tag (`<scr<script>ipt>`), where libinjection reads `<scr<script>` as
/// one odd tag name. Prose that names a scheme (`javascript: the good
/// parts`) or a word that begins with one (`<scripting>`) passes.
pub(super) fn xss_beyond_libinjection(value: &[u8]) -> bool {
    if !value.iter().any(|&b| b == b':' || b == b'<' || b == b'&') {
        return false;
    }
    // A tag as the tag parser reads it: `<script` then no more name.
    let tagged = fold_markup(value, true);
    if tagged
        .windows(8)
        .any(|w| w.starts_with(b"<script") && !is_name_byte(w[7]))
        || tagged.ends_with(b"<script")
    {
        return true;
    }
    // The value itself, or after `=`, a quote or `(` (an attribute or
    // `url(` inside it), names a script scheme with code after it.
    let folded = fold_markup(value, false);
    let starts_scheme = |at: &[u8]| {
        SCRIPT_SCHEMES.iter().any(|s| {
            at.strip_prefix(*s).is_some_and(|rest| match s {
                // A data URL's content follows a comma.
                _ if s.starts_with(b"data:") => rest.contains(&b','),
                _ => rest.iter().any(|b| b"(`=[{%\\/".contains(b)),
            })
        })
    };
    if starts_scheme(&folded) {
        return true;
    }
    folded
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'=' | b'"' | b'\'' | b'(' | b'`'))
        .any(|(i, _)| starts_scheme(&folded[i + 1..]))
}

/// A byte that continues a tag name.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b >= 0x80
}

/// The value as a browser's URL and tag parsers see it: HTML character
/// references decoded (`&#106;`, `&#x6a;`, `&colon;`, `&tab;`,
/// `&newline;`) and ASCII lower-cased; for a URL's scheme (`spaces`
/// false), controls, spaces, tabs and line breaks dropped, as a browser
/// drops them there.
fn fold_markup(value: &[u8], spaces: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'&'
            && let Some((decoded, used)) = char_reference(&value[i..])
        {
            i += used;
            if decoded > 0x20 && decoded < 0x80 || spaces && decoded <= 0x20 {
                out.push((decoded as u8).to_ascii_lowercase());
            } else if decoded >= 0x80 {
                out.push(0x80);
            }
            continue;
        }
        i += 1;
        if b > 0x20 || spaces {
            out.push(b.to_ascii_lowercase());
        }
    }
    out
}

/// An HTML character reference at the start of `s`: its code point and
/// length (the `;` is optional, as browsers allow for numeric ones).
fn char_reference(s: &[u8]) -> Option<(u32, usize)> {
    // `&lt;` stays: text that spells a tag with it is shown, not parsed.
    const NAMED: [(&[u8], u32); 4] = [
        (b"&colon;", b':' as u32),
        (b"&tab;", 9),
        (b"&newline;", 10),
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
    let all = s[digits_at..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit() && (radix == 16 || b.is_ascii_digit()))
        .count();
    // Browsers read any number of leading zeros (`&#0000106;`).
    let zeros = s[digits_at..digits_at + all]
        .iter()
        .take_while(|&&b| b == b'0')
        .count();
    let digits = all - zeros;
    if all == 0 || digits > 8 {
        return None;
    }
    if digits == 0 {
        return Some((
            0,
            digits_at + all + usize::from(s.get(digits_at + all) == Some(&b';')),
        ));
    }
    let text = std::str::from_utf8(&s[digits_at + zeros..digits_at + all]).ok()?;
    let code = u32::from_str_radix(text, radix).ok()?;
    let mut used = digits_at + all;
    if s.get(used) == Some(&b';') {
        used += 1;
    }
    Some((code, used))
}
