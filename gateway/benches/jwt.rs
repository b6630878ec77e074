//! The JWT verify path per algorithm, against ring's bare signature check
//! as the floor: what the gateway adds on top (size cap, strict header and
//! claims parsing, key lookup, claim validation, bits) is the difference.
//! And the verified-token cache hit, which is what a client reusing its
//! token pays. Run with `cargo xtask bench jwt`.

use std::{hint::black_box, path::PathBuf};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use criterion::{Criterion, criterion_group, criterion_main};
use gateway::{
    config::{JwtSettings, KeySource},
    stages::auth::jwt::{self, Issuer, TokenCache, Vocabulary, keys::KeySet, provider},
};
use jsonwebtoken::Algorithm;
use ring::{
    rand::SystemRandom,
    signature::{self as sig, KeyPair as _},
};

fn settings(algorithms: Vec<Algorithm>) -> JwtSettings {
    JwtSettings {
        name: "bench".into(),
        issuer: "https://id.test/".into(),
        audiences: vec!["api://orders".into()],
        algorithms,
        leeway_secs: 30,
        require_exp: true,
        roles_claim: vec!["roles".into()],
        scopes_claim: vec!["scope".into()],
        source: KeySource::File(PathBuf::from("unused")),
        refresh_secs: 300,
        ca_file: None,
        max_token_bytes: 8192,
        cache: true,
    }
}

fn claims() -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    format!(
        r#"{{"iss":"https://id.test/","aud":"api://orders","sub":"alice","exp":{exp},"scope":"orders:read profile","roles":["admin"]}}"#
    )
}

/// ring's bare check of a signature over a message.
type Floor = Box<dyn Fn(&[u8], &[u8]) -> bool>;

/// One algorithm's case: a token, its key set, and the bare ring check.
struct Case {
    name: &'static str,
    alg: Algorithm,
    token: String,
    keys: KeySet,
    floor: Floor,
}

fn sign_input(header: &str) -> String {
    format!("{}.{}", B64.encode(header), B64.encode(claims()))
}

fn es256() -> Case {
    let rng = SystemRandom::new();
    let a = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(a, &rng).expect("key");
    let pair = sig::EcdsaKeyPair::from_pkcs8(a, pkcs8.as_ref(), &rng).expect("pair");
    let p = pair.public_key().as_ref().to_vec();
    let input = sign_input(r#"{"alg":"ES256","kid":"k1"}"#);
    let s = pair.sign(&rng, input.as_bytes()).expect("sign");
    let jwks = format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","x":"{}","y":"{}"}}]}}"#,
        B64.encode(&p[1..33]),
        B64.encode(&p[33..])
    );
    Case {
        name: "ES256",
        alg: Algorithm::ES256,
        token: format!("{input}.{}", B64.encode(s.as_ref())),
        keys: KeySet::from_jwks(jwks.as_bytes(), &[Algorithm::ES256], 1).expect("jwks"),
        floor: Box::new(move |m, s| {
            sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &p)
                .verify(m, s)
                .is_ok()
        }),
    }
}

fn eddsa() -> Case {
    let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let pair = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
    let p = pair.public_key().as_ref().to_vec();
    let input = sign_input(r#"{"alg":"EdDSA","kid":"e1"}"#);
    let s = pair.sign(input.as_bytes());
    let jwks = format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"e1","alg":"EdDSA","x":"{}"}}]}}"#,
        B64.encode(&p)
    );
    Case {
        name: "EdDSA",
        alg: Algorithm::EdDSA,
        token: format!("{input}.{}", B64.encode(s.as_ref())),
        keys: KeySet::from_jwks(jwks.as_bytes(), &[Algorithm::EdDSA], 1).expect("jwks"),
        floor: Box::new(move |m, s| {
            sig::UnparsedPublicKey::new(&sig::ED25519, &p)
                .verify(m, s)
                .is_ok()
        }),
    }
}

