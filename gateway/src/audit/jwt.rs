//! JWT issuers' settings.

use super::{Add, Lines, Severity};
use crate::config::Config;

/// JWT issuers' settings (RFC 8725).
pub(super) fn check(cfg: &Config, lines: &Lines<'_>, add: &mut Add<'_>) {
    use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
    for (i, s) in cfg.auth.jwt.iter().enumerate() {
        let line = lines.table("auth.jwt", i);
        let hmac = s
            .algorithms
            .iter()
            .filter(|a| matches!(a, HS256 | HS384 | HS512))
            .count();
        // HMAC and public-key algorithms on one issuer never load (RFC 8725
        // §2.1): the configuration refuses them.
        if hmac > 0 {
            add(
                Severity::Low,
                "jwt.shared_secret",
                "API2:2023",
                lines.key(line, "algorithms"),
                format!(
                    "issuer {}: an HMAC secret, so every verifier can also mint tokens",
                    s.name
                ),
                "prefer RS256, ES256 or EdDSA with a JWKS, so the gateway holds only public keys",
            );
        }
        if !s.require_exp {
            add(
                Severity::High,
                "jwt.no_exp",
                "API2:2023",
                lines.key(line, "require_exp"),
                format!(
                    "issuer {}: tokens without `exp` are accepted and never expire",
                    s.name
                ),
                "set `require_exp = true`",
            );
        }
        if s.leeway_secs > 120 {
            add(
                Severity::Medium,
                "jwt.long_leeway",
                "API2:2023",
                lines.key(line, "leeway_secs"),
                format!(
                    "issuer {}: {} s of clock skew allowed on `exp`",
                    s.name, s.leeway_secs
                ),
                "keep `leeway_secs` at 60 or below: an expired token stays good for that long",
            );
        }
        if s.audiences.len() > 3 {
            add(
                Severity::Low,
                "jwt.many_audiences",
                "API2:2023",
                lines.key(line, "audiences"),
                format!(
                    "issuer {}: {} audiences accepted",
                    s.name,
                    s.audiences.len()
                ),
                "accept the audience of this API only, so tokens for other services are refused",
            );
        }
    }
}
