//! The gateway: an HTTPS reverse proxy on io_uring, and the XDP data plane
//! it drives.
//!
//! One module per stage of the request pipeline, in the order a request
//! meets them: `server` (accept) → `tls` → `http` (parse) → `route` →
//! `stages` (auth, CORS, authz, limits, validation, WAF) → `proxy`
//! (upstreams) → `filters` (response headers) → `observe` (access log,
//! metrics); `pipeline` calls them in that order, over the connection in
//! `conn`; `session` is the client's side of the wire (reading a head,
//! writing the gateway's own answers: HTTP/1.1 in `session::h1`), and
//! `respond` decides every failure's status, reason code and hints. Beneath
//! them: `addr` (sources and CIDR sets), `json` (strict documents and
//! compiled schemas), `config` (which imports no stage), `clock`,
//! `buffers`.
//! Around them: `worker` (one thread's state), `snapshot` (the compiled
//! configuration), `control` (the main thread's tick and the verdict
//! loop: `escalate`, `verdicts`, `cluster` for Redis), `xdp` (kernel data
//! plane, with `policy` and `enforce`: where the source policy is
//! enforced), `reload` (SIGHUP and
//! `gateway reload`), `admin`, `audit`, `fetch`, `background`, `fdlimit`
//! (connection caps against `RLIMIT_NOFILE`), `demo` (the built-in
//! backend). No two modules import each other in a loop: `cargo xtask
//! layout` checks it.

pub mod addr;
pub mod admin;
pub mod audit;
pub mod background;
pub mod buffers;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod fdlimit;
pub mod fetch;
pub mod filters;
pub mod http;
pub mod json;
pub mod observe;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod respond;
pub mod route;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod stages;
pub mod tls;
pub mod worker;
pub mod xdp;
