//! Interop against a real OpenID provider: the npm package `oidc-provider`
//! (tests/interop/provider.mjs), started per test as a child process.
//!
//! Part A, callers: a token the provider issues (client_credentials, RFC 8707
//! resource, RS256 JWT) is accepted through OIDC discovery and audited with
//! its `sub` and `client_id`; tampered copies get 401 `invalid_token`.
//!
//! Part B, upstream credentials against the same provider: client_credentials
//! (client_secret_basic and client_secret_post), refresh_token with rotation
//! (a refresh token from a real authorization-code flow, stored with
//! `gatehouse credentials set`), and private_key_jwt (RSA, P-256, Ed25519).
//!
//! Needs `node` and `tests/interop/node_modules` (`scripts/test` runs `npm ci`);
//! without them every test here fails and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::client::{self, Resp, get};
use common::oidc::{CONNECTOR, OidcProvider, POSTER, RESOURCE, SIGNER, SignerKey, WEBAPP, bearer, jwt_parts};
use common::upstream::TestUpstream;
use common::{ALLOW_ALL, Proxy, TestEnv};
use serde_json::Value;

/// An upstream named `name` at `url`, routed from `/name/` (prefix stripped),
/// with `credential` as its `[upstream.credential]` body (empty: none).
fn upstream(name: &str, url: &str, credential: &str) -> String {
    let credential = if credential.is_empty() { String::new() } else { format!("[upstream.credential]\n{credential}\n") };
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n{credential}\n\
         [[route]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"{name}\"\nstrip_prefix = true\n\n"
    )
}

fn write_file(env: &TestEnv, rel: &str, text: &str) {
    let path = env.path(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write file");
}

fn requests(env: &TestEnv) -> Vec<Value> {
    env.audit_records().into_iter().filter(|r| r["event"] == "request").collect()
}

fn refreshes(env: &TestEnv, upstream: &str) -> Vec<Value> {
    env.audit_records().into_iter().filter(|r| r["event"] == "credential_refresh" && r["upstream"] == upstream).collect()
}

fn assert_invalid_token(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {:?}", r.body);
    let www = r.header("www-authenticate");
    assert!(www.starts_with("Bearer realm=\"gatehouse\"") && www.contains("error=\"invalid_token\""), "{what}: WWW-Authenticate {www}");
    assert_eq!(r.json()["error"], "invalid_token", "{what}");
}

/// The token the upstream last received from gatehouse, decoded; checks it
/// is a JWT the provider issued for gatehouse.
fn upstream_jwt(up: &TestUpstream, provider: &OidcProvider) -> (String, Value) {
    let token = bearer(up.last().headers.get("authorization"));
    let (header, payload) = jwt_parts(&token);
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(header["kid"], "interop-rs256", "signed with the provider's key: {header}");
    assert_eq!(payload["iss"], provider.issuer.as_str(), "{payload}");
    assert_eq!(payload["aud"], "gatehouse", "the `resource` gatehouse sent picked the audience: {payload}");
    (token, payload)
}

// ---------------------------------------------------------------- Part A

#[tokio::test]
async fn a_provider_token_is_accepted_through_discovery_and_audited() {
    let provider = OidcProvider::start();
    let token = provider.client_credentials_token("test").await;
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["typ"], "at+jwt", "RFC 9068 access token: {header}");
    assert_eq!(claims["sub"], CONNECTOR.0);
    assert_eq!(claims["aud"], "gatehouse");

    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    // No jwks_uri: gatehouse finds the keys through discovery, and is ready only once it has them.
    let proxy = Proxy::start(&env.write_config_with(&provider.issuer_block(), &upstream("svc", &up.http_url(), ""))).await;
    let c = client::h1(&env.certs.ca);
    let r = get(&c, proxy.addr, "/svc/hello", Some(&token)).await;
    assert_eq!(r.status, 200, "{:?}\nprovider log:\n{}", r.body, provider.log());
    let seen = up.last();
    assert_eq!(seen.uri, "/hello");
    assert_eq!(seen.headers["x-gatehouse-sub"], CONNECTOR.0);
    assert_eq!(seen.headers["x-gatehouse-iss"], provider.issuer.as_str());
    assert!(seen.headers.get("authorization").is_none(), "kind none: the caller's token is not forwarded");
    let rid = r.header("x-request-id").to_owned();
    proxy.stop().await;

    let records = requests(&env);
    let record = records.iter().find(|r| r["request_id"] == rid.as_str()).expect("the request's audit record");
    assert_eq!(record["decision"], "allow", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["reason"], Value::Null, "{record}");
    assert_eq!(record["rule"], "allow-tests", "{record}");
    let identity = &record["identity"];
    assert_eq!(identity["iss"], provider.issuer.as_str(), "{record}");
    assert_eq!(identity["sub"], CONNECTOR.0, "{record}");
    assert_eq!(identity["client_id"], CONNECTOR.0, "{record}");
    assert_eq!(identity["scopes"], serde_json::json!(["test"]), "{record}");
    assert_eq!(identity["jti"], claims["jti"], "{record}");
    let audit = std::fs::read_to_string(env.audit_path()).expect("audit file");
    assert!(!audit.contains(&token), "the audit log never holds the token");
}

