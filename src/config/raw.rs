//! The config file exactly as written (docs/config.md): serde structs with spans,
//! unknown keys refused. Nothing here is validated; see `super::validate`.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Spanned<RawListen>,
    pub admin: Option<RawAdmin>,
    pub audit: Option<RawAudit>,
    pub store: Option<Spanned<RawStore>>,
    pub policies: Option<RawPolicies>,
    #[serde(default)]
    pub issuer: Vec<Spanned<RawIssuer>>,
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub upstream: Vec<Spanned<RawUpstream>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addr: Spanned<String>,
    pub tls_cert: Spanned<String>,
    pub tls_key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub addr: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: Spanned<String>,
    /// Rotation threshold in bytes (default 100 MiB).
    pub max_file_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: Spanned<String>,
    pub key_env: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    /// Older keys still accepted for reading (key rotation).
    #[serde(default)]
    pub previous_key_envs: Vec<Spanned<String>>,
    /// PostgreSQL: the password, when the URL has none.
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    /// PostgreSQL: connections in the pool.
    pub pool_size: Option<Spanned<u64>>,
    /// PostgreSQL: longest wait to connect, and for a pooled connection.
    pub connect_timeout_ms: Option<Spanned<u64>>,
    /// How long a replica's refresh lease lasts (PostgreSQL).
    pub lease_s: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    pub dir: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: Spanned<String>,
    pub audiences: Spanned<Vec<String>>,
    pub jwks_uri: Option<Spanned<String>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub scope_claim: Option<Spanned<String>>,
    pub leeway_s: Option<Spanned<u64>>,
    pub jwks_refetch_interval_s: Option<Spanned<u64>>,
    pub ca_file: Option<Spanned<String>>,
    /// Longest time cached keys are used while the issuer is unreachable (default 24 h).
    pub max_stale_s: Option<Spanned<u64>>,
    /// Longest a verified token is cached (default 60 s; never past `exp`).
    pub verified_cache_s: Option<Spanned<u64>>,
    /// Largest accepted token in bytes (default 16384).
    pub max_token_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<Spanned<u64>>,
    pub header_timeout_ms: Option<Spanned<u64>>,
    pub tls_handshake_timeout_ms: Option<Spanned<u64>>,
    pub idle_timeout_ms: Option<Spanned<u64>>,
    /// An idle HTTP/1.1 connection gives its HTTP buffers back after this long.
    pub idle_release_ms: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    /// How long a graceful drain waits for in-flight requests (default 30 s).
    pub drain_timeout_ms: Option<Spanned<u64>>,
    /// Worker threads serving callers; 0 or absent: one per CPU.
    pub workers: Option<Spanned<u64>>,
    /// Longest wait for the next piece of a request body.
    pub body_timeout_ms: Option<Spanned<u64>>,
    /// Longest wait for the caller to take the next piece of an answer.
    pub write_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub ca_file: Option<Spanned<String>>,
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub response_timeout_ms: Option<Spanned<u64>>,
    /// Speak HTTP/2 with prior knowledge to a plain-http upstream (h2c).
    pub http2: Option<Spanned<bool>>,
    /// An upstream token younger than this is not refetched after a 401.
    pub min_token_age_ms: Option<Spanned<u64>>,
    pub credential: Option<Spanned<RawCredential>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub kind: Spanned<String>,
    pub token_url: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
    pub auth_method: Option<Spanned<String>>,
    pub private_key_file: Option<Spanned<String>>,
    pub key_id: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<String>>>,
    pub audience: Option<Spanned<String>>,
    pub resource: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub value_file: Option<Spanned<String>>,
    pub value_env: Option<Spanned<String>>,
    // Literal secrets: accepted by the parser only so that `check` can say
    // exactly why they are refused.
    pub client_secret: Option<Spanned<toml::Value>>,
    pub value: Option<Spanned<toml::Value>>,
    pub private_key: Option<Spanned<toml::Value>>,
    pub refresh_token: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub path_prefix: Spanned<String>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub host: Option<Spanned<String>>,
    /// Let `;` segment parameters through (refused by default).
    #[serde(default)]
    pub allow_path_params: bool,
    /// Let `%25` through (refused by default).
    #[serde(default)]
    pub allow_encoded_percent: bool,
    /// The upstream reads paths without regard to ASCII case: so do the globs.
    #[serde(default)]
    pub case_insensitive: bool,
}
