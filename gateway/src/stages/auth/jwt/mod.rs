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

pub mod keys;
pub mod provider;
pub mod strict_json;

use std::collections::HashMap;

use base64::Engine as _;
use jsonwebtoken::Algorithm;
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
    let claims = strict_json::object(&b64(p, token.len())?).ok_or(JwtError::Duplicate)?;
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

/// The registered claims (RFC 7519 §4.1) of a verified token, checked as
/// jsonwebtoken's `Validation` checks them: `iss` equal, one of `aud`
/// accepted, `exp` required unless configured otherwise, `exp` and `nbf`
/// with the leeway. Returns `exp`.
fn validate(
    claims: &Map<String, Value>,
    s: &JwtSettings,
    now: i64,
) -> Result<Option<i64>, JwtError> {
    // A NumericDate may have a fraction (RFC 7519 §2): round towards
    // refusing, and never read a string (CVE-2026-25537's confusion).
    let date = |name: &str, round: fn(f64) -> f64| match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => i64::try_from(u).map(Some).map_err(|_| JwtError::Claims),
            (None, Some(f)) if f.is_finite() && f >= 0.0 && f < i64::MAX as f64 => {
                Ok(Some(round(f) as i64))
            }
            _ => Err(JwtError::Claims),
        },
        Some(_) => Err(JwtError::Claims),
    };
    let exp = date("exp", f64::floor)?;
    let nbf = date("nbf", f64::ceil)?;
    let leeway = i64::try_from(s.leeway_secs).unwrap_or(i64::MAX);
    match exp {
        None if s.require_exp => return Err(JwtError::Claims),
        Some(e) if e < now.saturating_sub(leeway) => return Err(JwtError::Expired),
        _ => {}
    }
    if nbf.is_some_and(|n| n > now.saturating_add(leeway)) {
        return Err(JwtError::NotYetValid);
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == s.issuer => {}
        Some(Value::String(_)) => return Err(JwtError::Issuer),
        _ => return Err(JwtError::Claims),
    }
    let accepted = |a: &Value| {
        a.as_str()
            .is_some_and(|a| s.audiences.iter().any(|x| x == a))
    };
    match claims.get("aud") {
        Some(a @ Value::String(_)) if accepted(a) => Ok(exp),
        Some(Value::String(_)) => Err(JwtError::Audience),
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            if list.iter().any(accepted) {
                Ok(exp)
            } else {
                Err(JwtError::Audience)
            }
        }
        _ => Err(JwtError::Claims),
    }
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

/// Bits in `table` (at most 64 names) of a claim's words.
fn word_bits(table: &[String], v: Option<&Value>, split: bool) -> u64 {
    let mut bits = 0;
    each_word(v, split, |w| {
        if let Some(i) = table.iter().position(|t| t == w) {
            bits |= 1 << i;
        }
    });
    bits
}

/// Calls `add` with each of a claim's words: an array of strings, or a
/// string (split on whitespace only for scopes: `scope` is space-separated,
/// RFC 8693 §4.2; a role or claim value is compared whole); numbers and
/// booleans as text.
fn each_word(v: Option<&Value>, split: bool, mut add: impl FnMut(&str)) {
    match v {
        Some(Value::String(s)) if split => s.split_whitespace().for_each(add),
        Some(Value::Array(a)) => a.iter().for_each(|x| scalar(x, &mut add)),
        Some(other) => scalar(other, &mut add),
        None => {}
    }
}

