//! The per-route stages that judge a request, each in its own module and
//! called in order by `pipeline::admit_head`: `auth` (who is calling),
//! `authz` (may they call this route). Rate limits, validation and the WAF
//! join here. A stage never imports another stage or the server.

pub mod auth;
pub mod authz;
