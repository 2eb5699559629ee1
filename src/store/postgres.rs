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
use super::{BoxFuture, CredentialStore, SharedAccess, StoreError};
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
        issued_at  TIMESTAMPTZ NOT NULL,
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

/// The channel commits and releases are announced on (`LISTEN`).
const CHANNEL: &str = "gatehouse_refresh";

/// Refresh tokens (and, for the replicas, the state they share) in one
/// PostgreSQL database, each value sealed with AES-256-GCM.
pub struct PostgresStore {
    pool: Pool,
    keys: Vec<StoreKey>,
    /// Whether the last operation reached the database.
    up: AtomicBool,
    /// The connection config, for the listening connection.
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// Upstream names announced on `CHANNEL`; the listener starts with the
    /// first waiter.
    changes: tokio::sync::OnceCell<tokio::sync::broadcast::Sender<String>>,
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
        let tls = MakeRustlsConnect::new(options.tls);
        let manager = Manager::from_config(config.clone(), tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        let store = Self { pool, keys, up: AtomicBool::new(false), config, tls, changes: tokio::sync::OnceCell::new() };
        store.migrate().await?;
        // Listening from the start: the first wait finds the listener ready.
        drop(store.changes().await);
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

    /// The announcements of `CHANNEL`, from one listening connection that
    /// reconnects by itself (a waiter that misses one still wakes at its
    /// timeout: polling is the fallback).
    async fn changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        let sender = self
            .changes
            .get_or_init(|| async {
                let (tx, _) = tokio::sync::broadcast::channel(256);
                tokio::spawn(listen(self.config.clone(), self.tls.clone(), tx.downgrade()));
                tx
            })
            .await;
        sender.subscribe()
    }

