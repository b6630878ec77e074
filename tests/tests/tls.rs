//! TLS at the record level, from the client's side of the wire: tampered
//! and fragmented records, records larger than a socket read, a request in
//! the same write as the client's Finished, refused hellos with bytes
//! after them, and a close_notify answered with one.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::Duration,
};

use gateway_tests::harness::{client_config, setup, setup_full, sha256_hex};
use rustls::{ClientConnection, SupportedProtocolVersion, pki_types::ServerName};

const VERSIONS: [(&str, &SupportedProtocolVersion); 2] = [
    ("1.3", &rustls::version::TLS13),
    ("1.2", &rustls::version::TLS12),
];

/// A client for `localhost` over a raw socket to `port`, not yet handshaken.
fn connect(port: u16, cfg: Arc<rustls::ClientConfig>) -> (ClientConnection, TcpStream) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let name = ServerName::try_from("localhost").expect("name");
    (ClientConnection::new(cfg, name).expect("client"), tcp)
}

/// A finished handshake over a raw socket, so the test writes the records.
fn handshake(port: u16, cfg: Arc<rustls::ClientConfig>) -> (ClientConnection, TcpStream) {
    let (mut conn, mut tcp) = connect(port, cfg);
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("handshake");
    }
    (conn, tcp)
}

/// The records `conn` has queued, as bytes for the wire.
fn records(conn: &mut ClientConnection, plaintext: &[u8]) -> Vec<u8> {
    conn.writer().write_all(plaintext).expect("plaintext");
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).expect("encrypt");
    }
    wire
}

/// Reads to EOF (or the timeout) and hands it all to `conn`; the error it
/// found, if any, and the plaintext.
fn read_all(conn: &mut ClientConnection, tcp: &mut TcpStream) -> (Option<rustls::Error>, Vec<u8>) {
    let mut wire = Vec::new();
    let _ = tcp.read_to_end(&mut wire);
    let mut plain = Vec::new();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        match conn.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Err(e) = conn.process_new_packets() {
            return (Some(e), plain);
        }
        let _ = conn.reader().read_to_end(&mut plain);
    }
    (None, plain)
}

#[test]
fn a_tampered_record_gets_bad_record_mac_and_never_reaches_the_backend() {
    let s = setup("tamper", "");
    for (v, version) in VERSIONS {
        let cfg = client_config(&s.certs.ca, &[version]);
        let (mut conn, mut tcp) = handshake(s.gw.port, cfg);
        let path = format!("/tampered-{v}");
        let mut wire = records(
            &mut conn,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        );
        // One bit of the authentication tag.
        let last = wire.len() - 1;
        wire[last] ^= 1;
        tcp.write_all(&wire).expect("send");
        let (err, plain) = read_all(&mut conn, &mut tcp);
        assert_eq!(
            err,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadRecordMac
            )),
            "TLS {v}: the server must answer with bad_record_mac"
        );
        assert!(plain.is_empty(), "TLS {v}: an answer: {plain:?}");
        assert_eq!(s.backend.hits("/tampered"), 0, "TLS {v}");
    }
    // The gateway still serves.
    assert_eq!(s.client().get("/").expect("served").status, 200);
}

#[test]
fn records_in_fragments_and_records_larger_than_a_read_arrive_whole() {
    let s = setup("fragments", "max_body_bytes = 1048576");
    for (v, version) in VERSIONS {
        let cfg = client_config(&s.certs.ca, &[version]);
        let (mut conn, mut tcp) = handshake(s.gw.port, cfg);
        tcp.set_nodelay(true).expect("nodelay");
        // Full 16 KiB records (larger than the gateway's 8 KiB reads),
        // written in 7-byte pieces with pauses so they arrive split.
        let body: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = format!("/fragments-{v}");
        let mut plain = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        plain.extend_from_slice(&body);
        let wire = records(&mut conn, &plain);
        for (i, piece) in wire.chunks(7).enumerate() {
            tcp.write_all(piece).expect("piece");
            if i % 512 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let (err, answer) = read_all(&mut conn, &mut tcp);
        assert!(err.is_none(), "TLS {v}: {err:?}");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "TLS {v}: {answer}");
        let got = s
            .backend
            .received()
            .into_iter()
            .find(|r| r.head.contains(&path))
            .expect("reached the backend");
        assert_eq!(got.body_sha256, sha256_hex(&body), "TLS {v}: body changed");
    }
}

