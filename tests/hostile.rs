//! Hostile callers, grouped by threat: a caller who stalls (bodies never
//! sent, answers never read), provokes upstream 401s, spoofs headers, sends
//! paths that upstream frameworks read differently, forges log lines, or
//! leaves mid-request. Each test fails on a proxy without the defence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::{self, get};
use common::oauth::OAuthApi;
use common::upstream::TestUpstream;
use common::{ALLOW_ALL, ChildProxy, Proxy, TestEnv};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(env: &TestEnv, up: &TestUpstream, extra: &str) -> Proxy {
    env.write_policy("all.toml", ALLOW_ALL);
    Proxy::start(&env.write_config(&common::svc_route(&up.http_url(), "", extra))).await
}

/// An HTTP/2 connection (ALPN h2) with this initial stream window.
async fn h2_connect(addr: SocketAddr, ca: &Path, window: u32) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let cfg = client::tls_config(ca, &[b"h2"]);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls handshake");
    let (send, conn) = h2::client::Builder::new().initial_window_size(window).handshake(tls).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

fn h2_request(addr: SocketAddr, method: &str, path: &str, token: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .header("authorization", format!("Bearer {token}"))
}

/// The request record with this status, once the proxy has stopped.
fn record_with_status(env: &TestEnv, status: u64) -> serde_json::Value {
    let records = env.audit_records();
    records.iter().find(|r| r["status"] == status).cloned().unwrap_or_else(|| panic!("no record with status {status}: {records:#?}"))
}

// ---- Stalling: no caller can hold what other callers need ----

/// 64 HTTP/2 connections × 256 streams announce a 100-byte body on an
/// OAuth route and never send it; 100 more streams never open their window
/// to read a 1 MiB answer. Meanwhile 1,000 ordinary requests must all be
/// answered quickly, and /readyz must stay truthful.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_bodies_and_unread_answers_do_not_stall_other_callers() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let api = OAuthApi::start().await;
    std::fs::create_dir_all(env.path("secrets")).unwrap();
    std::fs::write(env.path("secrets/slow"), api.client_secret()).unwrap();
    env.write_policy("all.toml", ALLOW_ALL);
    let config = env.write_config(&format!(
        r#"
[[upstream]]
name = "slow"
url = "{up}"
http2 = true
[upstream.credential]
kind = "client_credentials"
token_url = "{token_url}"
client_id = "{client_id}"
client_secret_file = "secrets/slow"

[[route]]
name = "slow"
path_prefix = "/slow/"
upstream = "slow"

{svc}
"#,
        up = up.http_url(),
        token_url = api.token_url(),
        client_id = api.client_id(),
        svc = common::svc_route(&up.http_url(), "", ""),
    ));
    let proxy = ChildProxy::spawn(&config);
    common::wait_ready(proxy.admin).await;
    let token = env.token("svc-a", "test");

    // The stalled bodies: every stream announces 100 bytes and sends none.
    let (mut held, mut drivers) = (Vec::new(), Vec::new());
    for _ in 0..64 {
        let (mut send, driver) = h2_connect(proxy.addr, &env.certs.ca, 65_535).await;
        for i in 0..256 {
            send = send.ready().await.expect("stream slot");
            let req =
                h2_request(proxy.addr, "POST", &format!("/slow/upload/{i}"), &token).header("content-length", "100").body(()).unwrap();
            let (answer, body) = send.send_request(req, false).expect("send");
            held.push((answer, body));
        }
        drivers.push((send, driver));
    }
    // The unread answers: a window of 0, so not one byte can be delivered.
    let (mut unread, _driver) = h2_connect(proxy.addr, &env.certs.ca, 0).await;
    let mut answers = Vec::new();
    for _ in 0..100 {
        unread = unread.ready().await.expect("stream slot");
        let req = h2_request(proxy.addr, "GET", "/svc/download?bytes=1048576", &token).body(()).unwrap();
        answers.push(unread.send_request(req, true).expect("send").0);
    }

    // Every one of them has reached the pipeline and holds what it holds.
    common::wait_metric(proxy.admin, "gatehouse_requests_in_flight", 64 * 256 + 100).await;
    let c = client::h1(&env.certs.ca);
    let mut took = Vec::with_capacity(1000);
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (c, token, addr) = (c.clone(), token.clone(), proxy.addr);
            tokio::spawn(async move {
                let mut took = Vec::new();
                for i in 0..125 {
                    let t = Instant::now();
                    let r = get(&c, addr, &format!("/svc/ordinary/{w}/{i}"), Some(&token)).await;
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    took.push(t.elapsed());
                }
                took
            })
        })
        .collect();
    for w in workers {
        took.extend(w.await.unwrap());
    }
    let all = started.elapsed();
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    let ready = client::admin_get(proxy.admin, "/readyz").await.map(|(s, _)| s);
    let rss_mib = proxy.rss_kib() / 1024;
    eprintln!(
        "stall test: 1,000 ordinary requests in {all:?}, p50 {:?}, p99 {p99:?}, max {:?}; /readyz {ready:?}; \
         RSS {rss_mib} MiB with 16,384 stalled bodies and 100 unread answers held",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert_eq!(took.len(), 1000);
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    assert_eq!(ready, Some(200), "/readyz stays truthful: the proxy is serving");
    assert!(rss_mib < 1024, "memory stays bounded: {rss_mib} MiB");
    drop((held, answers, drivers));
}

