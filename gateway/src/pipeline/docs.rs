//! API documentation served by the gateway itself: the OpenAPI document an
//! `[[openapi]]` entry loaded, redacted once at load (internal operations,
//! server URLs and examples removed as configured), behind the docs
//! route's own authentication. It never reaches an upstream.

use crate::{
    proxy::{Admitted, Done},
    respond::{Abort, Failure},
    session::conn::Conn,
    session::{self, Answer},
    stages::auth::Identity,
};

/// Answers with the document (the head already consumed).
pub async fn serve(c: &mut Conn, a: &Admitted, doc: &[u8]) -> Result<Done, Abort> {
    // A body on a GET is not read: close after answering.
    let keep = a.keep_alive && !a.framing.has_body();
    let authenticated = a.identity() != Identity::Anonymous;
    let snap = c.snap_arc();
    let [ours, private] = snap.routes[a.route].headers.lines(authenticated);
    // The gateway's own answer to an anonymous caller: never worth a
    // shared cache.
    let no_store: &[u8] = if authenticated {
        b""
    } else {
        b"cache-control: no-store\r\n"
    };
    let document = Answer::Document {
        content_type: "application/json",
        body: doc,
        head_request: a.head_request,
    };
    let sent = session::answer(c, document, keep, &[ours, private, no_store]).await;
    sent.map_err(|_| Abort::Close(Failure::CLIENT_GONE, None))?;
    Ok(Done {
        status: 200,
        upstream: None,
        upstream_time: None,
        bytes: if a.head_request { 0 } else { doc.len() as u64 },
        client_reusable: keep,
        switched: None,
    })
}
