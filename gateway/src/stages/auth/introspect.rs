//! Opaque bearer tokens, checked at an RFC 7662 introspection endpoint with
//! the gateway's client credentials (HTTP Basic, RFC 6749 §2.3.1).
//!
//! The request path never waits on the network while it holds the head: on
//! a cache miss the head stage asks for a lookup, the request awaits a
//! small pool of control-side threads (its worker keeps serving other
//! connections meanwhile), and the head is judged again from the cache.
//! Active answers are cached until the token's `exp` (at most
//! `max_cache_secs`), inactive ones for `inactive_cache_secs`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use base64::Engine as _;
use serde_json::Value;

use super::jwt::TokenId;
use crate::{config::IntrospectionSettings, fetch::Https, respond::Failure};

/// The endpoint said the token is not active (revoked, expired, unknown).
pub const INACTIVE: Failure = Failure::client(401, "token.inactive");
/// The endpoint could not be asked (down, slow, or the pool is full).
pub const UNAVAILABLE: Failure = Failure::internal(503, "token.introspection_unavailable");
/// The source sent more unknown tokens than `lookups_per_source` allows.
pub const LOOKUP_RATE: Failure = Failure::client(429, "token.lookup_rate");
/// Active, but for another issuer than `issuer`.
pub const ISSUER: Failure = Failure::client(401, "token.issuer");
/// Active, but for none of `audiences`.
pub const AUDIENCE: Failure = Failure::client(401, "token.audience");
/// Active, but issued to none of `client_ids`.
pub const CLIENT: Failure = Failure::client(401, "token.client");

/// Lookups running at once, across the gateway.
const THREADS: usize = 4;
/// Lookups waiting at most before new ones are refused (503).
const QUEUE: usize = 256;
/// Longest a lookup may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// What an endpoint answered, before it is compiled to bits.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// `active`.
    pub active: bool,
    /// `sub`, if printable.
    pub subject: String,
    /// `exp`, Unix seconds.
    pub exp: Option<i64>,
    /// Roles and scopes, as words.
    pub roles: Vec<String>,
    /// See `roles`.
    pub scopes: Vec<String>,
    /// Active, but not for this API (`issuer`, `audiences`, `client_ids`):
    /// the refusal.
    pub refused: Option<Failure>,
}

/// A lookup handed to the pool.
struct Lookup {
    endpoint: usize,
    token: String,
    reply: tokio::sync::oneshot::Sender<Result<Answer, String>>,
}

/// The pool of lookup threads.
pub struct Introspector {
    tx: SyncSender<Lookup>,
}

/// One endpoint as the pool uses it.
struct Endpoint {
    settings: IntrospectionSettings,
    https: Https,
    /// `Basic base64(client_id:secret)`.
    authorization: String,
}

/// Each endpoint with its client secret read and its HTTPS client built.
fn endpoints(settings: &[IntrospectionSettings]) -> Result<Vec<Endpoint>, String> {
    settings
        .iter()
        .map(|s| {
            let at = format!("auth.introspection ({})", s.name);
            let secret = std::fs::read_to_string(&s.client_secret_file).map_err(|e| {
                format!(
                    "{at}: client_secret_file {}: {e}",
                    s.client_secret_file.display()
                )
            })?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(format!(
                    "{at}: client_secret_file {} is empty",
                    s.client_secret_file.display()
                ));
            }
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{secret}", s.client_id));
            Ok(Endpoint {
                https: Https::new(s.ca_file.as_deref()).map_err(|e| format!("{at}: {e}"))?,
                settings: s.clone(),
                authorization: format!("Basic {basic}"),
            })
        })
        .collect()
}

impl Introspector {
    /// Reads the client secrets and starts the pool; `None` without endpoints.
    pub fn start(settings: &[IntrospectionSettings]) -> Result<Option<Self>, String> {
        if settings.is_empty() {
            return Ok(None);
        }
        let endpoints = Arc::new(endpoints(settings)?);
        let (tx, rx) = sync_channel::<Lookup>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..THREADS {
            let (rx, endpoints) = (rx.clone(), endpoints.clone());
            std::thread::Builder::new()
                .name(format!("introspect-{n}"))
                .spawn(move || serve(&rx, &endpoints))
                .map_err(|e| format!("starting the introspection pool: {e}"))?;
        }
        Ok(Some(Self { tx }))
    }

