//! Test upstreams: http, https (h1 or h2 by ALPN) and h2c. They stream
//! bodies without buffering them, record what they saw, and offer
//! `/download?bytes=N`, `/slow?ms=N`, `/status/N` and `/close` (answers, then
//! closes the connection). `connections` counts the connections accepted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::body::{ProxyBody, boxed, full};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: u64,
}

#[derive(Clone)]
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Notified when a `/slow` request arrives.
    pub slow_started: Arc<Notify>,
    pub connections: Arc<AtomicUsize>,
}

impl TestUpstream {
    pub async fn http() -> Self {
        Self::start(None).await
    }

    /// TLS with the given certificate; ALPN offers h2 and http/1.1.
    pub async fn https(certs: &gatehouse::dev::certs::DevCerts) -> Self {
        let chain = gatehouse::tls::read_certs(&certs.cert).expect("cert");
        let key = <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_file(&certs.key).expect("key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(gatehouse::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = TestUpstream {
            addr: listener.local_addr().expect("addr"),
            seen: Arc::default(),
            slow_started: Arc::new(Notify::new()),
            connections: Arc::default(),
        };
        let server = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                server.connections.fetch_add(1, Ordering::SeqCst);
                let (server, tls) = (server.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        up
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().expect("lock").last().cloned().expect("the upstream saw no request")
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, mut body) = req.into_parts();
        let mut body_len = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        let seen = Seen {
            method: parts.method.to_string(),
            uri: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
            version: parts.version,
            headers: parts.headers.clone(),
            body_len,
        };
        self.seen.lock().expect("lock").push(seen);
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or("").to_owned();
        let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{k}="))?.parse::<u64>().ok());
        if path.ends_with("/download") {
            return download(param("bytes").unwrap_or(0));
        }
        if path.ends_with("/close") {
            let mut r = Response::new(full(Bytes::from_static(b"bye")));
            r.headers_mut().insert("connection", http::HeaderValue::from_static("close"));
            return r;
        }
        if path.ends_with("/slow") {
            self.slow_started.notify_one();
            tokio::time::sleep(Duration::from_millis(param("ms").unwrap_or(1000))).await;
            return Response::new(full(Bytes::from_static(b"slow done")));
        }
        if let Some(code) = path.rsplit_once("/status/").and_then(|(_, c)| c.parse::<u16>().ok()) {
            let mut r = Response::new(full(Bytes::from_static(b"{}")));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            if code == 401 {
                r.headers_mut().insert("www-authenticate", http::HeaderValue::from_static("Bearer realm=\"upstream\""));
            }
            return r;
        }
        let headers: serde_json::Map<String, serde_json::Value> =
            parts.headers.iter().map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("")))).collect();
        let answer =
            json!({"uri": parts.uri.to_string(), "version": format!("{:?}", parts.version), "body_len": body_len, "headers": headers});
        let mut r = Response::new(full(Bytes::from(answer.to_string())));
        r.headers_mut().insert("connection", http::HeaderValue::from_static("keep-alive, x-upstream-hop"));
        r.headers_mut().insert("x-upstream-hop", http::HeaderValue::from_static("secret-hop"));
        r
    }
}

/// Streams `n` bytes in 64 KiB chunks without holding them.
fn download(n: u64) -> Response<ProxyBody> {
    static CHUNK: [u8; 65536] = [b'x'; 65536];
    let stream = futures_util::stream::unfold(n, |left| async move {
        if left == 0 {
            return None;
        }
        let take = left.min(CHUNK.len() as u64);
        let frame: Result<Frame<Bytes>, Infallible> = Ok(Frame::data(Bytes::from_static(&CHUNK[..take as usize])));
        Some((frame, left - take))
    });
    let mut r = Response::new(boxed(StreamBody::new(stream)));
    r.headers_mut().insert("content-length", http::HeaderValue::from(n));
    r
}
