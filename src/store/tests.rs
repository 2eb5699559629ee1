use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::*;

fn key(byte: u8) -> StoreKey {
    StoreKey::from_bytes(&[byte; 32]).unwrap()
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data").join("gatehouse.db")
}

fn raw_blob(path: &Path, upstream: &str) -> Vec<u8> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT value FROM refresh_tokens WHERE upstream = ?1", [upstream], |r| r.get(0)).unwrap()
}

fn write_blob(path: &Path, upstream: &str, blob: &[u8]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO refresh_tokens (upstream, value, updated_at) VALUES (?1, ?2, 'x')
         ON CONFLICT(upstream) DO UPDATE SET value = excluded.value",
        rusqlite::params![upstream, blob],
    )
    .unwrap();
}

mod behaviour {
    use super::*;

    #[tokio::test]
    async fn sqlite_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CredentialStore> = Arc::new(SqliteStore::open(&db(&dir), vec![key(1)]).unwrap());
        conformance::conformance(store).await.unwrap();
    }

    #[tokio::test]
    async fn a_written_value_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let store = SqliteStore::open(&path, vec![key(1)]).unwrap();
        store.put("crm", &Secret::new("rt-durable")).await.unwrap();
        drop(store);
        let again = SqliteStore::open(&path, vec![key(1)]).unwrap();
        assert_eq!(again.get("crm").await.unwrap().unwrap().expose(), "rt-durable");
    }

    #[tokio::test]
    async fn open_store_takes_a_path_or_a_postgres_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let store = open_store(path.to_str().unwrap(), vec![key(1)], pg::options()).await.unwrap();
        store.put("crm", &Secret::new("v")).await.unwrap();
        let database = pg::TestDatabase::create().await;
        let shared = open_store(&database.url, vec![key(1)], pg::options()).await.unwrap();
        shared.put("crm", &Secret::new("v-pg")).await.unwrap();
        assert_eq!(shared.get("crm").await.unwrap().unwrap().expose(), "v-pg");
        assert!(is_postgres("postgresql://db/x") && is_postgres("POSTGRES://db/x") && !is_postgres("data/gatehouse.db"));
    }

    #[test]
    fn opening_without_a_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteStore::open(&db(&dir), Vec::new()).err().unwrap();
        assert!(matches!(err, StoreError::Key(_)), "{err}");
    }
}

mod keys {
    use super::*;

    #[test]
    fn store_key_parses_base64_of_32_bytes() {
        let b64 = STANDARD.encode([7u8; 32]);
        let k = StoreKey::from_base64(&format!("  {b64}\n")).unwrap();
        assert_eq!(k.id(), key(7).id());
        let unpadded = b64.trim_end_matches('=');
        assert_eq!(StoreKey::from_base64(unpadded).unwrap().id(), k.id());
    }

    #[test]
    fn store_key_of_the_wrong_length_or_not_base64_is_refused() {
        for bad in [STANDARD.encode([1u8; 16]), STANDARD.encode([1u8; 33]), "%%%".to_owned(), String::new()] {
            let err = StoreKey::from_base64(&bad).err().unwrap();
            assert!(matches!(err, StoreError::Key(_)), "{err}");
        }
    }

    #[test]
    fn key_id_is_the_first_8_hex_digits_of_its_sha256() {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &[0u8; 32]);
        let want: String = hash.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key(0).id(), want);
        assert_eq!(want, "66687aad");
    }

    #[test]
    fn store_key_debug_shows_only_the_id() {
        let shown = format!("{:?}", key(9));
        assert!(shown.contains(&key(9).id()));
        assert!(shown.contains("redacted"));
        assert!(!shown.contains("9, 9"));
    }

    #[tokio::test]
    async fn key_rotation_reads_with_the_old_key_and_writes_with_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let (a, b) = (key(0xA), key(0xB));
        SqliteStore::open(&path, vec![a.clone()]).unwrap().put("crm", &Secret::new("rt-a")).await.unwrap();

        let rotated = SqliteStore::open(&path, vec![b.clone(), a.clone()]).unwrap();
        assert_eq!(rotated.get("crm").await.unwrap().unwrap().expose(), "rt-a");
        assert!(rotated.rotate("crm", &Secret::new("rt-a"), &Secret::new("rt-b")).await.unwrap());
        let blob = raw_blob(&path, "crm");
        assert_eq!(blob[0], 1, "envelope version");
        let id: String = blob[1..5].iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(id, b.id(), "the next write uses the first key");

        let only_b = SqliteStore::open(&path, vec![b]).unwrap();
        assert_eq!(only_b.get("crm").await.unwrap().unwrap().expose(), "rt-b");
    }
}

