//! Files the configuration names: private keys and secrets others can
//! read, certificates near expiry, API keys expired or never expiring.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::{Finding, Severity};
use crate::{
    config::{Config, KeySource},
    stages::auth::api_key::KeyRing,
};

/// Files the configuration names: certificates, keys, secrets.
pub(super) fn check(cfg: &Config, now: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in &cfg.tls.certificates {
        out.extend(readable(&c.key, "the TLS private key", "API8:2023"));
    }
    for s in &cfg.auth.jwt {
        if let KeySource::Secret(p) = &s.source {
            out.extend(readable(p, "the JWT HMAC secret", "API2:2023"));
        }
    }
    for s in &cfg.auth.jwt {
        if let KeySource::Secret(p) = &s.source
            && let Some(bits) = secret_bits(p)
            && bits < 256
        {
            out.push(Finding {
                severity: Severity::High,
                id: "jwt.weak_secret",
                owasp: "API2:2023",
                at: Some((p.display().to_string(), 1)),
                what: format!(
                    "issuer {}: the HMAC secret holds about {bits} bits, under the 256 HS256 needs (RFC 7518 §3.2)",
                    s.name
                ),
                fix: "make it from a random source: `head -c 64 /dev/urandom | base64 > FILE`".into(),
            });
        }
    }
    if let Some(p) = &cfg.admin.token_file {
        out.extend(readable(p, "the admin token", "API2:2023"));
    }
    for c in &cfg.tls.certificates {
        out.extend(certificate(&c.cert, now));
    }
    // The gateway's client certificates for mutual TLS to upstreams.
    for (cert, key) in cfg
        .upstreams
        .iter()
        .filter_map(|u| u.tls.as_ref()?.client_cert.as_ref())
    {
        out.extend(readable(key, "an upstream client key", "API8:2023"));
        out.extend(certificate(cert, now));
    }
    if let Some(p) = &cfg.auth.key_file {
        out.extend(keys(p, now));
    }
    out
}

/// A finding when users other than the owner may read `path`.
fn readable(path: &Path, what: &str, owasp: &'static str) -> Option<Finding> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| Finding {
        severity: Severity::High,
        id: "file.readable",
        owasp,
        at: Some((path.display().to_string(), 1)),
        what: format!(
            "{what} may be read by other users (mode {:o})",
            mode & 0o777
        ),
        fix: format!("chmod 600 {}", path.display()),
    })
}

/// At most how many bits of entropy the secret in `path` can hold: its
/// length times log2 of the distinct bytes it uses (a hex or word-like
/// secret holds far fewer than its length suggests).
fn secret_bits(path: &Path) -> Option<u32> {
    let bytes = std::fs::read(path).ok()?;
    let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let mut seen = [false; 256];
    for &b in secret {
        seen[b as usize] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count().max(1) as f64;
    Some((secret.len() as f64 * distinct.log2()) as u32)
}

/// The certificate chain's leaf: expired or close to it.
fn certificate(path: &PathBuf, now: i64) -> Option<Finding> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let left = cert.validity().not_after.timestamp() - now;
    let (severity, what) = if left <= 0 {
        (Severity::Critical, "the certificate has expired".to_owned())
    } else if left < 14 * 86_400 {
        (
            Severity::High,
            format!("the certificate expires in {} days", left / 86_400),
        )
    } else if left < 30 * 86_400 {
        (
            Severity::Medium,
            format!("the certificate expires in {} days", left / 86_400),
        )
    } else {
        return None;
    };
    Some(Finding {
        severity,
        id: "tls.certificate_expiry",
        owasp: "API8:2023",
        at: Some((path.display().to_string(), 1)),
        what,
        fix: "renew it, then `gateway reload`".into(),
    })
}

/// API keys past expiry or never expiring.
fn keys(path: &Path, now: i64) -> Vec<Finding> {
    // One read: the key lines found are those of the keys parsed.
    let Some((ring, text)) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| Some((KeyRing::parse(&t, &path.display().to_string()).ok()?, t)))
    else {
        return Vec::new(); // `gateway check` reports a broken key file
    };
    let key_lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[consumers.keys]]"))
        .map(|(i, _)| i + 1)
        .collect();
    let mut out = Vec::new();
    for (n, (consumer, expires)) in ring.expiries().iter().enumerate() {
        let at = Some((
            path.display().to_string(),
            key_lines.get(n).copied().unwrap_or(1),
        ));
        match expires {
            Some(t) if *t <= now => out.push(Finding {
                severity: Severity::Medium,
                id: "key.expired",
                owasp: "API2:2023",
                at,
                what: format!("a key of consumer {consumer} has expired and is still listed"),
                fix: "remove it from the key file".into(),
            }),
            None => out.push(Finding {
                severity: Severity::Low,
                id: "key.never_expires",
                owasp: "API2:2023",
                at,
                what: format!("a key of consumer {consumer} never expires"),
                fix: "give it `expires` and rotate it (`gateway keys new`, overlap, remove the old one)".into(),
            }),
            Some(_) => {}
        }
    }
    out
}
