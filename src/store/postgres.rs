//! The PostgreSQL backend, for several replicas sharing one store.
//!
//! Values are sealed exactly as in SQLite (AES-256-GCM, bound to the
//! upstream name) before they reach the database. The schema is created or
//! migrated at start, in one transaction holding an advisory lock, by
//! whichever replica comes first; a database whose schema is newer than this
//! build is refused, never written to.
//!
//! A pool of connections (`deadpool-postgres`) serves the operations; each
//! waits for a connection at most `connect_timeout`, so an unreachable
//! database makes a request needing the store fail promptly, and the pool
//! reconnects by itself when the database is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::envelope::{self, StoreKey};
use super::{BoxFuture, CredentialStore, StoreError};
use crate::secret::Secret;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// Taken (transaction-scoped) while the schema is created or migrated.
const MIGRATION_LOCK: i64 = 0x6761_7465_686f_7573; // "gatehous"

/// The migrations, in order: entry `i` brings the schema to version `i + 1`.
const MIGRATIONS: [&str; 1] = ["
    CREATE TABLE gatehouse_refresh_tokens (
        upstream   TEXT PRIMARY KEY,
        value      BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE gatehouse_access_tokens (
        upstream   TEXT PRIMARY KEY,
        value      BYTEA NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        fence      BIGINT NOT NULL
    );
    CREATE TABLE gatehouse_refresh_leases (
        upstream   TEXT PRIMARY KEY,
        holder     TEXT,
        expires_at TIMESTAMPTZ,
        fence      BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE gatehouse_revocations (
        id         BIGSERIAL PRIMARY KEY,
        iss        TEXT,
        sub        TEXT,
        jti        TEXT,
        client_id  TEXT,
        reason     TEXT,
        revoked_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE gatehouse_connect_states (
        state      TEXT PRIMARY KEY,
        value      BYTEA NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
"];

/// How to reach the database, besides its URL.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The password, when the URL has none (`password_file`/`password_env`,
    /// else `PGPASSWORD`).
    pub password: Option<Secret>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest wait to connect, and for a pooled connection.
    pub connect_timeout: Duration,
    /// Trust for TLS to the database (used when the server offers TLS, or
    /// the URL says `sslmode=require`).
    pub tls: rustls::ClientConfig,
}

/// Refresh tokens (and, for the replicas, the state they share) in one
/// PostgreSQL database, each value sealed with AES-256-GCM.
pub struct PostgresStore {
    pool: Pool,
    keys: Vec<StoreKey>,
    /// Whether the last operation reached the database.
    up: AtomicBool,
}

impl PostgresStore {
    /// Connects, then creates or migrates the schema. Fails when the
    /// database cannot be reached, or holds a newer schema.
    pub async fn connect(url: &str, keys: Vec<StoreKey>, options: PostgresOptions) -> Result<Self, StoreError> {
        if keys.is_empty() {
            return Err(StoreError::Key("no store key configured".to_owned()));
        }
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Backend(format!("{}: not a PostgreSQL URL: {e}", redact(url))))?;
        if config.get_password().is_none() {
            let password = options.password.or_else(|| Secret::from_env("PGPASSWORD"));
            if let Some(password) = password {
                config.password(password.expose());
            }
        }
        if config.get_user().is_none()
            && let Some(user) = std::env::var("PGUSER").ok().or_else(|| std::env::var("USER").ok())
        {
            config.user(&user);
        }
        // Without `sslmode` in the URL: plain on loopback (the bytes never
        // leave the machine), else TLS required, verified against the roots
        // given. `sslmode=disable` and `require` say it outright.
        if !url.contains("sslmode=") {
            let local = config.get_hosts().iter().all(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => crate::request::is_loopback_host(name),
                tokio_postgres::config::Host::Unix(_) => true,
            });
            config.ssl_mode(if local { tokio_postgres::config::SslMode::Disable } else { tokio_postgres::config::SslMode::Require });
        }
        config.connect_timeout(options.connect_timeout);
        config.application_name("gatehouse");
        let manager =
            Manager::from_config(config, MakeRustlsConnect::new(options.tls), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        let store = Self { pool, keys, up: AtomicBool::new(false) };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates or migrates the schema under a transaction-scoped advisory
    /// lock, so that replicas starting together migrate once.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.failed(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| self.failed(e))?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS gatehouse_schema (version INTEGER NOT NULL)").await.map_err(|e| self.failed(e))?;
        let found: Option<i32> = tx.query_one("SELECT max(version) FROM gatehouse_schema", &[]).await.map_err(|e| self.failed(e))?.get(0);
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "the database holds schema version {found}, newer than this gatehouse's {SCHEMA_VERSION}: \
                 it was migrated by a newer gatehouse; run that version (or newer) on every replica"
            )));
        }
        let from = usize::try_from(found).unwrap_or(0);
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(from) {
            tx.batch_execute(migration).await.map_err(|e| self.failed(e))?;
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute("INSERT INTO gatehouse_schema (version) VALUES ($1)", &[&version]).await.map_err(|e| self.failed(e))?;
            tracing::info!(version, "credential store schema migrated");
        }
        tx.commit().await.map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn client(&self) -> Result<Object, StoreError> {
        match self.pool.get().await {
            Ok(client) => {
                self.up.store(true, Ordering::Relaxed);
                Ok(client)
            }
            Err(e) => {
                self.up.store(false, Ordering::Relaxed);
                Err(StoreError::Backend(format!("database unreachable: {e}")))
            }
        }
    }

    /// A database error; marks the store down when the connection itself failed.
    fn failed(&self, e: tokio_postgres::Error) -> StoreError {
        if e.is_closed() || e.as_db_error().is_none() {
            self.up.store(false, Ordering::Relaxed);
        }
        StoreError::Backend(match e.as_db_error() {
            Some(db) => format!("database: {}", db.message()),
            None => format!("database: {e}"),
        })
    }

    fn seal(&self, upstream: &str, value: &Secret) -> Result<Vec<u8>, StoreError> {
        let key = self.keys.first().ok_or_else(|| StoreError::Key("no store key configured".to_owned()))?;
        envelope::seal(key, upstream, value.expose().as_bytes())
    }

    fn unseal(&self, upstream: &str, blob: &[u8]) -> Result<Secret, StoreError> {
        let plain = envelope::open(&self.keys, upstream, blob)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| StoreError::Decrypt { upstream: upstream.to_owned(), reason: "decrypted value is not UTF-8".to_owned() })
    }
}

