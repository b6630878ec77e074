//! jsonwebtoken's crypto over ring, the library rustls already runs on:
//! jsonwebtoken 10 ships only aws-lc-rs and RustCrypto backends (the latter
//! with `rsa`, RUSTSEC-2023-0071), but takes a process-wide provider of
//! signer and verifier factories. Verification is what the gateway needs;
//! signing is here for `keys`-style tooling and for the tests, which sign
//! with the library's own test keys and verify through this provider.

use jsonwebtoken::DecodingKeyKind;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier},
    errors::{Error, ErrorKind},
    jwk::{EllipticCurve, ThumbprintHash},
};
use ring::{
    rand::SystemRandom,
    signature::{self as sig, KeyPair as _, UnparsedPublicKey, VerificationAlgorithm},
};

/// The provider: install once with [`install`].
pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components,
        extract_ec_public_key_coordinates,
        compute_digest,
    },
};

/// Installs [`RING_PROVIDER`] for the process (a second call is harmless).
pub fn install() {
    let _ = RING_PROVIDER.install_default();
}

fn invalid_key() -> Error {
    ErrorKind::InvalidKeyFormat.into()
}

/// ring's verification algorithm for a JWS `alg` (RFC 7518 §3).
fn public_key_alg(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    if let Some(rsa) = rsa_params(alg) {
        return Some(rsa);
    }
    Some(match alg {
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

fn hmac_alg(alg: Algorithm) -> Option<ring::hmac::Algorithm> {
    match alg {
        Algorithm::HS256 => Some(ring::hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(ring::hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(ring::hmac::HMAC_SHA512),
        _ => None,
    }
}

/// One key's signature check for one algorithm, built once when a key set
/// loads: the request path calls [`Check::verify`] directly, and the
/// jsonwebtoken provider wraps the same type.
pub struct Check {
    kind: CheckKind,
}

enum CheckKind {
    Hmac(ring::hmac::Key),
    Public(&'static dyn VerificationAlgorithm, Vec<u8>),
    Rsa(&'static sig::RsaParameters, Vec<u8>, Vec<u8>),
}

fn rsa_params(alg: Algorithm) -> Option<&'static sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl Check {
    /// The check of `alg` signatures with `key`; an error when the key is
    /// of another family than the algorithm (RS/HS confusion).
    pub fn new(alg: Algorithm, key: &DecodingKey) -> Result<Self, Error> {
        if key.family() != alg.family() {
            return Err(invalid_key());
        }
        let kind = if let Some(h) = hmac_alg(alg) {
            CheckKind::Hmac(ring::hmac::Key::new(h, key.try_get_hmac_secret()?))
        } else {
            match key.kind() {
                DecodingKeyKind::SecretOrDer(b) => {
                    CheckKind::Public(public_key_alg(alg).ok_or_else(invalid_key)?, b.clone())
                }
                DecodingKeyKind::RsaModulusExponent { n, e } => CheckKind::Rsa(
                    rsa_params(alg).ok_or_else(invalid_key)?,
                    n.clone(),
                    e.clone(),
                ),
            }
        };
        Ok(Self { kind })
    }

    /// Whether `signature` signs `msg`.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        match &self.kind {
            // ring compares the tag in constant time.
            CheckKind::Hmac(key) => ring::hmac::verify(key, msg, signature).is_ok(),
            CheckKind::Public(alg, b) => UnparsedPublicKey::new(*alg, b)
                .verify(msg, signature)
                .is_ok(),
            CheckKind::Rsa(params, n, e) => sig::RsaPublicKeyComponents { n, e }
                .verify(params, msg, signature)
                .is_ok(),
        }
    }
}

struct Verifier {
    alg: Algorithm,
    check: Check,
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for Verifier {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), jsonwebtoken::signature::Error> {
        if self.check.verify(msg, signature) {
            Ok(())
        } else {
            Err(jsonwebtoken::signature::Error::new())
        }
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    Ok(Box::new(Verifier {
        alg: *alg,
        check: Check::new(*alg, key)?,
    }))
}

enum SigningKey {
    Hmac(ring::hmac::Key),
    Ecdsa(sig::EcdsaKeyPair),
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ed(sig::Ed25519KeyPair),
}

struct Signer {
    alg: Algorithm,
    key: SigningKey,
}

impl jsonwebtoken::signature::Signer<Vec<u8>> for Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        let rng = SystemRandom::new();
        match &self.key {
            SigningKey::Hmac(k) => Ok(ring::hmac::sign(k, msg).as_ref().to_vec()),
            SigningKey::Ecdsa(k) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| jsonwebtoken::signature::Error::new()),
            SigningKey::Rsa(k, padding) => {
                let mut out = vec![0u8; k.public().modulus_len()];
                k.sign(*padding, &rng, msg, &mut out)
                    .map_err(|_| jsonwebtoken::signature::Error::new())?;
                Ok(out)
            }
            SigningKey::Ed(k) => Ok(k.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for Signer {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(invalid_key());
    }
    let der = key.inner();
    let rng = SystemRandom::new();
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let h = hmac_alg(alg).ok_or_else(invalid_key)?;
            SigningKey::Hmac(ring::hmac::Key::new(h, key.try_get_hmac_secret()?))
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let a = if alg == Algorithm::ES256 {
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            SigningKey::Ecdsa(
                sig::EcdsaKeyPair::from_pkcs8(a, der, &rng)
                    .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
            )
        }
        Algorithm::EdDSA => SigningKey::Ed(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| ErrorKind::InvalidEddsaKey)?,
        ),
        _ => {
            let k = sig::RsaKeyPair::from_der(der)
                .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
            let padding: &'static dyn sig::RsaEncoding = match alg {
                Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                _ => &sig::RSA_PSS_SHA512,
            };
            SigningKey::Rsa(k, padding)
        }
    };
    Ok(Box::new(Signer { alg, key }))
}

fn extract_rsa_public_key_components(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let k = sig::RsaKeyPair::from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    let c: sig::RsaPublicKeyComponents<Vec<u8>> = k.public().into();
    Ok((c.n, c.e))
}

fn extract_ec_public_key_coordinates(
    der: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    let (a, curve, len) = match alg {
        Algorithm::ES256 => (
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            EllipticCurve::P256,
            32,
        ),
        Algorithm::ES384 => (
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            EllipticCurve::P384,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let k = sig::EcdsaKeyPair::from_pkcs8(a, der, &SystemRandom::new())
        .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    // Uncompressed point: 0x04 || x || y.
    let point = k.public_key().as_ref();
    if point.len() != 1 + 2 * len {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    Ok((curve, point[1..=len].to_vec(), point[1 + len..].to_vec()))
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
    };
    ring::digest::digest(alg, data).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation, decode, encode};
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair};

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            exp: jsonwebtoken::get_current_timestamp() + 600,
        }
    }

    /// Signs with `enc` and verifies with `dec` through this provider.
    fn round_trip(alg: Algorithm, enc: &EncodingKey, dec: &DecodingKey) -> Result<(), String> {
        install();
        let token = encode(&Header::new(alg), &claims(), enc).map_err(|e| format!("sign: {e}"))?;
        let got = decode::<Claims>(&token, dec, &Validation::new(alg))
            .map_err(|e| format!("verify: {e}"))?;
        assert_eq!(got.claims.sub, "alice");
        // A flipped signature byte never verifies.
        let mut bad = token.clone().into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).map_err(|e| e.to_string())?;
        if decode::<Claims>(&bad, dec, &Validation::new(alg)).is_ok() {
            return Err("a tampered signature verified".into());
        }
        Ok(())
    }

    /// The library's fixed HS256 vector (`tests/hmac.rs`, `sign_hs256`).
    #[test]
    fn the_librarys_fixed_hmac_vector() {
        install();
        let sig = jsonwebtoken::crypto::sign(
            b"hello world",
            &EncodingKey::from_secret(b"secret"),
            Algorithm::HS256,
        )
        .expect("sign");
        assert_eq!(sig, "c0zGLzKEFWj0VxWuufTXiRMk5tlI5MbGDAYhzaxIYjo");
        let ok = jsonwebtoken::crypto::verify(
            &sig,
            b"hello world",
            &DecodingKey::from_secret(b"secret"),
            Algorithm::HS256,
        )
        .expect("verify");
        assert!(ok);
    }

    fn ec(alg: &'static sig::EcdsaSigningAlgorithm) -> (EncodingKey, DecodingKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("pair");
        (
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            DecodingKey::from_ec_der(pair.public_key().as_ref()),
        )
    }

    #[test]
    fn every_family_round_trips_on_generated_keys() {
        let secret = [7u8; 32];
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            round_trip(
                alg,
                &EncodingKey::from_secret(&secret),
                &DecodingKey::from_secret(&secret),
            )
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
        let (e, d) = ec(&sig::ECDSA_P256_SHA256_FIXED_SIGNING);
        round_trip(Algorithm::ES256, &e, &d).expect("ES256");
        let (e, d) = ec(&sig::ECDSA_P384_SHA384_FIXED_SIGNING);
        round_trip(Algorithm::ES384, &e, &d).expect("ES384");
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
        round_trip(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_der(pkcs8.as_ref()),
            &DecodingKey::from_ed_der(pair.public_key().as_ref()),
        )
        .expect("EdDSA");
    }

    #[test]
    fn a_key_never_verifies_another_family() {
        install();
        let (enc, dec) = ec(&sig::ECDSA_P256_SHA256_FIXED_SIGNING);
        let token = encode(&Header::new(Algorithm::ES256), &claims(), &enc).expect("sign");
        // The EC public key used as an HMAC secret: RS/HS-style confusion.
        let mut v = Validation::new(Algorithm::HS256);
        v.algorithms = vec![Algorithm::HS256];
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(dec.as_bytes()),
        )
        .expect("sign");
        assert!(
            decode::<Claims>(&forged, &dec, &v).is_err(),
            "HS256 with the EC key verified"
        );
        assert!(new_verifier(&Algorithm::RS256, &dec).is_err());
        assert!(new_verifier(&Algorithm::HS256, &dec).is_err());
        assert!(decode::<Claims>(&token, &dec, &Validation::new(Algorithm::ES256)).is_ok());
    }

    /// jsonwebtoken's own test keys (its `tests/` directory, found through
    /// `cargo metadata`): sign and verify every algorithm with them.
    #[test]
    fn the_librarys_own_test_keys_verify() {
        let dir = library_tests_dir();
        let read = |p: &str| {
            std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(p).display()))
        };
        let rsa_private =
            EncodingKey::from_rsa_pem(&read("rsa/private_rsa_key_pkcs1.pem")).expect("rsa key");
        let rsa_public =
            DecodingKey::from_rsa_pem(&read("rsa/public_rsa_key_pkcs1.pem")).expect("rsa pub");
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            round_trip(alg, &rsa_private, &rsa_public).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
        let rsa_der = EncodingKey::from_rsa_der(&read("rsa/private_rsa_key.der"));
        let rsa_der_pub = DecodingKey::from_rsa_der(&read("rsa/public_rsa_key.der"));
        round_trip(Algorithm::RS256, &rsa_der, &rsa_der_pub).expect("RS256 DER");
        let ec_private =
            EncodingKey::from_ec_pem(&read("ecdsa/private_ecdsa_key.pem")).expect("ec key");
        let ec_public =
            DecodingKey::from_ec_pem(&read("ecdsa/public_ecdsa_key.pem")).expect("ec pub");
        round_trip(Algorithm::ES256, &ec_private, &ec_public).expect("ES256");
        let ed_private =
            EncodingKey::from_ed_pem(&read("eddsa/private_ed25519_key.pem")).expect("ed key");
        let ed_public =
            DecodingKey::from_ed_pem(&read("eddsa/public_ed25519_key.pem")).expect("ed pub");
        round_trip(Algorithm::EdDSA, &ed_private, &ed_public).expect("EdDSA");
        // The jwt.io RSA example key pair, as the library's tests use it.
        let jwtio = EncodingKey::from_rsa_pem(&read("rsa/private_jwtio.pem")).expect("jwt.io key");
        let jwtio_pub =
            DecodingKey::from_rsa_pem(&read("rsa/public_jwtio.pem")).expect("jwt.io pub");
        round_trip(Algorithm::RS256, &jwtio, &jwtio_pub).expect("jwt.io RS256");
    }

    fn host_triple() -> String {
        let out = std::process::Command::new("rustc")
            .arg("-vV")
            .output()
            .expect("rustc -vV");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .expect("host triple")
            .to_owned()
    }

    fn library_tests_dir() -> std::path::PathBuf {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let out = std::process::Command::new(env!("CARGO"))
            // Only this platform's packages, all of which the build fetched.
            .args(["metadata", "--format-version", "1", "--offline"])
            .args([
                "--filter-platform",
                &host_triple(),
                "--manifest-path",
                manifest,
            ])
            .output()
            .expect("cargo metadata");
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
        let path = meta["packages"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "jsonwebtoken"))
            .and_then(|p| p["manifest_path"].as_str())
            .expect("jsonwebtoken in the dependency graph");
        std::path::Path::new(path)
            .parent()
            .expect("crate dir")
            .join("tests")
    }
}
