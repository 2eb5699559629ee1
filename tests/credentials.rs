//! Upstream credentials are injected and refreshed without a dropped
//! request (docs/config.md §10, docs/wire.md §9 and §12, docs/audit.md), against a
//! loopback OAuth-protected API that refuses expired or revoked tokens:
//! single flight, refresh ahead under load, outage and recovery, the
//! one-retry rule after an upstream 401, refresh-token rotation persisted
//! by the real binary, a crash between receiving and committing a rotated
//! token, and token exchange per caller.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::client::{self, Resp, TestClient, get};
use common::oauth::{OAuthApi, Outage, Verdict, random_hex, subject_hash};
use common::{ALLOW_ALL, ChildProxy, Proxy, TestEnv};
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::Value;

// ---------------------------------------------------------------- fixtures

const KEY_ENV: &str = "GATEHOUSE_STORE_KEY";

/// One upstream `name` behind `/name/`, the API of `api`, with an OAuth
/// credential of `kind` authenticating as `api`'s client. Its tokens may be
/// refetched after a 401 at any age (`min_token_age_ms = 0`), so that tests
/// can revoke a token just fetched.
fn oauth_upstream(env: &TestEnv, api: &OAuthApi, name: &str, kind: &str, auth_method: &str) -> String {
    std::fs::create_dir_all(env.path("secrets")).unwrap();
    std::fs::write(env.path(&format!("secrets/{name}")), format!("{}\n", api.client_secret())).unwrap();
    format!(
        r#"
[[upstream]]
name = "{name}"
url = "{url}"
min_token_age_ms = 0
[upstream.credential]
kind = "{kind}"
token_url = "{token_url}"
client_id = "{client_id}"
client_secret_file = "secrets/{name}"
auth_method = "{auth_method}"
scopes = ["api"]

[[route]]
name = "{name}"
path_prefix = "/{name}/"
upstream = "{name}"
strip_prefix = true
"#,
        url = api.api_url(),
        token_url = api.token_url(),
        client_id = api.client_id(),
    )
}

/// gatehouse in-process with one client_credentials upstream `crm`.
async fn client_credentials_proxy(env: &TestEnv, api: &OAuthApi) -> Proxy {
    env.write_policy("all.toml", ALLOW_ALL);
    Proxy::start(&env.write_config(&oauth_upstream(env, api, "crm", "client_credentials", "client_secret_basic"))).await
}

/// `gatehouse_requests_in_flight` from /metrics.
async fn in_flight(admin: SocketAddr) -> i64 {
    let (_, text) = client::admin_get(admin, "/metrics").await.unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("gatehouse_requests_in_flight ")).and_then(|n| n.trim().parse().ok()).unwrap_or(-1)
}

/// Every `credential_refresh` record, tolerating a torn last line (a crashed process).
fn refresh_records(env: &TestEnv) -> Vec<Value> {
    let text = std::fs::read_to_string(env.audit_path()).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|r| r["event"] == "credential_refresh").collect()
}

fn token_seen(r: &Resp) -> String {
    r.json()["token"].as_str().unwrap_or_else(|| panic!("the API answered no token: {}", String::from_utf8_lossy(&r.body))).to_owned()
}

fn post(addr: SocketAddr, path: &str, token: &str, body: gatehouse::body::ProxyBody) -> http::Request<gatehouse::body::ProxyBody> {
    http::Request::post(format!("https://localhost:{}{path}", addr.port()))
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .unwrap()
}

// ---------------------------------------------------------------- fixtures: the store and the real binary

