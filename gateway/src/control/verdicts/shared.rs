//! Verdicts shared with the other gateways of a cluster through Redis:
//! sent when placed or lifted here, applied when another placed or lifted
//! one.

use std::{net::IpAddr, sync::mpsc::SyncSender};

use gateway_common::{Verdict, VerdictReason};

use super::{Book, Note};
use crate::{addr::source_addr, clock::unix_ms};

/// A verdict change to publish.
#[derive(Debug, Clone)]
pub enum Shout {
    /// Placed until `expires_unix_ms`.
    Placed {
        /// The source.
        source: IpAddr,
        /// When it ends.
        expires_unix_ms: u64,
        /// The map's reason number.
        reason: u32,
        /// What earned it.
        why: String,
    },
    /// Lifted.
    Lifted {
        /// The source.
        source: IpAddr,
    },
}

impl Book {
    /// From now on, verdicts placed or lifted here are also sent to the
    /// other gateways through `outbox`.
    pub fn share(&mut self, outbox: SyncSender<Shout>) {
        self.outbox = Some(outbox);
    }

    pub(super) fn tell(&self, s: Shout) {
        if let Some(o) = &self.outbox
            && o.try_send(s).is_err()
        {
            tracing::warn!("the cluster queue is full: a verdict change was not shared");
        }
    }

    /// A verdict another gateway placed, `left_ms` from now.
    pub fn apply_shared(
        &mut self,
        source: IpAddr,
        left_ms: u64,
        reason: u32,
        why: &str,
        from: &str,
        now_ns: u64,
    ) {
        if self.shields(source) || self.allow.contains(&source_addr(source)) {
            return;
        }
        let reason = VerdictReason::from_u32(reason).unwrap_or(VerdictReason::Policy);
        let verdict = Verdict {
            expires_at_ns: now_ns.saturating_add(left_ms.saturating_mul(1_000_000)),
            reason: reason as u32,
            _pad: 0,
        };
        match self.enforcement.set_verdict(source, verdict) {
            Ok(()) => {
                self.mirrored(source, verdict, now_ns);
                self.notes.insert(
                    source,
                    Note {
                        placed_unix: unix_ms() / 1000,
                        why: format!("{why} (from gateway {from})"),
                    },
                );
                tracing::warn!(
                    "verdict: {source} for {}s ({}: {why}), shared by gateway {from}",
                    left_ms.div_ceil(1000),
                    reason.code()
                );
            }
            Err(e) => tracing::error!("shared verdict for {source} not placed: {e}"),
        }
    }

    /// A verdict another gateway lifted.
    pub fn lift_shared(&mut self, source: IpAddr, from: &str) {
        self.notes.remove(&source);
        self.requests.lift(source);
        if self.enforcement.remove_verdict(source) {
            tracing::warn!("verdict on {source} lifted by gateway {from}");
        }
    }
}
