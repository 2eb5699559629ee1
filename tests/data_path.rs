//! The data path over real loopback sockets and real TLS handshakes:
//! h1/h2 callers, http/https/h2 upstreams, prefix stripping, docs/wire.md §3-4 path
//! rules and refusals, §10 header hygiene, limits and timeouts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::time::Duration;

use common::client::{self, get, raw, raw_status};
use common::upstream::TestUpstream;
use common::{ALLOW_ALL, Proxy, TestEnv};
use http::Version;

async fn start(env: &TestEnv, up: &TestUpstream) -> Proxy {
    env.write_policy("all.toml", ALLOW_ALL);
    Proxy::start(&env.write_config(&common::svc_route(&up.http_url(), "", ""))).await
}

#[tokio::test]
async fn h1_and_h2_callers_reach_an_http_upstream_with_the_prefix_stripped() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up).await;
    let token = env.token("svc-a", "test");
    for (client, version) in [(client::h1(&env.certs.ca), Version::HTTP_11), (client::h2(&env.certs.ca), Version::HTTP_2)] {
        let r = client.request(
            http::Request::get(format!("https://localhost:{}/svc/a/./b/../c?q=%2F1", proxy.addr.port()))
                .header("authorization", format!("Bearer {token}"))
                .body(gatehouse::body::empty())
                .unwrap(),
        );
        let r = r.await.unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let seen = up.last();
        assert_eq!(seen.uri, "/a/c?q=%2F1", "normalized, stripped path; query unchanged");
        assert_eq!(seen.headers["x-request-id"], rid.as_str(), "same request id upstream and in the answer");
        assert_eq!(seen.headers["x-gatehouse-sub"], "svc-a");
        assert!(seen.headers.get("authorization").is_none(), "the caller's token is never forwarded by kind none");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn https_upstream_with_ca_file_over_h1_and_h2() {
    let env = TestEnv::new().await;
    let up = TestUpstream::https(&env.certs).await;
    env.write_policy("all.toml", ALLOW_ALL);
    let ca = env.certs.ca.display().to_string();
    let h2 = format!(
        "[[upstream]]\nname = \"h2\"\nurl = \"{}\"\nca_file = \"{ca}\"\nhttp2 = true\n\n[[route]]\nname = \"h2\"\npath_prefix = \"/h2/\"\nupstream = \"h2\"\nstrip_prefix = true\n",
        up.https_url()
    );
    let cfg = format!("{}\n{h2}", common::svc_route(&up.https_url(), &format!("ca_file = \"{ca}\""), ""));
    let proxy = Proxy::start(&env.write_config(&cfg)).await;
    let token = env.token("svc-a", "test");
    let c = client::h1(&env.certs.ca);
    let r = get(&c, proxy.addr, "/svc/x", Some(&token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(up.last().uri, "/x");
    let r = get(&c, proxy.addr, "/h2/y", Some(&token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = up.last();
    assert_eq!(seen.uri, "/y");
    assert_eq!(seen.version, Version::HTTP_2, "http2 = true speaks h2 to the upstream");
    proxy.stop().await;
}

#[tokio::test]
async fn each_spec_path_refusal_is_a_400_and_never_reaches_the_upstream() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up).await;
    let token = env.token("svc-a", "test");
    let cases = [
        "GET /svc/a%2Fb HTTP/1.1",
        "GET /svc/a%2fb HTTP/1.1",
        "GET /svc/a%5Cb HTTP/1.1",
        "GET /svc/a%00b HTTP/1.1",
        "GET /svc/../../etc HTTP/1.1",
        "GET /svc/%2e%2e/%2e%2e/etc HTTP/1.1",
        "GET https://evil.example/svc/a HTTP/1.1",
        "OPTIONS * HTTP/1.1",
        "CONNECT localhost:443 HTTP/1.1",
    ];
    for line in cases {
        let req = format!("{line}\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        let answer = raw(proxy.addr, &env.certs.ca, req.as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{line} → {answer}");
        assert!(answer.to_ascii_lowercase().contains("x-request-id:"), "{answer}");
    }
    assert_eq!(up.count(), 0, "no refused request reached the upstream");
    proxy.stop().await;
    let records = env.audit_records();
    assert_eq!(records.iter().filter(|r| r["reason"] == "bad_path").count(), cases.len(), "{records:#?}");
}

#[tokio::test]
async fn absolute_form_with_the_host_authority_is_accepted_and_normalized() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up).await;
    let token = env.token("svc-a", "test");
    let port = proxy.addr.port();
    let req = format!(
        "GET https://localhost:{port}/svc/a/./b/../c HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(proxy.addr, &env.certs.ca, req.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(up.last().uri, "/a/c");
    proxy.stop().await;
}

#[tokio::test]
async fn spoofed_identity_headers_and_connection_nomination_cannot_fake_proxy_headers() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up).await;
    let token = env.token("svc-a", "test");
    let req = format!(
        "GET /svc/h HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nx-gatehouse-sub: admin\r\nx_gatehouse_iss: evil\r\n\
         X-Gatehouse-Extra: 1\r\nx-request-id: forged\r\nx-forwarded-for: 6.6.6.6\r\nConnection: close, x-forwarded-for, x-request-id, x-gatehouse-sub\r\n\r\n"
    );
    let answer = raw(proxy.addr, &env.certs.ca, req.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = up.last();
    assert_eq!(seen.headers["x-gatehouse-sub"], "svc-a");
    assert_eq!(seen.headers["x-gatehouse-iss"], env.issuer.issuer.as_str());
    assert!(seen.headers.get("x_gatehouse_iss").is_none() && seen.headers.get("x-gatehouse-extra").is_none());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1", "the nominated caller value is gone, ours remains");
    assert_ne!(seen.headers["x-request-id"], "forged");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "localhost");
    assert!(seen.headers.get("connection").is_none());
    let lower = answer.to_ascii_lowercase();
    assert!(!lower.contains("x-upstream-hop"), "a header the upstream's Connection names is not passed back: {answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn xff_appends_the_peer_rightmost() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up).await;
    let token = env.token("svc-a", "test");
    let req = format!(
        "GET /svc/h HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nx-forwarded-for: 10.1.1.1\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_status(&raw(proxy.addr, &env.certs.ca, req.as_bytes()).await), 200);
    assert_eq!(up.last().headers["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy =
        Proxy::start(&env.write_config(&format!("[limits]\nmax_header_bytes = 8192\n{}", common::svc_route(&up.http_url(), "", "")))).await;
    let big = "a".repeat(20_000);
    let req = format!("GET /svc/h HTTP/1.1\r\nHost: localhost\r\nx-big: {big}\r\nConnection: close\r\n\r\n");
    let answer = raw(proxy.addr, &env.certs.ca, req.as_bytes()).await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    // A port with nothing listening: bind, read the port, close.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    env.write_policy("all.toml", ALLOW_ALL);
    let cfg = format!(
        "{}\n[[upstream]]\nname = \"dead\"\nurl = \"http://{closed}\"\nconnect_timeout_ms = 500\n\n[[route]]\nname = \"dead\"\npath_prefix = \"/dead/\"\nupstream = \"dead\"\n",
        common::svc_route(&up.http_url(), "response_timeout_ms = 300", "")
    );
    let proxy = Proxy::start(&env.write_config(&cfg)).await;
    let token = env.token("svc-a", "test");
    let c = client::h1(&env.certs.ca);
    let r = get(&c, proxy.addr, "/dead/x", Some(&token)).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_error");
    let r = get(&c, proxy.addr, "/svc/slow?ms=3000", Some(&token)).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(r.json()["request_id"], r.header("x-request-id"));
    proxy.stop().await;
    let records = env.audit_records();
    let reasons: Vec<&str> = records.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert!(reasons.contains(&"upstream_error") && reasons.contains(&"upstream_timeout"), "{reasons:?}");
    assert!(records.iter().filter(|r| r["event"] == "request").all(|r| r["decision"] == "allow"));
}

#[tokio::test]
async fn upstream_connections_are_reused_but_never_after_a_close_or_a_half_read_body() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up).await;
    let token = env.token("svc-a", "test");
    let c = client::h1(&env.certs.ca);
    for _ in 0..5 {
        assert_eq!(get(&c, proxy.addr, "/svc/a", Some(&token)).await.status, 200);
    }
    assert_eq!(up.connections(), 1, "sequential requests share one upstream connection");

    // The upstream closes after answering: the next request opens a new one.
    assert_eq!(get(&c, proxy.addr, "/svc/close", Some(&token)).await.status, 200);
    assert_eq!(get(&c, proxy.addr, "/svc/a", Some(&token)).await.status, 200);
    assert_eq!(up.connections(), 2);

    // A download the caller abandons half-way: its upstream connection is
    // mid-response and must not serve anyone else.
    let c2 = client::h1(&env.certs.ca);
    let r = c2
        .request(
            http::Request::get(format!("https://localhost:{}/svc/download?bytes={}", proxy.addr.port(), 64 << 20))
                .header("authorization", format!("Bearer {token}"))
                .body(gatehouse::body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    drop(c2);
    for _ in 0..3 {
        let r = get(&c, proxy.addr, "/svc/a", Some(&token)).await;
        assert_eq!(r.status, 200);
        assert!(r.json()["body_len"].is_number(), "a whole answer from the upstream, not download bytes");
    }
    assert_eq!(up.connections(), 3, "the download's connection was not reused; the other one was");
    proxy.stop().await;
}

#[tokio::test]
async fn no_route_is_404_and_missing_token_is_401() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up).await;
    let c = client::h1(&env.certs.ca);
    let r = get(&c, proxy.addr, "/nowhere", Some(&env.token("svc-a", "test"))).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    let r = get(&c, proxy.addr, "/svc/x", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"gatehouse\"");
    assert_eq!(up.count(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn admin_health_ready_and_metrics() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let proxy = start(&env, &up).await;
    let c = client::h1(&env.certs.ca);
    assert_eq!(get(&c, proxy.addr, "/svc/m", Some(&env.token("a", "test"))).await.status, 200);
    assert_eq!(client::admin_get(proxy.admin, "/healthz").await.unwrap().0, 200);
    assert_eq!(client::admin_get(proxy.admin, "/readyz").await.unwrap().0, 200);
    let (status, metrics) = client::admin_get(proxy.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("gatehouse_requests_total{route=\"svc\",decision=\"allow\",status=\"200\"} 1"), "{metrics}");
    assert!(metrics.contains("gatehouse_jwks_refresh_total{issuer="), "{metrics}");
    proxy.stop().await;
}

#[tokio::test]
async fn slowloris_connection_is_closed_within_the_header_timeout_without_delaying_others() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy =
        Proxy::start(&env.write_config(&format!("[limits]\nheader_timeout_ms = 1000\n{}", common::svc_route(&up.http_url(), "", ""))))
            .await;
    let mut slow = client::tls_connect(proxy.addr, &env.certs.ca).await;
    slow.write_all(b"GET /svc/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.unwrap();
    let opened = std::time::Instant::now();
    // Meanwhile another caller is served at once.
    let c = client::h1(&env.certs.ca);
    let r = tokio::time::timeout(Duration::from_millis(900), get(&c, proxy.addr, "/svc/ok", Some(&env.token("a", "test")))).await;
    assert_eq!(r.expect("an honest caller was delayed by the slowloris connection").status, 200);
    assert!(client::closed_within(&mut slow, Duration::from_secs(5)).await, "the slowloris connection was not closed");
    let closed_after = opened.elapsed();
    assert!(closed_after < Duration::from_millis(2500), "closed after {closed_after:?}, header timeout is 1 s");
    proxy.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_when_client_ca_is_set() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    // A separate CA for clients; its leaf certificate is the client's.
    let clients = gatehouse::dev::certs::write_certs(&env.path("clients"), "client CA", &["connector-1"]).unwrap();
    let cfg = env.write_config(&common::svc_route(&up.http_url(), "", ""));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("tls_key = \"certs/server-key.pem\"", "tls_key = \"certs/server-key.pem\"\nclient_ca = \"clients/dev-ca.pem\"");
    std::fs::write(&cfg, text).unwrap();
    let proxy = Proxy::start(&cfg).await;
    let token = env.token("svc-a", "test");
    let uri = format!("https://localhost:{}/svc/m", proxy.addr.port());
    let request = || http::Request::get(&uri).header("authorization", format!("Bearer {token}")).body(gatehouse::body::empty()).unwrap();
    // Without a client certificate: no answer.
    let anonymous = client::h1(&env.certs.ca);
    assert!(anonymous.request(request()).await.is_err(), "a caller without a client certificate was served");
    // With one signed by the client CA: served.
    let chain = gatehouse::tls::read_certs(&clients.cert).unwrap();
    let key = <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_file(&clients.key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(gatehouse::tls::read_certs(&env.certs.ca).unwrap().remove(0)).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let conn = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let with_cert: client::TestClient = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(conn);
    let r = client::send(&with_cert, request()).await;
    assert_eq!(r.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    // With hyper serving it all along, and given back to wait holding no HTTP state after 50 ms.
    for release_ms in [60_000, 50] {
        let limits = format!("[limits]\nidle_timeout_ms = 300\nidle_release_ms = {release_ms}\n");
        let proxy = Proxy::start(&env.write_config(&format!("{limits}{}", common::svc_route(&up.http_url(), "", "")))).await;
        let token = env.token("svc-a", "test");
        let mut s = client::tls_connect(proxy.addr, &env.certs.ca).await;
        s.write_all(format!("GET /svc/k HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes()).await.unwrap();
        assert_eq!(client::read_response(&mut s).await, 200);
        let idle_since = std::time::Instant::now();
        // The server closes the kept-alive connection once it has been idle for 300 ms.
        assert!(
            client::closed_within(&mut s, Duration::from_secs(5)).await,
            "the idle connection was not closed (release {release_ms} ms)"
        );
        let after = idle_since.elapsed();
        assert!(after >= Duration::from_millis(250), "closed too early: {after:?} (release {release_ms} ms)");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_download_read_slower_than_the_idle_timeout_keeps_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let limits = "[limits]\nidle_timeout_ms = 300\nidle_release_ms = 20\n";
    let proxy = Proxy::start(&env.write_config(&format!("{limits}{}", common::svc_route(&up.http_url(), "", "")))).await;
    let token = env.token("svc-a", "test");
    let mut s = client::tls_connect(proxy.addr, &env.certs.ca).await;
    // More than the socket buffers hold: the response is still being sent
    // while the client pauses for twice the idle timeout.
    let bytes = 32 << 20;
    s.write_all(format!("GET /svc/download?bytes={bytes} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    let head = String::from_utf8_lossy(&first[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let body_start = head.find("\r\n\r\n").unwrap() + 4;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut rest = vec![0u8; bytes - (n - body_start)];
    s.read_exact(&mut rest).await.unwrap();
    // The download was in flight, not idle: the connection serves the next request.
    s.write_all(format!("GET /svc/k HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!(client::read_response(&mut s).await, 200, "the connection was closed after a slow download");
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_http1_connection_gives_its_state_back_and_serves_the_next_requests() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let limits = "[limits]\nidle_release_ms = 20\nheader_timeout_ms = 300\nidle_timeout_ms = 20000\ndrain_timeout_ms = 20000\n";
    let proxy = Proxy::start(&env.write_config(&format!("{limits}{}", common::svc_route(&up.http_url(), "", "")))).await;
    let released = "gatehouse_connections_released";
    let token = env.token("svc-a", "test");
    let request = format!("GET /svc/k HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut s = client::tls_connect(proxy.addr, &env.certs.ca).await;
    // Before its first request a connection holds no HTTP state.
    common::wait_metric(proxy.admin, released, 1).await;
    s.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(client::read_response(&mut s).await, 200);
    // Given back after 20 ms idle; the next request, and two pipelined in one
    // write, are served on the same connection.
    common::wait_metric(proxy.admin, released, 1).await;
    s.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(client::read_response(&mut s).await, 200, "the released connection did not serve its next request");
    common::wait_metric(proxy.admin, released, 1).await;
    s.write_all(format!("{request}{request}").as_bytes()).await.unwrap();
    assert_eq!(client::read_response(&mut s).await, 200);
    assert_eq!(client::read_response(&mut s).await, 200, "the second pipelined request was lost");
    // A head that starts on a released connection and stalls is cut at the head deadline.
    common::wait_metric(proxy.admin, released, 1).await;
    s.write_all(b"GET /svc/k HTTP/1.1\r\nHost: local").await.unwrap();
    let started = std::time::Instant::now();
    assert!(client::closed_within(&mut s, Duration::from_secs(10)).await, "a slow request head was not cut off");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(3000),
        "slow head closed after {after:?}; deadline 300 ms"
    );
    common::wait_metric(proxy.admin, "gatehouse_connections_open", 0).await;
    common::wait_metric(proxy.admin, released, 0).await;
    // A released connection is closed at once when the server drains, not at the drain deadline.
    let mut s = client::tls_connect(proxy.addr, &env.certs.ca).await;
    s.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(client::read_response(&mut s).await, 200);
    common::wait_metric(proxy.admin, released, 1).await;
    let stopping = std::time::Instant::now();
    proxy.stop().await;
    assert!(client::closed_within(&mut s, Duration::from_secs(1)).await, "the released connection outlived the drain");
    assert!(stopping.elapsed() < Duration::from_secs(10), "drain waited {:?} for an idle connection", stopping.elapsed());
}

#[tokio::test]
async fn keep_alive_outlives_the_header_timeout_but_a_slow_next_head_does_not() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let limits = "[limits]\nheader_timeout_ms = 300\nidle_timeout_ms = 20000\n";
    let proxy = Proxy::start(&env.write_config(&format!("{limits}{}", common::svc_route(&up.http_url(), "", "")))).await;
    let token = env.token("svc-a", "test");
    let request = format!("GET /svc/k HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut s = client::tls_connect(proxy.addr, &env.certs.ca).await;
    s.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(client::read_response(&mut s).await, 200);
    // Idle between requests for longer than the head deadline: that is the
    // idle timeout's business, so the connection stays open.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(client::read_response(&mut s).await, 200, "the kept-alive connection was closed at the header timeout");
    // A head that starts but does not finish is cut at the head deadline, not
    // at the 20 s idle timeout.
    s.write_all(b"GET /svc/k HTTP/1.1\r\nHost: local").await.unwrap();
    let started = std::time::Instant::now();
    assert!(client::closed_within(&mut s, Duration::from_secs(10)).await, "a slow request head was not cut off");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(3000),
        "slow head closed after {after:?}; deadline 300 ms"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy =
        Proxy::start(&env.write_config(&format!("[limits]\nmax_connections = 2\n{}", common::svc_route(&up.http_url(), "", "")))).await;
    let first = client::tls_connect(proxy.addr, &env.certs.ca).await;
    let _second = client::tls_connect(proxy.addr, &env.certs.ca).await;
    // The third is not accepted while two are open: its handshake stalls.
    let (addr, ca) = (proxy.addr, env.certs.ca.clone());
    let third = tokio::spawn(async move { client::tls_connect(addr, &ca).await });
    let stalled = tokio::time::timeout(Duration::from_millis(500), async {
        while !third.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(stalled.is_err(), "a third connection was served past max_connections = 2");
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(5), third).await.expect("the third connection was never served");
    assert!(third.is_ok());
    proxy.stop().await;
}
