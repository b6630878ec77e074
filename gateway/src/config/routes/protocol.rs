//! What a route speaks beyond HTTP/1.1 requests: gRPC (to an HTTP/2
//! upstream) or WebSocket handshakes, and the combinations refused.

use super::*;

/// Reads a route's `grpc` and `websocket` into `route` (its upstream,
/// methods and body schema already compiled), refusing what cannot work.
pub(super) fn route_protocol(
    i: usize,
    r: &RouteFile,
    route: &mut RouteSettings,
    upstreams: &[UpstreamSettings],
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    route.grpc = r.grpc.as_ref().is_some_and(|g| *g.get_ref());
    let h2_upstream = upstreams[route.upstream].http2;
    if route.grpc != h2_upstream {
        let span = r.grpc.as_ref().map(|g| g.span());
        let why = match route.grpc {
            true => "a gRPC route needs an upstream with http2 = true",
            false => {
                "its upstream speaks HTTP/2 (http2 = true): only grpc = true routes may use it"
            }
        };
        return Err(invalid(span, format!("routes[{i}].grpc"), why.into()));
    }
    if route.grpc && route.body_schema.is_some() {
        let span = r.grpc.as_ref().map(|g| g.span());
        return Err(invalid(
            span,
            format!("routes[{i}].grpc"),
            "a gRPC route's body is protobuf messages: no body_schema (the WAF scans its head only)".into(),
        ));
    }
    route.websocket = r.websocket.as_ref().is_some_and(|w| *w.get_ref());
    if let Some(w) = r.websocket.as_ref().filter(|w| *w.get_ref()) {
        let why = if route.grpc {
            Some("a route is gRPC or WebSocket, not both")
        } else if !route.methods.is_empty() && !route.methods.iter().any(|m| m == "GET") {
            Some("a WebSocket upgrade is a GET: methods must include GET")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(invalid(
                Some(w.span()),
                format!("routes[{i}].websocket"),
                why.into(),
            ));
        }
    }
    Ok(())
}
