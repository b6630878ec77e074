//! The client's side of the wire, one module per protocol: how a request
//! head arrives, how its body is read, how the gateway's own answers are
//! written, and how a proxied response reaches the client. The pipeline
//! asks for a head ([`h1::read_head`], then [`h1::parse_head`] into a
//! protocol-neutral [`crate::http::request::RequestHead`]), reads the body
//! through the session ([`h1::read_whole`], [`h1::buffer`],
//! [`h1::Rechunk`]), answers with an [`Answer`], and the proxy hands the
//! upstream's response to [`h1::write_response_head`] and a
//! [`h1::BodyOut`]; only `h1` knows HTTP/1.1's bytes and framing on the
//! client's side. [`conn`] is the state a request is served with, over a
//! [`conn::ClientIo`]: a TLS connection, or an HTTP/2 stream ([`h2`]),
//! which takes the same HTTP/1.1 bytes and turns them into frames, so
//! every stage judges a stream exactly as it judges an HTTP/1.1 request
//! (its body reaching an HTTP/1.1 upstream chunked when it has no length).

pub mod conn;
pub mod h1;
pub mod h2;

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
