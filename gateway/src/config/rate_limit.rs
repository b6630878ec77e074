//! `[rate_limit]`: named limits routes refer to, how sources are counted,
//! and when repeated offences become a kernel verdict.

use super::*;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitFile {
    #[serde(default)]
    limits: Vec<LimitFile>,
    #[serde(default)]
    ipv6_prefix: Option<Spanned<u8>>,
    #[serde(default)]
    headers: bool,
    #[serde(default)]
    table_entries: Option<Spanned<usize>>,
    #[serde(default)]
    escalation: EscalationSettings,
    #[serde(default)]
    backend: Backend,
}

/// Where limits are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Backend {
    /// By this gateway alone.
    #[default]
    Local,
    /// Across the gateways sharing `cluster.redis`.
    Redis,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitFile {
    name: Spanned<String>,
    key: Spanned<KeyNames>,
    rate: Spanned<String>,
    #[serde(default)]
    burst: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum KeyNames {
    One(String),
    Many(Vec<String>),
}

/// What a limit counts by: one bucket per distinct combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitKey {
    /// The client address (IPv6 per `ipv6_prefix`).
    pub source: bool,
    /// The consumer (API key's consumer, token subject); a caller without
    /// one is counted by source.
    pub consumer: bool,
    /// The route.
    pub route: bool,
}

impl LimitKey {
    /// Whether the limit can only be judged after authentication.
    pub fn needs_identity(self) -> bool {
        self.consumer
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = [
            (self.source, "source"),
            (self.consumer, "consumer"),
            (self.route, "route"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        f.write_str(&parts.join("+"))
    }
}

/// One validated `[[rate_limit.limits]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// Its name (in `RateLimit-Policy` and logs).
    pub name: String,
    /// What it counts by.
    pub key: LimitKey,
    /// Requests allowed per `window_secs`.
    pub count: u64,
    /// The window of `count`, in seconds.
    pub window_secs: u64,
    /// Requests allowed at once from a rested bucket.
    pub burst: u64,
}

impl LimitSettings {
    /// Nanoseconds between two requests at the sustained rate.
    pub fn interval_ns(&self) -> u64 {
        (self.window_secs * 1_000_000_000 / self.count).max(1)
    }
}

/// `[rate_limit.escalation]` (read as written, then checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationSettings {
    /// 429s from one source within `window_secs` that earn a verdict (0: never).
    pub rejections: u32,
    /// 401s from one source within `window_secs` that earn a verdict (0: never).
    pub auth_failures: u32,
    /// WAF detections (blocked or not) from one source within `window_secs`
    /// that earn a verdict (0: never).
    pub attacks: u32,
    /// The counting window.
    pub window_secs: u64,
    /// The first verdict's length; each repeat offence doubles it.
    pub ban_secs: u64,
    /// The longest verdict.
    pub max_ban_secs: u64,
    /// From which offence of a source its verdict is enforced in the kernel
    /// (dropped in XDP, or refused at accept without XDP); earlier ones are
    /// refused request by request with an answer that says why (403 or
    /// 429 `verdict.*`). 1: every verdict goes to the kernel.
    pub kernel_after: u32,
}

impl Default for EscalationSettings {
    fn default() -> Self {
        Self {
            rejections: 200,
            auth_failures: 30,
            attacks: 5,
            window_secs: 60,
            ban_secs: 300,
            max_ban_secs: 86_400,
            kernel_after: 2,
        }
    }
}

/// Validated `[rate_limit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// The limits routes may name.
    pub limits: Vec<LimitSettings>,
    /// IPv6 sources are counted per prefix of this length (IPv4 per address).
    pub ipv6_prefix: u8,
    /// `RateLimit-Policy` and `RateLimit` on every response of a limited
    /// route, not only on 429.
    pub headers: bool,
    /// Buckets kept at most (16 bytes each), across all limits.
    pub table_entries: usize,
    /// When offences become kernel verdicts.
    pub escalation: EscalationSettings,
    /// Counted across the gateways sharing `cluster.redis`.
    pub shared: bool,
}

/// Fewest and most buckets (`table_entries`).
const MIN_TABLE: usize = 1024;
const MAX_TABLE: usize = 1 << 28;

