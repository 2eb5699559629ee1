//! The plain-HTTP admin listener (docs/wire.md §14): `/healthz`, `/readyz`, `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::{ProxyBody, full};
use crate::proxy::Gateway;

/// Serves admin requests until `shutdown` resolves. A request head must
/// arrive within `header_timeout` (the proxy listener's limit), so a client
/// that connects and stalls holds nothing for long.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, header_timeout: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(answer(&gw, &req)) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(64 * 1024);
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

/// Why the proxy is not ready, if it is not.
pub fn not_ready(gw: &Gateway) -> Option<&'static str> {
    if !gw.authn.ready() {
        Some("issuer keys are not loaded")
    } else if !gw.audit.healthy() {
        Some("the audit log cannot be written")
    } else {
        None
    }
}

fn answer<B>(gw: &Gateway, req: &Request<B>) -> Response<ProxyBody> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(full(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), "text/plain");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => match not_ready(gw) {
            None => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"), "text/plain"),
        },
        "/metrics" => {
            let mut body = gw.metrics.render();
            if let Some(store) = &gw.store {
                body.push_str("# HELP gatehouse_store_up Whether the credential store answered its last operation.\n");
                body.push_str("# TYPE gatehouse_store_up gauge\n");
                body.push_str(if store.is_up() { "gatehouse_store_up 1\n" } else { "gatehouse_store_up 0\n" });
            }
            text(StatusCode::OK, body, "text/plain; version=0.0.4")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
