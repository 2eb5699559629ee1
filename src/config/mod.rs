//! Config file (docs/config.md): parsed once into typed values. Every problem in the
//! file is reported at once as `FILE:LINE:COL: message`.

mod credential;
pub mod defaults;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;

use crate::credential::CredentialSpec;
use crate::diagnostic::{Diagnostic, SourceFile, parse_toml_partial};
pub use crate::identity::ScopeClaim;
use crate::secret::Secret;
use validate::Validator;

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The config file as given on the command line.
    pub file: PathBuf,
    pub listen: Listen,
    pub admin: Option<SocketAddr>,
    pub audit: AuditSettings,
    pub store: Option<StoreSettings>,
    pub policies_dir: PathBuf,
    pub issuers: Vec<IssuerSettings>,
    pub limits: Limits,
    pub upstreams: Vec<UpstreamSettings>,
    pub routes: Vec<RouteSettings>,
}

/// `[listen]`: the TLS listener.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    File(PathBuf),
    Stdout,
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub target: AuditTarget,
    pub max_file_bytes: u64,
}

/// `[store]`: location and keys (first = current) of the credential store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub location: String,
    /// Base64 keys; the first encrypts, all decrypt.
    pub keys: Vec<Secret>,
    /// PostgreSQL password, when the URL has none.
    pub password: Option<Secret>,
    /// PostgreSQL connections in the pool.
    pub pool_size: usize,
    /// Longest wait to connect to PostgreSQL, and for a pooled connection.
    pub connect_timeout: Duration,
    /// How long a replica's refresh lease lasts.
    pub lease: Duration,
}

/// One `[[issuer]]`.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub scope_claim: ScopeClaim,
    pub leeway: Duration,
    pub jwks_refetch_interval: Duration,
    pub max_stale: Duration,
    pub verified_cache_ttl: Duration,
    pub max_token_bytes: usize,
    pub ca_file: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// An HTTP/1.1 connection idle this long gives hyper's buffers back
    /// until its next request.
    pub idle_release: Duration,
    pub max_connections: usize,
    pub drain_timeout: Duration,
    /// Worker threads serving callers (each with its own event loop); 0: one per CPU.
    pub workers: usize,
    /// Longest wait for the next piece of a request body (idle, not total).
    pub body_timeout: Duration,
    /// Longest wait for the caller to take the next piece of an answer.
    pub write_timeout: Duration,
}

impl Limits {
    /// The number of worker threads to start: `workers`, or one per CPU.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            header_timeout: Duration::from_millis(10_000),
            tls_handshake_timeout: Duration::from_millis(10_000),
            idle_timeout: Duration::from_millis(60_000),
            idle_release: Duration::from_millis(1_000),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            workers: 0,
            body_timeout: Duration::from_millis(30_000),
            write_timeout: Duration::from_millis(30_000),
        }
    }
}

/// One `[[upstream]]`.
#[derive(Debug)]
pub struct UpstreamSettings {
    pub name: String,
    pub url: Uri,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub http2: bool,
    /// An upstream token younger than this is not refetched after a 401.
    pub min_token_age: Duration,
    pub credential: CredentialSpec,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub name: String,
    pub path_prefix: String,
    pub upstream: String,
    pub strip_prefix: bool,
    pub host: Option<String>,
    /// Path spellings this route lets through (`allow_path_params`, `allow_encoded_percent`).
    pub allow: crate::request::PathAllowances,
    /// Policy globs match this route's paths without regard to ASCII case.
    pub case_insensitive: bool,
}

/// Default signature algorithms (docs/config.md).
pub const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Config {
    /// Reads and validates a config file; all problems at once.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let src = SourceFile::read(path).map_err(|d| vec![d])?;
        Self::parse(path, &src)
    }

    /// Validates config text; `path` anchors relative paths.
    pub fn parse(path: &Path, src: &SourceFile) -> Result<Config, Vec<Diagnostic>> {
        let (raw, problems) = parse_toml_partial::<raw::RawConfig>(src);
        let Some(raw) = raw else { return Err(problems) };
        let mut v = Validator { src, base: path.parent().unwrap_or(Path::new("")), problems };
        let config = v.config(path, raw);
        v.problems.sort_by_key(|d| (d.line, d.col));
        match config {
            Some(c) if v.problems.is_empty() => Ok(c),
            _ => Err(v.problems),
        }
    }

    /// The route names, for the policy loader.
    pub fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name.as_str()).collect()
    }

    /// The caller's identity from these claims, exactly as authentication
    /// builds it for a token of the issuer they name (its `scope_claim`;
    /// both claims for an issuer not configured): for `policy test` and
    /// `policy explain`.
    pub fn identity(&self, claims: serde_json::Map<String, serde_json::Value>) -> crate::identity::Identity {
        let iss = claims.get("iss").and_then(serde_json::Value::as_str);
        let which = self.issuers.iter().find(|i| Some(i.issuer.as_str()) == iss).map_or(ScopeClaim::Both, |i| i.scope_claim);
        crate::identity::Identity::from_claims(claims, which)
    }
}

/// The asymmetric JWS algorithms gatehouse verifies; `none`, HS* and
/// anything else are never accepted.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    ALGORITHM_NAMES.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// JWS names of [`DEFAULT_ALGORITHMS`], in the same order (no formatting on
/// the token path).
const ALGORITHM_NAMES: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

pub use crate::request::is_loopback_host;

#[cfg(test)]
mod tests;
