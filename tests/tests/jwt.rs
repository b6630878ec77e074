//! JWT bearer tokens end to end: an attack table through the running
//! gateway over TLS (each hostile token proven never to reach the backend),
//! key rotation that invalidates cached verifications, OIDC discovery and
//! JWKS over a real HTTPS server with unknown-`kid` refresh, rate limit and
//! outage behaviour.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use gateway_tests::harness::{DocServer, Response, Setup, TempDir, reason_of, setup_with};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair},
};

/// A key that signs test tokens.
enum Key {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Hmac(Vec<u8>),
}

fn ec_key() -> Key {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
    Key::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("pair"))
}

/// ring makes no RSA keys: openssl does (PKCS#1 DER, which ring reads).
fn rsa_key(dir: &Path) -> Key {
    let (_, der) = gateway_tests::harness::openssl_rsa_key(dir);
    Key::Rsa(RsaKeyPair::from_der(&der).expect("PKCS#1"))
}

/// The key's JWK (public part), with `kid` and `alg`.
fn jwk(key: &Key, kid: &str) -> String {
    match key {
        Key::Ec(k) => {
            let p = k.public_key().as_ref();
            format!(
                r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","alg":"ES256","use":"sig","x":"{}","y":"{}"}}"#,
                B64.encode(&p[1..33]),
                B64.encode(&p[33..])
            )
        }
        Key::Rsa(k) => {
            let c: signature::RsaPublicKeyComponents<Vec<u8>> = k.public().into();
            format!(
                r#"{{"kty":"RSA","kid":"{kid}","alg":"RS256","use":"sig","n":"{}","e":"{}"}}"#,
                B64.encode(&c.n),
                B64.encode(&c.e)
            )
        }
        Key::Hmac(_) => unreachable!("no JWK for a secret"),
    }
}

fn jwks(keys: &[(&Key, &str)]) -> String {
    let list: Vec<String> = keys.iter().map(|(k, kid)| jwk(k, kid)).collect();
    format!(r#"{{"keys":[{}]}}"#, list.join(","))
}

/// `header.claims.signature`, signed over exactly the bytes given.
fn token(header: &str, claims: &str, key: &Key) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let rng = SystemRandom::new();
    let sig = match key {
        Key::Ec(k) => k
            .sign(&rng, input.as_bytes())
            .expect("sign")
            .as_ref()
            .to_vec(),
        Key::Rsa(k) => {
            let mut out = vec![0u8; k.public().modulus_len()];
            k.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut out,
            )
            .expect("sign");
            out
        }
        Key::Hmac(secret) => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            ring::hmac::sign(&k, input.as_bytes()).as_ref().to_vec()
        }
    };
    format!("{input}.{}", B64.encode(sig))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims for the `corp` issuer with `extra` fields.
fn corp(extra: &str) -> String {
    format!(
        r#"{{"iss":"https://id.test/","aud":"api://orders","sub":"alice","exp":{},"scope":"orders:read profile"{extra}}}"#,
        now() + 600
    )
}

const ES: &str = r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#;
const RS: &str = r#"{"alg":"RS256","kid":"r1"}"#;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/orders"
upstream = "backend"
auth = ["jwt:corp"]
scopes = ["orders:read"]

[[routes]]
path_prefix = "/admin"
upstream = "backend"
auth = ["jwt:corp"]
roles = ["admin"]

[[routes]]
path_prefix = "/tenant"
upstream = "backend"
auth = ["jwt:corp"]
claims = { tenant = "acme" }

[[routes]]
path_prefix = "/hs"
upstream = "backend"
auth = ["jwt:hs"]

[[routes]]
path_prefix = "/both"
upstream = "backend"
auth = ["jwt:corp", "jwt:hs"]
"#;

struct Fixture {
    s: Setup,
    ec: Key,
    rsa: Key,
    hs: Key,
    jwks_path: std::path::PathBuf,
    _dir: TempDir,
}