#[tokio::test]
async fn a_request_body_that_stalls_is_cut_after_body_timeout_with_408() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up, "[limits]\nbody_timeout_ms = 300\n").await;
    let token = env.token("svc-a", "test");
    let mut s = client::tls_connect(proxy.addr, &env.certs.ca).await;
    let head =
        format!("POST /svc/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n0123456789");
    s.write_all(head.as_bytes()).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), client::read_response(&mut s)).await.expect("answered");
    assert_eq!(status, 408);
    proxy.stop().await;
    let r = record_with_status(&env, 408);
    assert_eq!((r["reason"].as_str(), r["bytes_in"].as_u64()), (Some("bad_request"), Some(10)));
}

#[tokio::test]
async fn a_caller_that_drops_its_body_midway_is_audited_499_client_closed_not_502() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up, "").await;
    let token = env.token("svc-a", "test");
    let mut s = client::tls_connect(proxy.addr, &env.certs.ca).await;
    let head = format!("POST /svc/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'x'; 5000]).await.unwrap();
    s.flush().await.unwrap();
    // The upstream has the request (its body is being read) before the caller leaves.
    common::wait_metric(proxy.admin, "gatehouse_requests_in_flight", 1).await;
    drop(s);
    common::wait_metric(proxy.admin, "gatehouse_requests_in_flight", 0).await;
    proxy.stop().await;
    let records = env.audit_records();
    let r = records.iter().find(|r| r["path"] == "/svc/upload").expect("the request has its record");
    assert_eq!((r["status"].as_u64(), r["reason"].as_str()), (Some(499), Some("client_closed")), "{r}");
}

#[tokio::test]
async fn a_caller_that_does_not_read_its_answer_is_cut_off_after_write_timeout() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up, "[limits]\nwrite_timeout_ms = 300\n").await;
    let token = env.token("svc-a", "test");
    // HTTP/1.1: the socket fills up and the caller never drains it.
    let mut s = client::tls_connect(proxy.addr, &env.certs.ca).await;
    let head = format!("GET /svc/download?bytes=268435456 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    common::wait_metric(proxy.admin, "gatehouse_requests_in_flight", 1).await;
    // Not a byte read: the connection must be gone well before 256 MiB could flow.
    common::wait_metric(proxy.admin, "gatehouse_requests_in_flight", 0).await;
    // HTTP/2 with a shut window: hyper never asks for the answer's next piece.
    let (mut send, driver) = h2_connect(proxy.addr, &env.certs.ca, 0).await;
    send = send.ready().await.unwrap();
    let req = h2_request(proxy.addr, "GET", "/svc/download?bytes=1048576", &token).body(()).unwrap();
    let (answer, _) = send.send_request(req, true).unwrap();
    let head = answer.await.expect("the head is sent: it needs no window");
    assert_eq!(head.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), driver).await.expect("the connection was closed").unwrap();
    drop(s);
    proxy.stop().await;
    let abandoned = env.audit_records().iter().filter(|r| r["reason"] == "client_closed").count();
    assert_eq!(abandoned, 2, "both answers are audited as abandoned by the caller");
}

