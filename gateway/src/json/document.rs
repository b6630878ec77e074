//! A request body parsed by simd-json into buffers each worker reuses,
//! judged for what a schema cannot see: nesting, duplicate keys, bytes
//! that are not JSON.

use std::hash::{BuildHasher, Hasher};

use simd_json::{Buffers, ErrorType, INPUT_PADDING, Node as T, Tape};

use super::tape::{TapeNode, span};

/// Why a body is not a JSON document we validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Nested deeper than `limits.json_max_depth`.
    #[error("nested deeper than {0} levels")]
    TooDeep(usize),
    /// A key appears twice in one object.
    #[error("key {0:?} appears twice in one object")]
    DuplicateKey(String),
    /// An object with more than [`MAX_MEMBERS`] members.
    #[error("an object with more than {MAX_MEMBERS} members")]
    TooManyMembers,
    /// A number beyond 64-bit integers or finite doubles.
    #[error("number out of range at byte {0}")]
    Number(usize),
    /// Not UTF-8.
    #[error("invalid UTF-8")]
    Utf8,
    /// A `\u` escape that is no code point (a lone surrogate).
    #[error("invalid \\u escape (lone surrogate) at byte {0}")]
    Escape(usize),
    /// Empty, or cut off.
    #[error("unexpected end of the document")]
    End,
    /// Anything else simd-json refused: a syntax error or trailing bytes.
    #[error("not valid JSON at byte {0}")]
    Syntax(usize),
}

impl DocumentError {
    /// The rule, for the client's error body.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::TooDeep(_) => "max_depth",
            Self::DuplicateKey(_) => "duplicate_key",
            Self::TooManyMembers => "max_members",
            Self::Number(_) => "number_range",
            Self::Utf8 | Self::Escape(_) => "encoding",
            Self::End | Self::Syntax(_) => "syntax",
        }
    }
}

/// Parse buffers one worker reuses for every body it validates.
pub struct Scratch {
    /// simd-json rewrites strings in place: the body is copied here (with
    /// its padding), never parsed where the upstream will read it from.
    input: Vec<u8>,
    buffers: Buffers,
    /// The tape's vector, kept between requests (empty, so its lifetime is free).
    tape: Option<Tape<'static>>,
    /// Key hashes of a large object, for the duplicate check.
    hashes: Vec<(u64, u32)>,
    hasher: std::collections::hash_map::RandomState,
    /// A dechunked body.
    pub body: Vec<u8>,
    /// The JSON pointer the WAF builds as it walks a document.
    pub pointer: String,
    max_depth: usize,
}

impl Scratch {
    /// Buffers for documents nested at most `max_depth` levels.
    pub fn new(max_depth: usize) -> Self {
        Self {
            input: Vec::new(),
            buffers: Buffers::with_max_depth(4096, max_depth),
            tape: Some(Tape::null().reset()),
            hashes: Vec::new(),
            hasher: Default::default(),
            body: Vec::new(),
            pointer: String::new(),
            max_depth,
        }
    }

    /// Gives memory back after a large body (over 1 MiB): one such body
    /// must not keep a worker's buffers at its size.
    pub fn trim(&mut self) {
        if self.input.capacity() > 1 << 20 || self.body.capacity() > 1 << 20 {
            *self = Self::new(self.max_depth);
        }
    }

