//! TLS termination: PEM files → rustls `ServerConfig` (aws-lc-rs, ALPN h2
//! and http/1.1, optional client-certificate verification), swapped whole
//! when the files change. A broken new pair is refused and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Listen;

/// Why a certificate, key or CA file could not be used.
#[derive(Debug)]
pub struct TlsError {
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for TlsError {}

/// The one crypto provider in the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads PEM certificates (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError { file: path.to_path_buf(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError { file: path.to_path_buf(), message: format!("cannot read a PEM private key: {e}") })
}

/// Builds the server config from the files named in `[listen]`.
pub fn server_config(listen: &Listen) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&listen.tls_cert)?;
    let key = read_key(&listen.tls_key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError { file: listen.tls_cert.clone(), message: e.to_string() })?;
    let builder = match &listen.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| TlsError { file: ca.clone(), message: format!("bad CA certificate: {e}") })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError { file: ca.clone(), message: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError { file: listen.tls_key.clone(), message: format!("certificate and key do not form a usable pair: {e}") })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The live server config, swapped whole on reload; read without locks.
#[derive(Clone)]
pub struct TlsSource {
    current: Arc<ArcSwap<ServerConfig>>,
}

impl TlsSource {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self { current: Arc::new(ArcSwap::new(config)) }
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Polls the files every `interval`; on any change, builds a new config
    /// and swaps it in, or logs why not and keeps the old one. Ends when
    /// `shutdown` resolves.
    pub async fn watch(self, listen: Listen, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let files: Vec<PathBuf> =
            [Some(listen.tls_cert.clone()), Some(listen.tls_key.clone()), listen.client_ca.clone()].into_iter().flatten().collect();
        let mut seen = stamp(&files);
        let mut tick = tokio::time::interval(interval);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&files);
            if now == seen {
                continue;
            }
            seen = now;
            match server_config(&listen) {
                Ok(config) => {
                    self.current.store(config);
                    tracing::info!(cert = %listen.tls_cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::error!(error = %e, "TLS reload refused; keeping the previous certificate"),
            }
        }
    }
}

/// Modification time and length of each file (None when unreadable).
fn stamp(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}
