//! Authentication: who is calling. A route lists the authenticators it
//! accepts (`auth = ["api_key"]`) or says it is public (`auth = "none"`);
//! the first credential present decides, and a present but bad credential
//! is never passed over for another.
//!
//! Order as a type: [`Authenticated`] can only be made here, and a request
//! is admitted to the proxy only with one, so a route whose authentication
//! was skipped does not compile.

pub mod api_key;
pub mod introspect;
pub mod jwt;

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    config::{AuthSettings, Authenticator, RouteAuth},
    http::request::RequestHead,
    respond::{Failure, Hint},
};
use api_key::{KeyError, KeyRing};
use introspect::{AnswerCache, CachedAnswer};
use jwt::{Issuer, JwtError, TokenCache, TokenId, Vocabulary, keys::KeySet};

/// Who the caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Nobody in particular: a public route.
    Anonymous,
    /// A consumer of the key file, by index in the snapshot's key ring.
    Consumer(usize),
    /// The bearer of a verified token (its subject is in the connection's
    /// scratch, its roles, scopes and claims as bits).
    Token(TokenId),
}

/// What authentication leaves for the rest of a request (per-request
/// scratch).
#[derive(Debug, Default)]
pub struct Scratch {
    /// A verified token's subject (for limits, the log and the upstream).
    pub subject: String,
    /// A bearer token waiting for introspection.
    pub token: String,
}

/// Proof that a route's authentication ran and passed.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    identity: Identity,
    /// A token's `exp` (Unix seconds), when it has one.
    expires: Option<i64>,
}

impl Authenticated {
    /// Who passed.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// When the token that authenticated the request expires (Unix
    /// seconds; none for a key, an anonymous caller or a token without
    /// `exp`).
    pub fn expires(&self) -> Option<i64> {
        self.expires
    }
}

/// No credential on a route that needs one.
pub const MISSING: Failure = Failure::client(401, "auth.missing");

/// Whether a 401 says a credential was guessed (a wrong key, a forged or
/// broken token), which escalation counts: not a missing one, nor a token
/// that was valid once or will be (a client's clock or refresh, not an
/// attack).
pub fn is_guess(f: Failure) -> bool {
    f.status == 401
        && f != MISSING
        && f != jwt::JwtError::Expired.failure()
        && f != jwt::JwtError::NotYetValid.failure()
}
/// An API key no consumer holds, or outside its validity.
pub const INVALID_KEY: Failure = Failure::client(401, "auth.invalid_key");
/// Two credential headers of one kind: which one would a backend read?
pub const AMBIGUOUS: Failure = Failure::client(400, "auth.ambiguous")
    .with_hint(Hint::Detail("send one credential header, not several"));
/// An API key in the query string, where it lands in logs and browser history.
pub const KEY_IN_QUERY: Failure = Failure::client(400, "auth.key_in_query").with_hint(Hint::Detail(
    "send the API key in its header, not in the URL: URLs end up in logs, proxies and browser history",
));
/// An Authorization header that is not `Bearer <token>`.
pub const MALFORMED: Failure = Failure::client(400, "auth.malformed");

/// Everything authentication reads, from the snapshot and the worker.
pub struct Verifiers<'a> {
    /// Header names.
    pub settings: &'a AuthSettings,
    /// API keys.
    pub keys: &'a KeyRing,
    /// JWT issuers, by index.
    pub issuers: &'a [Issuer],
    /// Their key sets, by issuer index.
    pub jwks: &'a [Arc<KeySet>],
    /// Role, scope and claim names as bits.
    pub vocab: &'a Vocabulary,
    /// The worker's verified tokens.
    pub cache: &'a mut TokenCache,
    /// The worker's introspection answers.
    pub answers: &'a AnswerCache,
}

/// Why authentication did not pass (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Refused, with this failure.
    Refused(Failure),
    /// The token must be looked up at introspection endpoint `i` first
    /// (its value is in the caller's token scratch).
    Lookup(usize),
}

impl From<Failure> for AuthError {
    fn from(f: Failure) -> Self {
        Self::Refused(f)
    }
}

/// Query parameter names that carry API keys by common convention.
const QUERY_KEY_NAMES: [&str; 3] = ["api_key", "apikey", "api-key"];

/// Runs a route's authentication: the first credential present decides.
pub fn authenticate(
    route: &RouteAuth,
    head: &RequestHead<'_, '_>,
    v: &mut Verifiers<'_>,
    subject: &mut String,
    token_out: &mut String,
) -> Result<Authenticated, AuthError> {
    let list = match route {
        RouteAuth::Public => {
            return Ok(Authenticated {
                identity: Identity::Anonymous,
                expires: None,
            });
        }
        RouteAuth::Required(list) => list,
    };
    for a in list {
        let (identity, expires) = match *a {
            Authenticator::ApiKey => {
                if key_in_query(head.target, &v.settings.key_header) {
                    return Err(KEY_IN_QUERY.into());
                }
                let Some(key) = single_header(head, &v.settings.key_header)? else {
                    continue;
                };
                let consumer = v.keys.verify(key, now()).map_err(|e| match e {
                    KeyError::Unknown | KeyError::NotYetValid | KeyError::Expired => INVALID_KEY,
                })?;
                (Identity::Consumer(consumer), None)
            }
            Authenticator::Jwt(i) => {
                let Some(token) = bearer(head)? else {
                    continue;
                };
                let (id, exp) = token_identity(pick_issuer(list, i, token, v), token, v, subject)?;
                (Identity::Token(id), exp)
            }
            Authenticator::Introspect(i) => {
                let Some(token) = bearer(head)? else {
                    continue;
                };
                let key = jwt::digest(token);
                match v.answers.get(&key, i, now(), subject) {
                    Some(CachedAnswer::Active(id, exp)) => (Identity::Token(id), exp),
                    Some(CachedAnswer::Inactive) => return Err(introspect::INACTIVE.into()),
                    Some(CachedAnswer::Refused(f)) => return Err(f.into()),
                    None => {
                        token_out.clear();
                        token_out.push_str(token);
                        return Err(AuthError::Lookup(i));
                    }
                }
            }
        };
        return Ok(Authenticated { identity, expires });
    }
    Err(MISSING.into())
}

