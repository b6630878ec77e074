//! JWT bearer tokens (RFC 7519), verified as RFC 8725 asks: the token's
//! size is capped before any decoding; its header is read strictly
//! (duplicate keys, `crit`, and key-carrying `jku`/`x5u`/`x5c`/`jwk`
//! refused); the algorithm must be one the issuer allows *and* one the key
//! is pinned to, so `alg: none`, RS/HS confusion and key-type mismatches
//! never verify; then `iss`, `aud`, `exp` (required by default) and `nbf`
//! are checked on the one strict parse of the claims.
//!
//! jsonwebtoken loads the keys (JWK, PEM, DER) and signs; the request path
//! does not call its `decode`, which would parse header and claims a
//! second time (it cannot refuse duplicates, so the strict parse stays) and
//! build a verifier per call: that was 6.6 µs of an HS256 verify whose
//! signature costs 0.4. Each key's [`provider::Check`] is built at load;
//! the claim checks below follow jsonwebtoken's `Validation` (leeway on
//! both sides, any accepted audience) and are unit-tested against it.
//!
//! One ES256 verification costs about as much as a whole proxied request,
//! so each worker keeps a bounded cache of verified tokens, keyed by a hash
//! of the token, valid until the token's `exp` and only for the key set
//! revision it was verified with.

mod cache;
mod claims;
pub mod keys;
pub mod provider;
pub mod strict_json;

pub use cache::{TokenCache, digest};
use claims::{claim, each_word, validate, word_bits};

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::{
    config::{JwtSettings, jwt_algorithm},
    respond::{Failure, Hint},
};
use keys::KeySet;

/// Why a bearer token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Longer than the issuer's `max_token_bytes`.
    TooLarge,
    /// Not three base64url parts of JSON objects.
    Malformed,
    /// A duplicate key in the header or claims.
    Duplicate,
    /// A header parameter the gateway refuses (`jku`, `x5u`, `x5c`, `jwk`,
    /// `crit`, `b64`).
    Header,
    /// An algorithm the issuer or the key does not allow (`none` included).
    Algorithm,
    /// No key with the token's `kid` (a refresh is asked for).
    UnknownKey,
    /// The issuer's keys were never loaded (503, never open).
    NoKeys,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is ahead.
    NotYetValid,
    /// Wrong `iss`.
    Issuer,
    /// No accepted `aud`.
    Audience,
    /// A required claim is missing or not a number.
    Claims,
}

impl JwtError {
    /// The failure a client gets: 401 with a reason, 503 without keys.
    pub fn failure(self) -> Failure {
        // Reason `jwt.WHY`, and RFC 6750's `invalid_token` challenge
        // describing WHY: a complete header line, written at compile time.
        macro_rules! refused {
            ($why:literal) => {
                Failure::client(401, concat!("jwt.", $why)).with_hint(Hint::InvalidToken(
                    concat!(
                        "www-authenticate: Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"",
                        $why,
                        "\"\r\n"
                    )
                    .as_bytes(),
                ))
            };
        }
        match self {
            Self::TooLarge => refused!("too_large"),
            Self::Malformed => refused!("malformed"),
            Self::Duplicate => refused!("duplicate_key"),
            Self::Header => refused!("header"),
            Self::Algorithm => refused!("algorithm"),
            Self::UnknownKey => refused!("unknown_key"),
            Self::NoKeys => NO_KEYS,
            Self::Signature => refused!("signature"),
            Self::Expired => refused!("expired"),
            Self::NotYetValid => refused!("not_yet_valid"),
            Self::Issuer => refused!("issuer"),
            Self::Audience => refused!("audience"),
            Self::Claims => refused!("claims"),
        }
    }
}

impl From<strict_json::NotStrict> for JwtError {
    fn from(e: strict_json::NotStrict) -> Self {
        match e {
            strict_json::NotStrict::Malformed => Self::Malformed,
            strict_json::NotStrict::Duplicate => Self::Duplicate,
        }
    }
}

/// No key set for the issuer yet: the gateway's problem, never an open door.
pub const NO_KEYS: Failure = Failure::internal(503, "jwt.keys_unavailable");

/// Whether a refusal means the issuer's keys should be fetched again.
pub fn needs_fresh_keys(f: Failure) -> bool {
    f == NO_KEYS || f == JwtError::UnknownKey.failure()
}

/// Header parameters refused outright: keys or key locations supplied by
/// the token itself, extensions the gateway does not understand, and
/// unencoded payloads (RFC 7797).
const FORBIDDEN_HEADER: [&str; 6] = ["jku", "x5u", "x5c", "jwk", "crit", "b64"];

/// What a route's rules need from a verified token, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenId {
    /// The issuer, by index.
    pub issuer: usize,
    /// Role bits.
    pub roles: u64,
    /// Scope bits.
    pub scopes: u64,
    /// Claim-rule bits (one per `claims` rule across routes).
    pub attrs: u64,
}

