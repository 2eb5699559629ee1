//! PostgreSQL for integration tests: the server of this machine
//! (127.0.0.1:5432, user postgres, trust auth; `scripts/test` starts it),
//! one fresh database per test, dropped afterwards.

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database of its own; dropped (connections terminated) on drop.
pub struct TestDatabase {
    pub name: String,
    /// `postgres://postgres@127.0.0.1:5432/NAME`.
    pub url: String,
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
    pub async fn create() -> Self {
        let name = format!("gatehouse_it_{}", super::oauth::random_hex(6));
        admin().await.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
        Self { url: format!("{SERVER}/{name}"), name }
    }

    /// A plain connection to it.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Its own thread and runtime: the test's runtime may be gone.
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
