//! The embedded SQLite backend.
//!
//! rusqlite is synchronous, so every operation runs on the blocking pool
//! behind one `Mutex<Connection>`. WAL mode with `synchronous=FULL` makes a
//! returned `put`/`rotate` durable across `kill -9` and power loss; a
//! `busy_timeout` lets `gatehouse credentials set` write while a proxy runs.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::envelope::{self, StoreKey};
use super::{BoxFuture, CredentialStore, StoreError};
use crate::secret::Secret;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS refresh_tokens (
    upstream   TEXT PRIMARY KEY NOT NULL,
    value      BLOB NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;";

const UPSERT: &str = "INSERT INTO refresh_tokens (upstream, value, updated_at) VALUES (?1, ?2, ?3)
    ON CONFLICT(upstream) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";

const SELECT: &str = "SELECT value FROM refresh_tokens WHERE upstream = ?1";

/// Refresh tokens in one SQLite file, each sealed with AES-256-GCM.
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    conn: Mutex<Connection>,
    /// `keys[0]` seals new values; all of them open old ones.
    keys: Vec<StoreKey>,
}

impl SqliteStore {
    /// Opens (creating it and its folder if needed, file mode 0600) the
    /// database at `path`. `keys[0]` is used for writing; every key is
    /// accepted for reading, so keys rotate by prepending a new one.
    pub fn open(path: &Path, keys: Vec<StoreKey>) -> Result<Self, StoreError> {
        if keys.is_empty() {
            return Err(StoreError::Key("no store key configured".to_owned()));
        }
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
        }
        create_private_file(path).map_err(|e| StoreError::Backend(format!("{shown}: {e}")))?;
        let conn = Connection::open(path).map_err(|e| StoreError::Backend(format!("{shown}: {e}")))?;
        let setup = || -> rusqlite::Result<()> {
            conn.busy_timeout(Duration::from_secs(5))?;
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(path = %shown, mode, "credential store could not switch to WAL mode");
            }
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA)?;
            Ok(())
        };
        setup().map_err(|e| StoreError::Backend(format!("{shown}: {e}")))?;
        Ok(Self { shared: Arc::new(Shared { conn: Mutex::new(conn), keys }) })
    }

    /// Runs `op` on the blocking pool with the connection locked.
    fn run<T, F>(&self, op: F) -> BoxFuture<'_, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &[StoreKey]) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = shared.conn.lock().map_err(|_| StoreError::Backend("connection lock poisoned".to_owned()))?;
                op(&mut conn, &shared.keys)
            })
            .await
            .map_err(|e| StoreError::Backend(format!("store worker failed: {e}")))?
        })
    }
}

impl CredentialStore for SqliteStore {
    fn get(&self, upstream: &str) -> BoxFuture<'_, Result<Option<Secret>, StoreError>> {
        let upstream = upstream.to_owned();
        self.run(move |conn, keys| {
            let Some(blob) = select(conn, &upstream)? else {
                return Ok(None);
            };
            Ok(Some(unseal(keys, &upstream, &blob)?))
        })
    }

    fn put(&self, upstream: &str, refresh_token: &Secret) -> BoxFuture<'_, Result<(), StoreError>> {
        let upstream = upstream.to_owned();
        let value = refresh_token.clone();
        self.run(move |conn, keys| {
            let blob = seal_current(keys, &upstream, &value)?;
            conn.execute(UPSERT, params![upstream, blob, now()]).map_err(sql)?;
            Ok(())
        })
    }

    fn rotate(&self, upstream: &str, old: &Secret, new: &Secret) -> BoxFuture<'_, Result<bool, StoreError>> {
        let upstream = upstream.to_owned();
        let (old, new) = (old.clone(), new.clone());
        self.run(move |conn, keys| {
            // IMMEDIATE takes the write lock before reading, so no other
            // process can slip a write between the compare and the swap.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let Some(blob) = select(&tx, &upstream)? else {
                return Ok(false);
            };
            let current = unseal(keys, &upstream, &blob)?;
            if !same(current.expose(), old.expose()) {
                return Ok(false);
            }
            let sealed = seal_current(keys, &upstream, &new)?;
            tx.execute(UPSERT, params![upstream, sealed, now()]).map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(true)
        })
    }
}

fn select(conn: &Connection, upstream: &str) -> Result<Option<Vec<u8>>, StoreError> {
    conn.query_row(SELECT, params![upstream], |r| r.get(0)).optional().map_err(sql)
}

fn seal_current(keys: &[StoreKey], upstream: &str, value: &Secret) -> Result<Vec<u8>, StoreError> {
    let key = keys.first().ok_or_else(|| StoreError::Key("no store key configured".to_owned()))?;
    envelope::seal(key, upstream, value.expose().as_bytes())
}

fn unseal(keys: &[StoreKey], upstream: &str, blob: &[u8]) -> Result<Secret, StoreError> {
    let plain = envelope::open(keys, upstream, blob)?;
    String::from_utf8(plain)
        .map(Secret::new)
        .map_err(|_| StoreError::Decrypt { upstream: upstream.to_owned(), reason: "decrypted value is not UTF-8".to_owned() })
}

/// Constant-time equality, so the compare in `rotate` leaks no prefix length.
fn same(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Creates the database file readable by its owner only, before SQLite opens
/// it (SQLite gives its -wal and -shm files the same mode).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}
