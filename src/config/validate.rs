//! Validation: raw TOML structs become typed settings, every problem
//! reported with its position, all at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;
use toml::Spanned;

use super::raw::*;
use super::*;
use crate::diagnostic::SourceFile;
use crate::secret::Secret;

pub(super) struct Validator<'a> {
    pub(super) src: &'a SourceFile,
    pub(super) base: &'a Path,
    pub(super) problems: Vec<Diagnostic>,
}

impl Validator<'_> {
    pub(super) fn err<T>(&mut self, at: &Spanned<T>, msg: impl Into<String>) {
        self.problems.push(self.src.at(at.span(), msg));
    }

    pub(super) fn path(&self, p: &Spanned<String>) -> PathBuf {
        self.base.join(p.get_ref())
    }

    /// A path that must name a readable file.
    pub(super) fn existing_file(&mut self, p: &Spanned<String>) -> PathBuf {
        let path = self.path(p);
        if let Err(e) = std::fs::metadata(&path) {
            self.err(p, format!("cannot read {}: {e}", path.display()));
        }
        path
    }

    pub(super) fn ms(&mut self, v: &Option<Spanned<u64>>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) if *s.get_ref() == 0 => {
                self.err(s, "must be greater than 0");
                default
            }
            Some(s) => Duration::from_millis(*s.get_ref()),
        }
    }

    pub(super) fn secs(&mut self, v: &Option<Spanned<u64>>, default: Duration) -> Duration {
        v.as_ref().map_or(default, |s| Duration::from_secs(*s.get_ref()))
    }

    pub(super) fn addr(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        match s.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(s, format!("`{}` is not an address like 127.0.0.1:8443", s.get_ref()));
                None
            }
        }
    }

    pub(super) fn config(&mut self, file: &Path, raw: RawConfig) -> Option<Config> {
        let listen = self.listen(raw.listen.get_ref());
        let admin = raw.admin.as_ref().and_then(|a| self.addr(&a.addr));
        let audit = match &raw.audit {
            None => AuditSettings {
                target: AuditTarget::File(self.base.join(defaults::AUDIT_PATH)),
                max_file_bytes: defaults::AUDIT_MAX_FILE_BYTES,
            },
            Some(a) => AuditSettings {
                target: if a.path.get_ref() == "-" { AuditTarget::Stdout } else { AuditTarget::File(self.path(&a.path)) },
                max_file_bytes: a.max_file_bytes.as_ref().map_or(defaults::AUDIT_MAX_FILE_BYTES, |m| *m.get_ref()),
            },
        };
        let store = raw.store.as_ref().map(|s| self.store(s));
        let policies_dir = raw.policies.as_ref().map_or_else(|| self.base.join(defaults::POLICIES_DIR), |p| self.path(&p.dir));
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

    pub(super) fn listen(&mut self, l: &RawListen) -> Option<Listen> {
        // The TLS files are read and checked by `tls::server_config` (in
        // `check` and `serve`), not here: policy tools need no certificates.
        let addr = self.addr(&l.addr);
        let tls_cert = self.path(&l.tls_cert);
        let tls_key = self.path(&l.tls_key);
        let client_ca = l.client_ca.as_ref().map(|c| self.path(c));
        Some(Listen { addr: addr?, tls_cert, tls_key, client_ca })
    }

    pub(super) fn store(&mut self, s: &Spanned<RawStore>) -> Option<StoreSettings> {
        let r = s.get_ref();
        let location =
            if crate::store::is_postgres(r.path.get_ref()) { r.path.get_ref().clone() } else { self.path(&r.path).display().to_string() };
        let current = match (&r.key_env, &r.key_file) {
            (Some(env), None) => self.env_secret(env),
            (None, Some(file)) => self.file_secret(file),
            _ => {
                self.err(s, "[store] needs exactly one of key_env or key_file");
                None
            }
        };
        let password = match (&r.password_env, &r.password_file) {
            (None, None) => None,
            (Some(env), None) => self.env_secret(env),
            (None, Some(file)) => self.file_secret(file),
            (Some(env), Some(_)) => {
                self.err(env, "[store] takes password_env or password_file, not both");
                None
            }
        };
        if !crate::store::is_postgres(&location) {
            for (key, given) in [
                ("password_env", r.password_env.as_ref().map(Spanned::span)),
                ("password_file", r.password_file.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = given {
                    self.problems.push(self.src.at(span, format!("{key} applies to a postgres:// store only")));
                }
            }
        }
        let pool_size = match &r.pool_size {
            None => defaults::STORE_POOL_SIZE,
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1024 => {
                self.err(n, "pool_size must be from 1 to 1024");
                defaults::STORE_POOL_SIZE
            }
            Some(n) => *n.get_ref() as usize,
        };
        let connect_timeout = self.ms(&r.connect_timeout_ms, defaults::STORE_CONNECT_TIMEOUT);
        let lease = match &r.lease_s {
            Some(l) if *l.get_ref() == 0 => {
                self.err(l, "lease_s must be greater than 0");
                defaults::STORE_LEASE
            }
            other => self.secs(other, defaults::STORE_LEASE),
        };
        let mut keys = vec![current?];
        for env in &r.previous_key_envs {
            keys.extend(self.env_secret(env));
        }
        Some(StoreSettings { location, keys, password, pool_size, connect_timeout, lease })
    }

    pub(super) fn env_secret(&mut self, var: &Spanned<String>) -> Option<Secret> {
        let secret = Secret::from_env(var.get_ref());
        if secret.is_none() {
            self.err(var, format!("environment variable {} is not set", var.get_ref()));
        }
        secret
    }

    pub(super) fn file_secret(&mut self, file: &Spanned<String>) -> Option<Secret> {
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
    pub(super) fn url(&mut self, s: &Spanned<String>, loopback_http_only: bool) -> Option<Uri> {
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

    pub(super) fn issuers(&mut self, raw: &[Spanned<RawIssuer>]) -> Vec<IssuerSettings> {
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
            let refetch = self.secs(&r.jwks_refetch_interval_s, defaults::JWKS_REFETCH_INTERVAL);
            let max_token_bytes = r.max_token_bytes.as_ref().map_or(defaults::MAX_TOKEN_BYTES, |m| *m.get_ref() as usize);
            out.push(IssuerSettings {
                issuer: r.issuer.get_ref().clone(),
                audiences: r.audiences.get_ref().clone(),
                jwks_uri: r.jwks_uri.as_ref().map(|j| j.get_ref().clone()),
                algorithms,
                scope_claim,
                leeway: self.secs(&r.leeway_s, defaults::LEEWAY),
                jwks_refetch_interval: refetch,
                max_stale: self.secs(&r.max_stale_s, defaults::MAX_STALE),
                verified_cache_ttl: self.secs(&r.verified_cache_s, defaults::VERIFIED_CACHE),
                max_token_bytes,
                ca_file: r.ca_file.as_ref().map(|c| self.existing_file(c)),
            });
        }
        out
    }

    pub(super) fn algorithm(&mut self, a: &Spanned<String>) -> Option<Algorithm> {
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

    pub(super) fn limits(&mut self, raw: Option<&RawLimits>) -> Limits {
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

    pub(super) fn upstreams(&mut self, raw: &[Spanned<RawUpstream>], have_store: bool) -> Vec<UpstreamSettings> {
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
                connect_timeout: self.ms(&r.connect_timeout_ms, defaults::CONNECT_TIMEOUT),
                response_timeout: self.ms(&r.response_timeout_ms, defaults::RESPONSE_TIMEOUT),
                http2: r.http2.as_ref().is_some_and(|h| *h.get_ref()),
                min_token_age: r.min_token_age_ms.as_ref().map_or(defaults::MIN_TOKEN_AGE, |m| Duration::from_millis(*m.get_ref())),
                credential,
            });
        }
        out
    }

    pub(super) fn routes(&mut self, raw: &[Spanned<RawRoute>], upstreams: &[&str]) -> Vec<RouteSettings> {
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
