//! Forwarding: the pooled keep-alive client per upstream (http, https with
//! `ca_file`, h1 and h2), the upstream URI, header hygiene (SPEC §6) and
//! the connect/response timeouts (502/504).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::config::UpstreamSettings;
use crate::outbound::{client_tls, error_chain};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_GATEHOUSE_SUB: HeaderName = HeaderName::from_static("x-gatehouse-sub");
pub const X_GATEHOUSE_ISS: HeaderName = HeaderName::from_static("x-gatehouse-iss");
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

/// One upstream's clients and address.
pub struct Forwarder {
    /// One pooled client per worker thread (`crate::server::lane`): a pooled
    /// upstream connection's task runs on the worker that opened it, so a
    /// request never wakes another thread to reach its upstream.
    clients: Box<[Client<HttpsConnector<HttpConnector>, ProxyBody>]>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    response_timeout: Duration,
    http2: bool,
}

impl Forwarder {
    /// `lanes`: how many worker threads will send through it (at least 1).
    pub fn new(u: &UpstreamSettings, lanes: usize) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(u.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = client_tls(u.ca_file.as_deref())?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let connector =
            if u.http2 { builder.enable_http2().wrap_connector(http) } else { builder.enable_all_versions().wrap_connector(http) };
        let mut cb = Client::builder(TokioExecutor::new());
        cb.pool_idle_timeout(Duration::from_secs(90)).pool_max_idle_per_host(1024).pool_timer(TokioTimer::new()).timer(TokioTimer::new());
        if u.http2 {
            cb.http2_only(true);
        }
        let clients = (0..lanes.max(1)).map(|_| cb.build(connector.clone())).collect();
        let scheme = u.url.scheme().cloned().ok_or("upstream URL has no scheme")?;
        let authority = u.url.authority().cloned().ok_or("upstream URL has no authority")?;
        Ok(Self {
            clients,
            scheme,
            authority,
            base_path: u.url.path().trim_end_matches('/').to_owned(),
            response_timeout: u.response_timeout,
            http2: u.http2,
        })
    }

    /// The upstream URI for a (stripped, normalized) path and the raw query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, ForwardError> {
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ForwardError::Unreachable(format!("cannot build the upstream URI: {e}")))
    }

    fn client(&self) -> &Client<HttpsConnector<HttpConnector>, ProxyBody> {
        let lanes = &self.clients;
        &lanes[crate::server::lane() % lanes.len()]
    }

    /// Sends the request; the response head must arrive within `response_timeout`.
    pub async fn send(&self, mut req: Request<ProxyBody>) -> Result<Response<Incoming>, ForwardError> {
        *req.version_mut() = if self.http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        match tokio::time::timeout(self.response_timeout, self.client().request(req)).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(Err(e)) => Err(ForwardError::Unreachable(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
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

/// Rewrites caller headers for the upstream (SPEC §6): hop-by-hop and
/// `Connection`-nominated headers, `Authorization`, `Host` and every
/// `x-gatehouse-*` header are removed first; then the proxy's own are set,
/// so that no caller header can remove or fake them.
pub fn upstream_headers(headers: &mut HeaderMap, added: Added<'_>) {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    let spoofed: Vec<HeaderName> =
        headers.keys().filter(|k| k.as_str().starts_with("x-gatehouse-") || k.as_str().starts_with("x_gatehouse_")).cloned().collect();
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