    /// Within `tx`: replaces the refresh token of `upstream` with `sealed`
    /// if it still is `old`. The row lock makes the compare and the swap one
    /// step for every replica; `false` when it changed (or is gone).
    async fn swap_refresh(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        upstream: &str,
        old: &Secret,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let row = tx
            .query_opt("SELECT value FROM gatehouse_refresh_tokens WHERE upstream = $1 FOR UPDATE", &[&upstream])
            .await
            .map_err(|e| self.failed(e))?;
        let Some(row) = row else { return Ok(false) };
        if !same(self.unseal(upstream, row.get::<_, &[u8]>(0))?.expose(), old.expose()) {
            return Ok(false);
        }
        tx.execute("UPDATE gatehouse_refresh_tokens SET value = $2, updated_at = now() WHERE upstream = $1", &[&upstream, &sealed])
            .await
            .map_err(|e| self.failed(e))?;
        Ok(true)
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
            let tx = client.transaction().await.map_err(|e| self.failed(e))?;
            if !self.swap_refresh(&tx, &upstream, &old, &sealed).await? {
                return Ok(false);
            }
            tx.commit().await.map_err(|e| self.failed(e))?;
            Ok(true)
        })
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn shared_access(&self, upstream: &str) -> BoxFuture<'_, Result<Option<SharedAccess>, StoreError>> {
        let upstream = upstream.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT value, EXTRACT(EPOCH FROM issued_at)::float8, EXTRACT(EPOCH FROM expires_at)::float8
                     FROM gatehouse_access_tokens WHERE upstream = $1",
                    &[&upstream],
                )
                .await
                .map_err(|e| self.failed(e))?;
            let Some(row) = row else { return Ok(None) };
            let value = self.unseal(&access_name(&upstream), row.get::<_, &[u8]>(0))?;
            Ok(Some(SharedAccess { value, issued_at: row.get(1), expires_at: row.get(2) }))
        })
    }

    fn take_lease(&self, upstream: &str, holder: &str, lease: Duration) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        let (upstream, holder) = (upstream.to_owned(), holder.to_owned());
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "INSERT INTO gatehouse_refresh_leases AS l (upstream, holder, expires_at, fence)
                     VALUES ($1, $2, now() + make_interval(secs => $3), 1)
                     ON CONFLICT (upstream) DO UPDATE
                        SET holder = excluded.holder, expires_at = excluded.expires_at, fence = l.fence + 1
                        WHERE l.holder IS NULL OR l.expires_at < now()
                     RETURNING fence",
                    &[&upstream, &holder, &lease.as_secs_f64()],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn release_lease(&self, upstream: &str, fence: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let upstream = upstream.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            client
                .execute(
                    "WITH released AS (
                         UPDATE gatehouse_refresh_leases SET holder = NULL, expires_at = NULL
                         WHERE upstream = $1 AND fence = $2 RETURNING upstream)
                     SELECT pg_notify($3, upstream) FROM released",
                    &[&upstream, &fence, &CHANNEL],
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn commit_refresh<'a>(
        &'a self,
        upstream: &'a str,
        fence: i64,
        old: &'a Secret,
        new: Option<&'a Secret>,
        access: &'a SharedAccess,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let sealed_access = self.seal(&access_name(upstream), &access.value)?;
            let sealed_refresh = new.map(|n| self.seal(upstream, n)).transpose()?;
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.failed(e))?;
            // The fence: only the holder of the newest lease may commit.
            let lease = tx
                .query_opt("SELECT fence FROM gatehouse_refresh_leases WHERE upstream = $1 FOR UPDATE", &[&upstream])
                .await
                .map_err(|e| self.failed(e))?;
            if lease.map(|r| r.get::<_, i64>(0)) != Some(fence) {
                return Ok(false);
            }
            if let Some(sealed) = &sealed_refresh
                && !self.swap_refresh(&tx, upstream, old, sealed).await?
            {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO gatehouse_access_tokens (upstream, value, issued_at, expires_at, fence)
                 VALUES ($1, $2, to_timestamp($3), to_timestamp($4), $5)
                 ON CONFLICT (upstream) DO UPDATE
                    SET value = excluded.value, issued_at = excluded.issued_at, expires_at = excluded.expires_at, fence = excluded.fence",
                &[&upstream, &sealed_access, &access.issued_at, &access.expires_at, &fence],
            )
            .await
            .map_err(|e| self.failed(e))?;
            tx.execute("UPDATE gatehouse_refresh_leases SET holder = NULL, expires_at = NULL WHERE upstream = $1", &[&upstream])
                .await
                .map_err(|e| self.failed(e))?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &upstream]).await.map_err(|e| self.failed(e))?;
            tx.commit().await.map_err(|e| self.failed(e))?;
            Ok(true)
        })
    }

    fn wait_change(&self, upstream: &str, timeout: Duration) -> BoxFuture<'_, ()> {
        let upstream = upstream.to_owned();
        Box::pin(async move {
            // Listen first, then look: a commit between the two is seen by
            // the look, one after it by the listener. Nothing is missed.
            let mut changes = self.changes().await;
            let free = match self.client().await {
                Ok(client) => client
                    .query_opt(
                        "SELECT holder IS NULL OR expires_at < now() FROM gatehouse_refresh_leases WHERE upstream = $1",
                        &[&upstream],
                    )
                    .await
                    .ok()
                    .flatten()
                    .is_none_or(|row| row.get::<_, bool>(0)),
                Err(_) => false,
            };
            if free {
                return;
            }
            let wait = async {
                loop {
                    match changes.recv().await {
                        Ok(name) if name == upstream => return,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                    }
                }
            };
            let _ = tokio::time::timeout(timeout, wait).await;
        })
    }
}

/// The name an access token is sealed under: never confused with the
/// upstream's refresh token.
fn access_name(upstream: &str) -> String {
    format!("{upstream}#access")
}

/// Keeps one connection listening on `CHANNEL` and passes what it hears on,
/// reconnecting with a backoff (1 s doubling to 30 s) while the database is
/// away; ends when the store is gone.
async fn listen(config: tokio_postgres::Config, tls: MakeRustlsConnect, announce: tokio::sync::broadcast::WeakSender<String>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if announce.upgrade().is_none() {
            return;
        }
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let statement = format!("LISTEN {CHANNEL}");
                let listening = client.batch_execute(&statement);
                let mut listening = std::pin::pin!(listening);
                let mut subscribed = false;
                loop {
                    let message = std::future::poll_fn(|cx| {
                        if !subscribed && let std::task::Poll::Ready(result) = listening.as_mut().poll(cx) {
                            subscribed = true;
                            if let Err(e) = result {
                                return std::task::Poll::Ready(Some(Err(e)));
                            }
                        }
                        connection.poll_message(cx)
                    })
                    .await;
                    match message {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            backoff = Duration::from_secs(1);
                            let Some(tx) = announce.upgrade() else { return };
                            let _ = tx.send(n.payload().to_owned());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "credential store listener lost its connection");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "credential store listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
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
