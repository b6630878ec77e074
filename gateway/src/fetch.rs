//! A small HTTPS GET for the control side (JWKS, OIDC discovery): rustls
//! and the gateway's own strict HTTP/1.1 response parser and chunked
//! decoder, so there is one HTTP parser to fuzz and no second HTTP stack.
//! Blocking, bounded in time and size; never used on the request path.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

use crate::http::{self, Framing, MAX_HEADERS, chunked};

/// Largest document fetched.
const MAX_BODY: usize = 1024 * 1024;

/// The PEM certificates in `ca_file`, or the system's roots.
pub fn trust_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificate (set ca_file)".into());
    }
    Ok(roots)
}

/// An HTTPS client with its trust roots.
#[derive(Clone)]
pub struct Https {
    config: Arc<rustls::ClientConfig>,
}

impl Https {
    /// Trusts the PEM certificates in `ca_file`, or the system's roots.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let roots = trust_roots(ca_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// GETs `url` (https only) and returns the body of a 200.
    pub fn get(&self, url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        self.request("GET", url, "", &[], timeout)
    }

    /// POSTs a form to `url` with an `Authorization` value; returns the body of a 200.
    pub fn post_form(
        &self,
        url: &str,
        authorization: &str,
        form: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let head = format!(
            "Authorization: {authorization}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        );
        self.request("POST", url, &head, form.as_bytes(), timeout)
    }

    fn request(
        &self,
        method: &str,
        url: &str,
        extra_head: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let (host, port, path) = split_url(url)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addr = (bare, port)
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
        tcp.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(bare.to_owned()).map_err(|e| format!("{host}: {e}"))?;
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: gateway\r\nConnection: close\r\n{extra_head}\r\n"
        );
        tls.write_all(request.as_bytes())
            .and_then(|()| tls.write_all(body))
            .map_err(|e| format!("{url}: {e}"))?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tls.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                // A server that closes without close_notify: what arrived counts.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(format!("{url}: {e}")),
            }
            if raw.len() > MAX_BODY + 64 * 1024 {
                return Err(format!("{url}: response over {MAX_BODY} bytes"));
            }
        }
        body_of(&raw).map_err(|e| format!("{url}: {e}"))
    }
}

/// `https://host[:port]/path` → (host, port, path).
fn split_url(url: &str) -> Result<(&str, u16, &str), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("`{url}` is not https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("`{url}`: bad host"));
    }
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            let port = authority[i + 1..]
                .parse()
                .map_err(|_| format!("`{url}`: bad port"))?;
            (&authority[..i], port)
        }
        _ => (authority, 443),
    };
    Ok((host, port, path))
}

/// The body of a complete 200 response in `raw`.
fn body_of(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = http::response::parse(raw, &mut hdrs, 64 * 1024, false)
        .map_err(|e| e.to_string())?
        .ok_or("the response ended inside its head")?;
    if head.code != 200 {
        return Err(format!("status {}", head.code));
    }
    let rest = &raw[head.len..];
    match head.framing {
        Framing::Length(n) if rest.len() as u64 >= n && n as usize <= MAX_BODY => {
            Ok(rest[..n as usize].to_vec())
        }
        Framing::Length(_) => Err("body cut short or too large".into()),
        Framing::Chunked => {
            let mut out = Vec::new();
            let mut dec = chunked::Decoder::dechunking();
            let p = dec.feed(rest, Some(&mut out)).map_err(|e| e.to_string())?;
            if !p.done || out.len() > MAX_BODY {
                return Err("chunked body cut short or too large".into());
            }
            Ok(out)
        }
        Framing::UntilClose => Ok(rest.to_vec()),
        Framing::None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("https://id.test/a/b"),
            Ok(("id.test", 443, "/a/b"))
        );
        assert_eq!(
            split_url("https://id.test:8443"),
            Ok(("id.test", 8443, "/"))
        );
        assert_eq!(split_url("https://[::1]:9/x"), Ok(("[::1]", 9, "/x")));
        assert!(split_url("http://id.test/").is_err());
        assert!(split_url("https://u@id.test/").is_err());
    }

    #[test]
    fn bodies_by_length_and_chunked() {
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Ok(b"ok".to_vec())
        );
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            Ok(b"ok".to_vec())
        );
        assert!(body_of(b"HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok").is_err());
    }
}
