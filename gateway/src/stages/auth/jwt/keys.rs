//! An issuer's verification keys: a JWKS (file, URL or OIDC discovery) or an
//! HMAC secret, each key pinned to the algorithms it may verify. The pin
//! comes from the JWK's own `alg` when it has one (the library's `from_jwk`
//! ignores it, so it is checked here), else from the key's type and the
//! issuer's allowed algorithms; a key never verifies another family's
//! algorithm, whatever a token's header says.

use std::collections::HashMap;

use super::provider::Check;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

/// One verification key: a ready signature check per algorithm it may
/// verify (non-empty, one family), built once at load so a request only
/// looks one up.
pub struct Key {
    checks: Vec<(Algorithm, Check)>,
}

impl Key {
    fn new(key: &DecodingKey, algorithms: &[Algorithm]) -> Result<Self, String> {
        let checks = algorithms
            .iter()
            .map(|&a| Check::new(a, key).map(|c| (a, c)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Self { checks })
    }

    /// The check for `alg`, if the key is pinned to it.
    pub fn check(&self, alg: Algorithm) -> Option<&Check> {
        self.checks.iter().find(|(a, _)| *a == alg).map(|(_, c)| c)
    }
}

/// An issuer's keys at one revision.
#[derive(Default)]
pub struct KeySet {
    /// Bumped on every change, so cached verifications of a removed key die.
    pub revision: u64,
    /// Whether any key set was ever loaded (else requests get 503, not 401).
    pub loaded: bool,
    by_kid: HashMap<String, Key>,
    without_kid: Vec<Key>,
}

/// Why a JWKS or secret is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// Not a JWKS document.
    #[error("not a JWKS document: {0}")]
    Json(String),
    /// No usable key in it.
    #[error("no key in it verifies any of the issuer's algorithms ({skipped})")]
    Empty {
        /// Why each key was skipped.
        skipped: String,
    },
    /// A secret no allowed algorithm can use.
    #[error("secret unusable: {0}")]
    Secret(String),
    /// An HMAC secret shorter than 32 bytes.
    #[error("HMAC secret of {0} bytes: at least 32 (RFC 8725 §3.5)")]
    ShortSecret(usize),
}

impl KeySet {
    /// The key for a token's `kid`; without `kid`, the one key when
    /// there is just one.
    pub fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(k) => self.by_kid.get(k),
            None => match (self.by_kid.len(), self.without_kid.as_slice()) {
                (0, [only]) => Some(only),
                (1, []) => self.by_kid.values().next(),
                _ => None,
            },
        }
    }

    /// Keys it holds.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A key set from a JWKS document, keeping the keys that verify one of
    /// `allowed`.
    pub fn from_jwks(
        json: &[u8],
        allowed: &[Algorithm],
        revision: u64,
    ) -> Result<Self, KeySetError> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| KeySetError::Json(e.to_string()))?;
        let mut out = Self {
            revision,
            loaded: true,
            ..Self::default()
        };
        let mut skipped = Vec::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            match key_from_jwk(jwk, allowed) {
                Ok(key) => match kid {
                    Some(kid) => {
                        out.by_kid.insert(kid, key);
                    }
                    None => out.without_kid.push(key),
                },
                Err(why) => {
                    skipped.push(format!("{}: {why}", kid.as_deref().unwrap_or("(no kid)")))
                }
            }
        }
        if out.is_empty() {
            return Err(KeySetError::Empty {
                skipped: skipped.join("; "),
            });
        }
        for s in &skipped {
            tracing::warn!("JWKS key skipped: {s}");
        }
        Ok(out)
    }

    /// A key set of one HMAC secret.
    pub fn from_secret(
        secret: &[u8],
        allowed: &[Algorithm],
        revision: u64,
    ) -> Result<Self, KeySetError> {
        if secret.len() < 32 {
            return Err(KeySetError::ShortSecret(secret.len()));
        }
        // Config allows only HS* with a secret; anything else fails here.
        let key =
            Key::new(&DecodingKey::from_secret(secret), allowed).map_err(KeySetError::Secret)?;
        Ok(Self {
            revision,
            loaded: true,
            by_kid: HashMap::new(),
            without_kid: vec![key],
        })
    }
}

fn key_from_jwk(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Key, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("`use` is not `sig`".into()),
    }
    // The key type decides the family it can verify.
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            AlgorithmFamily::Ed.algorithms()
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported curve".into()),
        // HMAC secrets are not published in a JWKS: `secret_file` only.
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key in a JWKS".into()),
    };
    let algorithms: Vec<Algorithm> = match &jwk.common.key_algorithm {
        Some(a) => {
            let a = pinned(a).ok_or("its `alg` is not a signature algorithm")?;
            if !family.contains(&a) {
                return Err(format!("its `alg` {a:?} does not fit its key type"));
            }
            vec![a]
        }
        None => family.to_vec(),
    };
    let algorithms: Vec<Algorithm> = algorithms
        .into_iter()
        .filter(|a| allowed.contains(a))
        .collect();
    if algorithms.is_empty() {
        return Err("verifies none of the issuer's algorithms".into());
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Key::new(&key, &algorithms)
}

fn pinned(a: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
