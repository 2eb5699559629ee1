//! Config file (docs/config.md): parsed once into typed values. Every problem in the
//! file is reported at once as `FILE:LINE:COL: message`.

mod raw;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;
use toml::Spanned;

use crate::credential::{ClientAuth, CredentialSpec, OAuthClient};
use crate::diagnostic::{Diagnostic, SourceFile, parse_toml_partial};
pub use crate::identity::ScopeClaim;
use crate::secret::Secret;
use raw::*;

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

/// An upstream token younger than this is not refetched for a 401.
pub const DEFAULT_MIN_TOKEN_AGE: Duration = Duration::from_secs(5);

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
        let (raw, problems) = parse_toml_partial::<RawConfig>(src);
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

struct Validator<'a> {
    src: &'a SourceFile,
    base: &'a Path,
    problems: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn err<T>(&mut self, at: &Spanned<T>, msg: impl Into<String>) {
        self.problems.push(self.src.at(at.span(), msg));
    }

    fn path(&self, p: &Spanned<String>) -> PathBuf {
        self.base.join(p.get_ref())
    }

    /// A path that must name a readable file.
    fn existing_file(&mut self, p: &Spanned<String>) -> PathBuf {
        let path = self.path(p);
        if let Err(e) = std::fs::metadata(&path) {
            self.err(p, format!("cannot read {}: {e}", path.display()));
        }
        path
    }

    fn ms(&mut self, v: &Option<Spanned<u64>>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) if *s.get_ref() == 0 => {
                self.err(s, "must be greater than 0");
                default
            }
            Some(s) => Duration::from_millis(*s.get_ref()),
        }
    }

    fn secs(&mut self, v: &Option<Spanned<u64>>, default: Duration) -> Duration {
        v.as_ref().map_or(default, |s| Duration::from_secs(*s.get_ref()))
    }

    fn addr(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        match s.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(s, format!("`{}` is not an address like 127.0.0.1:8443", s.get_ref()));
                None
            }
        }
    }

    fn config(&mut self, file: &Path, raw: RawConfig) -> Option<Config> {
        let listen = self.listen(raw.listen.get_ref());
        let admin = raw.admin.as_ref().and_then(|a| self.addr(&a.addr));
        let audit = match &raw.audit {
            None => AuditSettings { target: AuditTarget::File(self.base.join("audit/audit.jsonl")), max_file_bytes: 100 << 20 },
            Some(a) => AuditSettings {
                target: if a.path.get_ref() == "-" { AuditTarget::Stdout } else { AuditTarget::File(self.path(&a.path)) },
                max_file_bytes: a.max_file_bytes.as_ref().map_or(100 << 20, |m| *m.get_ref()),
            },
        };
        let store = raw.store.as_ref().map(|s| self.store(s));
        let policies_dir = raw.policies.as_ref().map_or_else(|| self.base.join("policies"), |p| self.path(&p.dir));
        let issuers = self.issuers(&raw.issuer);
        let limits = self.limits(raw.limits.as_ref());
        let upstreams = self.upstreams(&raw.upstream, store.is_some());
        let upstream_names: Vec<&str> = raw.upstream.iter().map(|u| u.get_ref().name.get_ref().as_str()).collect();
        let routes = self.routes(&raw.route, &upstream_names);
        Some(Config {
            file: file.to_path_buf(),
            listen: listen?,
            admin,
            audit,
            store: store.flatten(),
            policies_dir,
            issuers,
            limits,
            upstreams,
            routes,
        })
    }

    fn listen(&mut self, l: &RawListen) -> Option<Listen> {
        // The TLS files are read and checked by `tls::server_config` (in
        // `check` and `serve`), not here: policy tools need no certificates.
        let addr = self.addr(&l.addr);
        let tls_cert = self.path(&l.tls_cert);
        let tls_key = self.path(&l.tls_key);
        let client_ca = l.client_ca.as_ref().map(|c| self.path(c));
        Some(Listen { addr: addr?, tls_cert, tls_key, client_ca })
    }

    fn store(&mut self, s: &Spanned<RawStore>) -> Option<StoreSettings> {
        let r = s.get_ref();
        let location = if r.path.get_ref().starts_with("postgres://") || r.path.get_ref().starts_with("postgresql://") {
            r.path.get_ref().clone()
        } else {
            self.path(&r.path).display().to_string()
        };
        let current = match (&r.key_env, &r.key_file) {
            (Some(env), None) => self.env_secret(env),
            (None, Some(file)) => self.file_secret(file),
            _ => {
                self.err(s, "[store] needs exactly one of key_env or key_file");
                None
            }
        };
        let mut keys = vec![current?];
        for env in &r.previous_key_envs {
            keys.extend(self.env_secret(env));
        }
        Some(StoreSettings { location, keys })
    }

    fn env_secret(&mut self, var: &Spanned<String>) -> Option<Secret> {
        let secret = Secret::from_env(var.get_ref());
        if secret.is_none() {
            self.err(var, format!("environment variable {} is not set", var.get_ref()));
        }
        secret
    }

    fn file_secret(&mut self, file: &Spanned<String>) -> Option<Secret> {
        let path = self.path(file);
        match Secret::from_file(&path) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(file, format!("cannot read secret file {}: {e}", path.display()));
                None
            }
        }
    }

    /// An absolute http(s) URL; `http` only for loopback hosts when `loopback_http_only`.
    fn url(&mut self, s: &Spanned<String>, loopback_http_only: bool) -> Option<Uri> {
        let uri: Uri = match s.get_ref().parse() {
            Ok(u) => u,
            Err(_) => {
                self.err(s, format!("`{}` is not a URL", s.get_ref()));
                return None;
            }
        };
        let host = uri.host().unwrap_or("");
        match uri.scheme_str() {
            Some("https") if !host.is_empty() => Some(uri),
            Some("http") if !host.is_empty() => {
                if loopback_http_only && !is_loopback_host(host) {
                    self.err(s, format!("`{}`: http:// is accepted only for loopback hosts; use https://", s.get_ref()));
                    None
                } else {
                    Some(uri)
                }
            }
            _ => {
                self.err(s, format!("`{}` must be an absolute http:// or https:// URL", s.get_ref()));
                None
            }
        }
    }

    fn issuers(&mut self, raw: &[Spanned<RawIssuer>]) -> Vec<IssuerSettings> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for i in raw {
            let r = i.get_ref();
            if !seen.insert(r.issuer.get_ref().clone()) {
                self.err(&r.issuer, format!("issuer `{}` is configured twice", r.issuer.get_ref()));
            }
            self.url(&r.issuer, true);
            if let Some(j) = &r.jwks_uri {
                self.url(j, true);
            }
            if r.audiences.get_ref().is_empty() || r.audiences.get_ref().iter().any(String::is_empty) {
                self.err(&r.audiences, "audiences must list at least one non-empty audience");
            }
            let algorithms = match &r.algorithms {
                None => DEFAULT_ALGORITHMS.to_vec(),
                Some(list) => {
                    if list.get_ref().is_empty() {
                        self.err(list, "algorithms must not be empty");
                    }
                    list.get_ref().iter().filter_map(|a| self.algorithm(a)).collect()
                }
            };
            let scope_claim = match r.scope_claim.as_ref().map(|s| (s, s.get_ref().as_str())) {
                None => ScopeClaim::Both,
                Some((_, "scope")) => ScopeClaim::Scope,
                Some((_, "scp")) => ScopeClaim::Scp,
                Some((s, other)) => {
                    self.err(s, format!("scope_claim must be \"scope\" or \"scp\", not `{other}`"));
                    ScopeClaim::Both
                }
            };
            let refetch = self.secs(&r.jwks_refetch_interval_s, Duration::from_secs(10));
            let max_token_bytes = r.max_token_bytes.as_ref().map_or(16 * 1024, |m| *m.get_ref() as usize);
            out.push(IssuerSettings {
                issuer: r.issuer.get_ref().clone(),
                audiences: r.audiences.get_ref().clone(),
                jwks_uri: r.jwks_uri.as_ref().map(|j| j.get_ref().clone()),
                algorithms,
                scope_claim,
                leeway: self.secs(&r.leeway_s, Duration::from_secs(30)),
                jwks_refetch_interval: refetch,
                max_stale: self.secs(&r.max_stale_s, Duration::from_secs(24 * 3600)),
                verified_cache_ttl: self.secs(&r.verified_cache_s, Duration::from_secs(60)),
                max_token_bytes,
                ca_file: r.ca_file.as_ref().map(|c| self.existing_file(c)),
            });
        }
        out
    }

    fn algorithm(&mut self, a: &Spanned<String>) -> Option<Algorithm> {
        let name = a.get_ref().as_str();
        let alg = parse_algorithm(name);
        if alg.is_none() {
            let why = if name.starts_with("HS") || name.eq_ignore_ascii_case("none") {
                "is never accepted (no shared secrets or unsigned tokens)"
            } else {
                "is not a supported algorithm"
            };
            self.err(a, format!("`{name}` {why}"));
        }
        alg
    }

    fn limits(&mut self, raw: Option<&RawLimits>) -> Limits {
        let d = Limits::default();
        let Some(r) = raw else { return d };
        let max_header_bytes = match &r.max_header_bytes {
            None => d.max_header_bytes,
            Some(m) if *m.get_ref() < 1024 => {
                self.err(m, "max_header_bytes must be at least 1024");
                d.max_header_bytes
            }
            Some(m) => *m.get_ref() as usize,
        };
        let max_connections = match &r.max_connections {
            None => d.max_connections,
            Some(m) if *m.get_ref() == 0 => {
                self.err(m, "max_connections must be greater than 0");
                d.max_connections
            }
            Some(m) => *m.get_ref() as usize,
        };
        let workers = match &r.workers {
            None => d.workers,
            Some(w) if *w.get_ref() > 1024 => {
                self.err(w, "workers must be at most 1024 (0: one per CPU)");
                d.workers
            }
            Some(w) => *w.get_ref() as usize,
        };
        Limits {
            max_header_bytes,
            header_timeout: self.ms(&r.header_timeout_ms, d.header_timeout),
            tls_handshake_timeout: self.ms(&r.tls_handshake_timeout_ms, d.tls_handshake_timeout),
            idle_timeout: self.ms(&r.idle_timeout_ms, d.idle_timeout),
            idle_release: self.ms(&r.idle_release_ms, d.idle_release),
            max_connections,
            drain_timeout: self.ms(&r.drain_timeout_ms, d.drain_timeout),
            workers,
            body_timeout: self.ms(&r.body_timeout_ms, d.body_timeout),
            write_timeout: self.ms(&r.write_timeout_ms, d.write_timeout),
        }
    }

    fn upstreams(&mut self, raw: &[Spanned<RawUpstream>], have_store: bool) -> Vec<UpstreamSettings> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for u in raw {
            let r = u.get_ref();
            if !seen.insert(r.name.get_ref().clone()) {
                self.err(&r.name, format!("upstream `{}` is defined twice", r.name.get_ref()));
            }
            let url = self.url(&r.url, false);
            if let Some(u) = &url
                && u.query().is_some()
            {
                self.err(&r.url, "an upstream URL must not have a query");
            }
            let credential = match &r.credential {
                None => Some(CredentialSpec::None),
                Some(c) => self.credential(c, r.name.get_ref(), have_store),
            };
            let (Some(url), Some(credential)) = (url, credential) else { continue };
            out.push(UpstreamSettings {
                name: r.name.get_ref().clone(),
                url,
                ca_file: r.ca_file.as_ref().map(|c| self.existing_file(c)),
                connect_timeout: self.ms(&r.connect_timeout_ms, Duration::from_millis(5_000)),
                response_timeout: self.ms(&r.response_timeout_ms, Duration::from_millis(30_000)),
                http2: r.http2.as_ref().is_some_and(|h| *h.get_ref()),
                min_token_age: r.min_token_age_ms.as_ref().map_or(DEFAULT_MIN_TOKEN_AGE, |m| Duration::from_millis(*m.get_ref())),
                credential,
            });
        }
        out
    }

    fn credential(&mut self, c: &Spanned<RawCredential>, upstream: &str, have_store: bool) -> Option<CredentialSpec> {
        let r = c.get_ref();
        let literal = [
            (&r.client_secret, "client_secret", "client_secret_file or client_secret_env"),
            (&r.value, "value", "value_file or value_env"),
            (&r.private_key, "private_key", "private_key_file"),
            (&r.refresh_token, "refresh_token", "`gatehouse credentials set` (the encrypted store)"),
        ];
        let mut refused = false;
        for (field, key, instead) in literal {
            if let Some(f) = field {
                self.err(f, format!("a literal secret (`{key}`) is not allowed in the config; use {instead}"));
                refused = true;
            }
        }
        let spec = match r.kind.get_ref().as_str() {
            "client_credentials" => CredentialSpec::ClientCredentials(self.oauth(c)?),
            "refresh_token" => {
                if !have_store {
                    self.err(&r.kind, format!("upstream `{upstream}` uses refresh_token but there is no [store]"));
                }
                CredentialSpec::RefreshToken(self.oauth(c)?)
            }
            "token_exchange" => CredentialSpec::TokenExchange(self.oauth(c)?),
            "static" => {
                let header = r.header.as_ref().map_or("authorization", |h| h.get_ref().as_str());
                let header = match http::HeaderName::from_bytes(header.as_bytes()) {
                    Ok(h) => h,
                    Err(_) => {
                        if let Some(h) = &r.header {
                            self.err(h, format!("`{}` is not a valid header name", h.get_ref()));
                        }
                        return None;
                    }
                };
                let value = self.secret_source(c, &r.value_file, &r.value_env, "value_file or value_env")?;
                if http::HeaderValue::from_str(value.expose()).is_err() {
                    self.err(&r.kind, "the static credential value is not a valid header value");
                }
                CredentialSpec::Static { header, value }
            }
            "passthrough" => CredentialSpec::Passthrough,
            "none" => CredentialSpec::None,
            other => {
                self.err(
                    &r.kind,
                    format!(
                        "unknown credential kind `{other}` (client_credentials, refresh_token, token_exchange, static, passthrough, none)"
                    ),
                );
                return None;
            }
        };
        if refused { None } else { Some(spec) }
    }

    fn secret_source(
        &mut self,
        at: &Spanned<RawCredential>,
        file: &Option<Spanned<String>>,
        env: &Option<Spanned<String>>,
        what: &str,
    ) -> Option<Secret> {
        match (file, env) {
            (Some(f), None) => self.file_secret(f),
            (None, Some(e)) => self.env_secret(e),
            _ => {
                self.err(at, format!("needs exactly one of {what}"));
                None
            }
        }
    }

    fn oauth(&mut self, c: &Spanned<RawCredential>) -> Option<OAuthClient> {
        let r = c.get_ref();
        let token_url = match &r.token_url {
            Some(t) => self.url(t, true).map(|_| t.get_ref().clone()),
            None => {
                self.err(c, "token_url is required for this credential kind");
                None
            }
        };
        let client_id = match &r.client_id {
            Some(id) if !id.get_ref().is_empty() => Some(id.get_ref().clone()),
            _ => {
                self.err(c, "client_id is required for this credential kind");
                None
            }
        };
        let method = r.auth_method.as_ref().map_or("client_secret_basic", |m| m.get_ref().as_str());
        let auth = match method {
            "client_secret_basic" | "client_secret_post" => {
                let secret =
                    self.secret_source(c, &r.client_secret_file, &r.client_secret_env, "client_secret_file or client_secret_env")?;
                if method == "client_secret_basic" { ClientAuth::SecretBasic(secret) } else { ClientAuth::SecretPost(secret) }
            }
            "private_key_jwt" => {
                let (Some(key_file), Some(key_id)) = (&r.private_key_file, &r.key_id) else {
                    self.err(c, "private_key_jwt needs private_key_file and key_id");
                    return None;
                };
                let auth = ClientAuth::PrivateKeyJwt { key_pem: self.file_secret(key_file)?, key_id: key_id.get_ref().clone() };
                if let Err(why) = auth.check() {
                    self.err(key_file, format!("private_key_file cannot sign client assertions: {why}"));
                    return None;
                }
                auth
            }
            other => {
                if let Some(m) = &r.auth_method {
                    self.err(m, format!("unknown auth_method `{other}` (client_secret_basic, client_secret_post, private_key_jwt)"));
                }
                return None;
            }
        };
        Some(OAuthClient {
            token_url: token_url?,
            client_id: client_id?,
            auth,
            scopes: r.scopes.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default(),
            audience: r.audience.as_ref().map(|a| a.get_ref().clone()),
            resource: r.resource.as_ref().map(|a| a.get_ref().clone()),
        })
    }

    fn routes(&mut self, raw: &[Spanned<RawRoute>], upstreams: &[&str]) -> Vec<RouteSettings> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for rt in raw {
            let r = rt.get_ref();
            if r.name.get_ref().is_empty() || r.name.get_ref() == "*" {
                self.err(&r.name, "a route name must be non-empty and not `*`");
            }
            if !seen.insert(r.name.get_ref().clone()) {
                self.err(&r.name, format!("route `{}` is defined twice", r.name.get_ref()));
            }
            let prefix = r.path_prefix.get_ref();
            if !prefix.starts_with('/') || prefix.contains(['?', '#', '%', '\\']) || prefix.contains("/../") || prefix.contains("//") {
                self.err(&r.path_prefix, format!("path_prefix `{prefix}` must be a plain normalized path starting with `/`"));
            }
            if !upstreams.contains(&r.upstream.get_ref().as_str()) {
                self.err(&r.upstream, format!("unknown upstream `{}`", r.upstream.get_ref()));
            }
            out.push(RouteSettings {
                name: r.name.get_ref().clone(),
                path_prefix: prefix.clone(),
                upstream: r.upstream.get_ref().clone(),
                strip_prefix: r.strip_prefix,
                host: r.host.as_ref().map(|h| h.get_ref().trim_end_matches('.').to_ascii_lowercase()),
                allow: crate::request::PathAllowances { path_params: r.allow_path_params, encoded_percent: r.allow_encoded_percent },
                case_insensitive: r.case_insensitive,
            });
        }
        out
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

/// `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