mod threats {
    use super::*;

    #[tokio::test]
    async fn the_database_files_never_hold_a_token_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let store: Arc<dyn CredentialStore> = Arc::new(SqliteStore::open(&path, vec![key(1)]).unwrap());
        conformance::conformance_at_rest(store, || async {
            let mut bytes = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                let file = PathBuf::from(format!("{}{suffix}", path.display()));
                bytes.extend(std::fs::read(file).unwrap_or_default());
            }
            bytes
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_wrong_key_is_a_clear_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        SqliteStore::open(&path, vec![key(1)]).unwrap().put("crm", &Secret::new("rt")).await.unwrap();
        let wrong = SqliteStore::open(&path, vec![key(2)]).unwrap();
        let err = wrong.get("crm").await.err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Decrypt { .. }), "{text}");
        assert!(text.contains("crm") && text.contains(&key(1).id()) && text.contains(&key(2).id()), "{text}");
        assert!(!text.contains("rt\""));
        let err = wrong.rotate("crm", &Secret::new("rt"), &Secret::new("n")).await.err().unwrap();
        assert!(matches!(err, StoreError::Decrypt { .. }));
    }

    #[tokio::test]
    async fn tampered_ciphertext_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let store = SqliteStore::open(&path, vec![key(1)]).unwrap();
        store.put("crm", &Secret::new("rt-original")).await.unwrap();
        let mut blob = raw_blob(&path, "crm");
        let last = blob.len() - 20;
        blob[last] ^= 0x01;
        write_blob(&path, "crm", &blob);
        let err = store.get("crm").await.err().unwrap();
        assert!(err.to_string().contains("authentication failed"), "{err}");

        write_blob(&path, "crm", &blob[..10]);
        assert!(matches!(store.get("crm").await, Err(StoreError::Decrypt { .. })));
    }

    #[tokio::test]
    async fn a_value_moved_to_another_upstream_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let store = SqliteStore::open(&path, vec![key(1)]).unwrap();
        store.put("crm", &Secret::new("rt-crm")).await.unwrap();
        write_blob(&path, "billing", &raw_blob(&path, "crm"));
        let err = store.get("billing").await.err().unwrap();
        assert!(err.to_string().contains("billing"), "{err}");
    }

    #[tokio::test]
    async fn an_envelope_pointed_at_another_key_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let (a, b) = (key(0xA), key(0xB));
        let store = SqliteStore::open(&path, vec![a.clone(), b.clone()]).unwrap();
        store.put("crm", &Secret::new("rt")).await.unwrap();
        let mut blob = raw_blob(&path, "crm");
        let b_id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &[0xB; 32]);
        blob[1..5].copy_from_slice(&b_id.as_ref()[..4]);
        write_blob(&path, "crm", &blob);
        assert!(matches!(store.get("crm").await, Err(StoreError::Decrypt { .. })));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        SqliteStore::open(&path, vec![key(1)]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// PostgreSQL for tests: the server of this machine (127.0.0.1:5432, user
/// postgres, trust auth), one fresh database per test, dropped afterwards.
pub(crate) mod pg {
    use super::*;

    const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

    pub(crate) fn options() -> PostgresOptions {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        PostgresOptions { password: None, pool_size: 4, connect_timeout: std::time::Duration::from_secs(5), tls }
    }

    /// A database of its own; dropped (connections terminated) on drop.
    pub(crate) struct TestDatabase {
        pub(crate) name: String,
        pub(crate) url: String,
    }

    async fn admin() -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&format!("{SERVER}/postgres"), tokio_postgres::NoTls).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at 127.0.0.1:5432 as user postgres ({e}); start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (scripts/test does)"
            )
        });
        tokio::spawn(conn);
        client
    }

    impl TestDatabase {
        pub(crate) async fn create() -> Self {
            let mut suffix = [0u8; 6];
            aws_lc_rs::rand::fill(&mut suffix).unwrap();
            let name = format!("gatehouse_t_{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>());
            admin().await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
            Self { url: format!("{SERVER}/{name}"), name }
        }

        /// A plain connection to it, for looking at what is stored.
        pub(crate) async fn connect(&self) -> tokio_postgres::Client {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let name = self.name.clone();
            // Its own thread and runtime: a test's runtime may be gone.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                rt.block_on(async {
                    if let Ok((client, conn)) = tokio_postgres::connect(&format!("{SERVER}/postgres"), tokio_postgres::NoTls).await {
                        tokio::spawn(conn);
                        let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                    }
                });
            })
            .join();
        }
    }
}

