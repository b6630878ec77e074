//! Keys and tokens for `bench proxy`'s JWT scenarios: one ES256 and one
//! RS256 key made by openssl (HAProxy's `jwt_verify` reads PEM public
//! keys; the gateway reads a JWKS), and a token for each, signed with ring.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ring::{
    rand::SystemRandom,
    signature::{self as sig, KeyPair as _},
};

/// What the gateway and HAProxy configurations and wrk need.
pub struct JwtFixture {
    /// JWKS with both public keys (`kid` es1 and rs1).
    pub jwks: PathBuf,
    /// PEM public keys for HAProxy.
    pub es_pub: PathBuf,
    /// See `es_pub`.
    pub rs_pub: PathBuf,
    /// A valid token for each key (one hour).
    pub es_token: String,
    /// See `es_token`.
    pub rs_token: String,
}

/// The issuer and audience the tokens carry and both proxies check.
pub const ISSUER: &str = "https://id.bench/";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "api://bench";

fn openssl(args: &[&str]) -> Result<()> {
    let ok = std::process::Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl (apt-get install openssl)")?;
    if !ok.success() {
        bail!("openssl {args:?} failed");
    }
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn token(header: &str, sign: impl Fn(&[u8]) -> Result<Vec<u8>>) -> Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let claims = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"bench","exp":{exp},"scope":"orders:read"}}"#
    );
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    Ok(format!("{input}.{}", B64.encode(sign(input.as_bytes())?)))
}

/// Makes the keys and tokens in `dir`.
pub fn make(dir: &Path) -> Result<JwtFixture> {
    let rng = SystemRandom::new();
    let (ec_pem, ec_p8, es_pub) = (
        dir.join("ec.pem"),
        dir.join("ec.p8"),
        dir.join("ec-pub.pem"),
    );
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &s(&ec_pem),
    ])?;
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &s(&ec_pem),
        "-outform",
        "DER",
        "-out",
        &s(&ec_p8),
    ])?;
    openssl(&["pkey", "-in", &s(&ec_pem), "-pubout", "-out", &s(&es_pub)])?;
    let ec = sig::EcdsaKeyPair::from_pkcs8(
        &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
        &std::fs::read(&ec_p8)?,
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("EC key: {e}"))?;
    let (rsa_pem, rsa_der) = gateway_tests::harness::openssl_rsa_key(dir);
    let rs_pub = dir.join("rsa-pub.pem");
    openssl(&["pkey", "-in", &s(&rsa_pem), "-pubout", "-out", &s(&rs_pub)])?;
    let rsa = sig::RsaKeyPair::from_der(&rsa_der).map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
    let point = ec.public_key().as_ref();
    let rc: sig::RsaPublicKeyComponents<Vec<u8>> = rsa.public().into();
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"es1","alg":"ES256","x":"{}","y":"{}"}},{{"kty":"RSA","kid":"rs1","alg":"RS256","n":"{}","e":"{}"}}]}}"#,
            B64.encode(&point[1..33]),
            B64.encode(&point[33..]),
            B64.encode(&rc.n),
            B64.encode(&rc.e)
        ),
    )?;
    let es_token = token(r#"{"alg":"ES256","kid":"es1","typ":"JWT"}"#, |m| {
        ec.sign(&rng, m)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    let rs_token = token(r#"{"alg":"RS256","kid":"rs1","typ":"JWT"}"#, |m| {
        let mut out = vec![0u8; rsa.public().modulus_len()];
        rsa.sign(&sig::RSA_PKCS1_SHA256, &rng, m, &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(out)
    })?;
    Ok(JwtFixture {
        jwks,
        es_pub,
        rs_pub,
        es_token,
        rs_token,
    })
}

/// The gateway's issuers and routes for the scenarios: `/es` (ES256,
/// cached), `/es-nc` (ES256, every request verified), `/rs` (RS256, cached).
pub fn gateway_toml(f: &JwtFixture) -> (String, String) {
    let issuer = |name: &str, alg: &str, cache: bool| {
        format!(
            "[[auth.jwt]]\nname = \"{name}\"\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nalgorithms = [\"{alg}\"]\njwks_file = \"{}\"\ncache = {cache}\n",
            f.jwks.display()
        )
    };
    let route = |path: &str, name: &str| {
        format!(
            "[[routes]]\npath_prefix = \"{path}\"\nupstream = \"backend\"\nauth = [\"jwt:{name}\"]\n"
        )
    };
    (
        [
            route("/es-nc", "es-nc"),
            route("/es", "es"),
            route("/rs", "rs"),
        ]
        .concat(),
        [
            issuer("es", "ES256", true),
            issuer("es-nc", "ES256", false),
            issuer("rs", "RS256", true),
        ]
        .concat(),
    )
}

/// HAProxy 2.6 doing the same checks on `/es` and `/rs`: the header's
/// `alg`, the signature (`jwt_verify` with the same public key), `iss`,
/// `aud` and `exp`.
pub fn haproxy_rules(f: &JwtFixture) -> String {
    format!(
        r#"  acl es path_beg /es
  acl rs path_beg /rs
  acl jwt path_beg /es /rs
  http-request set-var(txn.bearer) http_auth_bearer if jwt
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg') if jwt
  http-request deny deny_status 401 if es !{{ var(txn.alg) -m str ES256 }}
  http-request deny deny_status 401 if rs !{{ var(txn.alg) -m str RS256 }}
  http-request deny deny_status 401 if es !{{ var(txn.bearer),jwt_verify("ES256","{es}") -m int 1 }}
  http-request deny deny_status 401 if rs !{{ var(txn.bearer),jwt_verify("RS256","{rs}") -m int 1 }}
  http-request deny deny_status 401 if jwt !{{ var(txn.bearer),jwt_payload_query('$.iss') -m str {ISSUER} }}
  http-request deny deny_status 401 if jwt !{{ var(txn.bearer),jwt_payload_query('$.aud') -m str {AUDIENCE} }}
  http-request set-var(txn.now) date() if jwt
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int') if jwt
  http-request deny deny_status 401 if jwt {{ var(txn.exp),sub(txn.now) -m int le 0 }}
"#,
        es = f.es_pub.display(),
        rs = f.rs_pub.display()
    )
}