fn scalar(v: &Value, add: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => add(s),
        Value::Number(n) => add(&n.to_string()),
        Value::Bool(b) => add(if *b { "true" } else { "false" }),
        _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySource;
    use jsonwebtoken::{EncodingKey, Header, Validation, errors::ErrorKind};

    const SECRET: [u8; 32] = [9; 32];

    fn settings() -> JwtSettings {
        JwtSettings {
            name: "t".into(),
            issuer: "https://id.test/".into(),
            audiences: vec!["api://a".into(), "api://b".into()],
            algorithms: vec![Algorithm::HS256],
            leeway_secs: 30,
            require_exp: true,
            roles_claim: vec!["roles".into()],
            scopes_claim: vec!["scope".into()],
            source: KeySource::File("unused".into()),
            refresh_secs: 300,
            ca_file: None,
            max_token_bytes: 8192,
            cache: true,
        }
    }

    /// What jsonwebtoken's `decode` with the equivalent `Validation` says:
    /// the oracle the gateway's own claim checks must agree with.
    fn library(token: &str, s: &JwtSettings) -> Result<(), JwtError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = s.leeway_secs;
        v.validate_nbf = true;
        v.set_issuer(&[&s.issuer]);
        v.set_audience(&s.audiences);
        let mut required = vec!["iss", "aud"];
        if s.require_exp {
            required.push("exp");
        }
        v.set_required_spec_claims(&required);
        let key = jsonwebtoken::DecodingKey::from_secret(&SECRET);
        match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key, &v) {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidSignature => JwtError::Signature,
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                ErrorKind::InvalidIssuer => JwtError::Issuer,
                ErrorKind::InvalidAudience => JwtError::Audience,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    JwtError::Claims
                }
                _ => JwtError::Malformed,
            }),
        }
    }

    fn sign(claims: &str) -> String {
        let value: Value = serde_json::from_str(claims).expect("claims json");
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &value,
            &EncodingKey::from_secret(&SECRET),
        )
        .expect("sign")
    }

    /// The gateway's answer for `token` under `s` at `now`: its `exp`.
    fn ours(token: &str, s: &JwtSettings, now: i64) -> Result<Option<i64>, JwtError> {
        provider::install();
        let keys = KeySet::from_secret(&SECRET, &[Algorithm::HS256], 1).expect("keys");
        let mut subject = String::new();
        let vocab = Vocabulary::default();
        verify(0, &Issuer::new(s), &keys, token, &vocab, now, &mut subject).map(|(_, exp)| exp)
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    #[test]
    fn claim_checks_agree_with_jsonwebtoken() {
        let now = now();
        let iss = r#""iss":"https://id.test/""#;
        let aud = r#""aud":"api://a""#;
        let cases = [
            format!(r#"{{{iss},{aud},"exp":{}}}"#, now + 100),
            format!(r#"{{{iss},{aud},"exp":{}}}"#, now - 10),
            format!(r#"{{{iss},{aud},"exp":{}}}"#, now - 100),
            format!(r#"{{{iss},{aud},"exp":{}.5}}"#, now + 100),
            format!(r#"{{{iss},{aud},"exp":"{}"}}"#, now + 100),
            format!(r#"{{{iss},{aud},"exp":-5}}"#),
            format!(r#"{{{iss},{aud},"exp":null}}"#),
            format!(r#"{{{iss},{aud}}}"#),
            format!(r#"{{{iss},{aud},"exp":{},"nbf":{}}}"#, now + 100, now + 10),
            format!(r#"{{{iss},{aud},"exp":{},"nbf":{}}}"#, now + 100, now + 100),
            format!(r#"{{{iss},{aud},"exp":{},"nbf":"soon"}}"#, now + 100),
            format!(
                r#"{{"iss":"https://evil.test/",{aud},"exp":{}}}"#,
                now + 100
            ),
            format!(r#"{{{aud},"exp":{}}}"#, now + 100),
            format!(r#"{{{iss},"aud":["x","api://b"],"exp":{}}}"#, now + 100),
            format!(r#"{{{iss},"aud":["x","y"],"exp":{}}}"#, now + 100),
            format!(r#"{{{iss},"aud":[],"exp":{}}}"#, now + 100),
            format!(r#"{{{iss},"aud":"api://c","exp":{}}}"#, now + 100),
            format!(r#"{{{iss},"aud":7,"exp":{}}}"#, now + 100),
            format!(r#"{{{iss},"exp":{}}}"#, now + 100),
        ];
        for claims in &cases {
            let token = sign(claims);
            let mine = ours(&token, &settings(), now).map(|_| ());
            assert_eq!(mine, library(&token, &settings()), "{claims}");
        }
        // Without `require_exp`, a token without `exp` passes both.
        let mut lax = settings();
        lax.require_exp = false;
        let token = sign(&format!("{{{iss},{aud}}}"));
        assert_eq!(ours(&token, &lax, now), Ok(None));
        assert_eq!(library(&token, &lax), Ok(()));
    }

    #[test]
    fn an_array_issuer_is_refused_where_the_library_would_take_it() {
        // RFC 7519 §4.1.1: `iss` is one StringOrURI. jsonwebtoken accepts
        // an array holding the issuer; the gateway does not.
        let claims = r#"{"iss":["https://id.test/"],"aud":"api://a","exp":NOW}"#;
        let token = sign(&claims.replace("NOW", &(now() + 100).to_string()));
        assert_eq!(ours(&token, &settings(), now()), Err(JwtError::Claims));
        assert_eq!(library(&token, &settings()), Ok(()));
    }

    #[test]
    fn a_tampered_or_oversized_signature_never_verifies() {
        let claims = r#"{"iss":"https://id.test/","aud":"api://a","exp":NOW}"#;
        let token = sign(&claims.replace("NOW", &(now() + 100).to_string()));
        let (signed, sig) = token.rsplit_once('.').expect("three parts");
        let check = |t: &str| ours(t, &settings(), now()).map(|_| ());
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        assert_eq!(
            check(&format!("{signed}.{flipped}{}", &sig[1..])),
            Err(JwtError::Signature)
        );
        let long = "A".repeat(MAX_SIGNATURE_B64 + 4);
        assert_eq!(check(&format!("{signed}.{long}")), Err(JwtError::Malformed));
        assert_eq!(check(&format!("{signed}.{sig}=")), Err(JwtError::Malformed));
        assert_eq!(check(&token), Ok(()));
    }
}
