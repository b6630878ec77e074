//! Authorization: may this caller call this route. Role, scope and claim
//! names are compiled to bits when the snapshot is built (what the route
//! needs, what a consumer or token holds), so each check is
//! `need & have == need` with no allocation; a consumer allow-list is
//! checked by index. 403 when authenticated but not allowed.

use crate::{respond::Failure, stages::auth::Identity};

/// Authenticated, but not allowed here.
pub const FORBIDDEN: Failure = Failure::client(403, "auth.forbidden");

/// A route's rule, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Role bits the caller must all hold.
    pub need_roles: u64,
    /// Scope bits a token must all carry.
    pub need_scopes: u64,
    /// Claim-rule bits a token must all satisfy.
    pub need_attrs: u64,
    /// Consumer indexes allowed; `None` allows every authenticated caller.
    /// A list admits API-key consumers only, never a token.
    pub consumers: Option<Vec<usize>>,
}

/// Checks `rule` for `who`; a consumer's role bits are `consumer_roles`.
pub fn authorize(rule: &Rule, who: Identity, consumer_roles: u64) -> Result<(), Failure> {
    let (roles, scopes, attrs) = match who {
        // Public routes carry no rule (the config refuses one).
        Identity::Anonymous => return Ok(()),
        Identity::Consumer(c) => {
            if rule
                .consumers
                .as_ref()
                .is_some_and(|list| !list.contains(&c))
            {
                return Err(FORBIDDEN);
            }
            (consumer_roles, 0, 0)
        }
        Identity::Token(t) => {
            if rule.consumers.is_some() {
                return Err(FORBIDDEN);
            }
            (t.roles, t.scopes, t.attrs)
        }
    };
    let holds = |need: u64, have: u64| have & need == need;
    if holds(rule.need_roles, roles)
        && holds(rule.need_scopes, scopes)
        && holds(rule.need_attrs, attrs)
    {
        Ok(())
    } else {
        Err(FORBIDDEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::auth::jwt::TokenId;

    #[test]
    fn every_needed_role_and_the_allow_list() {
        let rule = Rule {
            need_roles: 0b101,
            ..Rule::default()
        };
        assert_eq!(authorize(&rule, Identity::Consumer(0), 0b111), Ok(()));
        assert_eq!(
            authorize(&rule, Identity::Consumer(0), 0b001),
            Err(FORBIDDEN)
        );
        let rule = Rule {
            consumers: Some(vec![2]),
            ..Rule::default()
        };
        assert_eq!(authorize(&rule, Identity::Consumer(2), 0), Ok(()));
        assert_eq!(authorize(&rule, Identity::Consumer(1), 0), Err(FORBIDDEN));
    }

    #[test]
    fn tokens_need_every_scope_and_claim() {
        let token = |scopes, attrs| {
            Identity::Token(TokenId {
                issuer: 0,
                roles: 0,
                scopes,
                attrs,
            })
        };
        let rule = Rule {
            need_scopes: 0b10,
            need_attrs: 0b1,
            ..Rule::default()
        };
        assert_eq!(authorize(&rule, token(0b11, 0b1), 0), Ok(()));
        assert_eq!(authorize(&rule, token(0b01, 0b1), 0), Err(FORBIDDEN));
        assert_eq!(authorize(&rule, token(0b10, 0b0), 0), Err(FORBIDDEN));
        let only_consumers = Rule {
            consumers: Some(vec![0]),
            ..Rule::default()
        };
        assert_eq!(authorize(&only_consumers, token(0, 0), 0), Err(FORBIDDEN));
    }
}