#[tokio::test]
async fn tampered_provider_tokens_get_401_invalid_token() {
    let provider = OidcProvider::start();
    let token = provider.client_credentials_token("test").await;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    // The payload re-encoded with another `sub`: still valid JSON, so only the signature can catch it.
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    claims["sub"] = Value::from("someone-else");
    let forged_claims = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
    // One character of the payload changed in place.
    let mut payload = parts[1].to_owned().into_bytes();
    let i = payload.len() / 2;
    payload[i] = if payload[i] == b'A' { b'B' } else { b'A' };
    let one_char = format!("{}.{}.{}", parts[0], String::from_utf8(payload).expect("ascii"), parts[2]);
    // Signature bytes flipped.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
    for b in sig.iter_mut().take(8) {
        *b ^= 0xff;
    }
    let flipped_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));

    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy = Proxy::start(&env.write_config_with(&provider.issuer_block(), &upstream("svc", &up.http_url(), ""))).await;
    let c = client::h1(&env.certs.ca);
    let cases = [
        ("payload with another sub", forged_claims, &["bad_signature"][..]),
        ("one payload character changed", one_char, &["bad_signature", "malformed_token"][..]),
        ("signature bytes flipped", flipped_sig, &["bad_signature"][..]),
    ];
    let mut ids = Vec::new();
    for (what, forged, _) in &cases {
        let r = get(&c, proxy.addr, "/svc/x", Some(forged)).await;
        assert_invalid_token(&r, what);
        ids.push(r.header("x-request-id").to_owned());
    }
    assert_eq!(up.count(), 0, "no tampered token reached the upstream");
    // The genuine token still works on the same proxy.
    assert_eq!(get(&c, proxy.addr, "/svc/x", Some(&token)).await.status, 200);
    proxy.stop().await;

    let records = requests(&env);
    for ((what, _, reasons), rid) in cases.iter().zip(&ids) {
        let record = records.iter().find(|r| r["request_id"] == rid.as_str()).expect("audit record");
        assert_eq!(record["decision"], "deny", "{what}: {record}");
        assert_eq!(record["status"], 401, "{what}: {record}");
        assert!(reasons.iter().any(|r| record["reason"] == *r), "{what}: reason {} not in {reasons:?}", record["reason"]);
        assert_eq!(record["identity"], Value::Null, "{what}: {record}");
    }
}

// ---------------------------------------------------------------- Part B