    /// The depth limit these buffers parse with.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Parses `body` and calls `f` with its root; the buffers are kept for
    /// the next body whatever happens.
    pub fn with_document<R>(
        &mut self,
        body: &[u8],
        f: impl FnOnce(TapeNode<'_>) -> R,
    ) -> Result<R, DocumentError> {
        self.input.clear();
        self.input.extend_from_slice(body);
        self.input.resize(body.len() + INPUT_PADDING, 0);
        let mut tape = self.tape.take().unwrap_or_else(|| Tape::null().reset());
        let parsed =
            simd_json::fill_tape_padded(&mut self.input, body.len(), &mut self.buffers, &mut tape);
        let result = match parsed {
            Err(e) => Err(document_error(&e, self.max_depth)),
            Ok(()) => match no_duplicates(&tape.0, &mut self.hashes, &self.hasher) {
                Err(e) => Err(e),
                Ok(()) => TapeNode::root(&tape.0).map(f).ok_or(DocumentError::End),
            },
        };
        self.tape = Some(tape.reset());
        result
    }
}

fn document_error(e: &simd_json::Error, max_depth: usize) -> DocumentError {
    let at = e.index();
    match e.error() {
        ErrorType::DepthLimitExceeded => DocumentError::TooDeep(max_depth),
        ErrorType::InvalidNumber | ErrorType::InvalidExponent => DocumentError::Number(at),
        ErrorType::InvalidUtf8 => DocumentError::Utf8,
        ErrorType::InvalidUnicodeCodepoint | ErrorType::InvalidUnicodeEscape => {
            DocumentError::Escape(at)
        }
        ErrorType::Eof => DocumentError::End,
        _ => DocumentError::Syntax(at),
    }
}

/// Objects of up to this many keys are checked pairwise.
const PAIRWISE: usize = 16;

/// Most members of one object: a schema looks members up by name, one scan
/// per lookup, so a huge object would cost properties × members.
pub const MAX_MEMBERS: usize = 10_000;

/// Refuses a document where one object holds a key twice: simd-json keeps
/// both, most backends keep the last, and the two would then judge
/// different documents.
fn no_duplicates(
    tape: &[T<'_>],
    hashes: &mut Vec<(u64, u32)>,
    hasher: &impl BuildHasher,
) -> Result<(), DocumentError> {
    for (at, node) in tape.iter().enumerate() {
        let T::Object { len, .. } = *node else {
            continue;
        };
        if len < 2 {
            continue;
        }
        if len > MAX_MEMBERS {
            return Err(DocumentError::TooManyMembers);
        }
        let keys = keys_of(&tape[at..], len);
        if len <= PAIRWISE {
            let mut seen = [""; PAIRWISE];
            for (i, k) in keys.enumerate() {
                if seen[..i].contains(&k) {
                    return Err(DocumentError::DuplicateKey(excerpt(k)));
                }
                seen[i] = k;
            }
            continue;
        }
        // Large objects: sort keyed hashes, then compare only equal ones.
        hashes.clear();
        let object = &tape[at..];
        for (i, k) in keys.enumerate() {
            let mut h = hasher.build_hasher();
            h.write(k.as_bytes());
            hashes.push((h.finish(), i as u32));
        }
        hashes.sort_unstable();
        for pair in hashes.windows(2) {
            if pair[0].0 == pair[1].0 {
                let a = keys_of(object, len).nth(pair[0].1 as usize);
                let b = keys_of(object, len).nth(pair[1].1 as usize);
                if let (Some(a), Some(b)) = (a, b)
                    && a == b
                {
                    return Err(DocumentError::DuplicateKey(excerpt(a)));
                }
            }
        }
    }
    Ok(())
}

/// The keys of the object whose node starts `object`.
fn keys_of<'a>(object: &'a [T<'a>], len: usize) -> impl Iterator<Item = &'a str> + 'a {
    let mut rest = &object[1..];
    (0..len).map_while(move |_| {
        let T::String(k) = rest[0] else {
            return None;
        };
        let value = &rest[1..];
        rest = &value[span(value)..];
        Some(k)
    })
}

/// At most 32 characters of client input, for an error body.
pub fn excerpt(s: &str) -> String {
    match s.char_indices().nth(32) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(body: &[u8]) -> Result<(), DocumentError> {
        Scratch::new(8).with_document(body, |_| ())
    }

    #[test]
    fn hostile_documents_get_their_own_reason() {
        assert_eq!(
            judge(b"[[[[[[[[[[1]]]]]]]]]]"),
            Err(DocumentError::TooDeep(8))
        );
        assert!(matches!(
            judge(b"123456789012345678901234567890"),
            Err(DocumentError::Number(_))
        ));
        assert!(matches!(judge(b"1e400"), Err(DocumentError::Number(_))));
        assert!(matches!(
            judge(br#""\ud800""#),
            Err(DocumentError::Escape(_))
        ));
        assert_eq!(judge(b"\"\xff\""), Err(DocumentError::Utf8));
        assert!(matches!(judge(b"{} x"), Err(DocumentError::Syntax(_))));
        assert_eq!(judge(b""), Err(DocumentError::End));
        assert!(matches!(judge(b"{\"a\":"), Err(DocumentError::Syntax(4))));
        assert_eq!(judge(b"{}  \n"), Ok(()));
    }

    #[test]
    fn duplicate_keys_are_refused_in_small_and_large_objects() {
        assert_eq!(
            judge(br#"{"a":1,"b":{"c":1,"c":2}}"#),
            Err(DocumentError::DuplicateKey("c".into()))
        );
        // Keys written differently but equal once unescaped.
        assert_eq!(
            judge(br#"{"role":1,"r\u006fle":2}"#),
            Err(DocumentError::DuplicateKey("role".into()))
        );
        let mut big = String::from("{");
        for i in 0..100 {
            big.push_str(&format!("\"k{i}\":{i},"));
        }
        assert_eq!(
            judge(format!("{big}\"k0\":1}}").as_bytes()),
            Err(DocumentError::DuplicateKey("k0".into()))
        );
        assert_eq!(judge(format!("{big}\"k100\":1}}").as_bytes()), Ok(()));
        let huge: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("\"k{i}\":0")).collect();
        assert_eq!(
            judge(format!("{{{}}}", huge.join(",")).as_bytes()),
            Err(DocumentError::TooManyMembers)
        );
        // The same key in sibling objects is no duplicate.
        assert_eq!(judge(br#"[{"a":1},{"a":2}]"#), Ok(()));
    }

    #[test]
    fn the_callers_bytes_are_left_as_they_were() {
        let body = br#"{"a":"x\ny\u0041"}"#.to_vec();
        let before = body.clone();
        let mut s = Scratch::new(8);
        let got = s
            .with_document(&body, |root| {
                use jsonschema::json::{Node, Object};
                let (_, v) = root
                    .as_object()
                    .and_then(|o| o.members().next())
                    .expect("a");
                v.as_string().map(|s| s.into_owned())
            })
            .expect("parsed");
        assert_eq!(got.as_deref(), Some("x\nyA"));
        assert_eq!(body, before);
    }
}
