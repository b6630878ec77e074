//! TLS to upstreams (`[upstreams.tls]`): rustls' client over the pooled
//! io_uring socket, verified against the system's roots or a configured CA,
//! with SNI and an optional client certificate (mutual TLS). One client
//! configuration per upstream, shared by every worker, so its session
//! cache resumes sessions whichever worker opened them; it survives reloads
//! that keep the upstream's TLS settings.
//!
//! The session itself lives on the connection (`upstream_conn`).

use std::sync::Arc;

use rustls::{ClientConfig, pki_types::ServerName};

use crate::config::{UpstreamSettings, UpstreamTls};

/// A TLS client and a digest of the files it was built from, so a reload
/// that finds them unchanged keeps the client (and its sessions) and one
/// that finds them rotated takes the new one.
#[derive(Clone)]
pub struct Client {
    /// The rustls client configuration.
    pub config: Arc<ClientConfig>,
    /// SHA-256 over the CA, certificate and key files' contents.
    pub files: [u8; 32],
    /// Offers `h2` in ALPN (an HTTP/2 upstream), not `http/1.1`.
    pub h2: bool,
}

/// SHA-256 over the contents of the files `s` names (missing ones count as empty).
fn files_digest(s: &UpstreamTls) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let paths = [
        s.ca_file.as_deref(),
        s.client_cert.as_ref().map(|c| c.0.as_path()),
        s.client_cert.as_ref().map(|c| c.1.as_path()),
    ];
    for p in paths.into_iter().flatten() {
        let bytes = std::fs::read(p).unwrap_or_default();
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(&bytes);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The client `s` describes (reads its CA and certificate files), offering
/// `h2` or `http/1.1`.
pub fn client(s: &UpstreamTls, h2: bool) -> Result<Client, String> {
    let files = files_digest(s);
    Ok(Client {
        config: client_config(s, h2)?,
        files,
        h2,
    })
}

/// The client configuration `s` describes (reads its CA and certificate files).
fn client_config(s: &UpstreamTls, h2: bool) -> Result<Arc<ClientConfig>, String> {
    let roots = crate::fetch::trust_roots(s.ca_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match &s.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = crate::tls::read_pair(cert, key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
    };
    // One protocol offered: a server that cannot speak it fails the
    // handshake instead of answering in another.
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(Arc::new(cfg))
}

/// Each upstream's client configuration (none for plain HTTP), every error
/// naming its upstream; built before anything is swapped in.
pub fn client_configs(upstreams: &[UpstreamSettings]) -> Result<Vec<Option<Client>>, String> {
    upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            u.tls
                .as_ref()
                .map(|t| {
                    client(t, u.http2).map_err(|e| format!("upstreams[{i}].tls ({}): {e}", u.name))
                })
                .transpose()
        })
        .collect()
}

/// The name server `addr` is verified by: the configured one, or its IP.
pub fn server_name(s: &UpstreamTls, addr: std::net::SocketAddr) -> ServerName<'static> {
    s.server_name
        .as_deref()
        .and_then(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}