#[tokio::test]
async fn client_credentials_upstreams_get_provider_tokens() {
    let provider = OidcProvider::start();
    let token_url = provider.token_endpoint().await;
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    write_file(&env, "secrets/connector", &format!("{}\n", CONNECTOR.1));
    write_file(&env, "secrets/poster", &format!("{}\n", POSTER.1));
    let common =
        format!("kind = \"client_credentials\"\ntoken_url = \"{token_url}\"\nscopes = [\"test\", \"api\"]\nresource = \"{RESOURCE}\"");
    let routes = upstream(
        "basic",
        &up.http_url(),
        &format!(
            "{common}\nclient_id = \"{}\"\nclient_secret_file = \"secrets/connector\"\nauth_method = \"client_secret_basic\"",
            CONNECTOR.0
        ),
    ) + &upstream(
        "post",
        &up.http_url(),
        &format!("{common}\nclient_id = \"{}\"\nclient_secret_file = \"secrets/poster\"\nauth_method = \"client_secret_post\"", POSTER.0),
    );
    let proxy = Proxy::start(&env.write_config_with(&provider.issuer_block(), &routes)).await;
    let caller = provider.client_credentials_token("test").await;
    let c = client::h1(&env.certs.ca);
    for (name, client_id) in [("basic", CONNECTOR.0), ("post", POSTER.0)] {
        let r = get(&c, proxy.addr, &format!("/{name}/data"), Some(&caller)).await;
        assert_eq!(r.status, 200, "{name}: {:?}\nprovider log:\n{}", r.body, provider.log());
        let (token, claims) = upstream_jwt(&up, &provider);
        assert_ne!(token, caller, "{name}: the upstream gets gatehouse's token, not the caller's");
        assert_eq!(claims["client_id"], client_id, "{name}: {claims}");
        assert_eq!(claims["sub"], client_id, "{name}: {claims}");
        assert_eq!(claims["scope"], "test api", "{name}: both scopes granted: {claims}");
        // A second request reuses the cached token.
        assert_eq!(get(&c, proxy.addr, &format!("/{name}/again"), Some(&caller)).await.status, 200);
        assert_eq!(upstream_jwt(&up, &provider).0, token, "{name}: cached token reused");
    }
    proxy.stop().await;
    for name in ["basic", "post"] {
        let records = refreshes(&env, name);
        assert!(!records.is_empty(), "{name}: a credential_refresh record");
        assert!(records.iter().all(|r| r["kind"] == "client_credentials" && r["outcome"] == "ok"), "{name}: {records:?}");
    }
    let audit = std::fs::read_to_string(env.audit_path()).expect("audit");
    assert!(!audit.contains(CONNECTOR.1) && !audit.contains(POSTER.1), "no client secret in the audit log");
}