    /// Reads what [`Self::start`] reads (client secrets, CA files) without
    /// starting anything: `gateway check`.
    pub fn check(settings: &[IntrospectionSettings]) -> Result<(), String> {
        endpoints(settings).map(drop)
    }

    /// Hands a lookup to the pool; `None` when its queue is full.
    pub fn ask(
        &self,
        endpoint: usize,
        token: String,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<Answer, String>>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        match self.tx.try_send(Lookup {
            endpoint,
            token,
            reply,
        }) {
            Ok(()) => Some(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }
}

fn serve(rx: &Mutex<Receiver<Lookup>>, endpoints: &[Endpoint]) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let answer = endpoints
            .get(job.endpoint)
            .ok_or_else(|| "no such endpoint".to_owned())
            .and_then(|e| ask_endpoint(e, &job.token));
        if let Err(e) = &answer {
            tracing::warn!("token introspection: {e}");
        }
        let _ = job.reply.send(answer);
    }
}

fn ask_endpoint(e: &Endpoint, token: &str) -> Result<Answer, String> {
    let form = format!("token={}&token_type_hint=access_token", form_encode(token));
    let body = e
        .https
        .post_form(&e.settings.url, &e.authorization, &form, TIMEOUT)?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|err| format!("{}: {err}", e.settings.url))?;
    let active = doc.get("active") == Some(&Value::Bool(true));
    let mut answer = Answer {
        active,
        ..Answer::default()
    };
    if !active {
        return Ok(answer);
    }
    if let Some(Value::String(sub)) = doc.get("sub")
        && sub.len() <= 256
        && sub.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        answer.subject = sub.clone();
    }
    answer.exp = doc
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64)));
    answer.roles = words_at(&doc, &e.settings.roles_claim);
    answer.scopes = words_at(&doc, &e.settings.scopes_claim);
    answer.refused = not_for_us(&doc, &e.settings);
    Ok(answer)
}