#[test]
fn close_notify_is_answered_with_close_notify() {
    let s = setup("closenotify-answer", "");
    for (v, version) in VERSIONS {
        let cfg = client_config(&s.certs.ca, &[version]);
        let (mut conn, mut tcp) = handshake(s.gw.port, cfg);
        let wire = records(
            &mut conn,
            b"GET /before-close HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        tcp.write_all(&wire).expect("request");
        conn.send_close_notify();
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).expect("close_notify");
        }
        tcp.write_all(&wire).expect("close_notify");
        let (err, answer) = read_all(&mut conn, &mut tcp);
        assert!(err.is_none(), "TLS {v}: {err:?}");
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
            "TLS {v}: the request before close_notify is answered"
        );
        let state = conn.process_new_packets().expect("state");
        assert!(state.peer_has_closed(), "TLS {v}: no close_notify back");
    }
}

/// Handshakes holding back the client's last flight, then sends it and
/// `request` in one write: the gateway reads both at once.
fn finished_with_request(
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> (ClientConnection, TcpStream) {
    let (mut conn, mut tcp) = connect(port, cfg);
    while conn.is_handshaking() {
        while conn.wants_write() {
            conn.write_tls(&mut tcp).expect("flight");
        }
        if conn.read_tls(&mut tcp).expect("server flight") == 0 {
            panic!("the gateway closed during the handshake");
        }
        conn.process_new_packets().expect("server flight");
    }
    let wire = records(&mut conn, request);
    tcp.write_all(&wire).expect("finished and request");
    (conn, tcp)
}

#[test]
fn a_request_in_the_same_write_as_the_finished_is_served() {
    let s = setup("finished-request", "");
    for (v, version) in VERSIONS {
        let cfg = client_config(&s.certs.ca, &[version]);
        // TLS 1.2 ends on the client's Finished only when it resumes (the
        // server's Finished comes first): a first connection for the session.
        let (mut first, mut tcp) = handshake(s.gw.port, cfg.clone());
        tcp.write_all(&records(
            &mut first,
            b"GET /first HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        ))
        .expect("first");
        let _ = read_all(&mut first, &mut tcp);
        let path = format!("/same-write-{v}");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (mut conn, mut tcp) = finished_with_request(s.gw.port, cfg, request.as_bytes());
        if v == "1.2" {
            assert_eq!(
                conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "TLS 1.2 must resume for this test"
            );
        }
        let (err, answer) = read_all(&mut conn, &mut tcp);
        assert!(err.is_none(), "TLS {v}: {err:?}");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "TLS {v}: {answer}");
        assert_eq!(s.backend.hits(&path), 1, "TLS {v}");
    }
}

/// One record: a ClientHello offering only TLS 1.1, which rustls refuses,
/// and `tail`, the start of a next handshake message.
fn tls11_client_hello(tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0xc0, 0x13]);
    body.extend_from_slice(&[0x01, 0x00]);
    let mut hs = vec![0x01, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    hs.extend_from_slice(tail);
    let mut rec = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn refused_hellos_with_bytes_after_them_cost_no_connection_slot() {
    // One worker with room for 3 connections: a connection task that died
    // without giving its slot back would show as refused clients.
    let s = setup_full(
        "hello-tail",
        "",
        "workers = 1\nmax_connections_per_worker = 3",
        "",
    );
    for tail in [
        &[0x01u8][..],
        &[0x01, 0x00],
        &[0x01, 0x00, 0x00],
        &[0x01, 0x00, 0x00, 0x10],
    ] {
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
            tcp.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            tcp.write_all(&tls11_client_hello(tail)).expect("hello");
            let mut buf = Vec::new();
            let _ = tcp.read_to_end(&mut buf);
            assert_eq!(
                buf.first(),
                Some(&21),
                "no alert for tail {tail:?}: {buf:?}"
            );
        }
    }
    // Every slot is free again: three clients at once are served.
    let clients: Vec<_> = (0..3).map(|_| s.client()).collect();
    for mut c in clients {
        assert_eq!(c.get("/").expect("served").status, 200);
    }
}
