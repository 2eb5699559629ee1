//! Several replicas on one PostgreSQL store: they share the stored refresh
//! token and the access token obtained from it, so that N replicas make the
//! token requests one instance would, and a rotating authorization server
//! never sees a refresh token used twice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::client::{self, get};
use common::oauth::OAuthApi;
use common::postgres::TestDatabase;
use common::{ALLOW_ALL, ChildProxy, TestEnv};

const KEY_ENV: &str = "GATEHOUSE_STORE_KEY";
const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// A refresh_token upstream `crm` on the API of `api`, and the store in `database`.
fn config(env: &TestEnv, api: &OAuthApi, database: &TestDatabase) -> std::path::PathBuf {
    std::fs::create_dir_all(env.path("secrets")).unwrap();
    std::fs::write(env.path("secrets/crm"), api.client_secret()).unwrap();
    env.write_policy("all.toml", ALLOW_ALL);
    env.write_config(&format!(
        r#"
[store]
path = "{db}"
key_env = "{KEY_ENV}"
lease_s = 5

[[upstream]]
name = "crm"
url = "{api_url}"
[upstream.credential]
kind = "refresh_token"
token_url = "{token_url}"
client_id = "{client_id}"
client_secret_file = "secrets/crm"

[[route]]
name = "crm"
path_prefix = "/crm/"
upstream = "crm"
strip_prefix = true
"#,
        db = database.url,
        api_url = api.api_url(),
        token_url = api.token_url(),
        client_id = api.client_id(),
    ))
}

/// Three `gatehouse serve` processes on one database under steady load, with
/// 2 s upstream tokens and a rotating refresh token: every request answered,
/// no refresh token redeemed twice, and about as many token requests as one
/// instance makes (one per 0.8 s), not three times as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_refresh_once_per_token_lifetime_and_never_reuse_a_refresh_token() {
    let soak = Duration::from_secs(std::env::var("GATEHOUSE_REPLICA_SOAK_S").ok().and_then(|s| s.parse().ok()).unwrap_or(20));
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    api.set_rotation(true, false);
    api.set_lifetime(2);
    let database = TestDatabase::create().await;
    let config = config(&env, &api, &database);
    common::credentials_set(&config, "crm", &[(KEY_ENV, KEY)], &api.new_refresh_token());
    let replicas: Vec<ChildProxy> = (0..3).map(|_| ChildProxy::spawn_with_env(&config, &[(KEY_ENV, KEY)])).collect();
    for r in &replicas {
        common::wait_ready(r.admin).await;
    }
    let token = env.token("svc-a", "test");
    let started = Instant::now();
    let load: Vec<_> = replicas
        .iter()
        .map(|r| {
            let (c, addr, token) = (client::h1(&env.certs.ca), r.addr, token.clone());
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0u64, Vec::new());
                while started.elapsed() < soak {
                    let answer = get(&c, addr, "/crm/items", Some(&token)).await;
                    sent += 1;
                    if answer.status != 200 {
                        failed.push(format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body)));
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    let (mut sent, mut failed) = (0, Vec::new());
    for l in load {
        let (s, f) = l.await.unwrap();
        sent += s;
        failed.extend(f);
    }
    let refreshes: Vec<_> = api.token_requests().into_iter().filter(|r| r.grant == "refresh_token").collect();
    let refused = refreshes.iter().filter(|r| r.status != 200).count();
    let one_instance = soak.as_secs_f64() / 0.8;
    // Convergence: from each new token's issue to the last use of the one
    // before it by any replica (the old one is still valid meanwhile).
    let issued = api.issued();
    let presented = api.presented();
    let lags: Vec<Duration> = issued
        .windows(2)
        .filter_map(|pair| {
            let last_old = presented.iter().filter(|p| p.token.as_deref() == Some(pair[0].token.as_str())).map(|p| p.at).max()?;
            Some(last_old.saturating_duration_since(pair[1].at))
        })
        .collect();
    let converge = lags.iter().max().copied().unwrap_or_default();
    if std::env::var("GATEHOUSE_DEBUG_REFRESH").is_ok() {
        let gaps: Vec<u128> = refreshes.windows(2).map(|w| (w[1].at - w[0].at).as_millis()).collect();
        eprintln!("gaps between refreshes (ms): {gaps:?}\nlags (ms): {:?}", lags.iter().map(Duration::as_millis).collect::<Vec<_>>());
    }
    eprintln!(
        "3 replicas, {soak:?}: {sent} requests, {} failed; {} token requests ({refused} refused; one instance would make about {one_instance:.0}); \
         all replicas on a new token within {converge:?} of its issue (worst of {})",
        failed.len(),
        refreshes.len(),
        lags.len()
    );
    assert!(converge < Duration::from_secs(1), "the old token was still in use {converge:?} after the new one was committed");
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), failed.first());
    assert_eq!(refused, 0, "a refresh token was used twice (invalid_grant)");
    assert!((refreshes.len() as f64) <= one_instance + 4.0, "{} token requests for 3 replicas", refreshes.len());
    assert!(sent > 300, "steady load: {sent} requests");
}