fn fixture(tag: &str) -> Fixture {
    let dir = TempDir::new(tag);
    let (ec, rsa) = (ec_key(), rsa_key(&dir.0));
    let secret = b"an HMAC secret of at least 32 bytes, as RFC 8725 asks".to_vec();
    let jwks_path = dir.0.join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[(&ec, "k1"), (&rsa, "r1")])).expect("jwks");
    let secret_path = dir.0.join("hs.secret");
    std::fs::write(&secret_path, &secret).expect("secret");
    let auth = format!(
        r#"
[auth]
[[auth.jwt]]
name = "corp"
issuer = "https://id.test/"
audiences = ["api://orders"]
algorithms = ["ES256", "RS256"]
jwks_file = "{}"
roles_claim = "realm_access.roles"
leeway_secs = 0

[[auth.jwt]]
name = "hs"
issuer = "hs-issuer"
audiences = ["api://hs"]
algorithms = ["HS256"]
secret_file = "{}"
"#,
        jwks_path.display(),
        secret_path.display()
    );
    let s = setup_with(tag, "", "workers = 2", ROUTES, &auth, &[]);
    Fixture {
        s,
        ec,
        rsa,
        hs: Key::Hmac(secret),
        jwks_path,
        _dir: dir,
    }
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

#[test]
fn hostile_tokens_never_reach_the_backend() {
    let f = fixture("jwtattack");
    let (ec, rsa) = (&f.ec, &f.rsa);
    let rsa_public_der = match rsa {
        Key::Rsa(k) => k.public().as_ref().to_vec(),
        _ => unreachable!(),
    };
    let t = |h: &str, c: &str, k: &Key| bearer(&token(h, c, k));
    let valid = token(ES, &corp(""), ec);
    let none = |alg: &str| {
        bearer(&format!(
            "{}.{}.AA",
            B64.encode(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#)),
            B64.encode(corp(""))
        ))
    };
    let big = corp(&format!(r#","pad":"{}""#, "x".repeat(9000)));
    // (what it tries, path, headers, status, reason)
    let rows: Vec<(&str, &str, String, u16, &str)> = vec![
        ("valid ES256", "/orders/1", bearer(&valid), 200, ""),
        ("valid RS256", "/orders/2", t(RS, &corp(""), rsa), 200, ""),
        (
            "lower-case scheme",
            "/orders/3",
            format!("authorization: bearer {valid}\r\n"),
            200,
            "",
        ),
        (
            "expired",
            "/orders/x",
            t(
                ES,
                &corp("").replace(
                    &format!("\"exp\":{}", now() + 600),
                    &format!("\"exp\":{}", now() - 100),
                ),
                ec,
            ),
            401,
            "jwt.expired",
        ),
        (
            "not yet valid",
            "/orders/x",
            t(ES, &corp(&format!(r#","nbf":{}"#, now() + 1000)), ec),
            401,
            "jwt.not_yet_valid",
        ),
        (
            "wrong issuer",
            "/orders/x",
            t(
                ES,
                &corp("").replace("https://id.test/", "https://evil.test/"),
                ec,
            ),
            401,
            "jwt.issuer",
        ),
        (
            "wrong audience",
            "/orders/x",
            t(ES, &corp("").replace("api://orders", "api://other"), ec),
            401,
            "jwt.audience",
        ),
        (
            "bad signature",
            "/orders/x",
            {
                let other = token(ES, &corp(r#","x":1"#), ec);
                let sig = other.rsplit('.').next().unwrap_or_default();
                let (body, _) = valid.rsplit_once('.').unwrap_or_default();
                bearer(&format!("{body}.{sig}"))
            },
            401,
            "jwt.signature",
        ),
        (
            "signature stripped",
            "/orders/x",
            bearer(&format!(
                "{}.",
                valid.rsplit_once('.').unwrap_or_default().0
            )),
            401,
            "jwt.malformed",
        ),
        (
            "header not JSON",
            "/orders/x",
            t("not json at all", &corp(""), ec),
            401,
            "jwt.malformed",
        ),
        (
            "header a JSON array",
            "/orders/x",
            t(r#"["ES256"]"#, &corp(""), ec),
            401,
            "jwt.malformed",
        ),
        ("alg none", "/orders/x", none("none"), 401, "jwt.algorithm"),
        ("alg None", "/orders/x", none("None"), 401, "jwt.algorithm"),
        ("alg NONE", "/orders/x", none("NONE"), 401, "jwt.algorithm"),
        ("alg nOnE", "/orders/x", none("nOnE"), 401, "jwt.algorithm"),
        (
            "HS256 with the RSA public key",
            "/orders/x",
            t(
                r#"{"alg":"HS256","kid":"r1"}"#,
                &corp(""),
                &Key::Hmac(rsa_public_der),
            ),
            401,
            "jwt.algorithm",
        ),
        (
            "ES256 header on the RSA key",
            "/orders/x",
            t(r#"{"alg":"ES256","kid":"r1"}"#, &corp(""), ec),
            401,
            "jwt.algorithm",
        ),
        (
            "jku",
            "/orders/x",
            t(
                r#"{"alg":"ES256","kid":"k1","jku":"https://evil.test/jwks"}"#,
                &corp(""),
                ec,
            ),
            401,
            "jwt.header",
        ),
        (
            "x5u",
            "/orders/x",
            t(
                r#"{"alg":"ES256","kid":"k1","x5u":"https://evil.test/c"}"#,
                &corp(""),
                ec,
            ),
            401,
            "jwt.header",
        ),
        (
            "x5c",
            "/orders/x",
            t(
                r#"{"alg":"ES256","kid":"k1","x5c":["MIIB"]}"#,
                &corp(""),
                ec,
            ),
            401,
            "jwt.header",
        ),
        (
            "embedded jwk",
            "/orders/x",
            t(
                &format!(r#"{{"alg":"ES256","kid":"k1","jwk":{}}}"#, jwk(ec, "k1")),
                &corp(""),
                ec,
            ),
            401,
            "jwt.header",
        ),
        (
            "crit",
            "/orders/x",
            t(
                r#"{"alg":"ES256","kid":"k1","crit":["exp"]}"#,
                &corp(""),
                ec,
            ),
            401,
            "jwt.header",
        ),
        (
            "duplicate alg",
            "/orders/x",
            t(r#"{"alg":"ES256","kid":"k1","alg":"none"}"#, &corp(""), ec),
            401,
            "jwt.duplicate_key",
        ),
        (
            "duplicate sub",
            "/orders/x",
            t(ES, &corp(r#","sub":"root""#), ec),
            401,
            "jwt.duplicate_key",
        ),
        (
            "no exp",
            "/orders/x",
            t(
                ES,
                r#"{"iss":"https://id.test/","aud":"api://orders","sub":"alice","scope":"orders:read"}"#,
                ec,
            ),
            401,
            "jwt.claims",
        ),
        (
            "string exp (CVE-2026-25537)",
            "/orders/x",
            t(
                ES,
                r#"{"iss":"https://id.test/","aud":"api://orders","sub":"alice","exp":"99999999999","scope":"orders:read"}"#,
                ec,
            ),
            401,
            "jwt.claims",
        ),
        (
            "unknown kid",
            "/orders/x",
            t(r#"{"alg":"ES256","kid":"k9"}"#, &corp(""), ec),
            401,
            "jwt.unknown_key",
        ),
        (
            "too large",
            "/orders/x",
            t(ES, &big, ec),
            401,
            "jwt.too_large",
        ),
        (
            "subject with CRLF",
            "/orders/x",
            t(
                ES,
                &corp("").replace("\"sub\":\"alice\"", "\"sub\":\"a\\r\\nx-admin: 1\""),
                ec,
            ),
            401,
            "jwt.claims",
        ),
        (
            "scope missing",
            "/orders/x",
            t(ES, &corp("").replace("orders:read ", ""), ec),
            403,
            "auth.forbidden",
        ),
        (
            "nested role",
            "/admin/1",
            t(ES, &corp(r#","realm_access":{"roles":["admin"]}"#), ec),
            200,
            "",
        ),
        (
            "no role",
            "/admin/x",
            t(ES, &corp(r#","realm_access":{"roles":["user"]}"#), ec),
            403,
            "auth.forbidden",
        ),
        (
            "right tenant",
            "/tenant/1",
            t(ES, &corp(r#","tenant":"acme""#), ec),
            200,
            "",
        ),
        (
            "wrong tenant",
            "/tenant/x",
            t(ES, &corp(r#","tenant":"evil""#), ec),
            403,
            "auth.forbidden",
        ),
        (
            "tenant among words",
            "/tenant/x",
            t(ES, &corp(r#","tenant":"evil acme""#), ec),
            403,
            "auth.forbidden",
        ),
        (
            "second issuer of a route",
            "/both/1",
            t(
                r#"{"alg":"HS256"}"#,
                &format!(
                    r#"{{"iss":"hs-issuer","aud":"api://hs","sub":"svc","exp":{}}}"#,
                    now() + 60
                ),
                &f.hs,
            ),
            200,
            "",
        ),
        (
            "HS256 issuer",
            "/hs/1",
            t(
                r#"{"alg":"HS256"}"#,
                &format!(
                    r#"{{"iss":"hs-issuer","aud":"api://hs","sub":"svc","exp":{}}}"#,
                    now() + 60
                ),
                &f.hs,
            ),
            200,
            "",
        ),
        (
            "corp token on the HS issuer",
            "/hs/x",
            bearer(&valid),
            401,
            "jwt.algorithm",
        ),
        (
            "two Authorization headers",
            "/orders/x",
            format!("{}{}", bearer(&valid), bearer(&valid)),
            400,
            "auth.ambiguous",
        ),
        (
            "empty bearer",
            "/orders/x",
            "Authorization: Bearer \r\n".into(),
            400,
            "auth.malformed",
        ),
        (
            "no credentials",
            "/orders/x",
            String::new(),
            401,
            "auth.missing",
        ),
        (
            "forged subject header",
            "/orders/4",
            format!(
                "{}X-Auth-Subject: root\r\nX-Consumer-Roles: admin\r\n",
                bearer(&valid)
            ),
            200,
            "",
        ),
    ];
    let mut failed = Vec::new();
    for (what, path, headers, status, reason) in &rows {
        let r = f.s.get(path, headers);
        let got = (r.status, reason_of(&r));
        if got != (*status, reason.to_string()) {
            failed.push(format!("{what}: got {got:?}, want ({status}, {reason:?})"));
        }
        let challenge = r.header("www-authenticate").unwrap_or_default();
        if let Some(why) = reason.strip_prefix("jwt.") {
            let described = format!("error=\"invalid_token\", error_description=\"{why}\"");
            if !challenge.contains(&described) {
                failed.push(format!("{what}: 401 challenge {challenge:?}"));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // Only the allowed requests reached the backend, each with the
    // verified subject and none of the forged identity headers.
    assert_eq!(
        f.s.backend.paths(),
        [
            "/orders/1",
            "/orders/2",
            "/orders/3",
            "/admin/1",
            "/tenant/1",
            "/both/1",
            "/hs/1",
            "/orders/4"
        ]
    );
    let got = f.s.backend.received();
    let forged = got[7].head.to_ascii_lowercase();
    assert!(forged.contains("x-auth-subject: alice\r\n"), "{forged}");
    assert!(
        !forged.contains("root") && !forged.contains("x-consumer-roles"),
        "{forged}"
    );
    let admin = got[3].head.to_ascii_lowercase();
    assert!(admin.contains("x-consumer-roles: admin\r\n"), "{admin}");
}

#[test]
fn a_symmetric_key_in_a_jwks_file_verifies_nothing() {
    // A published JWKS is public: an `oct` key in it would let anyone sign
    // HS256 tokens with its secret (algorithm confusion).
    let f = fixture("jwtoct");
    let secret = b"a secret someone published in a key set";
    let oct = format!(
        r#"{{"kty":"oct","kid":"h","alg":"HS256","k":"{}"}}"#,
        B64.encode(secret)
    );
    let rsa = jwk(&f.rsa, "r1");
    std::fs::write(&f.jwks_path, format!(r#"{{"keys":[{oct},{rsa}]}}"#)).expect("rewrite");
    // The rewrite is taken up once the EC key (gone from it) stops working.
    let es = bearer(&token(ES, &corp(""), &f.ec));
    gateway_tests::harness::wait_until("the JWKS reloads", Duration::from_secs(5), || {
        f.s.get("/orders/es", &es).status == 401
    });
    let forged = token(
        r#"{"alg":"HS256","kid":"h"}"#,
        &corp(""),
        &Key::Hmac(secret.to_vec()),
    );
    let r = f.s.get("/orders/forged", &bearer(&forged));
    assert_eq!(r.status, 401, "{r:?}");
    assert!(reason_of(&r).starts_with("jwt."), "{r:?}");
    assert_eq!(
        f.s.get("/orders/rs", &bearer(&token(RS, &corp(""), &f.rsa)))
            .status,
        200
    );
    assert_eq!(f.s.backend.hits("/orders/forged"), 0);
}

#[test]
fn a_key_removed_from_the_jwks_file_stops_cached_tokens() {
    let f = fixture("jwtrotate");
    let valid = bearer(&token(ES, &corp(""), &f.ec));
    // Twice: the second comes from the worker's cache of verified tokens.
    assert_eq!(f.s.get("/orders/a", &valid).status, 200);
    assert_eq!(f.s.get("/orders/b", &valid).status, 200);
    std::fs::write(&f.jwks_path, jwks(&[(&f.rsa, "r1")])).expect("rewrite");
    let until = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while Instant::now() < until {
        let r = f.s.get("/orders/c", &valid);
        if r.status == 401 {
            last = Some(reason_of(&r));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last.as_deref(), Some("jwt.unknown_key"));
    assert_eq!(
        f.s.get("/orders/d", &bearer(&token(RS, &corp(""), &f.rsa)))
            .status,
        200
    );
}

fn discovery_setup(tag: &str, docs: &DocServer, ca: &Path) -> Setup {
    let auth = format!(
        r#"
[auth]
[[auth.jwt]]
name = "idp"
issuer = "{base}"
audiences = ["api://orders"]
algorithms = ["ES256"]
discovery = true
ca_file = "{ca}"
refresh_secs = 300
"#,
        base = docs.base(),
        ca = ca.display()
    );
    let routes =
        "[[routes]]\npath_prefix = \"/orders\"\nupstream = \"backend\"\nauth = [\"jwt:idp\"]\n";
    setup_with(tag, "", "workers = 1", routes, &auth, &[])
}

fn idp_claims(base: &str, n: u32) -> String {
    format!(
        r#"{{"iss":"{base}","aud":"api://orders","sub":"u{n}","exp":{}}}"#,
        now() + 600
    )
}

fn publish(docs: &DocServer, keys: &str) {
    docs.put(
        "/.well-known/openid-configuration",
        &format!(r#"{{"issuer":"{0}","jwks_uri":"{0}/keys"}}"#, docs.base()),
    );
    docs.put("/keys", keys);
}

#[test]
fn discovery_unknown_kid_refresh_rate_limit_and_outage() {
    let dir = TempDir::new("jwtidp");
    let certs = gateway_tests::harness::Certs::issue(&dir.0, &["localhost"]);
    let docs = DocServer::start(&certs);
    let (k1, k2) = (ec_key(), ec_key());
    publish(&docs, &jwks(&[(&k1, "k1")]));
    let s = discovery_setup("jwtidp", &docs, &certs.ca_pem);
    let base = docs.base();
    let with = |kid: &str, key: &Key, n| {
        bearer(&token(
            &format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#),
            &idp_claims(&base, n),
            key,
        ))
    };
    assert_eq!(s.get("/orders/1", &with("k1", &k1, 1)).status, 200);

    // The provider adds k2: the first token naming it asks for a refresh.
    publish(&docs, &jwks(&[(&k1, "k1"), (&k2, "k2")]));
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.get("/orders/x", &with("k2", &k2, 2));
    assert_eq!((r.status, reason_of(&r)), (401, "jwt.unknown_key".into()));
    let until = Instant::now() + Duration::from_secs(5);
    let mut accepted = false;
    while Instant::now() < until && !accepted {
        std::thread::sleep(Duration::from_millis(100));
        accepted = s.get("/orders/2", &with("k2", &k2, 3)).status == 200;
    }
    assert!(accepted, "the new key was never fetched");

    // Made-up kids cannot hammer the provider: at most one fetch a second.
    std::thread::sleep(Duration::from_millis(1100));
    let before = docs.hits();
    let started = Instant::now();
    for n in 0..30 {
        let r = s.get("/orders/x", &with(&format!("bogus{n}"), &k1, 10));
        assert_eq!(r.status, 401);
    }
    std::thread::sleep(Duration::from_millis(300));
    let fetches = (docs.hits() - before) / 2; // discovery document + JWKS
    let allowed = 1 + started.elapsed().as_secs() as usize;
    assert!(
        fetches <= allowed + 1,
        "{fetches} fetches in {:?}",
        started.elapsed()
    );

    // Outage: the cached key set keeps working (a fresh token, so the
    // verification itself ran).
    docs.set_down(true);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(s.get("/orders/x", &with("bogus", &k1, 11)).status, 401);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.get("/orders/3", &with("k1", &k1, 12)).status, 200);
    assert_eq!(s.backend.paths(), ["/orders/1", "/orders/2", "/orders/3"]);
}

#[test]
fn no_key_set_yet_is_503_never_open_and_recovers() {
    let dir = TempDir::new("jwtdown");
    let certs = gateway_tests::harness::Certs::issue(&dir.0, &["localhost"]);
    let docs = DocServer::start(&certs);
    let k1 = ec_key();
    publish(&docs, &jwks(&[(&k1, "k1")]));
    docs.set_down(true);
    let s = discovery_setup("jwtdown", &docs, &certs.ca_pem);
    let t = bearer(&token(
        r#"{"alg":"ES256","kid":"k1"}"#,
        &idp_claims(&docs.base(), 1),
        &k1,
    ));
    let r = s.get("/orders/x", &t);
    assert_eq!(
        (r.status, reason_of(&r)),
        (503, "jwt.keys_unavailable".into())
    );
    docs.set_down(false);
    let until = Instant::now() + Duration::from_secs(5);
    let mut status = 0;
    while Instant::now() < until && status != 200 {
        std::thread::sleep(Duration::from_millis(300));
        status = s.get("/orders/1", &t).status;
    }
    assert_eq!(status, 200, "never recovered");
    assert_eq!(s.backend.paths(), ["/orders/1"]);
}

#[test]
fn an_hmac_secret_under_32_bytes_stops_the_start() {
    let dir = TempDir::new("jwtshort");
    let secret = dir.0.join("short.secret");
    std::fs::write(&secret, "too short").expect("secret");
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttps = \"127.0.0.1:1\"\n[xdp]\nenabled = false\n[auth]\n[[auth.jwt]]\nname = \"hs\"\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n",
            secret.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(gateway_tests::gateway_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("HMAC secret of 9 bytes: at least 32"), "{err}");
}

#[test]
fn opaque_tokens_are_introspected_cached_and_refused_when_inactive() {
    let dir = TempDir::new("introspect");
    let certs = gateway_tests::harness::Certs::issue(&dir.0, &["localhost"]);
    let docs = DocServer::start(&certs);
    let secret = dir.0.join("client.secret");
    std::fs::write(&secret, "s3cret\n").expect("secret");
    docs.put(
        "AUTH",
        &format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("gateway:s3cret")
        ),
    );
    docs.put(
        "POST /introspect good",
        &format!(
            r#"{{"active":true,"sub":"svc-1","exp":{},"scope":"orders:read"}}"#,
            now() + 600
        ),
    );
    docs.put(
        "POST /introspect noscope",
        &format!(r#"{{"active":true,"sub":"svc-2","exp":{}}}"#, now() + 600),
    );
    docs.put("POST /introspect revoked", r#"{"active":false}"#);
    let auth = format!(
        "[auth]\n[[auth.introspection]]\nname = \"opaque\"\nurl = \"{}/introspect\"\nclient_id = \"gateway\"\nclient_secret_file = \"{}\"\nca_file = \"{}\"\ninactive_cache_secs = 30\n",
        docs.base(),
        secret.display(),
        certs.ca_pem.display()
    );
    let routes = "[[routes]]\npath_prefix = \"/orders\"\nupstream = \"backend\"\nauth = [\"introspect:opaque\"]\nscopes = [\"orders:read\"]\n";
    let s = setup_with("introspect", "", "workers = 1", routes, &auth, &[]);
    let status = |r: &Response| (r.status, reason_of(r));

    assert_eq!(
        status(&s.get("/orders/1", &bearer("good"))),
        (200, String::new())
    );
    let after_first = docs.hits();
    // Cached: the endpoint is not asked again.
    assert_eq!(
        status(&s.get("/orders/2", &bearer("good"))),
        (200, String::new())
    );
    assert_eq!(docs.hits(), after_first);
    assert_eq!(
        status(&s.get("/orders/x", &bearer("noscope"))),
        (403, "auth.forbidden".into())
    );
    let inactive = (401, "token.inactive".to_owned());
    assert_eq!(status(&s.get("/orders/x", &bearer("revoked"))), inactive);
    let after_revoked = docs.hits();
    assert_eq!(status(&s.get("/orders/x", &bearer("revoked"))), inactive);
    assert_eq!(
        docs.hits(),
        after_revoked,
        "an inactive answer is cached too"
    );
    // The endpoint down: cached answers still work, new tokens get 503.
    docs.set_down(true);
    assert_eq!(
        status(&s.get("/orders/3", &bearer("good"))),
        (200, String::new())
    );
    assert_eq!(
        status(&s.get("/orders/x", &bearer("unseen"))),
        (503, "token.introspection_unavailable".into())
    );
    assert_eq!(s.backend.paths(), ["/orders/1", "/orders/2", "/orders/3"]);
    let head = s.backend.received()[0].head.to_ascii_lowercase();
    assert!(head.contains("x-auth-subject: svc-1\r\n"), "{head}");
}

/// An authorization server answers `active` for every token it issued:
/// the gateway checks whom the token is for (issuer, audience, client),
/// and a source sending random tokens is held to its own lookups instead
/// of filling the lookup queue other callers need.
#[test]
fn introspection_answers_are_checked_for_this_api_and_lookups_are_limited_per_source() {
    let dir = TempDir::new("introspect-checks");
    let certs = gateway_tests::harness::Certs::issue(&dir.0, &["localhost"]);
    let docs = DocServer::start(&certs);
    let secret = dir.0.join("client.secret");
    std::fs::write(&secret, "s3cret\n").expect("secret");
    docs.put(
        "AUTH",
        &format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("gateway:s3cret")
        ),
    );
    let answer = |iss: &str, aud: &str, client: &str| {
        format!(
            r#"{{"active":true,"sub":"svc","exp":{},"iss":"{iss}","aud":{aud},"client_id":"{client}"}}"#,
            now() + 600
        )
    };
    let good = answer("https://idp.test", r#"["orders","x"]"#, "shop");
    docs.put("POST /introspect good", &good);
    docs.put(
        "POST /introspect other-iss",
        &answer("https://evil.test", r#""orders""#, "shop"),
    );
    docs.put(
        "POST /introspect other-aud",
        &answer("https://idp.test", r#""billing""#, "shop"),
    );
    docs.put(
        "POST /introspect other-client",
        &answer("https://idp.test", r#""orders""#, "mobile"),
    );
    let auth = format!(
        "[auth]\n[[auth.introspection]]\nname = \"opaque\"\nurl = \"{}/introspect\"\nclient_id = \"gateway\"\nclient_secret_file = \"{}\"\nca_file = \"{}\"\nissuer = \"https://idp.test\"\naudiences = [\"orders\"]\nclient_ids = [\"shop\"]\nlookups_per_source = 2\n",
        docs.base(),
        secret.display(),
        certs.ca_pem.display()
    );
    let routes = "[[routes]]\npath_prefix = \"/orders\"\nupstream = \"backend\"\nauth = [\"introspect:opaque\"]\n";
    let s = setup_with("introspect-checks", "", "workers = 1", routes, &auth, &[]);
    let status = |r: &Response| (r.status, reason_of(r));
    assert_eq!(
        status(&s.get("/orders/1", &bearer("good"))),
        (200, String::new())
    );
    for (token, reason) in [
        ("other-iss", "token.issuer"),
        ("other-aud", "token.audience"),
    ] {
        assert_eq!(
            status(&s.get("/orders/x", &bearer(token))),
            (401, reason.into())
        );
    }
    // The source's bucket (2 a second, 4 at once) is spent by now: random
    // tokens get 429 without a lookup.
    let before = docs.hits();
    let refused = (0..10)
        .filter(|i| {
            status(&s.get("/orders/x", &bearer(&format!("random{i}"))))
                == (429, "token.lookup_rate".into())
        })
        .count();
    assert!(refused >= 8, "{refused} of 10 random tokens were held back");
    assert!(
        docs.hits() - before <= 2,
        "{} lookups",
        docs.hits() - before
    );
    // Another source still gets its lookups, and its answers are checked.
    let cfg = gateway_tests::harness::client_config(&s.certs.ca, &[&rustls::version::TLS13]);
    let tcp = gateway_tests::connect_from(
        "127.0.0.2".parse().expect("ip"),
        std::net::SocketAddr::from(([127, 0, 0, 1], s.gw.port)),
        Duration::from_secs(2),
    )
    .expect("connect");
    let mut other = gateway_tests::harness::Client::over(tcp, "localhost", cfg).expect("TLS");
    other
        .send(b"GET /orders/y HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer other-client\r\n\r\n")
        .expect("send");
    let r = other.response("GET").expect("response");
    assert_eq!(status(&r), (401, "token.client".into()));
    assert_eq!(s.backend.paths(), ["/orders/1"]);
}
