//! The idle wait's buffer follows the size of the requests, over a real
//! loopback socket and real TLS: a request that fills the small buffer
//! makes the next wait read into a full one, a short request brings the
//! small one back, and every byte arrives whichever buffer it came through.

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::TlsStream;
use crate::buffers;

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// The client: sends each message whole (one TLS record) and waits for a
/// one-byte acknowledgement before the next, so each arrives while the
/// server waits idle.
fn client(port: u16, config: Arc<rustls::ClientConfig>, sizes: Vec<usize>) {
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    for (i, n) in sizes.into_iter().enumerate() {
        let msg = vec![b'a' + (i % 26) as u8; n];
        tls.write_all(&msg).expect("send");
        let mut ack = [0u8; 1];
        tls.read_exact(&mut ack).expect("ack");
    }
}

#[test]
fn the_idle_buffer_widens_after_a_long_request_and_narrows_after_a_short_one() {
    let (server, client_config) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // The first message may come in the handshake's last read, before any
    // idle wait: short, so the buffer stays small either way.
    let sizes = vec![10, 3000, 200, 200, 5000, 1500, 100];
    let (sent, expected) = (sizes.clone(), sizes.clone());
    let peer = std::thread::spawn(move || client(port, client_config, sent));
    // For each message: (wide before the wait, after it), and the room
    // and the bytes of the read the wait did.
    let seen = tokio_uring::start(async move {
        let (std_conn, _) = listener.accept().expect("accept");
        let tcp = tokio_uring::net::TcpStream::from_std(std_conn);
        let mut s = TlsStream::new(tcp, server, Duration::from_secs(5)).expect("stream");
        s.handshake(Duration::from_secs(5))
            .await
            .expect("handshake");
        let mut seen = Vec::new();
        for (i, &n) in expected.iter().enumerate() {
            let wide = s.wide_idle;
            assert!(s.fill_idle().await.expect("idle wait"), "EOF at {i}");
            let read = (s.input.capacity(), s.input.len() - s.head);
            let mut got = Vec::new();
            while got.len() < n {
                assert!(
                    s.read_plain(&mut got).await.expect("read") > 0,
                    "EOF at {i}"
                );
            }
            assert_eq!(got, vec![b'a' + (i % 26) as u8; n], "message {i}");
            seen.push(((wide, s.wide_idle), read));
            s.send(&[b"k"]).await.expect("ack");
        }
        seen
    });
    peer.join().expect("client");
    let flags: Vec<_> = seen.iter().map(|&(f, _)| f).collect();
    // Before each wait, and after it: the first long message fills the
    // small buffer, a short one narrows it again, a long one read wide
    // keeps it wide.
    assert_eq!(
        flags,
        [
            (false, false),
            (false, true),
            (true, false),
            (false, false),
            (false, true),
            (true, true),
            (true, false),
        ]
    );
    for (i, &((wide, _), (room, got))) in seen.iter().enumerate().skip(1) {
        let want = if wide { buffers::READ } else { buffers::SMALL };
        assert_eq!(room, want, "message {i}: the wait's buffer");
        // One read takes the whole record (the message, TLS 1.3's 22 bytes
        // of framing and tag) or as much as the buffer holds: the 1500-byte
        // message comes whole through a wide wait.
        let whole = sizes[i] + 22;
        assert_eq!(
            got,
            whole.min(room),
            "message {i}: read of a {whole}-byte record"
        );
    }
}
