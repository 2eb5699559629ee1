//! The cost of an upstream credential whose access token is cached, with
//! the embedded SQLite store and with a PostgreSQL store: the same, since
//! the cached path reads no store (no database round trip per request).
//! Needs the PostgreSQL of `scripts/test` (127.0.0.1:5432, user postgres).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark set-up")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::credential::{
    Caller, ClientAuth, CredentialSpec, OAuthClient, PostFuture, RefreshEvent, RefreshObserver, TokenHttp, UpstreamCredential,
};
use gatehouse::secret::Secret;
use gatehouse::store::{CredentialStore, PostgresOptions, PostgresStore, SqliteStore, StoreKey};
use http::{HeaderName, HeaderValue, StatusCode};

/// A token endpoint in memory: an hour-long access token for every request.
struct Endpoint;

impl TokenHttp for Endpoint {
    fn post_form(&self, _url: &str, _headers: Vec<(HeaderName, HeaderValue)>, _body: String) -> PostFuture<'_> {
        Box::pin(async {
            Ok((StatusCode::OK, Bytes::from_static(br#"{"access_token":"at-bench","token_type":"Bearer","expires_in":3600}"#)))
        })
    }
}

struct Quiet;

impl RefreshObserver for Quiet {
    fn refreshed(&self, _event: RefreshEvent) {}
}

fn credential(store: Arc<dyn CredentialStore>) -> UpstreamCredential {
    let client = OAuthClient {
        token_url: "http://idp.bench/token".into(),
        client_id: "gatehouse".into(),
        auth: ClientAuth::SecretBasic(Secret::new("s")),
        scopes: Vec::new(),
        audience: None,
        resource: None,
    };
    UpstreamCredential::new(
        "crm".into(),
        CredentialSpec::RefreshToken(client),
        Arc::new(Endpoint),
        Some(store),
        Arc::new(Quiet),
        Duration::from_secs(15),
    )
}

fn cached_token(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let key = || vec![StoreKey::from_bytes(&[9; 32]).unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn CredentialStore> = Arc::new(SqliteStore::open(&dir.path().join("bench.db"), key()).unwrap());
    let name = format!("gatehouse_bench_{}", std::process::id());
    let postgres: Arc<dyn CredentialStore> = runtime.block_on(async {
        let (admin, conn) = tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/postgres", tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/test starts it)");
        tokio::spawn(conn);
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let options = PostgresOptions { password: None, pool_size: 2, connect_timeout: Duration::from_secs(5), tls };
        Arc::new(PostgresStore::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"), key(), options).await.unwrap())
    });
    let caller = Secret::new("caller");
    let who = Caller { iss: "https://idp.bench", sub: "svc", client_id: None };
    let mut group = c.benchmark_group("cached_upstream_token");
    for (label, store) in [("sqlite", sqlite), ("postgres", postgres)] {
        runtime.block_on(store.put("crm", &Secret::new("rt-bench"))).unwrap();
        let cred = credential(store);
        // The first call fetches (and, for PostgreSQL, commits under the lease).
        runtime.block_on(cred.header(&caller, who)).unwrap();
        group.bench_function(label, |b| b.iter(|| runtime.block_on(cred.header(&caller, who)).unwrap()));
    }
    group.finish();
    runtime.block_on(async {
        if let Ok((admin, conn)) = tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/postgres", tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    });
}

criterion_group!(benches, cached_token);
criterion_main!(benches);