fn rs256() -> Case {
    // ring makes no RSA keys: openssl does (PKCS#1 DER).
    let dir = std::env::temp_dir().join(format!("gw-bench-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (pem, der) = (dir.join("rsa.pem"), dir.join("rsa.der"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem.to_str().unwrap_or_default(),
        ],
        vec![
            "rsa",
            "-in",
            pem.to_str().unwrap_or_default(),
            "-traditional",
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap_or_default(),
        ],
    ] {
        let ok = std::process::Command::new("openssl")
            .args(&args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(ok.success());
    }
    let pair = sig::RsaKeyPair::from_der(&std::fs::read(&der).expect("key")).expect("pkcs1");
    let _ = std::fs::remove_dir_all(&dir);
    let c: sig::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
    let input = sign_input(r#"{"alg":"RS256","kid":"r1"}"#);
    let mut s = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &sig::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut s,
    )
    .expect("sign");
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"r1","alg":"RS256","n":"{}","e":"{}"}}]}}"#,
        B64.encode(&c.n),
        B64.encode(&c.e)
    );
    Case {
        name: "RS256",
        alg: Algorithm::RS256,
        token: format!("{input}.{}", B64.encode(&s)),
        keys: KeySet::from_jwks(jwks.as_bytes(), &[Algorithm::RS256], 1).expect("jwks"),
        floor: Box::new(move |m, s| {
            sig::RsaPublicKeyComponents { n: &c.n, e: &c.e }
                .verify(&sig::RSA_PKCS1_2048_8192_SHA256, m, s)
                .is_ok()
        }),
    }
}

fn hs256() -> Case {
    let secret = [42u8; 32];
    let input = sign_input(r#"{"alg":"HS256"}"#);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    Case {
        name: "HS256",
        alg: Algorithm::HS256,
        token: format!("{input}.{}", B64.encode(tag.as_ref())),
        keys: KeySet::from_secret(&secret, &[Algorithm::HS256], 1).expect("secret"),
        floor: Box::new(move |m, s| ring::hmac::verify(&key, m, s).is_ok()),
    }
}

fn verify_path(c: &mut Criterion) {
    provider::install();
    let vocab = Vocabulary {
        roles: vec!["admin".into()],
        scopes: vec!["orders:read".into()],
        attrs: Vec::new(),
    };
    for case in [es256(), rs256(), eddsa(), hs256()] {
        let issuer = Issuer::new(&settings(vec![case.alg]));
        let (input, sig64) = case.token.rsplit_once('.').expect("token");
        let sig_bytes = B64.decode(sig64).expect("b64");
        let mut subject = String::new();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        assert!(
            jwt::verify(
                0,
                &issuer,
                &case.keys,
                &case.token,
                &vocab,
                now,
                &mut subject
            )
            .is_ok()
        );
        assert!((case.floor)(input.as_bytes(), &sig_bytes));
        let mut g = c.benchmark_group(case.name);
        g.bench_function("ring floor", |b| {
            b.iter(|| (case.floor)(black_box(input.as_bytes()), black_box(&sig_bytes)))
        });
        g.bench_function("gateway verify", |b| {
            b.iter(|| {
                jwt::verify(
                    0,
                    &issuer,
                    &case.keys,
                    black_box(&case.token),
                    &vocab,
                    now,
                    &mut subject,
                )
            })
        });
        let mut cache = TokenCache::default();
        let (id, exp) = jwt::verify(
            0,
            &issuer,
            &case.keys,
            &case.token,
            &vocab,
            now,
            &mut subject,
        )
        .expect("valid");
        cache.put(jwt::digest(&case.token), 1, exp, now, id, &subject);
        g.bench_function("gateway cached", |b| {
            b.iter(|| {
                let key = jwt::digest(black_box(&case.token));
                cache.get(&key, 0, 1, now, &mut subject)
            })
        });
        g.finish();
    }
}

criterion_group!(benches, verify_path);
criterion_main!(benches);
