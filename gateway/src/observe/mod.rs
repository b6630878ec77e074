//! What an operator sees of the traffic: the access log (one line per
//! request, written off the request path), the metrics the admin listener
//! serves and `gateway top` shows, and anomalies against a moving baseline.

pub mod access_log;
pub mod anomaly;
pub mod metrics;
pub mod top;
