//! Secret hygiene proven by test (docs/audit.md §11 "No record ever holds a token, a
//! secret, or a query string value"; STYLE 7): the real binary, logging at
//! debug, runs every credential kind at once through good and failing
//! requests; afterwards no audit file, no stderr line and no refusal
//! answered to a caller holds any secret it handled. Every secret is a distinctive random string, so a hit is a
//! leak, never a coincidence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::client::{self, get};
use common::oauth::{OAuthApi, random_hex};
use common::upstream::TestUpstream;
use common::{ALLOW_ALL, ChildProxy, TestEnv};

const KEY_ENV: &str = "GATEHOUSE_STORE_KEY";

/// An upstream `name` behind `/name/` with an OAuth credential at `server`,
/// authenticating as (`client_id`, `secret`) with `auth_method`.
fn oauth_upstream(env: &TestEnv, server: &OAuthApi, name: &str, kind: &str, auth_method: &str, client: (&str, &str)) -> String {
    std::fs::create_dir_all(env.path("secrets")).unwrap();
    std::fs::write(env.path(&format!("secrets/{name}")), format!("{}\n", client.1)).unwrap();
    format!(
        // Tokens may be refetched after a 401 at any age: the test revokes fresh ones.
        "\n[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\nmin_token_age_ms = 0\n[upstream.credential]\nkind = \"{kind}\"\ntoken_url = \"{}\"\n\
         client_id = \"{}\"\nclient_secret_file = \"secrets/{name}\"\nauth_method = \"{auth_method}\"\n{}",
        server.api_url(),
        server.token_url(),
        client.0,
        route(name)
    )
}

fn route(name: &str) -> String {
    format!("\n[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"{name}\"\nstrip_prefix = true\n")
}

/// Every line of every file in the audit folder (rotated files included).
fn audit_text(env: &TestEnv) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(env.path("audit")).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    text
}