/// The names rules use, each compiled to a bit position.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    /// Role names.
    pub roles: Vec<String>,
    /// Scope names.
    pub scopes: Vec<String>,
    /// Claim rules: (dotted path, accepted values).
    pub attrs: Vec<(Vec<String>, Vec<String>)>,
}

impl Vocabulary {
    /// Bits of `names` in `table`.
    pub fn bits(table: &[String], names: impl IntoIterator<Item = impl AsRef<str>>) -> u64 {
        names
            .into_iter()
            .filter_map(|n| table.iter().position(|t| t == n.as_ref()))
            .fold(0, |acc, i| acc | 1 << i)
    }
}

/// An issuer, compiled.
pub struct Issuer {
    /// The settings.
    pub settings: JwtSettings,
}

impl Issuer {
    /// Compiles an issuer.
    pub fn new(settings: &JwtSettings) -> Self {
        Self {
            settings: settings.clone(),
        }
    }
}

/// The largest signature (RSA-8192), and its base64url length.
const MAX_SIGNATURE: usize = 1024;
const MAX_SIGNATURE_B64: usize = MAX_SIGNATURE.div_ceil(3) * 4;

/// A token's header, as far as the gateway reads it.
struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

fn b64(part: &str, max: usize) -> Result<Vec<u8>, JwtError> {
    if part.len() > max {
        return Err(JwtError::TooLarge);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)
}

fn read_header(part: &str, issuer: &Issuer) -> Result<Header, JwtError> {
    let h = strict_json::object(&b64(part, 4096)?).map_err(JwtError::from)?;
    if FORBIDDEN_HEADER.iter().any(|k| h.contains_key(*k)) {
        return Err(JwtError::Header);
    }
    let alg = match h.get("alg") {
        Some(Value::String(a)) => jwt_algorithm(a).ok_or(JwtError::Algorithm)?,
        _ => return Err(JwtError::Malformed),
    };
    if !issuer.settings.algorithms.contains(&alg) {
        return Err(JwtError::Algorithm);
    }
    let kid = match h.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    Ok(Header { alg, kid })
}

/// Verifies `token` for `issuer` (index `index`) with `keys` at `now`
/// (Unix seconds); on success writes the subject into `subject` and
/// returns the token's bits and its `exp` (if any).
pub fn verify(
    index: usize,
    issuer: &Issuer,
    keys: &KeySet,
    token: &str,
    vocab: &Vocabulary,
    now: i64,
    subject: &mut String,
) -> Result<(TokenId, Option<i64>), JwtError> {
    if token.len() > issuer.settings.max_token_bytes {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        // An empty signature is `alg: none` by another name.
        return Err(JwtError::Malformed);
    }
    let header = read_header(h, issuer)?;
    let key = match keys.find(header.kid.as_deref()) {
        Some(k) => k,
        None if !keys.loaded => return Err(JwtError::NoKeys),
        None => return Err(JwtError::UnknownKey),
    };
    let check = key.check(header.alg).ok_or(JwtError::Algorithm)?;
    if s.len() > MAX_SIGNATURE_B64 {
        return Err(JwtError::Malformed);
    }
    // A few bytes over: base64's decoder wants room for its estimate.
    let mut signature = [0u8; MAX_SIGNATURE + 4];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(s, &mut signature)
        .map_err(|_| JwtError::Malformed)?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    if !check.verify(signed, &signature[..n]) {
        return Err(JwtError::Signature);
    }
    let claims = strict_json::object(&b64(p, token.len())?).map_err(JwtError::from)?;
    let exp = validate(&claims, &issuer.settings, now)?;
    subject.clear();
    if let Some(Value::String(sub)) = claims.get("sub") {
        // It goes into a header and the log: visible ASCII and spaces only.
        if sub.len() > 256 || !sub.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(JwtError::Claims);
        }
        subject.push_str(sub);
    }
    let s = &issuer.settings;
    let id = TokenId {
        issuer: index,
        roles: word_bits(&vocab.roles, claim(&claims, &s.roles_claim), false),
        scopes: word_bits(&vocab.scopes, claim(&claims, &s.scopes_claim), true),
        attrs: vocab
            .attrs
            .iter()
            .enumerate()
            .filter(|(_, (path, values))| {
                let mut hit = false;
                each_word(claim(&claims, path), false, |w| {
                    hit |= values.iter().any(|v| v == w)
                });
                hit
            })
            .fold(0, |acc, (i, _)| acc | 1 << i),
    };
    Ok((id, exp))
}

/// The `iss` a token claims, unverified: only to pick among a route's
/// issuers which one verifies it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > 64 * 1024 {
        return None;
    }
    let claims = strict_json::object(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?,
    )
    .ok()?;
    match claims.get("iss") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}
