//! `gateway audit` as an operator runs it: a configuration that trips every
//! check gets each finding with its OWASP category, line and fix, and the
//! exit code a CI job keys on; a hardened one passes.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use gateway_tests::{gateway_bin, harness::TempDir};
use serde_json::Value;

fn audit(config: &Path, extra: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(gateway_bin())
        .args(["audit", "--json", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .expect("run gateway audit");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line (1-based) of the `n`-th line of `text` containing `needle`.
fn line(text: &str, needle: &str, n: usize) -> u64 {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .map(|(i, _)| i as u64 + 1)
        .unwrap_or_else(|| panic!("no `{needle}` in the config"))
}

/// The finding `id` of `report` (whose text holds `what`, if given).
fn finding<'a>(report: &'a Value, id: &str, what: Option<&str>) -> &'a Value {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| {
            f["id"] == id && what.is_none_or(|n| f["what"].as_str().unwrap_or("").contains(n))
        })
        .unwrap_or_else(|| panic!("no {id} ({what:?}) in {report:#}"))
}

/// A leaf valid for `days` more days, and its key, written with `mode`.
fn cert(dir: &Path, days: i64, mode: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // rcgen takes `time`'s dates: the epoch plus seconds, without a
    // dependency of our own on `time`.
    let at =
        |unix: i64| rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(unix as u64);
    params.not_before = at(now - 400 * 86_400);
    params.not_after = at(now + days * 86_400);
    let c = params.self_signed(&key).expect("cert");
    let (cp, kp) = (dir.join("leaf.crt"), dir.join("leaf.key"));
    std::fs::write(&cp, c.pem()).expect("cert");
    std::fs::write(&kp, key.serialize_pem()).expect("key");
    std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(mode)).expect("chmod");
    (cp, kp)
}