/// A caller token's signature part (the text after the last dot).
fn signature(jwt: &str) -> String {
    jwt.rsplit('.').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_token_secret_or_query_value_reaches_the_audit_log_stderr_or_a_refusal_at_debug_level() {
    let env = TestEnv::new().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let api = OAuthApi::start().await;
    api.set_rotation(true, false);
    // A token endpoint that refuses everything and quotes back what it was sent.
    let echo = OAuthApi::start().await;
    echo.fail_next(usize::MAX);
    echo.echo_secrets_in_errors(true);
    let none_upstream = TestUpstream::http().await;

    let post_client = ("gatehouse-post", api.add_client("gatehouse-post"));
    let exchange_client = ("gatehouse-exchange", api.add_client("gatehouse-exchange"));
    let echo_basic = ("echo-basic", echo.add_client("echo-basic"));
    let echo_post = ("echo-post", echo.add_client("echo-post"));
    let echo_exchange = ("echo-exchange", echo.add_client("echo-exchange"));
    let static_value = format!("st-{}", random_hex(16));
    std::fs::write(env.path("static-value"), format!("Bearer {static_value}\n")).unwrap();
    api.accept(&static_value);
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    let key = STANDARD.encode(key);

    let upstreams = [
        oauth_upstream(&env, &api, "cc", "client_credentials", "client_secret_basic", (api.client_id(), api.client_secret())),
        oauth_upstream(&env, &api, "rt", "refresh_token", "client_secret_post", (post_client.0, &post_client.1)),
        oauth_upstream(&env, &api, "tx", "token_exchange", "client_secret_basic", (exchange_client.0, &exchange_client.1)),
        common::plain_upstream("st", &api.api_url(), "kind = \"static\"\nvalue_file = \"static-value\""),
        common::plain_upstream("pt", &api.api_url(), "kind = \"passthrough\""),
        common::plain_upstream("no", &none_upstream.http_url(), "kind = \"none\""),
        oauth_upstream(&env, &echo, "cc-echo", "client_credentials", "client_secret_basic", (echo_basic.0, &echo_basic.1)),
        oauth_upstream(&env, &echo, "rt-echo", "refresh_token", "client_secret_post", (echo_post.0, &echo_post.1)),
        oauth_upstream(&env, &echo, "tx-echo", "token_exchange", "client_secret_basic", (echo_exchange.0, &echo_exchange.1)),
    ];
    let store = format!("[store]\npath = \"data/gatehouse.db\"\nkey_env = \"{KEY_ENV}\"\n");
    let config = env.write_config(&format!("{store}{}", upstreams.concat()));
    common::credentials_set(&config, "rt", &[(KEY_ENV, &key)], &api.new_refresh_token());
    common::credentials_set(&config, "rt-echo", &[(KEY_ENV, &key)], &echo.new_refresh_token());

    let proxy = ChildProxy::spawn_with_env(&config, &[(KEY_ENV, &key), ("GATEHOUSE_LOG", "info,gatehouse=debug")]);
    common::wait_ready(proxy.admin).await;
    let c = client::h1(&env.certs.ca);
    let good = env.token_with(serde_json::json!({"sub": "alice", "aud": "gatehouse", "scope": "test", "jti": random_hex(8)}));
    let bob = env.token_with(serde_json::json!({"sub": "bob", "aud": "gatehouse", "scope": "test", "jti": random_hex(8)}));
    let weak = env.token_with(serde_json::json!({"sub": "carol", "aud": "gatehouse", "scope": "other", "jti": random_hex(8)}));
    let mut forged_signature = [0u8; 64];
    aws_lc_rs::rand::fill(&mut forged_signature).unwrap();
    let (signed, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(forged_signature));
    let query_values = [format!("SECRETapikey{}", random_hex(12)), format!("pw{}", random_hex(12))];
    let query = format!("?api_key={}&password={}", query_values[0], query_values[1]);

    let mut statuses = Vec::new();
    // The bodies of the answers that are not the upstream's content.
    let mut refusals = String::new();
    let mut send = async |path: &str, token: Option<&str>| {
        let r = get(&c, proxy.addr, &format!("{path}{query}"), token).await;
        statuses.push((path.to_owned(), r.status.as_u16()));
        if r.status != 200 {
            refusals.push_str(&format!("{path} {}: {}\n", r.status, String::from_utf8_lossy(&r.body)));
        }
    };
    for route in ["cc", "rt", "tx", "st", "pt", "no", "cc-echo", "rt-echo", "tx-echo"] {
        send(&format!("/{route}/items"), Some(&good)).await;
    }
    send("/tx/items", Some(&bob)).await;
    send("/cc/items", Some(&forged)).await;
    send("/cc/items", Some(&weak)).await;
    send("/cc/items", None).await;
    send("/nowhere", Some(&good)).await;
    api.revoke_all();
    send("/cc/after-revoke", Some(&good)).await;
    send("/rt/after-revoke", Some(&good)).await;
    api.refuse_all(true);
    send("/cc/refused", Some(&good)).await;
    send("/tx/refused", Some(&bob)).await;
    api.refuse_all(false);
    let expected = [
        ("/cc/items", 200),
        ("/rt/items", 200),
        ("/tx/items", 200),
        ("/st/items", 200),
        ("/pt/items", 401),
        ("/no/items", 200),
        ("/cc-echo/items", 503),
        ("/rt-echo/items", 503),
        ("/tx-echo/items", 503),
        ("/tx/items", 200),
        ("/cc/items", 401),
        ("/cc/items", 403),
        ("/cc/items", 401),
        ("/nowhere", 404),
        ("/cc/after-revoke", 200),
        ("/rt/after-revoke", 200),
        ("/cc/refused", 502),
        ("/tx/refused", 502),
    ];
    let expected: Vec<(String, u16)> = expected.iter().map(|(p, s)| ((*p).to_owned(), *s)).collect();
    assert_eq!(statuses, expected, "every case did what it should before we look for leaks");
    assert!(!echo.echoed().is_empty(), "the echoing endpoint did quote the secrets back");
    assert!(api.refresh_tokens().len() >= 3, "the rt upstream's refresh token was rotated");

    let mut proxy = proxy;
    proxy.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = common::wait_exit(&mut proxy.child).await;
    assert!(status.success(), "{status:?}");
    let mut stderr = std::mem::take(&mut proxy.startup_lines);
    loop {
        match proxy.stderr_lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => stderr.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("stderr did not end after the process exited"),
        }
    }
    let stderr = stderr.join("\n");
    let audit = audit_text(&env);

    // Both outputs really hold what happened: debug logging is on and every request was audited.
    assert!(stderr.contains("\"level\":\"DEBUG\""), "GATEHOUSE_LOG=debug took effect:\n{stderr}");
    assert_eq!(audit.lines().filter(|l| l.contains("\"event\":\"request\"")).count(), expected.len(), "{audit}");
    assert!(audit.contains("\"event\":\"credential_refresh\""));

    let mut secrets: Vec<(String, String)> = Vec::new();
    for (what, jwt) in [("caller token", &good), ("caller token", &bob), ("denied caller token", &weak), ("forged caller token", &forged)] {
        secrets.push((what.to_owned(), jwt.clone()));
        secrets.push((format!("{what} signature"), signature(jwt)));
    }
    secrets.extend(api.secrets().into_iter().map(|s| ("token endpoint secret".to_owned(), s)));
    secrets.extend(echo.secrets().into_iter().map(|s| ("echoing token endpoint secret".to_owned(), s)));
    secrets.push(("static credential".to_owned(), static_value.clone()));
    secrets.extend(query_values.iter().map(|q| ("query value".to_owned(), q.clone())));
    secrets.push(("store key".to_owned(), key.clone()));
    for expected in [api.client_secret(), &post_client.1, &exchange_client.1, &echo_basic.1, &echo_post.1, &echo_exchange.1] {
        assert!(secrets.iter().any(|(_, s)| s == expected), "every client secret is searched for");
    }

    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        for (place, text) in [("audit log", &audit), ("stderr", &stderr), ("answers to callers", &refusals)] {
            if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
                leaks.push(format!("{what} `{secret}` in the {place}: {line}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n"));
}