/// Of a route's JWT issuers, the one the token names (by its unverified
/// `iss`); `first` when it names none of them, so the error is that one's.
fn pick_issuer(list: &[Authenticator], first: usize, token: &str, v: &Verifiers<'_>) -> usize {
    let mut jwt = list.iter().filter_map(|a| match a {
        Authenticator::Jwt(i) => Some(*i),
        _ => None,
    });
    if jwt.clone().count() < 2 {
        return first;
    }
    let Some(iss) = jwt::unverified_issuer(token) else {
        return first;
    };
    jwt.find(|&i| v.issuers[i].settings.issuer == iss)
        .unwrap_or(first)
}

/// A bearer token, from the cache or verified now, and its `exp`.
fn token_identity(
    i: usize,
    token: &str,
    v: &mut Verifiers<'_>,
    subject: &mut String,
) -> Result<(TokenId, Option<i64>), Failure> {
    let keys = &v.jwks[i];
    let issuer = &v.issuers[i];
    let now = now();
    if !issuer.settings.cache {
        return jwt::verify(i, issuer, keys, token, v.vocab, now, subject)
            .map_err(JwtError::failure);
    }
    let key = jwt::digest(token);
    if let Some(found) = v.cache.get(&key, i, keys.revision, now, subject) {
        return Ok(found);
    }
    let (id, exp) =
        jwt::verify(i, issuer, keys, token, v.vocab, now, subject).map_err(JwtError::failure)?;
    v.cache.put(key, keys.revision, exp, now, id, subject);
    Ok((id, exp))
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme
/// is case-insensitive). Another scheme is no bearer token; two
/// Authorization headers or a broken value are refused.
fn bearer<'b>(head: &RequestHead<'b, '_>) -> Result<Option<&'b str>, Failure> {
    let Some(value) = single_header(head, "authorization")? else {
        return Ok(None);
    };
    let value = std::str::from_utf8(value).map_err(|_| MALFORMED)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim_start_matches(' ');
    // token68 (RFC 9110 §11.2).
    let body = token.trim_end_matches('=');
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        return Err(MALFORMED);
    }
    Ok(Some(token))
}

/// The value of a header that must appear at most once.
fn single_header<'b>(head: &RequestHead<'b, '_>, name: &str) -> Result<Option<&'b [u8]>, Failure> {
    head.single(name).map_err(|_| AMBIGUOUS)
}

/// Copies `target` into `out` (cleared first) for the log, with the value
/// of every query parameter that carries a credential replaced: a key or
/// token refused for being in the URL must not land in the log either.
pub fn redact_query(target: &str, key_header: &str, out: &mut String) {
    out.clear();
    let Some((path, query)) = target.split_once('?') else {
        out.push_str(target);
        return;
    };
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = pair.split('=').next().unwrap_or_default();
        let secret = name.eq_ignore_ascii_case(key_header)
            || name.eq_ignore_ascii_case("access_token")
            || QUERY_KEY_NAMES.iter().any(|n| name.eq_ignore_ascii_case(n));
        if secret && pair.contains('=') {
            out.push_str(name);
            out.push_str("=REDACTED");
        } else {
            out.push_str(pair);
        }
    }
}

/// Whether the query has a parameter named like an API key.
fn key_in_query(target: &str, header: &str) -> bool {
    let Some((_, query)) = target.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        name.eq_ignore_ascii_case(header)
            || QUERY_KEY_NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
    })
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_query_are_redacted_for_the_log() {
        let mut out = String::new();
        redact_query(
            "/a?x=1&api_key=gwk_secret&access_token=t&y",
            "x-api-key",
            &mut out,
        );
        assert_eq!(out, "/a?x=1&api_key=REDACTED&access_token=REDACTED&y");
        redact_query("/plain", "x-api-key", &mut out);
        assert_eq!(out, "/plain");
    }

    #[test]
    fn keys_in_the_query_are_recognised_by_name() {
        assert!(key_in_query("/a?api_key=x", "x-api-key"));
        assert!(key_in_query("/a?b=1&APIKEY=x", "x-api-key"));
        assert!(key_in_query("/a?x-api-key=x", "x-api-key"));
        assert!(!key_in_query("/a?key=x&q=api_key", "x-api-key"));
        assert!(!key_in_query("/a", "x-api-key"));
    }
}
