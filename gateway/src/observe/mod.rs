//! What an operator sees of the traffic: the access log (one line per
//! request, written off the request path) and the metrics the admin
//! listener serves.

pub mod access_log;
pub mod metrics;
pub mod top;
