//! Every default of the config file, in one place: the validator, the audit
//! writer, the quickstart and the docs' tables take them from here.

use std::time::Duration;

/// `[audit] path`, relative to the config file.
pub const AUDIT_PATH: &str = "audit/audit.jsonl";
/// `[audit] max_file_bytes`: rotate past 100 MiB.
pub const AUDIT_MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// Audit records that may wait for the writer before new requests wait.
pub const AUDIT_QUEUE: usize = 16_384;
/// `[store] pool_size` (PostgreSQL).
pub const STORE_POOL_SIZE: usize = 8;
/// `[store] connect_timeout_ms` (PostgreSQL).
pub const STORE_CONNECT_TIMEOUT: Duration = Duration::from_millis(2_000);
/// `[store] lease_s`: a replica's refresh lease (the store defines it).
pub const STORE_LEASE: Duration = crate::store::DEFAULT_LEASE;
/// `[policies] dir`.
pub const POLICIES_DIR: &str = "policies";
/// `[[issuer]] leeway_s`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// `[[issuer]] jwks_refetch_interval_s`.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// `[[issuer]] max_stale_s`.
pub const MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// `[[issuer]] verified_cache_s`.
pub const VERIFIED_CACHE: Duration = Duration::from_secs(60);
/// `[[issuer]] max_token_bytes`.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// `[[upstream]] connect_timeout_ms`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(5_000);
/// `[[upstream]] response_timeout_ms`.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(30_000);
/// `[[upstream]] min_token_age_ms`: a token younger than this is not
/// refetched for a 401.
pub const MIN_TOKEN_AGE: Duration = Duration::from_secs(5);