impl CredentialStore for PostgresStore {
    fn get(&self, upstream: &str) -> BoxFuture<'_, Result<Option<Secret>, StoreError>> {
        let upstream = upstream.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT value FROM gatehouse_refresh_tokens WHERE upstream = $1", &[&upstream])
                .await
                .map_err(|e| self.failed(e))?;
            row.map(|r| self.unseal(&upstream, r.get::<_, &[u8]>(0))).transpose()
        })
    }

    fn put(&self, upstream: &str, refresh_token: &Secret) -> BoxFuture<'_, Result<(), StoreError>> {
        let upstream = upstream.to_owned();
        let value = refresh_token.clone();
        Box::pin(async move {
            let sealed = self.seal(&upstream, &value)?;
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO gatehouse_refresh_tokens (upstream, value) VALUES ($1, $2)
                     ON CONFLICT (upstream) DO UPDATE SET value = excluded.value, updated_at = now()",
                    &[&upstream, &sealed],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn rotate(&self, upstream: &str, old: &Secret, new: &Secret) -> BoxFuture<'_, Result<bool, StoreError>> {
        let upstream = upstream.to_owned();
        let (old, new) = (old.clone(), new.clone());
        Box::pin(async move {
            let sealed = self.seal(&upstream, &new)?;
            let mut client = self.client().await?;
            // The row lock makes the compare and the swap one step for
            // every replica.
            let tx = client.transaction().await.map_err(|e| self.failed(e))?;
            let row = tx
                .query_opt("SELECT value FROM gatehouse_refresh_tokens WHERE upstream = $1 FOR UPDATE", &[&upstream])
                .await
                .map_err(|e| self.failed(e))?;
            let Some(row) = row else { return Ok(false) };
            let current = self.unseal(&upstream, row.get::<_, &[u8]>(0))?;
            if !same(current.expose(), old.expose()) {
                return Ok(false);
            }
            tx.execute("UPDATE gatehouse_refresh_tokens SET value = $2, updated_at = now() WHERE upstream = $1", &[&upstream, &sealed])
                .await
                .map_err(|e| self.failed(e))?;
            tx.commit().await.map_err(|e| self.failed(e))?;
            Ok(true)
        })
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// Constant-time equality, so the compare in `rotate` leaks no prefix length.
fn same(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(redact("postgres://gh:s3cret@db:5432/gatehouse"), "postgres://gh@db:5432/gatehouse");
        assert_eq!(redact("postgres://gh@db/gatehouse"), "postgres://gh@db/gatehouse");
        assert_eq!(redact("postgres://db/gatehouse"), "postgres://db/gatehouse");
    }

    #[test]
    fn every_migration_is_numbered_by_its_place() {
        assert_eq!(MIGRATIONS.len(), usize::try_from(SCHEMA_VERSION).unwrap_or(0));
    }
}
