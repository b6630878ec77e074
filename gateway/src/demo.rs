//! The built-in demo backend the embedded default proxies to, so a fresh
//! machine has something to curl. Plain HTTP/1.1 with keep-alive, one
//! thread per connection: a demo, not a server to load-test. And the demo
//! consumer whose API key the embedded default prints at start.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use crate::http::{self, Framing, chunked, request::HeadLimits};

/// Starts the demo backend on `addr` in background threads.
pub fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("demo-backend".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        let _ = std::thread::Builder::new()
                            .name("demo-conn".into())
                            .spawn(move || serve(conn));
                    }
                    // Out of file descriptors (or another transient
                    // failure): the connection stays queued, so retrying at
                    // once would spin. Back off as the gateway's own accept does.
                    Err(e) => {
                        tracing::debug!("demo backend: accept: {e}");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        })?;
    Ok(local)
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    let limits = HeadLimits {
        max_request_line: 8192,
        max_head: 16384,
    };
    loop {
        let mut hdrs = [httparse::EMPTY_HEADER; 64];
        let (reply, used, keep, framing) = loop {
            match http::request::parse(&buf, &mut hdrs, &limits) {
                Ok(Some(h)) => {
                    let field = |name: &str| {
                        h.headers
                            .iter()
                            .find(|x| x.name.eq_ignore_ascii_case(name))
                            .map(|x| String::from_utf8_lossy(x.value).replace('"', ""))
                            .unwrap_or_default()
                    };
                    let reply = format!(
                        "{{\"service\":\"demo\",\"method\":\"{}\",\"path\":\"{}\",\"x_forwarded_for\":\"{}\",\"consumer\":\"{}\"",
                        h.method,
                        h.path().replace('"', "%22"),
                        field("x-forwarded-for"),
                        field("x-consumer-id"),
                    );
                    break (reply, h.len, h.keep_alive, h.framing);
                }
                Ok(None) => {}
                Err(_) => return,
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // Borrow of `hdrs` ends with each iteration's parse.
            hdrs = [httparse::EMPTY_HEADER; 64];
        };
        buf.drain(..used);
        let Some(body_bytes) = read_body(&mut conn, &mut buf, framing) else {
            return;
        };
        let body = format!("{reply},\"body_bytes\":{body_bytes}}}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if keep { "" } else { "connection: close\r\n" }
        );
        if conn.write_all(resp.as_bytes()).is_err() || !keep {
            return;
        }
    }
}

/// Reads and discards a body; returns its length.
fn read_body(conn: &mut TcpStream, buf: &mut Vec<u8>, framing: Framing) -> Option<u64> {
    let mut chunk = [0u8; 16384];
    match framing {
        Framing::None | Framing::UntilClose => Some(0),
        Framing::Length(n) => {
            let mut left = n;
            loop {
                let take = (buf.len() as u64).min(left) as usize;
                buf.drain(..take);
                left -= take as u64;
                if left == 0 {
                    return Some(n);
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
        }
        Framing::Chunked => {
            let mut dec = chunked::Decoder::new();
            loop {
                let p = dec.feed(buf, None).ok()?;
                buf.drain(..p.consumed);
                if p.done {
                    return Some(dec.body_bytes);
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
        }
    }
}

/// The demo consumer of the embedded default: a key file and the key itself
/// in the state directory, made on first run. The key is kept in clear only
/// for this demo, so it can be printed at every start.
pub fn demo_keys(cfg: &mut crate::config::Config) -> Result<Option<String>, String> {
    if !cfg.demo_api_key || cfg.auth.key_file.is_some() {
        return Ok(None);
    }
    let dir = crate::tls::state_dir();
    let key_path = dir.join("demo-api-key");
    let file = dir.join("demo-consumers.toml");
    let key = match std::fs::read_to_string(&key_path) {
        Ok(k) if file.is_file() => k.trim().to_owned(),
        _ => {
            let key = crate::stages::auth::api_key::generate()?;
            crate::tls::make_state_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let text = format!(
                "# The embedded default's demo consumer (made by `gateway run`).\n\
                 [[consumers]]\nid = \"demo\"\nroles = [\"reader\"]\n\
                 [[consumers.keys]]\nhash = \"{}\"\nprefix = \"{}\"\n",
                crate::stages::auth::api_key::hash_line(&key),
                crate::stages::auth::api_key::shown_prefix(&key)
            );
            write_private(&file, &text)?;
            write_private(&key_path, &key)?;
            key
        }
    };
    cfg.auth.key_file = Some(file);
    Ok(Some(key))
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    crate::tls::hand_over(path);
    Ok(())
}
