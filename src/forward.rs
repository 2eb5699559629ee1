//! Forwarding: pooled keep-alive connections per upstream and worker (http, https with
//! `ca_file`, h1 and h2), the upstream URI, header hygiene (docs/wire.md §10) and
//! the connect/response timeouts (502/504).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use crate::body::ProxyBody;
use crate::config::UpstreamSettings;
use crate::headers::{X_GATEHOUSE_ISS, X_GATEHOUSE_SUB, X_REQUEST_ID};
use crate::outbound::{client_tls, error_chain};

mod pool;

use pool::{Lane, PoolLimits, lane};
pub use pool::{UpstreamBody, set_lane};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the usual extras).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Why forwarding failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// Connect failure, connect timeout, reset (502 `upstream_error`).
    Unreachable(String),
    /// No response head within `response_timeout` (504 `upstream_timeout`).
    Timeout,
    /// The upstream kept refusing gatehouse's own OAuth credential (502).
    CredentialRejected,
}

impl ForwardError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "upstream_error",
            Self::Timeout => "upstream_timeout",
            Self::CredentialRejected => "upstream_credential_rejected",
        }
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "the upstream could not be reached: {why}"),
            Self::Timeout => f.write_str("the upstream did not answer in time"),
            Self::CredentialRejected => f.write_str("the upstream rejected gatehouse's own credential for it"),
        }
    }
}

impl std::error::Error for ForwardError {}