/// Base64 of 32 random bytes.
fn store_key() -> String {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A config with `[store]` and one refresh_token upstream `crm`.
fn refresh_token_config(env: &TestEnv, api: &OAuthApi) -> PathBuf {
    env.write_policy("all.toml", ALLOW_ALL);
    let store = format!("[store]\npath = \"data/gatehouse.db\"\nkey_env = \"{KEY_ENV}\"\n");
    env.write_config(&format!("{store}{}", oauth_upstream(env, api, "crm", "refresh_token", "client_secret_basic")))
}

/// The bytes of the database and its -wal and -shm files (those that exist).
fn database_files(env: &TestEnv) -> Vec<(String, Vec<u8>)> {
    ["gatehouse.db", "gatehouse.db-wal", "gatehouse.db-shm"]
        .iter()
        .filter_map(|name| std::fs::read(env.path(&format!("data/{name}"))).ok().map(|b| ((*name).to_owned(), b)))
        .collect()
}

fn assert_no_secret_in_database(env: &TestEnv, secrets: &[String]) {
    let files = database_files(env);
    assert!(files.iter().any(|(n, b)| n == "gatehouse.db" && !b.is_empty()), "the database file exists");
    for (name, bytes) in &files {
        for secret in secrets {
            assert!(!contains(bytes, secret.as_bytes()), "{name} holds a secret in clear: {secret}");
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// SIGTERM, then the exit status.
async fn terminate(proxy: ChildProxy) -> ExitStatus {
    proxy.signal("TERM");
    wait_exit(proxy).await
}

/// Like `common::eventually` for a condition that needs no await.
async fn eventually_sync(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    common::eventually(what, within, || std::future::ready(cond().then_some(()))).await;
}

/// Waits (10 s at most) for the process to end on its own.
async fn wait_exit(mut proxy: ChildProxy) -> ExitStatus {
    common::wait_exit(&mut proxy.child).await
}

async fn get_child(c: &TestClient, proxy: &ChildProxy, token: &str) -> Resp {
    get(c, proxy.addr, "/crm/v1/accounts", Some(token)).await
}

// ---------------------------------------------------------------- single flight and refresh ahead

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_first_requests_cause_exactly_one_token_request() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    // Token requests wait until released: every caller arrives before any token exists.
    api.hold();
    let proxy = client_credentials_proxy(&env, &api).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let callers: Vec<_> = (0..200)
        .map(|i| {
            let (c, token, addr) = (c.clone(), token.clone(), proxy.addr);
            tokio::spawn(async move { get(&c, addr, &format!("/crm/r{i}"), Some(&token)).await })
        })
        .collect();
    common::eventually("200 callers waiting at once", Duration::from_secs(20), || async {
        (in_flight(proxy.admin).await >= 200).then_some(())
    })
    .await;
    assert_eq!(api.count("client_credentials"), 1, "200 waiting callers, one token request in flight");
    api.release();
    for caller in callers {
        let r = caller.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(api.count("client_credentials"), 1);
    let presented = api.presented();
    assert_eq!(presented.len(), 200);
    let first = presented[0].token.clone();
    assert!(presented.iter().all(|p| p.verdict == Verdict::Accepted && p.token == first), "every caller used the one token");
    proxy.stop().await;
    let ok: Vec<Value> = refresh_records(&env).into_iter().filter(|r| r["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 1, "{ok:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_second_tokens_under_ten_seconds_of_load_are_renewed_before_expiry_with_no_failed_request() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    api.set_lifetime(2);
    let proxy = client_credentials_proxy(&env, &api).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let end = Instant::now() + Duration::from_secs(10);
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (c, token, addr) = (c.clone(), token.clone(), proxy.addr);
            tokio::spawn(async move {
                let mut pace = tokio::time::interval(Duration::from_millis(5));
                let mut failed = Vec::new();
                let mut sent = 0usize;
                while Instant::now() < end {
                    pace.tick().await;
                    let r = get(&c, addr, &format!("/crm/w{w}/{sent}"), Some(&token)).await;
                    sent += 1;
                    if r.status != 200 {
                        failed.push((r.status, String::from_utf8_lossy(&r.body).into_owned()));
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    let mut sent = 0;
    for w in workers {
        let (n, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        sent += n;
    }
    let presented = api.presented();
    assert_eq!(presented.len(), sent, "each request reached the API once: no 401 and no retry");
    let refused: Vec<_> = presented.iter().filter(|p| p.verdict != Verdict::Accepted).collect();
    assert!(refused.is_empty(), "the API saw expired or unknown tokens: {refused:?}");
    assert!(presented.iter().all(|p| p.expires_at.is_some_and(|e| p.at < e)), "a token was presented at or after its expiry");
    let requests = api.token_requests();
    assert!(requests.len() >= 4, "only {} token requests in 10 s of 2 s tokens", requests.len());
    assert!(requests.iter().all(|r| r.grant == "client_credentials" && r.status == 200 && r.client_auth == "basic"));
    let issued = api.issued();
    for (i, pair) in issued.windows(2).enumerate() {
        let late = pair[1].at.saturating_duration_since(pair[0].expires_at);
        assert!(pair[1].at < pair[0].expires_at, "refresh #{} came {late:?} after the previous token expired", i + 1);
    }
    let used: std::collections::HashSet<_> = presented.iter().filter_map(|p| p.token.clone()).collect();
    assert!(used.len() >= 4, "only {} tokens were used", used.len());
    proxy.stop().await;
    let records = refresh_records(&env);
    assert!(records.iter().all(|r| r["outcome"] == "ok"), "{records:#?}");
    assert_eq!(records.len(), issued.len(), "one credential_refresh record per refresh");
    for r in &records {
        assert_eq!(r["upstream"], "crm");
        assert_eq!(r["kind"], "client_credentials");
        assert!(r["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
        assert!(r["error"].is_null());
    }
}

// ---------------------------------------------------------------- token endpoint outage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_outage_keeps_the_cached_token_until_5s_before_expiry_then_503_then_recovers() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    api.set_lifetime(8);
    let proxy = client_credentials_proxy(&env, &api).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let r = get(&c, proxy.addr, "/crm/x", Some(&token)).await;
    assert_eq!(r.status, 200);
    let cached = api.issued()[0].clone();
    assert_eq!(token_seen(&r), cached.token);
    api.set_outage(Outage::Unavailable);

    // Served from the cache while the endpoint is down, until it may not be used any more.
    let refused = common::eventually("the cached token to stop being used", Duration::from_secs(12), || async {
        let r = get(&c, proxy.addr, "/crm/x", Some(&token)).await;
        if r.status == 200 {
            assert_eq!(token_seen(&r), cached.token, "the cached token, nothing else, while the endpoint is down");
            return None;
        }
        Some(r)
    })
    .await;
    let refused_at = Instant::now();
    assert_eq!(refused.status, 503, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.json()["error"], "credential_unavailable");
    assert_eq!(refused.json()["request_id"], refused.header("x-request-id"));
    assert!(refused.header("www-authenticate").is_empty(), "not the caller's fault");
    assert!(
        refused_at >= cached.at + Duration::from_millis(2700),
        "gave up on the cached token {:?} after issue, more than 5 s before its expiry",
        refused_at - cached.at
    );
    eventually_sync("a credential_refresh record with outcome error", Duration::from_secs(5), || {
        refresh_records(&env).iter().any(|r| r["outcome"] == "error")
    })
    .await;
    let error = refresh_records(&env).into_iter().find(|r| r["outcome"] == "error").unwrap();
    assert_eq!(error["upstream"], "crm");
    assert_eq!(error["kind"], "client_credentials");
    assert!(error["expires_at"].is_null());
    assert!(error["error"].as_str().is_some_and(|e| e.contains("503")), "{error}");

    // Recovery.
    api.set_outage(Outage::None);
    let recovered = common::eventually("recovery after the endpoint came back", Duration::from_secs(10), || async {
        let r = get(&c, proxy.addr, "/crm/x", Some(&token)).await;
        if r.status == 200 {
            return Some(r);
        }
        assert_eq!(r.status, 503);
        None
    })
    .await;
    assert_ne!(token_seen(&recovered), cached.token);
    proxy.stop().await;
    assert!(refresh_records(&env).iter().filter(|r| r["outcome"] == "ok").count() >= 2, "the recovery fetch was recorded");

    // docs/config.md §11: never used within 5 s of its expiry (50 ms for the hop from gatehouse to the API).
    let late: Vec<Duration> = api
        .presented()
        .iter()
        .filter(|p| p.token.as_deref() == Some(cached.token.as_str()))
        .filter(|p| p.at + Duration::from_secs(5) > cached.expires_at + Duration::from_millis(50))
        .map(|p| cached.expires_at.saturating_duration_since(p.at))
        .collect();
    assert!(late.is_empty(), "an 8 s token was still used this long before its expiry (never within 5 s): {late:?}");
}

// ---------------------------------------------------------------- the retry after an upstream 401 (docs/wire.md)

#[tokio::test]
async fn revoked_token_bodyless_request_gets_200_after_one_refresh_and_one_retry() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    let proxy = client_credentials_proxy(&env, &api).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let first = token_seen(&get(&c, proxy.addr, "/crm/x", Some(&token)).await);
    assert_eq!(api.count("client_credentials"), 1);
    api.revoke(&first);
    let r = get(&c, proxy.addr, "/crm/y", Some(&token)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(api.count("client_credentials"), 2, "exactly one refresh");
    let presented = api.presented();
    assert_eq!(presented.len(), 3, "the first request, then the refused try and exactly one retry");
    assert_eq!((presented[1].verdict, presented[1].token.as_deref()), (Verdict::Revoked, Some(first.as_str())));
    assert_eq!(presented[2].verdict, Verdict::Accepted);
    assert_eq!(presented[2].path, "/api/y");
    assert_ne!(token_seen(&r), first);
    proxy.stop().await;
}

#[tokio::test]
async fn revoked_token_post_with_a_64_kib_body_gets_200_after_one_retry_with_the_whole_body() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    let proxy = client_credentials_proxy(&env, &api).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let first = token_seen(&get(&c, proxy.addr, "/crm/x", Some(&token)).await);
    api.revoke(&first);
    let body = gatehouse::body::full(Bytes::from(vec![b'p'; 64 * 1024]));
    let r = client::send(&c, post(proxy.addr, "/crm/upload", &token, body)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body_len"], 64 * 1024);
    assert_eq!(api.count("client_credentials"), 2, "exactly one refresh");
    let presented = api.presented();
    assert_eq!(presented.len(), 3, "exactly one retry");
    assert_eq!(presented[1].verdict, Verdict::Revoked);
    assert_eq!((presented[1].body_len, presented[2].body_len), (64 * 1024, 64 * 1024), "both tries carried the whole body");
    proxy.stop().await;
}

#[tokio::test]
async fn revoked_token_streamed_body_over_64_kib_gets_502_upstream_credential_rejected_without_retry() {
    static CHUNK: [u8; 2048] = [b'z'; 2048];
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    let proxy = client_credentials_proxy(&env, &api).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let first = token_seen(&get(&c, proxy.addr, "/crm/x", Some(&token)).await);
    api.revoke(&first);
    // 128 KiB, chunked: no content-length.
    let chunks = futures_util::stream::iter((0..64).map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&CHUNK)))));
    let r = client::send(&c, post(proxy.addr, "/crm/upload", &token, gatehouse::body::boxed(StreamBody::new(chunks)))).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "upstream_credential_rejected");
    assert!(r.header("www-authenticate").is_empty(), "the caller must not blame its own token");
    let presented = api.presented();
    assert_eq!(presented.len(), 2, "not retried");
    assert_eq!((presented[1].verdict, presented[1].body_len), (Verdict::Revoked, 128 * 1024));
    // The refused token was dropped: the next request gets a fresh one, first time.
    let r = get(&c, proxy.addr, "/crm/z", Some(&token)).await;
    assert_eq!(r.status, 200);
    assert_ne!(token_seen(&r), first);
    assert_eq!(api.count("client_credentials"), 2);
    assert_eq!(api.presented().len(), 3);
    proxy.stop().await;
    let rejected = env.audit_records().into_iter().find(|r| r["reason"] == "upstream_credential_rejected").expect("audited");
    assert_eq!((rejected["status"].as_u64(), rejected["decision"].as_str()), (Some(502), Some("allow")));
}

#[tokio::test]
async fn api_refusing_every_token_gets_502_upstream_credential_rejected_after_one_retry() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    let proxy = client_credentials_proxy(&env, &api).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    assert_eq!(get(&c, proxy.addr, "/crm/x", Some(&token)).await.status, 200);
    api.refuse_all(true);
    let r = get(&c, proxy.addr, "/crm/y", Some(&token)).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "upstream_credential_rejected");
    assert!(r.header("www-authenticate").is_empty());
    let presented = api.presented();
    assert_eq!(presented.len(), 3, "one try and one retry");
    assert!(presented[1..].iter().all(|p| p.verdict == Verdict::Refused));
    assert_ne!(presented[1].token, presented[2].token, "the retry used a fresh token");
    assert_eq!(api.count("client_credentials"), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn a_401_storm_on_a_fresh_token_gets_502_at_once_and_makes_no_token_request() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let upstream = oauth_upstream(&env, &api, "crm", "client_credentials", "client_secret_basic").replace("min_token_age_ms = 0\n", "");
    let proxy = Proxy::start(&env.write_config(&upstream)).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let first = token_seen(&get(&c, proxy.addr, "/crm/x", Some(&token)).await);
    api.revoke(&first);
    for i in 0..50 {
        let r = get(&c, proxy.addr, &format!("/crm/y{i}"), Some(&token)).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"], "upstream_credential_rejected");
    }
    assert_eq!(api.count("client_credentials"), 1, "a token younger than 5 s is not refetched for a 401");
    assert_eq!(api.presented().len(), 51, "no retries either");
    proxy.stop().await;
}

#[tokio::test]
async fn static_and_passthrough_pass_the_upstream_401_on_unchanged_without_retry() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let static_token = format!("st-{}", random_hex(16));
    std::fs::write(env.path("static-value"), format!("Bearer {static_token}\n")).unwrap();
    let cfg = format!(
        "{}{}",
        common::plain_upstream("st", &api.api_url(), "kind = \"static\"\nvalue_file = \"static-value\""),
        common::plain_upstream("pt", &api.api_url(), "kind = \"passthrough\"")
    );
    let proxy = Proxy::start(&env.write_config(&cfg)).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    for (path, sent) in [("/st/x", static_token.as_str()), ("/pt/x", token.as_str())] {
        let before = api.presented().len();
        let r = get(&c, proxy.addr, path, Some(&token)).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), "Bearer realm=\"api\", error=\"invalid_token\"", "{path}: the upstream's header");
        assert_eq!(r.json(), serde_json::json!({"error": "invalid_token", "from": "api"}), "{path}: the upstream's body");
        let presented = api.presented();
        assert_eq!(presented.len(), before + 1, "{path}: not retried");
        assert_eq!(presented[before].token.as_deref(), Some(sent), "{path}");
    }
    // The static value is what the API gets: accepted once the API knows it.
    api.accept(&static_token);
    assert_eq!(get(&c, proxy.addr, "/st/x", Some(&token)).await.status, 200);
    assert_eq!(api.count("client_credentials") + api.count("token_exchange"), 0);
    proxy.stop().await;
    let records = env.audit_records();
    let upstream_401: Vec<_> = records.iter().filter(|r| r["event"] == "request" && r["status"] == 401).collect();
    assert_eq!(upstream_401.len(), 2);
    assert!(upstream_401.iter().all(|r| r["reason"].is_null() && r["decision"] == "allow"), "{upstream_401:#?}");
}

// ---------------------------------------------------------------- refresh-token rotation with the real binary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_token_is_stored_encrypted_and_used_after_a_restart() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    api.set_rotation(true, false);
    let key = store_key();
    let config = refresh_token_config(&env, &api);
    let initial = api.new_refresh_token();
    common::credentials_set(&config, "crm", &[(KEY_ENV, &key)], &initial);
    assert_eq!(common::stored(&env, &key, "crm").await.as_deref(), Some(initial.as_str()));

    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let proxy = ChildProxy::spawn_with_env(&config, &[(KEY_ENV, &key)]);
    common::wait_ready(proxy.admin).await;
    let r = get_child(&c, &proxy, &token).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(!api.refresh_token_valid(&initial), "the IdP rotated the initial refresh token away");
    assert_no_secret_in_database(&env, &api.secrets());
    assert!(terminate(proxy).await.success());
    let rotated = api.refresh_tokens().last().cloned().unwrap();
    assert_ne!(rotated, initial);
    assert_eq!(common::stored(&env, &key, "crm").await, Some(rotated.clone()), "the store holds the rotated refresh token");

    // A new process starts from the store: only the rotated token is accepted by the IdP now.
    let proxy = ChildProxy::spawn_with_env(&config, &[(KEY_ENV, &key)]);
    common::wait_ready(proxy.admin).await;
    let r = get_child(&c, &proxy, &token).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(terminate(proxy).await.success());
    let refreshes: Vec<_> = api.token_requests().into_iter().filter(|r| r.grant == "refresh_token").collect();
    assert!(refreshes.len() >= 2);
    assert!(refreshes.iter().all(|r| r.status == 200), "no refresh was refused: {refreshes:?}");
    assert_eq!(refreshes.last().unwrap().refresh_token.as_deref(), Some(rotated.as_str()), "the restart used the stored, rotated token");
    assert_eq!(common::stored(&env, &key, "crm").await, api.refresh_tokens().last().cloned());
    assert_no_secret_in_database(&env, &api.secrets());
    assert!(refresh_records(&env).iter().all(|r| r["outcome"] == "ok" && r["kind"] == "refresh_token"));
}

/// Runs gatehouse with the failpoint until it aborts between receiving a
/// rotated refresh token and committing it. Returns the refresh token the
/// store still holds.
async fn crash_after_rotation_received(env: &TestEnv, api: &OAuthApi, config: &Path, key: &str) -> String {
    let initial = api.new_refresh_token();
    common::credentials_set(config, "crm", &[(KEY_ENV, key)], &initial);
    // The startup refresh waits at the token endpoint until the first request is in flight.
    api.hold();
    let proxy = ChildProxy::spawn_with_env(config, &[(KEY_ENV, key), ("GATEHOUSE_FAILPOINT", "after_rotation_received")]);
    common::wait_ready(proxy.admin).await;
    let c = client::h1(&env.certs.ca);
    let (addr, token) = (proxy.addr, env.token("svc-a", "test"));
    let request = tokio::spawn(async move {
        let req = http::Request::get(format!("https://localhost:{}/crm/x", addr.port()))
            .header("authorization", format!("Bearer {token}"))
            .body(gatehouse::body::empty())
            .unwrap();
        c.request(req).await.map(|r| r.status())
    });
    common::eventually("the first request to arrive", Duration::from_secs(10), || async {
        (in_flight(proxy.admin).await >= 1).then_some(())
    })
    .await;
    api.release();
    let status = wait_exit(proxy).await;
    assert_eq!(status.signal(), Some(6), "gatehouse should abort (SIGABRT) at the failpoint: {status:?}");
    assert!(request.await.unwrap().is_err(), "the request in flight got no answer: the process died under it");
    let answered: Vec<_> = api.token_requests().into_iter().filter(|r| r.grant == "refresh_token" && r.status == 200).collect();
    assert_eq!(answered.len(), 1, "the IdP answered one rotation");
    assert!(!api.refresh_token_valid(&initial), "the IdP considers the stored token redeemed");
    assert_eq!(common::stored(env, key, "crm").await.as_deref(), Some(initial.as_str()), "nothing was committed");
    initial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_committing_a_rotation_is_reported_with_instructions_and_fixed_by_credentials_set() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    api.set_rotation(true, false);
    let key = store_key();
    let config = refresh_token_config(&env, &api);
    crash_after_rotation_received(&env, &api, &config, &key).await;

    let proxy = ChildProxy::spawn_with_env(&config, &[(KEY_ENV, &key)]);
    common::wait_ready(proxy.admin).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let r = get_child(&c, &proxy, &token).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["error"], "credential_unavailable");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("rejected"), "{description}");
    assert!(description.contains("gatehouse credentials set crm"), "{description}");
    eventually_sync("a credential_refresh error record", Duration::from_secs(5), || {
        refresh_records(&env).iter().any(|r| r["outcome"] == "error")
    })
    .await;
    let record = refresh_records(&env).into_iter().find(|r| r["outcome"] == "error").unwrap();
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("rejected") && error.contains("gatehouse credentials set crm"), "{record}");
    assert_eq!(record["kind"], "refresh_token");

    // The operator stores a fresh refresh token while gatehouse runs.
    let fresh = api.new_refresh_token();
    common::credentials_set(&config, "crm", &[(KEY_ENV, &key)], &fresh);
    common::eventually("service back after credentials set", Duration::from_secs(15), || async {
        let r = get_child(&c, &proxy, &token).await;
        if r.status == 200 {
            return Some(());
        }
        assert_eq!(r.status, 503);
        None
    })
    .await;
    assert!(terminate(proxy).await.success());
    assert_eq!(
        common::stored(&env, &key, "crm").await,
        api.refresh_tokens().last().cloned(),
        "the token rotated from the fresh one is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_committing_a_rotation_just_works_after_restart_when_the_idp_allows_one_reuse() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    api.set_rotation(true, true);
    let key = store_key();
    let config = refresh_token_config(&env, &api);
    let initial = crash_after_rotation_received(&env, &api, &config, &key).await;

    let proxy = ChildProxy::spawn_with_env(&config, &[(KEY_ENV, &key)]);
    common::wait_ready(proxy.admin).await;
    let c = client::h1(&env.certs.ca);
    let r = get_child(&c, &proxy, &env.token("svc-a", "test")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(terminate(proxy).await.success());
    let refreshes: Vec<_> = api.token_requests().into_iter().filter(|r| r.grant == "refresh_token").collect();
    assert_eq!(refreshes.len(), 2, "{refreshes:?}");
    assert_eq!(refreshes[1].refresh_token.as_deref(), Some(initial.as_str()), "the restart reused the stored token once");
    assert_eq!(refreshes[1].status, 200);
    assert_eq!(common::stored(&env, &key, "crm").await, api.refresh_tokens().last().cloned(), "and stored the token it rotated to");
}

// ---------------------------------------------------------------- token exchange

#[tokio::test]
async fn token_exchange_sends_only_exchanged_tokens_cached_one_per_caller() {
    let env = TestEnv::new().await;
    let api = OAuthApi::start().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy = Proxy::start(&env.write_config(&oauth_upstream(&env, &api, "crm", "token_exchange", "client_secret_basic"))).await;
    let c = client::h1(&env.certs.ca);
    let claims = |sub: &str, jti: &str| serde_json::json!({"sub": sub, "aud": "gatehouse", "scope": "test", "jti": jti});
    let alice = [env.token_with(claims("alice", "a-1")), env.token_with(claims("alice", "a-2"))];
    let bob = env.token_with(claims("bob", "b-1"));
    let mut seen = Vec::new();
    for (caller, jwt) in [("alice", &alice[0]), ("bob", &bob), ("alice", &alice[1]), ("alice", &alice[0]), ("bob", &bob)] {
        let r = get(&c, proxy.addr, "/crm/me", Some(jwt)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        seen.push((caller, token_seen(&r), r.json()["exchanged_for"].as_str().unwrap().to_owned()));
    }
    assert_eq!(api.count("token_exchange"), 2, "one exchange per caller, then its cached token");
    let alice_tokens: std::collections::HashSet<_> = seen.iter().filter(|s| s.0 == "alice").map(|s| s.1.clone()).collect();
    let bob_tokens: std::collections::HashSet<_> = seen.iter().filter(|s| s.0 == "bob").map(|s| s.1.clone()).collect();
    assert_eq!((alice_tokens.len(), bob_tokens.len()), (1, 1), "{seen:?}");
    assert_ne!(alice_tokens, bob_tokens, "two callers, two upstream tokens");
    assert!(seen.iter().all(|s| s.1.starts_with("xchg-")));
    assert_eq!(seen[0].2, subject_hash(&alice[0]), "alice's token was exchanged for alice's JWT");
    assert_eq!(seen[1].2, subject_hash(&bob), "bob's for bob's");
    let requests = api.token_requests();
    assert!(requests.iter().all(|r| r.client_auth == "basic" && r.status == 200));
    // The caller's JWT, whole or its signature, never reached the API in any header.
    let jwts = [&alice[0], &alice[1], &bob];
    for p in api.presented() {
        for (name, value) in &p.headers {
            for jwt in jwts {
                let signature = jwt.rsplit('.').next().unwrap();
                assert!(!value.contains(jwt.as_str()) && !value.contains(signature), "the API got a caller's token in {name}");
            }
        }
    }
    proxy.stop().await;
    let records = refresh_records(&env);
    assert_eq!(records.iter().filter(|r| r["kind"] == "token_exchange" && r["outcome"] == "ok").count(), 2, "{records:#?}");
}