/// Why an active answer is not one for this API: RFC 7662 §4 leaves it to
/// the resource to check whom a token was issued by, for and to; an
/// authorization server answers `active` for every token it issued.
fn not_for_us(doc: &Value, s: &IntrospectionSettings) -> Option<Failure> {
    if let Some(iss) = &s.issuer
        && doc.get("iss").and_then(Value::as_str) != Some(iss.as_str())
    {
        return Some(ISSUER);
    }
    if !s.audiences.is_empty() {
        let named = |a: &str| s.audiences.iter().any(|w| w == a);
        let ok = match doc.get("aud") {
            Some(Value::String(a)) => named(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
            _ => false,
        };
        if !ok {
            return Some(AUDIENCE);
        }
    }
    if !s.client_ids.is_empty()
        && !doc
            .get("client_id")
            .and_then(Value::as_str)
            .is_some_and(|c| s.client_ids.iter().any(|w| w == c))
    {
        return Some(CLIENT);
    }
    None
}

fn words_at(doc: &Value, path: &[String]) -> Vec<String> {
    let mut v = Some(doc);
    for p in path {
        v = v.and_then(|x| x.get(p));
    }
    match v {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// `application/x-www-form-urlencoded` for a token (token68 needs little).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Answers per worker, bounded.
#[derive(Default)]
pub struct AnswerCache {
    map: HashMap<[u8; 16], Cached>,
    epoch: u64,
}

struct Cached {
    endpoint: usize,
    expires: i64,
    active: bool,
    refused: Option<Failure>,
    /// The token's `exp`, when the endpoint said.
    exp: Option<i64>,
    id: TokenId,
    subject: String,
}

const CACHE_ENTRIES: usize = 16_384;

/// What a cached answer says.
pub enum CachedAnswer {
    /// Active: the token's bits, and its `exp` when the endpoint said.
    Active(TokenId, Option<i64>),
    /// Not active.
    Inactive,
    /// Active, but not for this API.
    Refused(Failure),
}

impl AnswerCache {
    /// Moves the cache to configuration `epoch` (a snapshot's), forgetting
    /// what it holds from an earlier one: a cached answer's role and scope
    /// bits index that configuration's vocabulary. Whether the cache now
    /// serves `epoch` (false for a request still on an older snapshot).
    pub fn follow(&mut self, epoch: u64) -> bool {
        if epoch > self.epoch {
            self.map.clear();
            self.epoch = epoch;
        }
        epoch == self.epoch
    }

    /// A cached answer for `token` at `endpoint`, still valid at `now`.
    pub fn get(
        &self,
        key: &[u8; 16],
        endpoint: usize,
        now: i64,
        subject: &mut String,
    ) -> Option<CachedAnswer> {
        let c = self.map.get(key)?;
        if c.endpoint != endpoint || now >= c.expires {
            return None;
        }
        if !c.active {
            return Some(CachedAnswer::Inactive);
        }
        if let Some(f) = c.refused {
            return Some(CachedAnswer::Refused(f));
        }
        subject.clear();
        subject.push_str(&c.subject);
        Some(CachedAnswer::Active(c.id, c.exp))
    }

    /// Remembers an answer, compiled to `id`.
    pub fn put(
        &mut self,
        key: [u8; 16],
        settings: &IntrospectionSettings,
        endpoint: usize,
        answer: &Answer,
        id: TokenId,
        now: i64,
    ) {
        if self.map.len() >= CACHE_ENTRIES {
            self.map.retain(|_, c| c.expires > now);
            if self.map.len() >= CACHE_ENTRIES {
                self.map.clear();
            }
        }
        let expires = if answer.active {
            let cap = now + settings.max_cache_secs as i64;
            answer.exp.map_or(cap, |e| e.min(cap))
        } else {
            now + settings.inactive_cache_secs as i64
        };
        self.map.insert(
            key,
            Cached {
                endpoint,
                expires,
                active: answer.active,
                refused: answer.refused,
                exp: answer.exp,
                id,
                subject: answer.subject.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_for_another_issuer_audience_or_client_are_refused() {
        let mut s = IntrospectionSettings {
            name: "idp".into(),
            url: "https://idp.test/introspect".into(),
            client_id: "gw".into(),
            client_secret_file: "s".into(),
            ca_file: None,
            max_cache_secs: 60,
            inactive_cache_secs: 10,
            roles_claim: vec![],
            scopes_claim: vec![],
            issuer: None,
            audiences: vec![],
            client_ids: vec![],
            lookups_per_source: 20,
        };
        let doc = serde_json::json!({"active": true, "iss": "https://idp.test", "aud": ["orders", "x"], "client_id": "shop"});
        assert_eq!(not_for_us(&doc, &s), None, "nothing asked, nothing checked");
        s.issuer = Some("https://other.test".into());
        assert_eq!(not_for_us(&doc, &s), Some(ISSUER));
        s.issuer = Some("https://idp.test".into());
        s.audiences = vec!["billing".into()];
        assert_eq!(not_for_us(&doc, &s), Some(AUDIENCE));
        s.audiences = vec!["orders".into()];
        s.client_ids = vec!["mobile".into()];
        assert_eq!(not_for_us(&doc, &s), Some(CLIENT));
        s.client_ids = vec!["shop".into()];
        assert_eq!(not_for_us(&doc, &s), None);
        let no_aud =
            serde_json::json!({"active": true, "iss": "https://idp.test", "client_id": "shop"});
        assert_eq!(not_for_us(&no_aud, &s), Some(AUDIENCE));
    }

    #[test]
    fn tokens_are_form_encoded() {
        assert_eq!(form_encode("abc.DEF-_~"), "abc.DEF-_~");
        assert_eq!(form_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }
}