/// A replica that dies (abort, as kill -9 stops it) right after taking the
/// refresh lease, before its token request: the next replica takes over
/// once the lease ends; its caller waits for that, and is answered; the
/// stored refresh token was never spent, and is redeemed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_holding_the_refresh_lease_is_replaced_when_the_lease_ends() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    api.set_rotation(true, false);
    let database = TestDatabase::create().await;
    let config = config(&env, &api, &database);
    let initial = api.new_refresh_token();
    common::credentials_set(&config, "crm", &[(KEY_ENV, KEY)], &initial);
    // Its first refresh (at start) takes the lease, and the process dies there.
    let mut doomed = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .arg("serve")
        .env(KEY_ENV, KEY)
        .env("GATEHOUSE_FAILPOINT", "after_lease_taken")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = common::wait_exit(&mut doomed).await;
    let died = Instant::now();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "died at the failpoint: {status:?}");
    let lease = database
        .connect()
        .await
        .query_one("SELECT holder IS NOT NULL FROM gatehouse_refresh_leases WHERE upstream = 'crm'", &[])
        .await
        .unwrap()
        .get::<_, bool>(0);
    assert!(lease, "the dead replica left its lease behind");
    assert!(api.token_requests().is_empty(), "it died before any token request");

    let survivor = ChildProxy::spawn_with_env(&config, &[(KEY_ENV, KEY)]);
    common::wait_ready(survivor.admin).await;
    let c = client::h1(&env.certs.ca);
    let answer = get(&c, survivor.addr, "/crm/items", Some(&env.token("svc-a", "test"))).await;
    let waited = died.elapsed();
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert!(waited < Duration::from_secs(5 + 5), "taken over once the 5 s lease ended: {waited:?}");
    let refreshes: Vec<_> = api.token_requests().into_iter().filter(|r| r.grant == "refresh_token").collect();
    assert_eq!(refreshes.len(), 1, "one redemption of the stored token");
    assert_eq!((refreshes[0].status, refreshes[0].refresh_token.as_deref()), (200, Some(initial.as_str())));
    eprintln!("lease holder killed: the survivor answered {waited:?} after the death (lease 5 s)");
}

/// Every connection to the database is terminated, twice, under load:
/// cached tokens keep serving, and the replica recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_database_connections_are_recovered_by_themselves() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    api.set_rotation(true, false);
    api.set_lifetime(3);
    let database = TestDatabase::create().await;
    let config = config(&env, &api, &database);
    common::credentials_set(&config, "crm", &[(KEY_ENV, KEY)], &api.new_refresh_token());
    let proxy = ChildProxy::spawn_with_env(&config, &[(KEY_ENV, KEY)]);
    common::wait_ready(proxy.admin).await;
    let token = env.token("svc-a", "test");
    let (c, addr) = (client::h1(&env.certs.ca), proxy.addr);
    let started = Instant::now();
    let load = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        while started.elapsed() < Duration::from_secs(12) {
            let answer = get(&c, addr, "/crm/items", Some(&token)).await;
            outcomes.push((started.elapsed(), answer.status));
        }
        outcomes
    });
    let admin = database.connect().await;
    for at in [2, 5] {
        tokio::time::sleep_until((started + Duration::from_secs(at)).into()).await;
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&database.name],
            )
            .await
            .unwrap();
    }
    let outcomes = load.await.unwrap();
    let failed: Vec<_> = outcomes.iter().filter(|(_, s)| *s != 200).collect();
    let late_failures = failed.iter().filter(|(at, _)| *at > Duration::from_secs(9)).count();
    eprintln!(
        "{} requests, {} not 200 (all before 9 s: {}); the database connections were terminated at 2 s and 5 s",
        outcomes.len(),
        failed.len(),
        late_failures == 0
    );
    assert_eq!(late_failures, 0, "recovered by itself: {failed:?}");
    assert!(failed.iter().all(|(_, s)| *s == 503), "a failure is 503 credential_unavailable: {failed:?}");
    assert_eq!(api.token_requests().iter().filter(|r| r.status != 200).count(), 0, "no refresh token used twice");
    common::wait_metric(proxy.admin, "gatehouse_store_up", 1).await;
}
