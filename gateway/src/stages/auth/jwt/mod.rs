//! JWT bearer tokens (RFC 7519), verified as RFC 8725 asks: the token's
//! size is capped before any decoding; its header is read strictly
//! (duplicate keys, `crit`, and key-carrying `jku`/`x5u`/`x5c`/`jwk`
//! refused); the algorithm must be one the issuer allows *and* one the key
//! is pinned to, so `alg: none`, RS/HS confusion and key-type mismatches
//! never verify; `iss`, `aud`, `exp` (required by default) and `nbf` are
//! checked by jsonwebtoken on our ring provider.
//!
//! One ES256 verification costs about as much as a whole proxied request,
//! so each worker keeps a bounded cache of verified tokens, keyed by a hash
//! of the token, valid until the token's `exp` and only for the key set
//! revision it was verified with.

pub mod keys;
pub mod provider;
pub mod strict_json;

use std::collections::HashMap;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::{
    config::{JwtSettings, jwt_algorithm},
    respond::Failure,
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
        let reason = match self {
            Self::TooLarge => "jwt.too_large",
            Self::Malformed => "jwt.malformed",
            Self::Duplicate => "jwt.duplicate_key",
            Self::Header => "jwt.header",
            Self::Algorithm => "jwt.algorithm",
            Self::UnknownKey => "jwt.unknown_key",
            Self::NoKeys => return NO_KEYS,
            Self::Signature => "jwt.signature",
            Self::Expired => "jwt.expired",
            Self::NotYetValid => "jwt.not_yet_valid",
            Self::Issuer => "jwt.issuer",
            Self::Audience => "jwt.audience",
            Self::Claims => "jwt.claims",
        };
        Failure::client(401, reason)
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

/// An issuer, compiled: its settings and one `Validation` per algorithm.
pub struct Issuer {
    /// The settings.
    pub settings: JwtSettings,
    validations: Vec<(Algorithm, Validation)>,
}

impl Issuer {
    /// Compiles an issuer.
    pub fn new(settings: &JwtSettings) -> Self {
        let validations = settings
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = settings.leeway_secs;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_issuer(&[&settings.issuer]);
                v.set_audience(&settings.audiences);
                let mut required = vec!["iss", "aud"];
                if settings.require_exp {
                    required.push("exp");
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        Self {
            settings: settings.clone(),
            validations,
        }
    }
}

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
    let h = strict_json::object(&b64(part, 4096)?).ok_or(JwtError::Duplicate)?;
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

/// Verifies `token` for `issuer` (index `index`) with `keys`; on success
/// writes the subject into `subject` and returns the token's bits and its
/// `exp` (Unix seconds, if any).
pub fn verify(
    index: usize,
    issuer: &Issuer,
    keys: &KeySet,
    token: &str,
    vocab: &Vocabulary,
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
    if !key.algorithms.contains(&header.alg) {
        return Err(JwtError::Algorithm);
    }
    let claims = strict_json::object(&b64(p, token.len())?).ok_or(JwtError::Duplicate)?;
    let validation = issuer
        .validations
        .iter()
        .find(|(a, _)| *a == header.alg)
        .map(|(_, v)| v)
        .ok_or(JwtError::Algorithm)?;
    jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, validation).map_err(
        |e| match e.kind() {
            ErrorKind::InvalidSignature => JwtError::Signature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidIssuer => JwtError::Issuer,
            ErrorKind::InvalidAudience => JwtError::Audience,
            ErrorKind::MissingRequiredClaim(_) => JwtError::Claims,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => JwtError::Algorithm,
            _ => JwtError::Malformed,
        },
    )?;
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
        roles: Vocabulary::bits(&vocab.roles, words(claim(&claims, &s.roles_claim), false)),
        scopes: Vocabulary::bits(&vocab.scopes, words(claim(&claims, &s.scopes_claim), true)),
        attrs: vocab
            .attrs
            .iter()
            .enumerate()
            .filter(|(_, (path, values))| {
                words(claim(&claims, path), false)
                    .iter()
                    .any(|w| values.iter().any(|v| v == w))
            })
            .fold(0, |acc, (i, _)| acc | 1 << i),
    };
    // jsonwebtoken takes a decimal `exp` (rounded): the cache must not
    // keep such a token past it.
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64)));
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
    )?;
    match claims.get("iss") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The value at a dotted path (`realm_access.roles`).
fn claim<'c>(claims: &'c Map<String, Value>, path: &[String]) -> Option<&'c Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.get(p)?;
    }
    Some(v)
}

/// A claim as a list of words: an array of strings, or a string (split on
/// whitespace only for scopes: `scope` is space-separated, RFC 8693 §4.2;
/// a role or claim value is compared whole); numbers and booleans as text.
fn words(v: Option<&Value>, split: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(scalar).collect(),
        Some(other) => scalar(other).into_iter().collect(),
        None => Vec::new(),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Verified tokens per worker, bounded.
#[derive(Default)]
pub struct TokenCache {
    map: HashMap<[u8; 16], Cached>,
}

struct Cached {
    issuer: usize,
    revision: u64,
    expires: i64,
    id: TokenId,
    subject: String,
}

/// Entries a worker keeps at most.
const CACHE_ENTRIES: usize = 16_384;
/// How long a token without `exp` (allowed by `require_exp = false`) stays cached.
const CACHE_WITHOUT_EXP: i64 = 60;

/// The cache key of a token.
pub fn digest(token: &str) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

impl TokenCache {
    /// A cached verification still valid at `now` for this key revision.
    pub fn get(
        &self,
        key: &[u8; 16],
        issuer: usize,
        revision: u64,
        now: i64,
        subject: &mut String,
    ) -> Option<TokenId> {
        let c = self.map.get(key)?;
        if c.issuer != issuer || c.revision != revision || now >= c.expires {
            return None;
        }
        subject.clear();
        subject.push_str(&c.subject);
        Some(c.id)
    }

    /// Remembers a verification.
    pub fn put(
        &mut self,
        key: [u8; 16],
        revision: u64,
        exp: Option<i64>,
        now: i64,
        id: TokenId,
        subject: &str,
    ) {
        if self.map.len() >= CACHE_ENTRIES {
            self.map.retain(|_, c| c.expires > now);
            if self.map.len() >= CACHE_ENTRIES {
                self.map.clear();
            }
        }
        let expires = exp.unwrap_or(now + CACHE_WITHOUT_EXP).min(now + 3600);
        self.map.insert(
            key,
            Cached {
                issuer: id.issuer,
                revision,
                expires,
                id,
                subject: subject.to_owned(),
            },
        );
    }
}