// ---- Upstream 401s cannot be turned into a token-request storm (tests/credentials.rs) ----

// ---- Spoofing: the upstream sees only the proxy's word ----

#[tokio::test]
async fn headers_that_restate_identity_method_path_or_client_never_reach_the_upstream() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up, "").await;
    let token = env.token("svc-a", "test");
    let spoofed = [
        "x_gatehouse-sub",
        "x-gatehouse_sub",
        "x_gatehouse_iss",
        "x-gatehouse-assertion",
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x_forwarded_for",
        "x_forwarded-host",
        "x-real-ip",
    ];
    let mut head = format!("GET /svc/plain HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n");
    for name in spoofed {
        head.push_str(&format!("{name}: spoofed\r\n"));
    }
    head.push_str("\r\n");
    let answer = client::raw(proxy.addr, &env.certs.ca, head.as_bytes()).await;
    assert_eq!(client::raw_status(&answer), 200, "{answer}");
    let seen = up.last();
    for (name, value) in &seen.headers {
        assert_ne!(value, "spoofed", "{name} reached the upstream");
    }
    assert_eq!(seen.headers["x-gatehouse-sub"], "svc-a");
    assert_eq!(seen.method, "GET");
    proxy.stop().await;
}

// ---- Paths that upstream frameworks read differently (see also tests/differential.rs) ----

#[tokio::test]
async fn ambiguous_path_spellings_are_refused_unless_the_route_allows_them() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let lax = "[[route]]\nname = \"lax\"\npath_prefix = \"/lax/\"\nupstream = \"svc\"\nstrip_prefix = true\n\
               allow_path_params = true\nallow_encoded_percent = true\n";
    env.write_policy(
        "p.toml",
        r#"
[[rule]]
id = "all"
route = "*"
scopes_all = ["test"]

[[rule]]
id = "no-admin"
route = "*"
paths = ["/svc/admin/**", "/lax/admin/**"]
effect = "deny"
"#,
    );
    let proxy = Proxy::start(&env.write_config(&common::svc_route(&up.http_url(), "", lax))).await;
    let token = env.token("svc-a", "test");
    let c = client::h1(&env.certs.ca);
    for path in ["/svc/admin;x=1/users", "/svc/admin./users", "/svc/admin%20/users", "/svc/%252e%252e/admin/users", "/svc/x/%25"] {
        let r = get(&c, proxy.addr, path, Some(&token)).await;
        assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (400, Some("invalid_request")), "{path}");
    }
    let before = up.count();
    assert_eq!(get(&c, proxy.addr, "/lax/a;v=1/b%25c", Some(&token)).await.status, 200);
    assert_eq!(up.last().uri, "/a;v=1/b%25c", "an opted-out route forwards them unchanged");
    assert_eq!(
        get(&c, proxy.addr, "/lax/admin;x/users", Some(&token)).await.status,
        200,
        "the deny rule matches on the segment as written"
    );
    assert_eq!(up.count(), before + 2);
    proxy.stop().await;
    let refused = env.audit_records().iter().filter(|r| r["reason"] == "bad_path").count();
    assert_eq!(refused, 5);
}

#[tokio::test]
async fn non_ascii_bytes_are_forwarded_percent_encoded_once_never_as_latin_1() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up, "").await;
    let token = env.token("svc-a", "test");
    let head =
        format!("GET /svc/caf\u{e9}/%C3%A9 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let answer = client::raw(proxy.addr, &env.certs.ca, head.as_bytes()).await;
    assert_eq!(client::raw_status(&answer), 200, "{answer}");
    assert_eq!(up.last().uri, "/caf%C3%A9/%C3%A9");
    proxy.stop().await;
}

#[tokio::test]
async fn a_host_with_a_trailing_dot_is_the_same_host() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let hosted = "[[route]]\nname = \"internal\"\npath_prefix = \"/\"\nupstream = \"svc\"\nhost = \"api.internal\"\n";
    let proxy = start(&env, &up, hosted).await;
    let token = env.token("svc-a", "test");
    for host in ["api.internal", "api.internal.", "API.Internal.:8443"] {
        let head = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        let answer = client::raw(proxy.addr, &env.certs.ca, head.as_bytes()).await;
        assert_eq!(client::raw_status(&answer), 200, "{host}: {answer}");
    }
    proxy.stop().await;
    assert!(env.audit_records().iter().filter(|r| r["event"] == "request").all(|r| r["route"] == "internal"));
}

