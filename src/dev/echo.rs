//! The dev echo upstream: answers every request with what it received, the
//! injected credential shortened to its first characters.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::body::{ProxyBody, full};

/// Serves on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(req).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let v = value.to_str().unwrap_or("(binary)");
        let shown = if name == header::AUTHORIZATION { shorten(v) } else { v.to_owned() };
        headers.insert(name.as_str().to_owned(), Value::String(shown));
    }
    let answer = json!({
        "upstream": "gatehouse dev echo",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body_bytes": body_len,
        "headers": headers,
    });
    let mut r = Response::new(full(Bytes::from(format!("{answer:#}\n"))));
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// `Bearer dev-upstream-abcdef…` → `Bearer dev-up…`: enough to see it was injected.
fn shorten(v: &str) -> String {
    let keep: String = v.chars().take(13).collect();
    if keep.len() < v.len() { format!("{keep}…") } else { keep }
}
