//! Authorization: may this caller call this route. Roles are compiled to
//! bits when the snapshot is built (route needs, consumer holds), so the
//! check is `need & have == need` with no allocation; a consumer allow-list
//! is checked by index. 403 when authenticated but not allowed.

use crate::{respond::Failure, stages::auth::Identity};

/// Authenticated, but not allowed here.
pub const FORBIDDEN: Failure = Failure::client(403, "auth.forbidden");

/// A route's rule, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Role bits the caller must all hold.
    pub need_roles: u64,
    /// Consumer indexes allowed; `None` allows every authenticated caller.
    pub consumers: Option<Vec<usize>>,
}

/// Checks `rule` for `who`, whose roles are `have` (bits).
pub fn authorize(rule: &Rule, who: Identity, have: u64) -> Result<(), Failure> {
    let Identity::Consumer(c) = who else {
        // Public routes carry no rule (the config refuses one).
        return Ok(());
    };
    if have & rule.need_roles != rule.need_roles {
        return Err(FORBIDDEN);
    }
    match &rule.consumers {
        Some(list) if !list.contains(&c) => Err(FORBIDDEN),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_needed_role_and_the_allow_list() {
        let rule = Rule {
            need_roles: 0b101,
            consumers: None,
        };
        assert_eq!(authorize(&rule, Identity::Consumer(0), 0b111), Ok(()));
        assert_eq!(
            authorize(&rule, Identity::Consumer(0), 0b001),
            Err(FORBIDDEN)
        );
        let rule = Rule {
            need_roles: 0,
            consumers: Some(vec![2]),
        };
        assert_eq!(authorize(&rule, Identity::Consumer(2), 0), Ok(()));
        assert_eq!(authorize(&rule, Identity::Consumer(1), 0), Err(FORBIDDEN));
    }
}
