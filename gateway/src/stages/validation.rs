//! Request validation: what a route accepts in a request before anything
//! goes upstream. Today the body's media type (`content_types`).

use crate::{config::RouteSettings, http::request::RequestHead, respond::Failure};

/// Refuses a body whose `Content-Type` (exactly one field; its media type
/// without parameters, case-insensitive) the route does not list. A route
/// without `content_types`, or a request without a body, passes.
pub fn content_type(route: &RouteSettings, head: &RequestHead<'_, '_>) -> Result<(), Failure> {
    if route.content_types.is_empty() || !head.framing.has_body() {
        return Ok(());
    }
    let value = match head.single("content-type") {
        Ok(Some(v)) => std::str::from_utf8(v).unwrap_or(""),
        Ok(None) | Err(_) => return Err(Failure::CONTENT_TYPE),
    };
    let media = value.split(';').next().unwrap_or("").trim();
    if route
        .content_types
        .iter()
        .any(|t| t.eq_ignore_ascii_case(media))
    {
        Ok(())
    } else {
        Err(Failure::CONTENT_TYPE)
    }
}
