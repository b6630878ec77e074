//! The admin API's client, for `gateway verdicts`, `gateway why` and
//! `gateway limits`: finds the API from the configuration (or `--admin`),
//! sends one request, and turns the answer into lines for a person.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::config::Config;

/// Where the admin API is and how to authenticate.
pub struct AdminClient {
    addr: SocketAddr,
    token: Option<String>,
}

impl AdminClient {
    /// The admin API of the gateway running `cfg`, or at `addr`.
    pub fn new(cfg: &Config, addr: Option<SocketAddr>) -> Result<Self, String> {
        let addr = match (addr, cfg.admin.listen) {
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => {
                return Err(format!(
                    "{}: the admin API is off (admin.enabled = false); give --admin ADDRESS",
                    cfg.source
                ));
            }
        };
        // A wildcard listener is reached on loopback.
        let addr = match addr.ip() {
            std::net::IpAddr::V4(v) if v.is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            std::net::IpAddr::V6(v) if v.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        let token = match &cfg.admin.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("admin.token_file {}: {e}", p.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Self { addr, token })
    }

    /// The admin API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request; the status and the JSON answer.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let (status, text) = self.raw(method, path, body)?;
        let value = serde_json::from_str(&text)
            .map_err(|e| format!("the admin API at {} answered nonsense: {e}", self.addr))?;
        Ok((status, value))
    }

    /// `GET path` of a text answer (`/metrics`): its body, or why not.
    pub fn text(&self, path: &str) -> Result<String, String> {
        match self.raw("GET", path, None)? {
            (200, text) => Ok(text),
            (status, text) => Err(format!("the admin API answered {status}: {}", text.trim())),
        }
    }

    /// Sends one request; the status and the body as text.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String), String> {
        let unreachable = |e: std::io::Error| {
            format!(
                "cannot reach the admin API at {}: {e} (is `gateway run` running? see admin.listen, or give --admin)",
                self.addr
            )
        };
        let mut s =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(3)).map_err(unreachable)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(unreachable)?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(unreachable)?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).map_err(unreachable)?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("the admin API at {} answered nonsense", self.addr))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("the admin API at {} answered nonsense", self.addr))?;
        Ok((status, body.to_owned()))
    }

    /// Like [`call`](Self::call), with an error status turned into the
    /// API's own explanation.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let (status, v) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(format!(
                "{} ({status} {})",
                v["detail"].as_str().unwrap_or("refused"),
                v["reason"].as_str().unwrap_or("-")
            ))
        }
    }
}

/// Verdict lines for a person.
pub fn verdict_lines(v: &Value) -> Vec<String> {
    let list = v["verdicts"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return vec!["no verdicts".into()];
    }
    let mut out = vec![format!(
        "{:<40} {:<14} {:>10}  why",
        "source", "reason", "expires in"
    )];
    for e in &list {
        out.push(format!(
            "{:<40} {:<14} {:>9}s  {}",
            e["source"].as_str().unwrap_or("?"),
            e["reason"].as_str().unwrap_or("?"),
            e["expires_in_secs"].as_u64().unwrap_or(0),
            e["why"].as_str().unwrap_or("")
        ));
    }
    out
}

/// `gateway why` for a person.
pub fn why_lines(v: &Value, now_unix: u64) -> Vec<String> {
    let src = v["source"].as_str().unwrap_or("?");
    let place = v["enforced_in"].as_str().unwrap_or("?");
    let by = match v["by"].as_str() {
        Some("verdict") => "a verdict",
        Some("policy.deny") => "the deny list (policy.deny)",
        Some("syn_budget") => "its SYN budget (xdp.syn_rate, xdp.syn_burst)",
        _ => "",
    };
    let mut out = vec![if by.is_empty() {
        format!("{src}: not dropped (checked in {place})")
    } else {
        format!("{src}: DROPPED by {by} (in {place})")
    }];
    if let Some(e) = v["verdict"].as_object() {
        let since = e["placed_unix"]
            .as_u64()
            .map(|t| format!(", placed {}s ago", now_unix.saturating_sub(t)))
            .unwrap_or_default();
        out.push(format!(
            "  verdict: {}, {}s left{since}: {}",
            e["reason"].as_str().unwrap_or("?"),
            e["expires_in_secs"].as_u64().unwrap_or(0),
            e["why"].as_str().unwrap_or("")
        ));
    }
    let yes = |b: &Value| {
        if b.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    out.push(format!(
        "  allow list: {}; deny list: {}",
        yes(&v["allowed"]),
        yes(&v["denied"])
    ));
    let syn = &v["syn_budget"];
    out.push(if syn["limited"].as_bool() == Some(true) {
        format!(
            "  SYN budget: {} (its clock {} ms ahead, burst tolerance {} ms)",
            if syn["over"].as_bool() == Some(true) {
                "OVER"
            } else {
                "within"
            },
            syn["clock_ahead_ms"],
            syn["tolerance_ms"]
        )
    } else {
        "  SYN budget: unlimited (xdp.syn_rate = 0)".into()
    });
    let e = &v["escalation"];
    out.push(format!(
        "  escalation: {}/{} rejections, {}/{} auth failures and {}/{} attacks in the current {}s window; earlier offences: {}",
        e["rejections"],
        e["rejections_threshold"],
        e["auth_failures"],
        e["auth_failures_threshold"],
        e["attacks"],
        e["attacks_threshold"],
        e["window_secs"],
        e["offences"]
    ));
    out
}

/// `gateway limits` for a person.
pub fn limit_lines(v: &Value) -> Vec<String> {
    let list = v["limits"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return vec!["no route charges a limit".into()];
    }
    list.iter()
        .map(|l| {
            format!(
                "route {} {} (by {}) {} burst {}: {} left, full in {} ms{}",
                l["route"].as_str().unwrap_or("?"),
                l["limit"].as_str().unwrap_or("?"),
                l["key"].as_str().unwrap_or("?"),
                l["rate"].as_str().unwrap_or("?"),
                l["burst"],
                l["remaining"],
                l["full_in_ms"],
                match l["retry_in_ms"].as_u64() {
                    Some(0) | None => String::new(),
                    Some(ms) => format!(", refused for {ms} ms more"),
                }
            )
        })
        .collect()
}
