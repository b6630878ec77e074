//! Who is calling: the auth stage's verifiers over the worker's token
//! caches (empty ones for a request on a snapshot older than the caches),
//! the route's authorization, and the introspection round trip a token
//! unknown to the cache needs (the one stage that awaits before admission).

use crate::{
    control::Event,
    http::request::RequestHead,
    respond::Failure,
    route::Route,
    session::conn::Conn,
    snapshot::Snapshot,
    stages::{
        auth::{
            self, AuthError, Authenticated, Identity,
            introspect::{self, AnswerCache},
            jwt::{self, TokenCache, TokenId, Vocabulary},
        },
        authz,
    },
    worker::Worker,
};

/// Authentication, then authorization, for `route`.
pub(super) fn check_caller(
    w: &Worker,
    snap: &Snapshot,
    route: &Route,
    head: &RequestHead<'_, '_>,
    scratch: &mut auth::Scratch,
) -> Result<Authenticated, AuthError> {
    let (rule, route) = (&route.rule, &route.settings);
    let mut tokens = w.tokens.borrow_mut();
    let mut answers = w.answers.borrow_mut();
    // A request on a snapshot older than the caches' (a reload just
    // happened) gets empty ones: their bits index another vocabulary.
    let (mut stale_tokens, stale_answers);
    let mut verifiers = auth::Verifiers {
        settings: &snap.cfg.auth,
        keys: &snap.keys,
        issuers: &snap.issuers,
        jwks: &snap.jwks,
        vocab: &snap.vocab,
        cache: if tokens.follow(snap.epoch) {
            &mut tokens
        } else {
            stale_tokens = TokenCache::default();
            &mut stale_tokens
        },
        answers: if answers.follow(snap.epoch) {
            &answers
        } else {
            stale_answers = AnswerCache::default();
            &stale_answers
        },
    };
    let (subject, token) = (&mut scratch.subject, &mut scratch.token);
    let caller = auth::authenticate(&route.auth, head, &mut verifiers, subject, token);
    if let Err(AuthError::Refused(f)) = caller
        && jwt::needs_fresh_keys(f)
    {
        // Ask for the issuer's keys again (single-flight, rate-limited).
        for issuer in route.auth.issuers() {
            w.shared.events.report(Event::UnknownKid { issuer });
        }
    }
    let caller = caller?;
    let have = match caller.identity() {
        Identity::Consumer(i) => snap.consumer_roles[i],
        Identity::Anonymous | Identity::Token(_) => 0,
    };
    authz::authorize(rule, caller.identity(), have)?;
    Ok(caller)
}

/// Asks introspection endpoint `endpoint` about the token in the
/// request's caller scratch and caches the answer in the worker. Each
/// source may cause `lookups_per_source` such lookups a second (the
/// shared rate-limit table counts them): random tokens from one address
/// never fill the lookup queue other callers need.
pub(super) async fn introspect(
    w: &Worker,
    c: &mut Conn,
    endpoint: usize,
    source: Option<std::net::IpAddr>,
) -> Result<(), Failure> {
    {
        let snap = c.snap();
        let per_source = snap.cfg.auth.introspection[endpoint].lookups_per_source;
        if let Some(source) = source.filter(|_| per_source > 0) {
            let b = &w.shared.limits.buckets;
            let who =
                crate::stages::rate_limit::source_key(source, snap.cfg.rate_limit.ipv6_prefix);
            let key = b.key("introspection lookups", &[&who, &endpoint.to_le_bytes()]);
            let interval = 1_000_000_000 / u64::from(per_source);
            if !b
                .charge(key, b.now_ns(), interval, 2 * u64::from(per_source))
                .allowed
            {
                return Err(introspect::LOOKUP_RATE);
            }
        }
    }
    let token = std::mem::take(&mut c.req.caller.token);
    let key = jwt::digest(&token);
    let asked = w
        .shared
        .introspector
        .as_ref()
        .and_then(|i| i.ask(endpoint, token));
    let Some(reply) = asked else {
        return Err(introspect::UNAVAILABLE);
    };
    let answer = match tokio::time::timeout(introspect::TIMEOUT * 2, reply).await {
        Ok(Ok(Ok(answer))) => answer,
        _ => return Err(introspect::UNAVAILABLE),
    };
    let snap = c.snap();
    let vocab = &snap.vocab;
    let id = TokenId {
        issuer: snap.issuers.len() + endpoint,
        roles: Vocabulary::bits(&vocab.roles, &answer.roles),
        scopes: Vocabulary::bits(&vocab.scopes, &answer.scopes),
        attrs: 0,
    };
    let settings = &snap.cfg.auth.introspection[endpoint];
    let mut answers = w.answers.borrow_mut();
    if answers.follow(snap.epoch) {
        answers.put(key, settings, endpoint, &answer, id, auth::now());
    }
    Ok(())
}
