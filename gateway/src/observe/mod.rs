//! What an operator sees of the traffic: the access log (one line per
//! request, written off the request path).

pub mod access_log;