// ---- Log forging and what answers show ----

#[tokio::test]
async fn a_forged_log_line_in_a_token_header_is_escaped_in_the_log_and_the_answer() {
    use base64::Engine;
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let config = env.write_config(&common::svc_route(&up.http_url(), "", ""));
    // Text logs, as an operator on a terminal reads them.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["--config"])
        .arg(&config)
        .arg("serve")
        .env("GATEHOUSE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let serving = loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("gatehouse did not start");
        if line.contains("gatehouse is serving") {
            break line;
        }
    };
    let field = |name: &str| serving.split(&format!("{name}=")).nth(1).and_then(|s| s.split_whitespace().next()).unwrap().to_owned();
    let (addr, admin): (SocketAddr, SocketAddr) = (field("proxy").parse().unwrap(), field("admin").parse().unwrap());
    common::wait_ready(admin).await;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let forged = "XX\n2026-12-04T00:00:00.000000Z  INFO gatehouse: FORGED admin login ok";
    let token = format!(
        "{}.{}.sig",
        b64(serde_json::json!({"alg": forged, "kid": "k\r\nFORGED kid"})),
        b64(serde_json::json!({"iss": env.issuer.issuer, "sub": "x", "exp": 4_000_000_000u64}))
    );
    let c = client::h1(&env.certs.ca);
    let r = get(&c, addr, "/svc/x", Some(&token)).await;
    assert_eq!(r.status, 401);
    let description = r.json()["error_description"].as_str().unwrap().to_owned();
    assert!(!description.contains('\n') && description.contains("\\u{a}"), "{description}");
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let log: Vec<String> = rx.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("caller not authenticated")), "{log:#?}");
    let forged_lines: Vec<&String> = log.iter().filter(|l| l.contains("FORGED") && !l.contains("caller not authenticated")).collect();
    assert!(forged_lines.is_empty(), "a caller forged log lines: {forged_lines:#?}");
}

#[tokio::test]
async fn answers_show_no_internal_address_or_connection_error_and_count_their_bytes() {
    let env = TestEnv::new().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let dead_route = format!(
        "[[upstream]]\nname = \"dead\"\nurl = \"http://{dead_addr}\"\n\n[[route]]\nname = \"dead\"\npath_prefix = \"/dead/\"\nupstream = \"dead\"\n\n\
         [[upstream]]\nname = \"nocred\"\nurl = \"http://{dead_addr}\"\n[upstream.credential]\nkind = \"client_credentials\"\n\
         token_url = \"http://{dead_addr}/token\"\nclient_id = \"c\"\nclient_secret_env = \"PATH\"\n\n\
         [[route]]\nname = \"nocred\"\npath_prefix = \"/nocred/\"\nupstream = \"nocred\"\n"
    );
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy = Proxy::start(&env.write_config(&dead_route)).await;
    let token = env.token("svc-a", "test");
    let c = client::h1(&env.certs.ca);
    for (path, status) in [("/dead/x", 502), ("/nocred/x", 503)] {
        let r = get(&c, proxy.addr, path, Some(&token)).await;
        assert_eq!(r.status, status);
        let body = String::from_utf8_lossy(&r.body).to_string();
        for internal in [dead_addr.to_string().as_str(), "127.0.0.1", "refused", "os error"] {
            assert!(!body.to_ascii_lowercase().contains(&internal.to_ascii_lowercase()), "{path} shows `{internal}`: {body}");
        }
    }
    let refused = get(&c, proxy.addr, "/dead/x", None).await;
    assert_eq!(refused.status, 401);
    proxy.stop().await;
    let records = env.audit_records();
    let unauthenticated = records.iter().rev().find(|r| r["status"] == 401).unwrap();
    assert_eq!(unauthenticated["bytes_out"].as_u64(), Some(refused.body.len() as u64), "the proxy's own body is counted");
}