#[tokio::test]
async fn refresh_token_is_rotated_and_stored_against_the_provider() {
    let provider = OidcProvider::start();
    let token_url = provider.token_endpoint().await;
    // A refresh token from a real authorization-code flow (login, consent, PKCE).
    let first = provider.code_flow("alice").await;
    let original = first["refresh_token"].as_str().expect("refresh_token").to_owned();

    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).expect("random");
    let key_b64 = STANDARD.encode(key);
    write_file(&env, "secrets/store.key", &format!("{key_b64}\n"));
    write_file(&env, "secrets/webapp", WEBAPP.1);
    // key_file rather than key_env: the in-process proxy reads the test's
    // own environment, which a test cannot safely change.
    let rest = format!(
        "[store]\npath = \"data/gatehouse.db\"\nkey_file = \"secrets/store.key\"\n\n{}",
        upstream(
            "svc",
            &up.http_url(),
            &format!(
                "kind = \"refresh_token\"\ntoken_url = \"{token_url}\"\nclient_id = \"{}\"\nclient_secret_file = \"secrets/webapp\"\n\
                 scopes = [\"test\"]\nresource = \"{RESOURCE}\"",
                WEBAPP.0
            )
        )
    );
    let config = env.write_config_with(&provider.issuer_block(), &rest);
    common::credentials_set(&config, "svc", &[], &original);
    assert_eq!(common::stored(&env, &key_b64, "svc").await.as_deref(), Some(original.as_str()), "credentials set stored the token");

    let proxy = Proxy::start(&config).await;
    let caller = provider.client_credentials_token("test").await;
    let c = client::h1(&env.certs.ca);
    let r = get(&c, proxy.addr, "/svc/me", Some(&caller)).await;
    assert_eq!(r.status, 200, "{:?}\nprovider log:\n{}", r.body, provider.log());
    let (_, claims) = upstream_jwt(&up, &provider);
    assert_eq!(claims["sub"], "alice", "the user of the code flow: {claims}");
    assert_eq!(claims["client_id"], WEBAPP.0, "{claims}");
    assert_eq!(claims["scope"], "test", "{claims}");
    proxy.stop().await;

    let rotated = common::stored(&env, &key_b64, "svc").await.expect("a refresh token is still stored");
    assert_ne!(rotated, original, "the provider rotated the refresh token and gatehouse stored the new one");
    let records = refreshes(&env, "svc");
    assert!(records.iter().any(|r| r["kind"] == "refresh_token" && r["outcome"] == "ok"), "{records:?}");
    let audit = std::fs::read_to_string(env.audit_path()).expect("audit");
    assert!(!audit.contains(&original) && !audit.contains(&rotated), "no refresh token in the audit log");

    // At the provider: the stored token is the live one...
    let refresh = |rt: String| {
        let provider = &provider;
        async move {
            provider.token_request(Some(WEBAPP), &[("grant_type", "refresh_token"), ("refresh_token", &rt), ("resource", RESOURCE)]).await
        }
    };
    let (status, answer) = refresh(rotated.clone()).await;
    assert_eq!(status, 200, "the stored (rotated) refresh token works: {answer}\nprovider log:\n{}", provider.log());
    // ...and the original was consumed by gatehouse's refresh.
    let (status, answer) = refresh(original).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_grant", "the original refresh token no longer works: {answer}");
}

#[tokio::test]
async fn private_key_jwt_upstreams_get_provider_tokens() {
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256, RsaKeySize};
    let keys = [
        ("rsa", KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).expect("RSA key")),
        ("ec", KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key")),
        ("ed", KeyPair::generate_for(&PKCS_ED25519).expect("Ed25519 key")),
    ];
    // A key the provider does not know: the token request must fail.
    let rogue = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("rogue key");
    let kids: Vec<String> = keys.iter().map(|(name, _)| format!("signer-{name}")).collect();
    let publics: Vec<String> = keys.iter().map(|(_, k)| k.public_key_pem()).collect();
    let signer_keys: Vec<SignerKey<'_>> = kids.iter().zip(&publics).map(|(kid, pem)| SignerKey { kid, public_pem: pem }).collect();
    let provider = OidcProvider::start_with(&signer_keys);
    let token_url = provider.token_endpoint().await;

    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let credential = |name: &str, kid: &str| {
        format!(
            "kind = \"client_credentials\"\ntoken_url = \"{token_url}\"\nclient_id = \"{SIGNER}\"\nauth_method = \"private_key_jwt\"\n\
             private_key_file = \"secrets/{name}.pem\"\nkey_id = \"{kid}\"\nscopes = [\"test\"]\nresource = \"{RESOURCE}\""
        )
    };
    let mut routes = String::new();
    for ((name, key), kid) in keys.iter().zip(&kids) {
        write_file(&env, &format!("secrets/{name}.pem"), &key.serialize_pem());
        routes += &upstream(name, &up.http_url(), &credential(name, kid));
    }
    write_file(&env, "secrets/rogue.pem", &rogue.serialize_pem());
    routes += &upstream("rogue", &up.http_url(), &credential("rogue", "signer-ec"));
    let proxy = Proxy::start(&env.write_config_with(&provider.issuer_block(), &routes)).await;
    let caller = provider.client_credentials_token("test").await;
    let c = client::h1(&env.certs.ca);
    for (name, _) in &keys {
        let r = get(&c, proxy.addr, &format!("/{name}/x"), Some(&caller)).await;
        assert_eq!(r.status, 200, "{name}: {:?}\nprovider log:\n{}", r.body, provider.log());
        let (_, claims) = upstream_jwt(&up, &provider);
        assert_eq!(claims["client_id"], SIGNER, "{name}: {claims}");
        assert_eq!(claims["scope"], "test", "{name}: {claims}");
    }
    let before = up.count();
    let r = get(&c, proxy.addr, "/rogue/x", Some(&caller)).await;
    assert_eq!(r.status, 503, "an assertion signed with an unregistered key: {:?}", r.body);
    assert_eq!(up.count(), before, "nothing reached the upstream without a credential");
    let rid = r.header("x-request-id").to_owned();
    proxy.stop().await;

    let record = requests(&env).into_iter().find(|r| r["request_id"] == rid.as_str()).expect("audit record");
    assert_eq!(record["reason"], "credential_unavailable", "{record}");
    let failed = refreshes(&env, "rogue");
    assert!(!failed.is_empty() && failed.iter().all(|r| r["outcome"] == "error"), "{failed:?}");
    assert!(provider.log().contains("grant.error"), "the provider refused the rogue assertion:\n{}", provider.log());
}

