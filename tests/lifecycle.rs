//! The process as operators see it: the binary's commands and exit codes,
//! streaming 1 GiB each way under a memory ceiling, certificate hot
//! reload, and a graceful drain on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::client::{self, get};
use common::upstream::TestUpstream;
use common::{ALLOW_ALL, ChildProxy, Proxy, TestEnv};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

fn gatehouse() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
}

#[tokio::test]
async fn check_connects_to_a_postgres_store_and_reports_an_unreachable_one() {
    let env = TestEnv::new().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let store = |url: &str| format!("[store]\npath = \"{url}\"\nkey_env = \"GATEHOUSE_STORE_KEY\"\nconnect_timeout_ms = 1000\n\n");
    let key = ("GATEHOUSE_STORE_KEY", "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=");
    let bad = env.write_config(&format!(
        "{}{}",
        store(&format!("postgres://postgres@{closed}/gatehouse")),
        common::svc_route("http://127.0.0.1:9", "", "")
    ));
    let out = gatehouse().arg("--config").arg(&bad).arg("check").env(key.0, key.1).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with(&bad.display().to_string()) && stdout.contains("unreachable"), "{stdout}");
    // The machine's PostgreSQL (a database of its own): check connects and migrates it.
    let database = common::postgres::TestDatabase::create().await;
    let good = env.write_config(&format!("{}{}", store(&database.url), common::svc_route("http://127.0.0.1:9", "", "")));
    let out = gatehouse().arg("--config").arg(&good).arg("check").env(key.0, key.1).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn check_accepts_a_valid_config_and_reports_two_mistakes_with_positions() {
    let env = TestEnv::new().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let good = env.write_config(&common::svc_route("http://127.0.0.1:9", "", ""));
    let out = gatehouse().arg("--config").arg(&good).arg("check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("strip_prefix = true", "strip_prefix = true\nstrip_prefx = 1")
        .replace("upstream = \"svc\"\nstrip", "upstream = \"nosuch\"\nstrip");
    std::fs::write(&good, &text).unwrap();
    let out = gatehouse().arg("check").arg("--config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let file = good.display().to_string();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(lines[0], format!("{file}:{}:12: unknown upstream `nosuch`", line_of("\"nosuch\"")));
    assert!(lines[1].starts_with(&format!("{file}:{}:1: unknown field `strip_prefx`", line_of("strip_prefx"))), "{stdout}");
}

#[tokio::test]
async fn streams_one_gib_up_and_down_with_resident_memory_under_64_mib() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy = ChildProxy::spawn(&env.write_config(&common::svc_route(&up.http_url(), "", "")));
    common::wait_ready(proxy.admin).await;
    let token = env.token("svc-a", "test");
    const GIB: u64 = 1 << 30;
    let c = client::h1(&env.certs.ca);
    // Up: a generated 1 GiB body, never held whole by anyone.
    static CHUNK: [u8; 65536] = [7u8; 65536];
    let chunks =
        futures_util::stream::iter((0..GIB / 65536).map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&CHUNK)))));
    let req = http::Request::post(format!("https://localhost:{}/svc/upload", proxy.addr.port()))
        .header("authorization", format!("Bearer {token}"))
        .body(gatehouse::body::boxed(StreamBody::new(chunks)))
        .unwrap();
    let r = client::send(&c, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body_len, GIB, "the upstream got every byte");
    // Down: 1 GiB streamed back, counted frame by frame.
    let req = http::Request::get(format!("https://localhost:{}/svc/download?bytes={GIB}", proxy.addr.port()))
        .header("authorization", format!("Bearer {token}"))
        .body(gatehouse::body::empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, GIB);
    let peak_mib = proxy.peak_rss_kib() / 1024;
    eprintln!("proxy peak resident memory after 2 GiB streamed: {peak_mib} MiB");
    assert!(peak_mib < 64, "peak RSS {peak_mib} MiB");
}

#[tokio::test]
async fn sigterm_during_a_slow_request_lets_it_finish_and_exits_zero() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let mut proxy = ChildProxy::spawn(&env.write_config(&common::svc_route(&up.http_url(), "", "")));
    common::wait_ready(proxy.admin).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let addr = proxy.addr;
    let started = up.slow_started.clone();
    let notified = started.notified();
    let request = tokio::spawn(async move { get(&c, addr, "/svc/slow?ms=1500", Some(&token)).await });
    // Once the upstream holds the request, ask the proxy to stop.
    notified.await;
    proxy.signal("TERM");
    let r = request.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"slow done");
    let status = tokio::task::spawn_blocking(move || proxy.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    let records = env.audit_records();
    assert!(records.iter().any(|r| r["event"] == "request" && r["status"] == 200), "the drained request was audited");
}

#[tokio::test]
async fn a_new_handshake_sees_the_new_certificate_without_a_restart() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let proxy = Proxy::start(&env.write_config(&common::svc_route(&up.http_url(), "", ""))).await;
    let first = peer_cert(proxy.addr, &env.certs.ca).await;
    // New CA and certificate written over the old files.
    let tmp = tempfile::tempdir().unwrap();
    let fresh = gatehouse::dev::certs::write_certs(tmp.path(), "rotated CA", &["localhost"]).unwrap();
    std::fs::copy(&fresh.key, &env.certs.key).unwrap();
    std::fs::copy(&fresh.cert, &env.certs.cert).unwrap();
    // Trusting only the new CA: succeeds once the new certificate is served.
    let cert =
        common::eventually("the new certificate to be served", Duration::from_secs(5), || try_peer_cert(proxy.addr, &fresh.ca)).await;
    assert_ne!(cert, first);
    // A broken pair is refused and the good one stays.
    std::fs::write(&env.certs.cert, "not a certificate").unwrap();
    let c = client::h1(&fresh.ca);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        assert_eq!(get(&c, proxy.addr, "/svc/x", Some(&env.token("a", "test"))).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.stop().await;
}

async fn peer_cert(addr: std::net::SocketAddr, ca: &std::path::Path) -> Vec<u8> {
    try_peer_cert(addr, ca).await.expect("handshake")
}

async fn try_peer_cert(addr: std::net::SocketAddr, ca: &std::path::Path) -> Option<Vec<u8>> {
    let cfg = client::tls_config(ca, &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
    let tls = connector.connect(name, tcp).await.ok()?;
    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec())
}
