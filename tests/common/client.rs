//! TLS clients for tests: hyper (h1 or h2, forced by ALPN) and raw bytes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse::body::ProxyBody;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub type TestClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

pub fn tls_config(ca: &Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in gatehouse::tls::read_certs(ca).expect("ca") {
        roots.add(c).expect("add root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

/// An HTTP/1.1-only client trusting `ca`.
pub fn h1(ca: &Path) -> TestClient {
    let tls = tls_config(ca, &[]);
    let conn = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(conn)
}

/// An HTTP/2-only client trusting `ca`.
pub fn h2(ca: &Path) -> TestClient {
    let tls = tls_config(ca, &[]);
    let conn = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http2().build();
    Client::builder(TokioExecutor::new()).http2_only(true).build(conn)
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("")).unwrap_or("")
    }
}

/// GET `https://localhost:PORT{path}` with an optional bearer token.
pub async fn get(client: &TestClient, addr: SocketAddr, path: &str, token: Option<&str>) -> Resp {
    let mut req = Request::get(format!("https://localhost:{}{path}", addr.port()));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(client, req.body(gatehouse::body::empty()).expect("request")).await
}

pub async fn send(client: &TestClient, req: Request<ProxyBody>) -> Resp {
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp { status: parts.status, headers: parts.headers, body }
}

/// Connects over TLS (SNI localhost, ALPN http/1.1).
pub async fn tls_connect(addr: SocketAddr, ca: &Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = tls_config(ca, &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("tls handshake")
}

/// Sends raw bytes over TLS and reads until the server closes (10 s max).
pub async fn raw(addr: SocketAddr, ca: &Path, request: &[u8]) -> String {
    let mut s = tls_connect(addr, ca).await;
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line's code of a raw HTTP answer.
pub fn raw_status(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Reads one response head and its Content-Length body from a raw connection; the status.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> u16 {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.expect("read"), 1, "connection closed before a response head");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().expect("content-length"));
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.expect("body");
    raw_status(&head)
}

/// Whether the peer closes the connection within `max` (what it sends before is discarded).
pub async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, max: Duration) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(max, s.read_to_end(&mut rest)).await.is_ok()
}

/// Plain-HTTP GET to the admin listener.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = raw_status(&text);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}
