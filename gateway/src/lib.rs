//! The gateway: an HTTPS reverse proxy on io_uring, and the XDP data plane
//! it drives.
//!
//! One module per stage of the request pipeline, in the order a request
//! meets them: `server` (accept) → `tls` → `http` (parse) → `route` →
//! `upstream` → `filters` (response headers) → `log`; `pipeline` calls them
//! in that order and `respond` turns every failure into a response.
//! Around them: `config`, `xdp` (kernel data plane), `policy` and `enforce`
//! (where the source policy is enforced), `reload` (SIGHUP and `gateway
//! reload`), `fdlimit` (connection caps against
//! `RLIMIT_NOFILE`), `demo` (the built-in backend).

pub mod admin;
pub mod audit;
pub mod background;
pub mod buffers;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod control;
pub mod demo;
pub mod enforce;
pub mod escalate;
pub mod fdlimit;
pub mod fetch;
pub mod filters;
pub mod http;
pub mod observe;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod respond;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod stages;
pub mod tls;
pub mod verdicts;
pub mod worker;
pub mod xdp;
