//! TLS termination with rustls (ring provider): certificates chosen by SNI,
//! TLS 1.2 and 1.3 only, ALPN `http/1.1`, session cache and tickets; and
//! ([`stream`]) the stream that drives a rustls connection over an io_uring
//! socket with owned, reused buffers (rustls does not drive io_uring by itself).

mod async_io;
mod deadline;
mod error;
mod room;
mod stream;

pub use async_io::TlsIo;
pub use deadline::{deadline, shutdown_fd, write_deadline};
pub use error::StreamError;
pub use stream::{TlsStream, linger};

use std::{
    cell::RefCell,
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::config::TlsSettings;

/// Certificate and key problems, all the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made or stored.
    #[error("self-signed certificate in {dir}: {what}")]
    SelfSigned {
        /// The state directory.
        dir: PathBuf,
        /// What failed.
        what: String,
    },
}

/// Picks the certificate for a ClientHello's SNI name; unknown or absent
/// names get the default (the first certificate without names, else the first).
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        RESOLVED_SNI.set(hello.server_name().map(Box::from));
        let named = hello.server_name().and_then(|n| {
            // SNI is case-insensitive; names were lowercased at load.
            self.by_name.get(&n.to_ascii_lowercase()).cloned()
        });
        Some(named.unwrap_or_else(|| self.default.clone()))
    }
}

thread_local! {
    /// The SNI name of the ClientHello this thread's resolver saw last.
    /// rustls' unbuffered connection does not tell its SNI, and the resolver
    /// runs inside the `process_tls_records` call that handles the hello, on
    /// the thread that called it: [`take_resolved_sni`] right after that call
    /// gets this connection's name, before any other connection runs.
    static RESOLVED_SNI: RefCell<Option<Box<str>>> = const { RefCell::new(None) };
}

/// The name [`SniResolver`] saw since the last call (see `RESOLVED_SNI`).
fn take_resolved_sni() -> Option<Box<str>> {
    RESOLVED_SNI.take()
}

fn load_key(
    provider: &rustls::crypto::CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let (chain, der) = read_pair(cert, key)?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::File {
            path: key.to_owned(),
            what: format!("unusable private key: {e}"),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::File {
        path: key.to_owned(),
        what: format!("does not match {}: {e}", cert.display()),
    })?;
    Ok(Arc::new(ck))
}

/// A certificate chain and its private key from PEM files (the gateway's
/// own, or its client certificate for upstreams).
pub(crate) fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::File {
            path: cert.to_owned(),
            what: format!("cannot read certificates: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        what: format!("cannot read private key: {e}"),
    })?;
    Ok((chain, der))
}

/// Where generated state (the self-signed certificate, the demo key)
/// lives: `$GATEWAY_STATE_DIR`, else, under `sudo`, the invoking user's
/// `~/.local/state/gateway` (so the paths printed at start work for the
/// person who typed the command), else `$XDG_STATE_HOME/gateway`, else
/// `~/.local/state/gateway`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GATEWAY_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(u) = invoking_user() {
        return u.dir.join(".local/state/gateway");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("gateway");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".local/state/gateway")
}

/// Under `sudo`, the user who ran it (not root).
fn invoking_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let name = std::env::var("SUDO_USER").ok()?;
    if name == "root" {
        return None;
    }
    nix::unistd::User::from_name(&name).ok().flatten()
}

/// Creates `dir` and the missing directories above it; under `sudo`, what
/// it created (and later the files in it, [`hand_over`]) belongs to the
/// invoking user, who can read it without root.
pub fn make_state_dir(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir)?;
    for d in &missing {
        hand_over(d);
    }
    Ok(())
}

/// Gives a file made in the state directory to the invoking user under
/// `sudo` (its mode stays: private files stay private to that user).
pub fn hand_over(path: &Path) {
    if let Some(u) = invoking_user()
        && let Err(e) = nix::unistd::chown(path, Some(u.uid), Some(u.gid))
    {
        tracing::warn!("giving {} to {}: {e}", path.display(), u.name);
    }
}

/// Paths of the self-signed certificate and key, generated if missing.
/// Returns (cert, key, generated_now).
pub fn self_signed(dir: &Path, extra_name: &str) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let cert = dir.join("self-signed-cert.pem");
    let key = dir.join("self-signed-key.pem");
    if cert.is_file() && key.is_file() {
        return Ok((cert, key, false));
    }
    let fail = |what: String| TlsError::SelfSigned {
        dir: dir.to_owned(),
        what,
    };
    make_state_dir(dir).map_err(|e| fail(format!("creating the directory: {e}")))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !names.iter().any(|n| n == extra_name) {
        names.push(extra_name.to_owned());
    }
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert, generated.cert.pem())
        .map_err(|e| fail(format!("writing {}: {e}", cert.display())))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(&key)
        .and_then(|mut f| f.write_all(generated.signing_key.serialize_pem().as_bytes()))
        .map_err(|e| fail(format!("writing {}: {e}", key.display())))?;
    hand_over(&cert);
    hand_over(&key);
    Ok((cert, key, true))
}

/// The certificates to serve: the configured ones, or the self-signed one
/// (generated on first run when `generate`).
pub fn certificates(
    cfg: &crate::config::Config,
    generate: bool,
) -> Result<Vec<(PathBuf, PathBuf, Vec<String>)>, TlsError> {
    if !cfg.tls.certificates.is_empty() {
        return Ok(cfg
            .tls
            .certificates
            .iter()
            .map(|c| (c.cert.clone(), c.key.clone(), c.names.clone()))
            .collect());
    }
    if !generate {
        return Ok(Vec::new());
    }
    let dir = state_dir();
    let (cert, key, fresh) = self_signed(&dir, &cfg.https.ip().to_string())?;
    if fresh {
        tracing::info!("generated a self-signed certificate: {}", cert.display());
    } else {
        tracing::info!("using the self-signed certificate {}", cert.display());
    }
    Ok(vec![(cert, key, Vec::new())])
}

/// `next` with `prev`'s session cache and ticket keys, so a reload that
/// keeps the session settings keeps every client's resumption working.
pub fn keep_sessions(next: Arc<ServerConfig>, prev: &ServerConfig) -> Arc<ServerConfig> {
    let mut c = (*next).clone();
    c.session_storage = prev.session_storage.clone();
    c.ticketer = prev.ticketer.clone();
    Arc::new(c)
}

/// Builds the rustls server configuration shared by all workers.
/// `h2`: offer HTTP/2 in ALPN, ahead of HTTP/1.1.
pub fn server_config(
    settings: &TlsSettings,
    certs: &[(PathBuf, PathBuf, Vec<String>)],
    h2: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut by_name = HashMap::new();
    let mut default = None;
    let mut first = None;
    for (cert, key, names) in certs {
        let ck = load_key(&provider, cert, key)?;
        first.get_or_insert_with(|| ck.clone());
        if names.is_empty() {
            default.get_or_insert_with(|| ck.clone());
        }
        for n in names {
            by_name.insert(n.clone(), ck.clone());
        }
    }
    let default = default.or(first).ok_or_else(|| TlsError::File {
        path: PathBuf::from("tls.certificates"),
        what: "no certificate configured".into(),
    })?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { by_name, default }));
    cfg.alpn_protocols = match h2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    cfg.session_storage = ServerSessionMemoryCache::new(settings.session_cache.max(1));
    if settings.tickets {
        cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    }
    Ok(Arc::new(cfg))
}