mod postgres {
    use super::*;

    #[tokio::test]
    async fn postgres_store_passes_the_conformance_suite() {
        let database = pg::TestDatabase::create().await;
        let store: Arc<dyn CredentialStore> = Arc::new(PostgresStore::connect(&database.url, vec![key(1)], pg::options()).await.unwrap());
        conformance::conformance(store).await.unwrap();
    }

    #[tokio::test]
    async fn the_postgres_tables_never_hold_a_token_in_clear() {
        let database = pg::TestDatabase::create().await;
        let store: Arc<dyn CredentialStore> = Arc::new(PostgresStore::connect(&database.url, vec![key(1)], pg::options()).await.unwrap());
        let look = database.connect().await;
        conformance::conformance_at_rest(store, || async {
            let rows = look.query("SELECT upstream, value FROM gatehouse_refresh_tokens", &[]).await.unwrap();
            rows.iter().flat_map(|r| [r.get::<_, &str>(0).as_bytes().to_vec(), r.get::<_, Vec<u8>>(1)].concat()).collect()
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn two_replicas_starting_together_migrate_once_and_share_what_is_stored() {
        let database = pg::TestDatabase::create().await;
        let (a, b) = tokio::join!(
            PostgresStore::connect(&database.url, vec![key(1)], pg::options()),
            PostgresStore::connect(&database.url, vec![key(1)], pg::options())
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let versions = database.connect().await.query("SELECT version FROM gatehouse_schema", &[]).await.unwrap();
        assert_eq!(versions.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(), [SCHEMA_VERSION]);
        a.put("crm", &Secret::new("rt-1")).await.unwrap();
        assert_eq!(b.get("crm").await.unwrap().unwrap().expose(), "rt-1");
        assert!(b.rotate("crm", &Secret::new("rt-1"), &Secret::new("rt-2")).await.unwrap());
        assert!(!a.rotate("crm", &Secret::new("rt-1"), &Secret::new("rt-x")).await.unwrap(), "a refresh token is never redeemed twice");
        assert_eq!(a.get("crm").await.unwrap().unwrap().expose(), "rt-2");
        assert!(a.is_up() && b.is_up());
    }

    #[tokio::test]
    async fn a_database_with_a_newer_schema_is_refused_with_a_clear_message() {
        let database = pg::TestDatabase::create().await;
        drop(PostgresStore::connect(&database.url, vec![key(1)], pg::options()).await.unwrap());
        database.connect().await.execute("INSERT INTO gatehouse_schema (version) VALUES ($1)", &[&(SCHEMA_VERSION + 1)]).await.unwrap();
        let err = PostgresStore::connect(&database.url, vec![key(1)], pg::options()).await.err().unwrap().to_string();
        assert!(err.contains("newer than this gatehouse"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_promptly_and_says_so() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let options = PostgresOptions { connect_timeout: std::time::Duration::from_millis(500), ..pg::options() };
        let started = std::time::Instant::now();
        let err = PostgresStore::connect(&format!("postgres://postgres@{closed}/x"), vec![key(1)], options).await.err().unwrap();
        assert!(err.to_string().contains("unreachable"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