const STORE_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// Replicas' config: upstream `svc` with a refresh_token credential at the
/// provider (client `webapp`), the store in `database` (lease 5 s).
fn replica_config(
    env: &TestEnv,
    provider: &OidcProvider,
    token_url: &str,
    database: &common::postgres::TestDatabase,
    up: &TestUpstream,
) -> std::path::PathBuf {
    env.write_policy("all.toml", ALLOW_ALL);
    write_file(env, "secrets/webapp", WEBAPP.1);
    let rest = format!(
        "[store]\npath = \"{db}\"\nkey_env = \"GATEHOUSE_STORE_KEY\"\nlease_s = 5\n\n{}",
        upstream(
            "svc",
            &up.http_url(),
            &format!(
                "kind = \"refresh_token\"\ntoken_url = \"{token_url}\"\nclient_id = \"{}\"\nclient_secret_file = \"secrets/webapp\"\n\
                 scopes = [\"test\"]\nresource = \"{RESOURCE}\"",
                WEBAPP.0
            )
        ),
        db = database.url,
    );
    env.write_config_with(&provider.issuer_block(), &rest)
}

/// Three replicas on one PostgreSQL store share a refresh token from a real
/// code flow at oidc-provider, which rotates it at every use and refuses a
/// token used twice; access tokens live 2 s. Under steady load: every
/// request answered, oidc-provider never refuses a refresh, and about as
/// many refreshes as one instance makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_rotating_refresh_token_at_the_provider() {
    let soak = std::time::Duration::from_secs(std::env::var("GATEHOUSE_REPLICA_SOAK_S").ok().and_then(|s| s.parse().ok()).unwrap_or(20));
    let provider = OidcProvider::start_with_access_ttl(2);
    let token_url = provider.token_endpoint().await;
    let original = provider.code_flow("alice").await["refresh_token"].as_str().expect("refresh_token").to_owned();
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let database = common::postgres::TestDatabase::create().await;
    let config = replica_config(&env, &provider, &token_url, &database, &up);
    let key = STORE_KEY;
    let vars = [("GATEHOUSE_STORE_KEY", key)];
    common::credentials_set(&config, "svc", &vars, &original);
    let replicas: Vec<_> = (0..3).map(|_| common::ChildProxy::spawn_with_env(&config, &vars)).collect();
    for r in &replicas {
        common::wait_ready(r.admin).await;
    }
    let caller = provider.client_credentials_token("test").await;
    let started = std::time::Instant::now();
    let load: Vec<_> = replicas
        .iter()
        .map(|r| {
            let (c, addr, caller) = (client::h1(&env.certs.ca), r.addr, caller.clone());
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0u64, Vec::new());
                while started.elapsed() < soak {
                    let r = get(&c, addr, "/svc/me", Some(&caller)).await;
                    sent += 1;
                    if r.status != 200 {
                        failed.push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    let (mut sent, mut failed) = (0, Vec::new());
    for l in load {
        let (s, f) = l.await.expect("load task");
        sent += s;
        failed.extend(f);
    }
    let log = provider.log();
    let refreshed = log.lines().filter(|l| l.starts_with("grant.success: refresh_token")).count();
    let refused = log.lines().filter(|l| l.starts_with("grant.error")).count();
    let one_instance = soak.as_secs_f64() / 0.8;
    eprintln!(
        "3 replicas at oidc-provider, {soak:?}: {sent} requests, {} failed; {refreshed} refreshes, {refused} refused (one instance: about {one_instance:.0})",
        failed.len()
    );
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), failed.first());
    assert_eq!(refused, 0, "oidc-provider refused a refresh:\n{log}");
    assert!((refreshed as f64) <= one_instance * 1.25 + 3.0, "{refreshed} refreshes for 3 replicas");
    assert!(refreshed >= 3, "tokens of 2 s were refreshed: {refreshed}");
    drop(replicas);
    // The stored token is the live one at the provider.
    let stored = common::stored_in(&database.url, key, "svc").await.expect("a refresh token is stored");
    let (status, answer) =
        provider.token_request(Some(WEBAPP), &[("grant_type", "refresh_token"), ("refresh_token", &stored), ("resource", RESOURCE)]).await;
    assert_eq!(status, 200, "the stored refresh token still works at the provider: {answer}");
}