/// Why an upstream's client could not be set up (at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupError {
    /// Its trust store (`ca_file`) is unusable.
    Tls(crate::outbound::OutboundError),
    /// Its URL lacks a scheme or an authority.
    Url(&'static str),
    /// Its host cannot be a `Host` header.
    Host(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tls(e) => e.fmt(f),
            Self::Url(why) => f.write_str(why),
            Self::Host(why) => write!(f, "upstream URL host: {why}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// One upstream's connections and address.
pub struct Forwarder {
    connector: HttpsConnector<HttpConnector>,
    /// One pool per worker thread ([`set_lane`]).
    lanes: Box<[Arc<Lane>]>,
    limits: PoolLimits,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// `Host` for HTTP/1.1: the authority without a default port.
    host: HeaderValue,
    base_path: String,
    response_timeout: Duration,
    http2: bool,
}

/// A fresh upstream connection.
enum Fresh {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl Forwarder {
    /// `lanes`: how many worker threads will send through it (at least 1).
    pub fn new(u: &UpstreamSettings, lanes: usize) -> Result<Self, SetupError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(u.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = client_tls(u.ca_file.as_deref()).map_err(SetupError::Tls)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let connector =
            if u.http2 { builder.enable_http2().wrap_connector(http) } else { builder.enable_all_versions().wrap_connector(http) };
        let scheme = u.url.scheme().cloned().ok_or(SetupError::Url("upstream URL has no scheme"))?;
        let authority = u.url.authority().cloned().ok_or(SetupError::Url("upstream URL has no authority"))?;
        let default_port = if scheme == http::uri::Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p == default_port => authority.host(),
            _ => authority.as_str(),
        };
        let host = HeaderValue::from_str(host).map_err(|e| SetupError::Host(e.to_string()))?;
        Ok(Self {
            connector,
            lanes: (0..lanes.max(1)).map(|_| Arc::new(Lane::default())).collect(),
            limits: PoolLimits { idle_timeout: Duration::from_secs(90), max_idle: 1024 },
            scheme,
            authority,
            host,
            base_path: u.url.path().trim_end_matches('/').to_owned(),
            response_timeout: u.response_timeout,
            http2: u.http2,
        })
    }

    /// The upstream target (origin-form) for a (stripped, normalized) path
    /// and the raw query; `for_h2` adds the scheme and authority when the
    /// connection turns out to speak HTTP/2.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder().path_and_query(pq).build()
    }

    /// Sends the request; the response head must arrive within `response_timeout`.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<UpstreamBody>, ForwardError> {
        match tokio::time::timeout(self.response_timeout, self.exchange(req)).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(result) => result,
        }
    }

    /// On this worker's pooled connection when one takes the request, else
    /// on a new one. A request a pooled connection refused before sending
    /// any of it (the upstream had closed it) moves on to the next.
    async fn exchange(&self, mut req: Request<ProxyBody>) -> Result<Response<UpstreamBody>, ForwardError> {
        let lane = &self.lanes[lane() % self.lanes.len()];
        if let Some(mut tx) = lane.h2() {
            self.for_h2(&mut req);
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(UpstreamBody::plain)),
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        lane.drop_h2();
                        req = back;
                    }
                    None => return Err(unreachable(&e.into_error())),
                },
            }
        }
        while let Some(mut tx) = lane.take_h1(self.limits) {
            if tx.ready().await.is_err() {
                continue;
            }
            self.for_h1(&mut req);
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|b| UpstreamBody::pooled(b, lane.clone(), tx, self.limits))),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(unreachable(&e.into_error())),
                },
            }
        }
        match self.connect().await? {
            Fresh::H2(mut tx) => {
                lane.set_h2(tx.clone());
                self.for_h2(&mut req);
                tx.send_request(req).await.map(|r| r.map(UpstreamBody::plain)).map_err(|e| unreachable(&e))
            }
            Fresh::H1(mut tx) => {
                self.for_h1(&mut req);
                let resp = tx.send_request(req).await.map_err(|e| unreachable(&e))?;
                Ok(resp.map(|b| UpstreamBody::pooled(b, lane.clone(), tx, self.limits)))
            }
        }
    }

    /// A new connection on this worker; its task runs here.
    async fn connect(&self) -> Result<Fresh, ForwardError> {
        let target = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ForwardError::Unreachable(format!("cannot build the upstream URI: {e}")))?;
        let io = self.connector.clone().call(target).await.map_err(|e| unreachable(&*e))?;
        if self.http2 || io.connected().is_negotiated_h2() {
            let (tx, conn) =
                http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).handshake(io).await.map_err(|e| unreachable(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %error_chain(&e), "upstream HTTP/2 connection ended");
                }
            });
            Ok(Fresh::H2(tx))
        } else {
            let (tx, conn) = http1::handshake(io).await.map_err(|e| unreachable(&e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %error_chain(&e), "upstream connection ended");
                }
            });
            Ok(Fresh::H1(tx))
        }
    }

    /// Origin-form target and `Host`, as HTTP/1.1 wants them (a request
    /// coming back from a refused HTTP/2 connection is in absolute form).
    fn for_h1(&self, req: &mut Request<ProxyBody>) {
        *req.version_mut() = Version::HTTP_11;
        if req.uri().authority().is_some() {
            let pq = req.uri().path_and_query().cloned();
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = pq;
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        req.headers_mut().entry(header::HOST).or_insert_with(|| self.host.clone());
    }

    /// Absolute target (`:scheme`, `:authority`), as HTTP/2 wants it.
    fn for_h2(&self, req: &mut Request<ProxyBody>) {
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(header::HOST);
        if req.uri().authority().is_none() {
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

fn unreachable(e: &dyn std::error::Error) -> ForwardError {
    ForwardError::Unreachable(error_chain(e))
}

/// What the proxy adds to every upstream request.
pub struct Added<'a> {
    pub peer: IpAddr,
    pub forwarded_host: Option<&'a str>,
    pub request_id: &'a HeaderValue,
    pub sub: &'a str,
    pub iss: &'a str,
    pub credential: Option<(HeaderName, HeaderValue)>,
}

/// Headers that let a caller restate, after the policy decided, the
/// method (`X-HTTP-Method-Override` and kin, honoured by many frameworks),
/// the path (`X-Original-URL`, `X-Rewrite-URL`: IIS, Symfony, Zend;
/// `X-Forwarded-Prefix`: Spring) or the client (`Forwarded`, `X-Real-IP`).
const RESTATING: [&str; 11] = [
    "forwarded",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-real-ip",
];

/// True for a caller header the upstream must never see: any spelling of
/// `x-gatehouse-*` once `_` is read as `-` (CGI, WSGI, Rack and PHP turn
/// `x_gatehouse-sub` into `HTTP_X_GATEHOUSE_SUB` too), any `x-forwarded-*`
/// written with `_`, and the restating headers.
fn spoofing(name: &str) -> bool {
    let dashed = |prefix: &str| {
        name.len() >= prefix.len() && name.as_bytes().iter().zip(prefix.as_bytes()).all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    dashed("x-gatehouse-") || (dashed("x-forwarded-") && name.contains('_')) || RESTATING.contains(&name)
}

/// Rewrites caller headers for the upstream: hop-by-hop and
/// `Connection`-nominated headers, `Authorization`, `Host` and every
/// spoofing header are removed first; then the proxy's own are set, so that
/// no caller header can remove or fake them.
pub fn upstream_headers(headers: &mut HeaderMap, added: Added<'_>) {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    let spoofed: Vec<HeaderName> = headers.keys().filter(|k| spoofing(k.as_str())).cloned().collect();
    for k in spoofed {
        headers.remove(k);
    }
    let mut xff = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            xff.push_str(s);
            xff.push_str(", ");
        }
    }
    xff.push_str(&added.peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match added.forwarded_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(h) => headers.insert(X_FORWARDED_HOST, h),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(X_REQUEST_ID, added.request_id.clone());
    if let Ok(v) = HeaderValue::from_str(added.sub) {
        headers.insert(X_GATEHOUSE_SUB, v);
    }
    if let Ok(v) = HeaderValue::from_str(added.iss) {
        headers.insert(X_GATEHOUSE_ISS, v);
    }
    if let Some((name, value)) = added.credential {
        headers.insert(name, value);
    }
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_cannot_remove_or_fake_proxy_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-forwarded-for, x-request-id, keep-alive"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-gatehouse-sub", HeaderValue::from_static("admin"));
        h.insert("x_gatehouse_iss", HeaderValue::from_static("evil"));
        h.insert("x-request-id", HeaderValue::from_static("forged"));
        h.insert("authorization", HeaderValue::from_static("Bearer caller"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        let id = HeaderValue::from_static("rid-1");
        upstream_headers(
            &mut h,
            Added {
                peer: "10.0.0.1".parse().unwrap(),
                forwarded_host: Some("api.example:8443"),
                request_id: &id,
                sub: "svc-a",
                iss: "https://idp",
                credential: Some((header::AUTHORIZATION, HeaderValue::from_static("Bearer upstream"))),
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-gatehouse-sub"], "svc-a");
        assert_eq!(h["x-gatehouse-iss"], "https://idp");
        assert!(h.get("x_gatehouse_iss").is_none());
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(h["authorization"], "Bearer upstream");
        assert_eq!(h["x-forwarded-host"], "api.example:8443");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("connection").is_none() && h.get("te").is_none());
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn every_spelling_of_a_proxy_header_and_every_restating_header_is_removed() {
        let removed = [
            "x-gatehouse-sub",
            "x_gatehouse_sub",
            "x_gatehouse-sub",
            "x-gatehouse_sub",
            "X-Gatehouse_Iss",
            "x-gatehouse-assertion",
            "x_forwarded_for",
            "x-forwarded_host",
            "x_forwarded-proto",
            "forwarded",
            "x-original-url",
            "X-Rewrite-URL",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-forwarded-prefix",
            "x-real-ip",
        ];
        let mut h = HeaderMap::new();
        for name in removed {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("spoofed"));
        }
        h.insert("x-gatehousex", HeaderValue::from_static("kept"));
        h.insert("x-forwarded", HeaderValue::from_static("kept"));
        let id = HeaderValue::from_static("r");
        upstream_headers(
            &mut h,
            Added { peer: "127.0.0.1".parse().unwrap(), forwarded_host: None, request_id: &id, sub: "s", iss: "i", credential: None },
        );
        for name in removed {
            let lower = name.to_ascii_lowercase();
            match lower.as_str() {
                "x-gatehouse-sub" => assert_eq!(h[name], "s"),
                _ => assert!(h.get(name).is_none(), "{name} reached the upstream"),
            }
        }
        assert_eq!(h["x-gatehousex"], "kept");
        assert_eq!(h["x-forwarded"], "kept");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn xff_appends_peer_rightmost() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        let id = HeaderValue::from_static("r");
        upstream_headers(
            &mut h,
            Added { peer: "127.0.0.1".parse().unwrap(), forwarded_host: None, request_id: &id, sub: "s", iss: "i", credential: None },
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
    }
}
