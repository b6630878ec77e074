//! The client's side of the wire, one module per protocol: how a request
//! head arrives, and how the gateway's own answers are written. The
//! pipeline asks for a head ([`h1::read_head`], then [`h1::parse_head`]
//! into a protocol-neutral [`crate::http::request::RequestHead`]) and
//! gives its answers as an [`Answer`]; only `h1` knows their HTTP/1.1
//! bytes. An HTTP/2 stream comes as `h2` beside it, with the same calls.
//!
//! Not here yet: the proxied response (`proxy::response`, which rewrites
//! the upstream's HTTP/1.1 head and re-frames its body for the client)
//! and chunked request bodies (`pipeline::body`); both move here with the
//! second protocol, when their seam can be cut against a real caller.

pub mod h1;

pub use h1::answer;

use crate::respond::Failure;

/// An answer the gateway gives itself, whatever the protocol.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// A refusal or failure: its status, a JSON body with its reason code
    /// (and any members the request's validation left), and the header
    /// lines its hint asks for.
    Failure(Failure),
    /// A status without content (an allowed CORS preflight's 204).
    Empty(u16),
    /// A document the gateway serves itself (an OpenAPI `docs` route), its
    /// body left out for a HEAD request.
    Document {
        /// Its media type.
        content_type: &'static str,
        /// Its bytes.
        body: &'a [u8],
        /// Answering a HEAD request: the length, not the bytes.
        head_request: bool,
    },
    /// `100 Continue`, before a body the gateway will read.
    Continue,
}
