//! Verified tokens per worker, bounded: one signature check per token,
//! until its `exp`.

use std::collections::HashMap;

use super::TokenId;

/// Verified tokens per worker, bounded.
#[derive(Default)]
pub struct TokenCache {
    map: HashMap<[u8; 16], Cached>,
    epoch: u64,
}

struct Cached {
    issuer: usize,
    revision: u64,
    expires: i64,
    /// The token's own `exp`.
    exp: Option<i64>,
    id: TokenId,
    subject: String,
}

/// Entries a worker keeps at most.
const CACHE_ENTRIES: usize = 16_384;
/// How long a token without `exp` (allowed by `require_exp = false`) stays cached.
const CACHE_WITHOUT_EXP: i64 = 60;

/// The cache key of a token.
pub fn digest(token: &str) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

impl TokenCache {
    /// Moves the cache to configuration `epoch` (a snapshot's), forgetting
    /// what it holds from an earlier one: a cached token's role and scope
    /// bits index that configuration's vocabulary. Whether the cache now
    /// serves `epoch` (false for a request still on an older snapshot).
    pub fn follow(&mut self, epoch: u64) -> bool {
        if epoch > self.epoch {
            self.map.clear();
            self.epoch = epoch;
        }
        epoch == self.epoch
    }

    /// A cached verification still valid at `now` for this key revision.
    pub fn get(
        &self,
        key: &[u8; 16],
        issuer: usize,
        revision: u64,
        now: i64,
        subject: &mut String,
    ) -> Option<(TokenId, Option<i64>)> {
        let c = self.map.get(key)?;
        if c.issuer != issuer || c.revision != revision || now >= c.expires {
            return None;
        }
        subject.clear();
        subject.push_str(&c.subject);
        Some((c.id, c.exp))
    }

    /// Remembers a verification.
    pub fn put(
        &mut self,
        key: [u8; 16],
        revision: u64,
        exp: Option<i64>,
        now: i64,
        id: TokenId,
        subject: &str,
    ) {
        if self.map.len() >= CACHE_ENTRIES {
            self.map.retain(|_, c| c.expires > now);
            if self.map.len() >= CACHE_ENTRIES {
                self.map.clear();
            }
        }
        let expires = exp.unwrap_or(now + CACHE_WITHOUT_EXP).min(now + 3600);
        self.map.insert(
            key,
            Cached {
                issuer: id.issuer,
                revision,
                expires,
                exp,
                id,
                subject: subject.to_owned(),
            },
        );
    }
}