#[test]
fn every_check_is_tripped_with_its_line_and_fix() {
    let dir = TempDir::new("audit-bad");
    let (cp, kp) = cert(&dir.0, 5, 0o644);
    let secret = dir.0.join("hs.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-shared").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let keys = dir.0.join("consumers.toml");
    std::fs::write(
        &keys,
        "[[consumers]]\nid = \"old\"\n\
         [[consumers.keys]]\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000001\"\nexpires = 2020-01-01T00:00:00Z\n\
         [[consumers]]\nid = \"forever\"\n\
         [[consumers.keys]]\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000002\"\n",
    )
    .expect("keys");
    let text = format!(
        r#"[listen]
https = "127.0.0.1:8443"
https_only = false

[[tls.certificates]]
cert = "{cert}"
key = "{key}"

[proxy]
trusted_proxies = ["0.0.0.0/0"]
underscores_in_headers = "allow"
hsts = ""

[log]
access = false

[waf]
mode = "detect"

[xdp]
enabled = false
syn_rate = 0

[auth]
key_file = "{keys}"

[[auth.jwt]]
name = "hs"
issuer = "hs-issuer"
audiences = ["api://hs"]
algorithms = ["HS256"]
secret_file = "{secret}"
require_exp = false
leeway_secs = 600

[[upstreams]]
name = "remote"
servers = ["198.18.0.5:8080", "198.18.0.6:8080"]

[[upstreams]]
name = "mutual"
servers = ["198.18.0.7:8443"]
[upstreams.tls]
server_name = "backend.internal"
client_cert = "{cert}"
client_key = "{key}"

[[routes]]
path_prefix = "/open"
upstream = "remote"
auth = "none"
cors = {{ allow_origins = ["*"] }}

[[routes]]
path_prefix = "/orders"
methods = ["POST"]
upstream = "remote"
auth = ["jwt:hs"]
max_body_bytes = 104857600

[rate_limit.escalation]
rejections = 0
auth_failures = 0
attacks = 0
"#,
        cert = cp.display(),
        key = kp.display(),
        keys = keys.display(),
        secret = secret.display(),
    );
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, &text).expect("config");

    let (code, report, err) = audit(&config, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("at or above high"), "{err}");
    let find = |id: &str, needle: Option<&str>| finding(&report, id, needle);
    let cfg_file = config.display().to_string();
    for (id, severity, owasp, at) in [
        (
            "route.public_write",
            "high",
            "API2:2023",
            ("auth = \"none\"", 0),
        ),
        (
            "route.no_rate_limit",
            "high",
            "API4:2023",
            ("[[routes]]", 0),
        ),
        (
            "route.no_authorization",
            "medium",
            "API5:2023",
            ("[[routes]]", 1),
        ),
        ("route.no_schema", "medium", "API3:2023", ("[[routes]]", 1)),
        (
            "route.large_body",
            "low",
            "API4:2023",
            ("max_body_bytes", 0),
        ),
        ("route.any_method", "low", "API9:2023", ("[[routes]]", 0)),
        ("cors.any_origin", "medium", "API8:2023", ("[[routes]]", 0)),
        (
            "jwt.shared_secret",
            "low",
            "API2:2023",
            ("algorithms = [\"HS256\"]", 0),
        ),
        ("jwt.no_exp", "high", "API2:2023", ("require_exp", 0)),
        ("jwt.long_leeway", "medium", "API2:2023", ("leeway_secs", 0)),
        (
            "tls.plain_http_open",
            "high",
            "API8:2023",
            ("https_only", 0),
        ),
        ("headers.no_hsts", "medium", "API8:2023", ("hsts = \"\"", 0)),
        (
            "upstream.plain_http",
            "medium",
            "API8:2023",
            ("servers = ", 0),
        ),
        (
            "upstream.no_health_check",
            "low",
            "API8:2023",
            ("[[upstreams]]", 0),
        ),
        (
            "proxy.trust_everyone",
            "high",
            "API8:2023",
            ("trusted_proxies", 0),
        ),
        ("log.off", "high", "API9:2023", ("access = false", 0)),
        (
            "waf.detect_only",
            "low",
            "API8:2023",
            ("mode = \"detect\"", 0),
        ),
        (
            "proxy.underscores",
            "low",
            "API8:2023",
            ("underscores_in_headers", 0),
        ),
        ("xdp.no_syn_limit", "medium", "API4:2023", ("syn_rate", 0)),
        (
            "rate_limit.no_escalation",
            "low",
            "API4:2023",
            ("[rate_limit.escalation]", 0),
        ),
    ] {
        // A route's finding is about the route it points at.
        let route = (at.0 == "[[routes]]").then(|| format!("routes[{}]", at.1));
        let f = find(id, route.as_deref());
        assert_eq!(f["severity"], severity, "{f}");
        assert_eq!(f["owasp"], owasp, "{f}");
        assert_eq!(f["file"], cfg_file.as_str(), "{f}");
        assert_eq!(f["line"], line(&text, at.0, at.1), "{id}: {f}");
        assert!(!f["fix"].as_str().unwrap_or("").is_empty(), "{f}");
    }
    // The files the configuration names.
    let readable = find("file.readable", Some("TLS private key"));
    assert_eq!(readable["severity"], "high");
    assert!(
        readable["fix"]
            .as_str()
            .unwrap_or("")
            .starts_with("chmod 600")
    );
    find("file.readable", Some("HMAC secret"));
    find("file.readable", Some("upstream client key"));
    assert_eq!(find("jwt.weak_secret", None)["severity"], "high");
    let expiry = find("tls.certificate_expiry", None);
    assert_eq!(expiry["severity"], "high", "{expiry}");
    let expired = find("key.expired", Some("old"));
    assert_eq!(expired["line"], 3, "{expired}");
    let forever = find("key.never_expires", Some("forever"));
    assert_eq!(forever["line"], 8, "{forever}");
    assert!(report["score"].as_u64().expect("score") < 20, "{report}");

    // The threshold is the caller's: nothing is critical here.
    let (code, _, err) = audit(&config, &["--fail-on", "critical"]);
    assert_eq!(code, Some(0), "{err}");
    // An expired certificate is.
    let (cp, _) = cert(&dir.0, -1, 0o600);
    assert!(cp.exists());
    let (code, report, _) = audit(&config, &["--fail-on", "critical"]);
    assert_eq!(code, Some(1));
    assert!(
        report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["id"] == "tls.certificate_expiry" && f["severity"] == "critical"),
        "{report}"
    );
}

