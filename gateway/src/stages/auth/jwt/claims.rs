//! What a verified token claims: the registered claims checked (`iss`,
//! `aud`, `exp`, `nbf`), and the roles, scopes and claim values rules read.

use serde_json::{Map, Value};

use super::JwtError;
use crate::config::JwtSettings;

/// The registered claims (RFC 7519 §4.1) of a verified token, checked as
/// jsonwebtoken's `Validation` checks them: `iss` equal, one of `aud`
/// accepted, `exp` required unless configured otherwise, `exp` and `nbf`
/// with the leeway. Returns `exp`.
pub(super) fn validate(
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

/// The value at a dotted path (`realm_access.roles`).
pub(super) fn claim<'c>(claims: &'c Map<String, Value>, path: &[String]) -> Option<&'c Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.get(p)?;
    }
    Some(v)
}

/// Bits in `table` (at most 64 names) of a claim's words.
pub(super) fn word_bits(table: &[String], v: Option<&Value>, split: bool) -> u64 {
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
pub(super) fn each_word(v: Option<&Value>, split: bool, mut add: impl FnMut(&str)) {
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

#[cfg(test)]
mod tests {
    use super::super::*;
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
        // Before any encode: the library panics without a provider.
        provider::install();
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
