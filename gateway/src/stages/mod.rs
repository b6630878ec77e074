//! The per-route stages that judge a request, each in its own module and
//! called in order by `pipeline::admit_head`: `auth` (who is calling),
//! `cors` (which browser origins; it tells a preflight apart, which the
//! pipeline answers itself), `authz` (may they
//! call this route), `rate_limit` (how often; keyed by source before
//! authentication, by consumer after it), `validation` (what a request may
//! carry), `waf` (SQL injection and XSS in what a request carries),
//! `upgrade` (which protocol switches: a WebSocket handshake on a route
//! that opts in, from an origin its CORS policy allows). A
//! stage imports no pipeline, connection, proxy, server or worker: its
//! inputs come as arguments.

pub mod auth;
pub mod authz;
pub mod cors;
pub mod rate_limit;
pub mod upgrade;
pub mod validation;
pub mod waf;