pub(super) fn rate_limit_settings(
    f: &RateLimitFile,
    invalid: &Invalid<'_>,
) -> Result<RateLimitSettings, ConfigError> {
    let mut limits: Vec<LimitSettings> = Vec::new();
    for (i, l) in f.limits.iter().enumerate() {
        let at = |k: &str| format!("rate_limit.limits[{i}].{k}");
        let name = l.name.get_ref();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                Some(l.name.span()),
                at("name"),
                format!("`{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"),
            ));
        }
        if limits.iter().any(|o| &o.name == name) {
            return Err(invalid(
                Some(l.name.span()),
                at("name"),
                format!("a second limit named `{name}`"),
            ));
        }
        let names = match l.key.get_ref() {
            KeyNames::One(k) => vec![k.clone()],
            KeyNames::Many(v) => v.clone(),
        };
        let mut key = LimitKey::default();
        for k in &names {
            match k.as_str() {
                "source" => key.source = true,
                "consumer" => key.consumer = true,
                "route" => key.route = true,
                other => {
                    return Err(invalid(
                        Some(l.key.span()),
                        at("key"),
                        format!("`{other}`: a key is made of `source`, `consumer` and `route`"),
                    ));
                }
            }
        }
        if names.is_empty() {
            return Err(invalid(
                Some(l.key.span()),
                at("key"),
                "name at least one of `source`, `consumer`, `route`".into(),
            ));
        }
        let (count, window_secs) = parse_rate(l.rate.get_ref())
            .map_err(|m| invalid(Some(l.rate.span()), at("rate"), m))?;
        let burst = match &l.burst {
            None => count,
            Some(b) if *b.get_ref() == 0 => {
                return Err(invalid(
                    Some(b.span()),
                    at("burst"),
                    "must be at least 1".into(),
                ));
            }
            Some(b) => *b.get_ref(),
        };
        limits.push(LimitSettings {
            name: name.clone(),
            key,
            count,
            window_secs,
            burst,
        });
    }
    let ipv6_prefix = match &f.ipv6_prefix {
        None => 64,
        Some(p) if (1..=128).contains(p.get_ref()) => *p.get_ref(),
        Some(p) => {
            return Err(invalid(
                Some(p.span()),
                "rate_limit.ipv6_prefix".into(),
                "must be 1 to 128".into(),
            ));
        }
    };
    let table_entries = match &f.table_entries {
        None => 1 << 20,
        Some(n) if (MIN_TABLE..=MAX_TABLE).contains(n.get_ref()) => n.get_ref().next_power_of_two(),
        Some(n) => {
            return Err(invalid(
                Some(n.span()),
                "rate_limit.table_entries".into(),
                format!("must be {MIN_TABLE} to {MAX_TABLE}"),
            ));
        }
    };
    let e = &f.escalation;
    if e.window_secs == 0 || e.ban_secs == 0 || e.max_ban_secs < e.ban_secs || e.kernel_after == 0 {
        return Err(invalid(
            None,
            "rate_limit.escalation".into(),
            "window_secs, ban_secs and kernel_after must be at least 1, max_ban_secs at least ban_secs".into(),
        ));
    }
    Ok(RateLimitSettings {
        limits,
        ipv6_prefix,
        headers: f.headers,
        table_entries,
        shared: f.backend == Backend::Redis,
        escalation: *e,
    })
}

/// `100/s`, `6000/min`, `10/h`, `1000/day`: (count, window in seconds).
pub fn parse_rate(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("`{s}`: write a rate as COUNT/UNIT, e.g. `100/s` or `6000/min`");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let count: u64 = n.trim().parse().map_err(|_| bad())?;
    let window = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        _ => return Err(bad()),
    };
    if count == 0 || count > 1_000_000_000 {
        return Err(format!("`{s}`: the count must be 1 to 1000000000"));
    }
    Ok((count, window))
}

/// A route's `rate_limits`, by index into the limits.
pub(super) fn route_limits(
    i: usize,
    names: &[Spanned<String>],
    limits: &[LimitSettings],
    invalid: &Invalid<'_>,
) -> Result<Vec<usize>, ConfigError> {
    let mut out: Vec<usize> = Vec::new();
    for n in names {
        let Some(at) = limits.iter().position(|l| &l.name == n.get_ref()) else {
            return Err(invalid(
                Some(n.span()),
                format!("routes[{i}].rate_limits"),
                format!("no limit named `{}` in [[rate_limit.limits]]", n.get_ref()),
            ));
        };
        if !out.contains(&at) {
            out.push(at);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(
            &format!(
                "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n{extra}"
            ),
            "t.toml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn rates_parse_in_the_usual_units() {
        assert_eq!(parse_rate("100/s"), Ok((100, 1)));
        assert_eq!(parse_rate("6000/min"), Ok((6000, 60)));
        assert_eq!(parse_rate("10 / hour"), Ok((10, 3600)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/fortnight").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn limits_are_named_keyed_and_referred_to() {
        let c = parse(
            "[[rate_limit.limits]]\nname = \"ip\"\nkey = \"source\"\nrate = \"10/s\"\n\
             [[rate_limit.limits]]\nname = \"per-consumer-route\"\nkey = [\"consumer\", \"route\"]\nrate = \"600/min\"\nburst = 5\n\
             [[routes]]\nupstream = \"u\"\nauth = \"none\"\nrate_limits = [\"ip\", \"per-consumer-route\"]\n",
        )
        .expect("valid");
        let l = &c.rate_limit.limits;
        assert_eq!((l[0].count, l[0].window_secs, l[0].burst), (10, 1, 10));
        assert!(l[1].key.consumer && l[1].key.route && !l[1].key.source);
        assert_eq!(l[1].interval_ns(), 100_000_000);
        assert_eq!(c.routes[0].rate_limits, vec![0, 1]);
    }

    #[test]
    fn mistakes_name_their_line_and_key() {
        let e = parse("[[routes]]\nupstream = \"u\"\nauth = \"none\"\nrate_limits = [\"nope\"]\n")
            .expect_err("unknown limit");
        assert_eq!(
            e,
            "t.toml:9: routes[0].rate_limits: no limit named `nope` in [[rate_limit.limits]]"
        );
        let e = parse("[[rate_limit.limits]]\nname = \"a\"\nkey = \"ip\"\nrate = \"1/s\"\n")
            .expect_err("bad key");
        assert!(
            e.starts_with("t.toml:8: rate_limit.limits[0].key: `ip`"),
            "{e}"
        );
        let e = parse("[[rate_limit.limits]]\nname = \"a\"\nkey = \"source\"\nrate = \"1/week\"\n")
            .expect_err("bad rate");
        assert!(e.starts_with("t.toml:9: rate_limit.limits[0].rate:"), "{e}");
        let e = parse("[[rate_limit.limits]]\nname = \"a b\"\nkey = \"source\"\nrate = \"1/s\"\n")
            .expect_err("bad name");
        assert!(e.starts_with("t.toml:7: rate_limit.limits[0].name:"), "{e}");
        let e = parse("[rate_limit]\nipv6_prefix = 0\n").expect_err("bad prefix");
        assert_eq!(e, "t.toml:7: rate_limit.ipv6_prefix: must be 1 to 128");
    }
}
