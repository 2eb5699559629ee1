//! The encrypted store for upstream refresh tokens (docs/config.md §5).
//!
//! Every value is sealed with AES-256-GCM before it reaches the backend (see
//! [`envelope`]), so a copy of the database file or table reveals no token.
//! The embedded backend is SQLite ([`SqliteStore`]); [`PostgresStore`]
//! serves several replicas. Both implement [`CredentialStore`] and pass the
//! same conformance suite.

#[doc(hidden)]
#[cfg(test)]
mod conformance;
mod envelope;
mod postgres;
mod sqlite;

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::secret::Secret;

pub use envelope::StoreKey;
pub use postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION, redact};
pub use sqlite::SqliteStore;

/// A boxed, sendable future: keeps [`CredentialStore`] dyn-compatible.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where refresh tokens live, one per upstream name.
///
/// Implementations encrypt every value at rest and are safe to share between
/// tasks. All three operations are durable once their future resolves `Ok`.
pub trait CredentialStore: Send + Sync + 'static {
    /// The refresh token stored for `upstream`, or `None` when there is none.
    fn get(&self, upstream: &str) -> BoxFuture<'_, Result<Option<Secret>, StoreError>>;

    /// Stores `refresh_token` for `upstream`, replacing any previous value.
    fn put(&self, upstream: &str, refresh_token: &Secret) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Atomic compare-and-swap: replaces `old` with `new` only if the stored
    /// value still equals `old`. `Ok(false)` when it changed meanwhile (or was
    /// removed); nothing is written then.
    fn rotate(&self, upstream: &str, old: &Secret, new: &Secret) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Whether the backend answered its last operation (`gatehouse_store_up`).
    fn is_up(&self) -> bool {
        true
    }

    // Refreshing for several replicas. A store shared by several processes
    // keeps the access token obtained from a stored refresh token, and a
    // lease, so that one replica refreshes and every other uses its token.
    // The defaults are those of a store one process owns: nothing is shared,
    // the lease is always ours, and a commit is a plain `rotate`.

    /// The access token another replica obtained for `upstream`, if any.
    fn shared_access(&self, _upstream: &str) -> BoxFuture<'_, Result<Option<SharedAccess>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    /// Takes the refresh lease for `lease` unless another holder has a live
    /// one: `Some(fence)`, a number that grows with each taking, or `None`.
    fn take_lease(&self, _upstream: &str, _holder: &str, _lease: Duration) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        Box::pin(async { Ok(Some(0)) })
    }

    /// Gives a lease back without a new token (the refresh failed).
    fn release_lease(&self, _upstream: &str, _fence: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Commits a refresh made under lease `fence`, in one step: the rotated
    /// refresh token (when `new` is given, compare-and-swap from `old`) and
    /// the access token for the other replicas; then releases the lease and
    /// wakes the waiters. `Ok(false)` when the lease was lost meanwhile (a
    /// newer holder fenced this one out) or the stored token changed:
    /// nothing is written then.
    fn commit_refresh<'a>(
        &'a self,
        upstream: &'a str,
        _fence: i64,
        old: &'a Secret,
        new: Option<&'a Secret>,
        _access: &'a SharedAccess,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        match new {
            Some(new) => self.rotate(upstream, old, new),
            None => Box::pin(async { Ok(true) }),
        }
    }

    /// Waits until another replica commits or releases for `upstream`, or
    /// `timeout` passes (whichever comes first).
    fn wait_change(&self, _upstream: &str, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(timeout))
    }
}

/// How long a replica's refresh lease lasts unless `[store] lease_s` says
/// otherwise (the one place this default lives: the store is below the
/// credential and the config that use it).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// An access token shared between replicas: when it was obtained and when
/// it expires, in seconds since the Unix epoch.
#[derive(Clone, Debug)]
pub struct SharedAccess {
    pub value: Secret,
    pub issued_at: f64,
    pub expires_at: f64,
}

/// Why the store could not answer. `Display` never contains a token or key.
#[derive(Debug)]
pub enum StoreError {
    /// The configured key material is unusable (not base64 of 32 bytes, or none given).
    Key(String),
    /// A stored value could not be decrypted: written with a key that is not
    /// configured, tampered with, or moved from another upstream.
    Decrypt {
        /// The upstream whose value failed.
        upstream: String,
        /// What went wrong, without secret material.
        reason: String,
    },
    /// The backend failed (I/O, SQL, a lost worker thread).
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(why) => write!(f, "credential store key: {why}"),
            Self::Decrypt { upstream, reason } => write!(f, "stored credential for upstream {upstream} cannot be decrypted: {reason}"),
            Self::Backend(why) => write!(f, "credential store: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// True when `[store] path` names a PostgreSQL database.
pub fn is_postgres(location: &str) -> bool {
    let lower = location.to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// Opens the store named by `[store] path`: a file path for the embedded
/// SQLite store, or a `postgres://` URL (connected, its schema created or
/// migrated; `postgres` says how).
///
/// `keys[0]` seals every new value; the others are accepted for reading only,
/// so a key can be rotated by prepending the new one.
pub async fn open_store(location: &str, keys: Vec<StoreKey>, postgres: PostgresOptions) -> Result<Arc<dyn CredentialStore>, StoreError> {
    if is_postgres(location) {
        return Ok(Arc::new(PostgresStore::connect(location, keys, postgres).await?));
    }
    Ok(Arc::new(SqliteStore::open(Path::new(location), keys)?))
}

#[cfg(test)]
mod tests;
