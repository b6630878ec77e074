//! The gateway: configuration, the kernel data plane it drives, and the
//! source policy it enforces itself when the kernel cannot.
//!
//! Stages of the request pipeline arrive as their own modules (listener, tls,
//! http, route, upstream, respond, log) with the proxy; this crate already
//! holds what every stage shares.

pub mod clock;
pub mod config;
pub mod enforce;
pub mod policy;
pub mod xdp;