#[tokio::test]
async fn each_issuer_has_its_own_token_size_limit() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let issuers = format!(
        "[[issuer]]\nissuer = \"{}\"\naudiences = [\"gatehouse\"]\nmax_token_bytes = 1024\n\n\
         [[issuer]]\nissuer = \"https://big.example\"\naudiences = [\"gatehouse\"]\njwks_uri = \"{}\"\nmax_token_bytes = 65536\n",
        env.issuer.issuer,
        format_args!("{}/jwks", env.issuer.issuer),
    );
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy = Proxy::start(&env.write_config_with(&issuers, &common::svc_route(&up.http_url(), "", ""))).await;
    let c = client::h1(&env.certs.ca);
    let small = env.token("svc-a", "test");
    assert_eq!(get(&c, proxy.addr, "/svc/x", Some(&small)).await.status, 200);
    let padded = env.token_with(serde_json::json!({"sub": "svc-a", "aud": "gatehouse", "scope": "test", "pad": "p".repeat(2000)}));
    let r = get(&c, proxy.addr, "/svc/x", Some(&padded)).await;
    assert_eq!(r.status, 401, "the dev issuer's 1 KiB limit holds although another issuer allows 64 KiB");
    assert!(r.json()["error_description"].as_str().unwrap().contains("longer than 1024"));
    proxy.stop().await;
}

#[tokio::test]
async fn the_admin_listener_closes_a_connection_that_never_finishes_its_request_head() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up, "[limits]\nheader_timeout_ms = 300\n").await;
    let mut s = TcpStream::connect(proxy.admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a").await.unwrap();
    assert!(client::closed_within(&mut s, Duration::from_secs(10)).await, "slowloris on the admin listener");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    proxy.stop().await;
}

// ---- HTTP/2 abuse against the real binary (tests/abuse/h2_abuse.py) ----

/// Rapid reset (CVE-2023-44487), CONTINUATION flood (CVE-2024-27316),
/// SETTINGS and PING floods, and server-provoked resets (MadeYouReset,
/// CVE-2025-8671), each from a real HTTP/2 frame writer: the process stays
/// up, memory stays bounded and an ordinary caller is served after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_and_reset_attacks_leave_the_proxy_up_and_serving() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/.venv/bin/python3");
    assert!(python.is_file(), "{} is missing: run `scripts/test`, which installs tests/abuse/requirements.txt", python.display());
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let mut proxy = ChildProxy::spawn(&env.write_config(&common::svc_route(&up.http_url(), "", "")));
    common::wait_ready(proxy.admin).await;
    let token = env.token("svc-a", "test");
    let c = client::h2(&env.certs.ca);
    let attacks: [(&str, &[&str]); 6] = [
        ("rapid-reset", &["--count", "20000"]),
        ("continuation-flood", &["--count", "100000"]),
        ("settings-flood", &["--count", "100000"]),
        ("ping-flood", &["--count", "100000"]),
        ("made-you-reset", &["--count", "5000", "--variant", "content-length"]),
        ("made-you-reset", &["--count", "5000", "--variant", "window-update-zero"]),
    ];
    for (attack, extra) in attacks {
        let out = tokio::process::Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/abuse/h2_abuse.py"))
            .args(["--host", "127.0.0.1", "--port", &proxy.addr.port().to_string(), "--path", "/svc/x", "--seconds", "4"])
            .arg("--cafile")
            .arg(&env.certs.ca)
            .args(["--server-name", "localhost", "--authority", "localhost", "--token", &token, "--attack", attack])
            .args(extra)
            .output()
            .await
            .expect("run the abuse client");
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{attack}: {report} {}", String::from_utf8_lossy(&out.stderr));
        assert!(proxy.child.try_wait().unwrap().is_none(), "{attack} brought the proxy down");
        let r = get(&c, proxy.addr, "/svc/after", Some(&token)).await;
        assert_eq!(r.status, 200, "{attack}: an ordinary caller is served after it");
        eprintln!("{attack}: {} | RSS {} MiB", report.trim(), proxy.rss_kib() / 1024);
    }
    let peak = proxy.peak_rss_kib() / 1024;
    eprintln!("HTTP/2 abuse: peak RSS {peak} MiB");
    assert!(peak < 512, "memory stays bounded under HTTP/2 abuse: {peak} MiB");
}