#[test]
fn a_hardened_config_passes() {
    let dir = TempDir::new("audit-good");
    let (cp, kp) = cert(&dir.0, 365, 0o600);
    let text = format!(
        r#"[listen]
https = "127.0.0.1:8443"

[[tls.certificates]]
cert = "{cert}"
key = "{key}"

[proxy]
hsts = "max-age=31536000"

[xdp]
enabled = false
syn_rate = 200
syn_burst = 400

[anomaly]
enabled = true

[[rate_limit.limits]]
name = "ip"
key = "source"
rate = "50/s"

[[upstreams]]
name = "local"
servers = ["127.0.0.1:8080"]

[[routes]]
path_prefix = "/docs"
methods = ["GET"]
upstream = "local"
auth = "none"
rate_limits = ["ip"]

[waf]
mode = "block"
"#,
        cert = cp.display(),
        key = kp.display(),
    );
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, &text).expect("config");
    let (code, report, err) = audit(&config, &["--fail-on", "medium"]);
    assert_eq!(code, Some(0), "{err}\n{report:#}");
    assert!(report["score"].as_u64().expect("score") >= 95, "{report:#}");
}

#[test]
fn the_other_checks_are_tripped_too() {
    let dir = TempDir::new("audit-more");
    let jwks = dir.0.join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).expect("jwks");
    let text = format!(
        r#"[listen]
https = "127.0.0.1:8443"

[limits]
header_timeout_ms = 60000

[anomaly]
enabled = false

[cluster]
redis = "redis://198.18.0.9:6379/"

[response_headers]
set = {{ "x-content-type-options" = "", "content-security-policy" = "" }}

[xdp]
enabled = false
syn_rate = 100

[[rate_limit.limits]]
name = "ip"
key = "source"
rate = "10/s"

[[auth.jwt]]
name = "idp"
issuer = "https://idp.example"
audiences = ["a", "b", "c", "d"]
algorithms = ["ES256"]
jwks_file = "{jwks}"

[[upstreams]]
name = "local"
servers = ["127.0.0.1:8080"]

[[routes]]
path_prefix = "/docs"
methods = ["GET"]
upstream = "local"
auth = "none"
rate_limits = ["ip"]
cors = {{ allow_origins = ["https://*.example.com"], allow_credentials = true }}
"#,
        jwks = jwks.display()
    );
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, &text).expect("config");
    let (code, report, err) = audit(&config, &["--fail-on", "critical"]);
    assert_eq!(code, Some(0), "{err}");
    for (id, severity, at) in [
        ("limits.slow_headers", "low", "header_timeout_ms"),
        ("anomaly.off", "low", "[anomaly]"),
        ("cluster.redis_open", "medium", "redis = "),
        ("headers.missing", "low", "[response_headers]"),
        ("jwt.many_audiences", "low", "audiences"),
        ("cors.credentials_wildcard", "low", "[[routes]]"),
        ("route.no_waf", "medium", "[[routes]]"),
        ("route.public", "info", "auth = \"none\""),
    ] {
        let f = finding(&report, id, None);
        assert_eq!(f["severity"], severity, "{f}");
        assert_eq!(f["line"], line(&text, at, 0), "{id}: {f}");
    }
}

/// A route limited to some methods whose path a later, weaker route also
/// takes: the other methods fall through to it. Named, with its line.
#[test]
fn a_method_falling_through_to_a_weaker_route_is_named() {
    let dir = TempDir::new("audit-shadow");
    let text = r#"[listen]
https = "127.0.0.1:8443"

[demo]
listen = "127.0.0.1:8081"
api_key = true

[[upstreams]]
name = "app"
servers = ["127.0.0.1:8080"]

[[routes]]
path_prefix = "/admin"
methods = ["GET"]
upstream = "app"
auth = ["api_key"]
roles = ["admin"]

[[routes]]
path_prefix = "/api"
methods = ["GET", "POST"]
upstream = "app"
auth = ["api_key"]

[[routes]]
path_prefix = "/api"
upstream = "app"
auth = ["api_key"]

[[routes]]
path_prefix = "/"
upstream = "app"
auth = "none"
"#;
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, text).expect("config");
    let (_, report, err) = audit(&config, &["--fail-on", "critical"]);
    let f = finding(&report, "route.method_shadowing", Some("routes[0]"));
    assert_eq!(f["severity"], "high", "{err}");
    let what = f["what"].as_str().unwrap_or("");
    assert!(
        what.contains("POST")
            && what.contains("fall through to routes[3]")
            && what.contains("public"),
        "{what}"
    );
    assert_eq!(f["line"], line(text, "methods = [\"GET\"]", 0), "{f}");
    // The same credential on both, no roles on either: nothing to name.
    let shadowed: Vec<&Value> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["id"] == "route.method_shadowing")
        .collect();
    assert_eq!(shadowed.len(), 1, "{shadowed:?}");
}
