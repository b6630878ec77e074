//! The gRPC health protocol (`grpc.health.v1.Health/Check`), for an HTTP/2
//! upstream's active check: one call on a connection of its own (over TLS
//! with `h2` in ALPN on a TLS hop), passing only on `SERVING` with
//! `grpc-status: 0`. The two messages are one optional string and one enum
//! each, so they are encoded here rather than generated with a protobuf
//! toolchain.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest answer read: a HealthCheckResponse is a few bytes.
const MAX_ANSWER: usize = 4096;

/// One check of `addr` about `service` within `timeout`. `runtime` is the
/// checker thread's, built at its first gRPC check.
pub(super) fn probe(
    runtime: &mut Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    service: &str,
    timeout: Duration,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
) -> Result<(), String> {
    if runtime.is_none() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("no runtime for the gRPC check: {e}"))?;
        *runtime = Some(rt);
    }
    let Some(rt) = runtime.as_ref() else {
        return Err("no runtime for the gRPC check".into());
    };
    rt.block_on(async {
        tokio::time::timeout(timeout, check(addr, service, tls))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
    })
}

async fn check(
    addr: SocketAddr,
    service: &str,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let Some((config, name)) = tls else {
        return ask(tcp, &addr.to_string(), service).await;
    };
    let authority = match &name {
        ServerName::DnsName(n) => n.as_ref().to_owned(),
        _ => addr.to_string(),
    };
    let s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    if s.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("TLS: the server did not agree on h2 in ALPN".into());
    }
    ask(s, &authority, service).await
}

/// The call itself, with its connection driven beside it (and closed as
/// soon as the answer is in).
async fn ask<T>(io: T, authority: &str, service: &str) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (send, mut conn) = h2::client::handshake(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let call = async {
        let mut send = send.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
        let req = ::http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "gateway-health-check")
            .body(())
            .map_err(|e| format!("request: {e}"))?;
        let (answer, mut body) = send
            .send_request(req, false)
            .map_err(|e| format!("HTTP/2: {e}"))?;
        body.send_data(Bytes::from(request_message(service)), true)
            .map_err(|e| format!("HTTP/2: {e}"))?;
        let answer = answer.await.map_err(|e| format!("HTTP/2: {e}"))?;
        if answer.status() != 200 {
            return Err(format!("HTTP status {}", answer.status().as_u16()));
        }
        // Trailers-only: the status is in the head.
        grpc_ok(answer.headers())?;
        let mut body = answer.into_body();
        let mut message = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("HTTP/2: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
            if message.len() > MAX_ANSWER {
                return Err(format!("an answer over {MAX_ANSWER} bytes"));
            }
        }
        match body.trailers().await.map_err(|e| format!("HTTP/2: {e}"))? {
            Some(t) => grpc_ok(&t)?,
            None => return Err("no grpc-status".into()),
        }
        match serving_status(&message)? {
            1 => Ok(()),
            0 => Err("status UNKNOWN".into()),
            2 => Err("status NOT_SERVING".into()),
            3 => Err("status SERVICE_UNKNOWN".into()),
            n => Err(format!("status {n}")),
        }
    };
    tokio::select! {
        r = call => r,
        e = &mut conn => Err(match e {
            Ok(()) => "the server closed the connection".into(),
            Err(e) => format!("HTTP/2: {e}"),
        }),
    }
}

/// `Err` naming the status when `grpc-status` is present and not 0.
fn grpc_ok(fields: &::http::HeaderMap) -> Result<(), String> {
    let Some(code) = fields.get("grpc-status") else {
        return Ok(());
    };
    if code.as_bytes() == b"0" {
        return Ok(());
    }
    let message = fields
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Err(format!(
        "grpc-status {} {message}",
        String::from_utf8_lossy(code.as_bytes())
    )
    .trim_end()
    .to_owned())
}

/// A HealthCheckRequest (`string service = 1`) in its gRPC frame
/// (uncompressed flag, big-endian length).
fn request_message(service: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(service.len() + 12);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or("a truncated answer")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a malformed answer".into())
}

/// The `status` (field 1) of the one framed HealthCheckResponse in
/// `framed`; absent means 0 (UNKNOWN), as proto3 omits defaults.
fn serving_status(framed: &[u8]) -> Result<u64, String> {
    let [flag, len @ ..] = framed.get(..5).ok_or("no answer message")? else {
        return Err("no answer message".into());
    };
    if *flag != 0 {
        return Err("a compressed answer (none was offered)".into());
    }
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let msg = &framed[5..];
    if msg.len() != len {
        return Err("an answer whose length disagrees with its frame".into());
    }
    let (mut at, mut status) = (0, 0);
    while at < msg.len() {
        let key = varint(msg, &mut at)?;
        let skip = match (key >> 3, key & 7) {
            (1, 0) => {
                status = varint(msg, &mut at)?;
                0
            }
            (_, 0) => {
                varint(msg, &mut at)?;
                0
            }
            (_, 1) => 8,
            (_, 2) => varint(msg, &mut at)? as usize,
            (_, 5) => 4,
            _ => return Err("a malformed answer".into()),
        };
        at = at
            .checked_add(skip)
            .filter(|&a| a <= msg.len())
            .ok_or("a truncated answer")?;
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_protobuf() {
        assert_eq!(request_message(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            request_message("a.B"),
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        let long = "s".repeat(200);
        let m = request_message(&long);
        // 200 = 0xc8: two varint bytes.
        assert_eq!(&m[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
    }

    #[test]
    fn answers_decode_or_fail_with_the_reason() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        // Unknown fields are skipped; an empty message is UNKNOWN.
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 1]),
            Ok(1)
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Ok(0));
        assert!(serving_status(&[]).is_err());
        assert!(serving_status(&[1, 0, 0, 0, 2, 0x08, 1]).is_err());
        assert!(serving_status(&[0, 0, 0, 0, 3, 0x08, 1]).is_err());
        assert!(serving_status(&[0, 0, 0, 0, 2, 0x12, 9]).is_err());
        assert!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x80]).is_err());
    }

    #[test]
    fn a_grpc_status_other_than_ok_is_named() {
        let mut h = ::http::HeaderMap::new();
        assert!(grpc_ok(&h).is_ok());
        h.insert("grpc-status", ::http::HeaderValue::from_static("0"));
        assert!(grpc_ok(&h).is_ok());
        h.insert("grpc-status", ::http::HeaderValue::from_static("12"));
        h.insert(
            "grpc-message",
            ::http::HeaderValue::from_static("unimplemented"),
        );
        assert_eq!(grpc_ok(&h), Err("grpc-status 12 unimplemented".into()));
    }
}
