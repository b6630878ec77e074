//! API documentation served by the gateway itself: the OpenAPI document an
//! `[[openapi]]` entry loaded, redacted once at load (internal operations,
//! server URLs and examples removed as configured), behind the docs
//! route's own authentication. It never reaches an upstream.

use crate::{
    conn::Conn,
    proxy::{Admitted, Done},
    respond::{Abort, Failure},
    stages::auth::Identity,
};

/// Answers with the document (the head already consumed).
pub async fn serve(c: &mut Conn, a: &Admitted, doc: &[u8]) -> Result<Done, Abort> {
    // A body on a GET is not read: close after answering.
    let keep = a.keep_alive && !a.framing.has_body();
    let authenticated = a.identity() != Identity::Anonymous;
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(doc.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    let [ours, private] = c.snap().routes[a.route].headers.lines(authenticated);
    for lines in [ours, private, &c.limit_lines, &c.cors_lines] {
        out.extend_from_slice(lines);
    }
    if !authenticated {
        // The gateway's own answer: never worth a shared cache.
        out.extend_from_slice(b"cache-control: no-store\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body: &[u8] = if a.head_request { b"" } else { doc };
    let sent = c.tls.send(&[&out, body]).await;
    c.out = out;
    sent.map_err(|_| Abort::Close(Failure::CLIENT_GONE, None))?;
    Ok(Done {
        status: 200,
        upstream: None,
        upstream_time: None,
        bytes: body.len() as u64,
        client_reusable: keep,
    })
}