/// A replica that dies (abort, as kill -9 stops it) right after taking the
/// refresh lease, before its token request: another replica takes over
/// once the 5 s lease ends and answers its caller, and the refresh token
/// stored afterwards still works at oidc-provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_holding_the_lease_leaves_a_working_refresh_token_at_the_provider() {
    let provider = OidcProvider::start();
    let token_url = provider.token_endpoint().await;
    let original = provider.code_flow("alice").await["refresh_token"].as_str().expect("refresh_token").to_owned();
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let database = common::postgres::TestDatabase::create().await;
    let config = replica_config(&env, &provider, &token_url, &database, &up);
    let vars = [("GATEHOUSE_STORE_KEY", STORE_KEY)];
    common::credentials_set(&config, "svc", &vars, &original);
    let mut doomed = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .envs(vars)
        .env("GATEHOUSE_FAILPOINT", "after_lease_taken")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn gatehouse");
    let status = common::wait_exit(&mut doomed).await;
    let died = std::time::Instant::now();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "died at the failpoint: {status:?}");
    let survivor = common::ChildProxy::spawn_with_env(&config, &vars);
    common::wait_ready(survivor.admin).await;
    let caller = provider.client_credentials_token("test").await;
    let r = get(&client::h1(&env.certs.ca), survivor.addr, "/svc/me", Some(&caller)).await;
    let waited = died.elapsed();
    assert_eq!(r.status, 200, "{}\nprovider log:\n{}", String::from_utf8_lossy(&r.body), provider.log());
    assert!(waited < std::time::Duration::from_secs(10), "taken over once the 5 s lease ended: {waited:?}");
    drop(survivor);
    let stored = common::stored_in(&database.url, STORE_KEY, "svc").await.expect("a refresh token is stored");
    assert_ne!(stored, original, "the survivor rotated it");
    let (status, answer) =
        provider.token_request(Some(WEBAPP), &[("grant_type", "refresh_token"), ("refresh_token", &stored), ("resource", RESOURCE)]).await;
    assert_eq!(status, 200, "the stored refresh token works at the provider: {answer}");
    eprintln!("lease holder killed: the survivor answered {waited:?} after the death; the stored token works at oidc-provider");
}
