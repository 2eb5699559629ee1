//! gatehouse's own HTTP client for identity providers and token endpoints
//! (discovery, JWKS, OAuth token requests). Small bodies, bounded sizes and
//! times; `http://` only for loopback hosts (checked when config is loaded).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::tls::{provider, read_certs};

/// Largest body accepted from an IdP or token endpoint.
const MAX_BODY: usize = 1 << 20;
/// Whole-exchange timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled HTTPS client with the system roots plus an optional extra CA.
#[derive(Clone)]
pub struct OutboundHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why an outbound exchange failed. `Display` names the URL without its
/// query and the cause, for the log; answers to callers never carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// The trust store could not be built (a bad `ca_file`): at start.
    Tls(String),
    /// The request could not be built from this URL or these headers.
    BadRequest { url: String, why: String },
    /// No connection, or it failed before an answer.
    Unreachable { url: String, why: String },
    /// The answer could not be read to its end (cut, or over 1 MiB).
    Body { url: String, why: String },
    /// No whole answer within the timeout.
    Timeout { url: String },
}

impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tls(why) => f.write_str(why),
            Self::BadRequest { url, why } => write!(f, "bad request to {url}: {why}"),
            Self::Unreachable { url, why } => write!(f, "{url}: {why}"),
            Self::Body { url, why } => write!(f, "{url}: reading the answer: {why}"),
            Self::Timeout { url } => write!(f, "{url}: no answer within {TIMEOUT:?}"),
        }
    }
}

impl std::error::Error for OutboundError {}

/// A response: status, headers, body.
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl OutboundHttp {
    /// `extra_ca`: PEM file of additional trusted roots (`ca_file`).
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, OutboundError> {
        let tls = client_tls(extra_ca)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Self { client })
    }

    /// Sends a request and reads the whole (bounded) answer.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<OutboundResponse, OutboundError> {
        let shown = || redact_url(url).to_owned();
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(body)).map_err(|e| OutboundError::BadRequest { url: shown(), why: e.to_string() })?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| OutboundError::Unreachable { url: shown(), why: error_chain(&e) })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| OutboundError::Body { url: shown(), why: e.to_string() })?
                .to_bytes();
            Ok(OutboundResponse { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| OutboundError::Timeout { url: shown() })?
    }

    /// GET with `accept: application/json`.
    pub async fn get(&self, url: &str) -> Result<OutboundResponse, OutboundError> {
        let accept = (http::header::ACCEPT, HeaderValue::from_static("application/json"));
        self.send(Method::GET, url, vec![accept], Bytes::new()).await
    }
}

impl crate::credential::TokenHttp for OutboundHttp {
    fn post_form(
        &self,
        url: &str,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        body: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(StatusCode, Bytes), String>> + Send + '_>> {
        headers.push((http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded")));
        headers.push((http::header::ACCEPT, HeaderValue::from_static("application/json")));
        let url = url.to_owned();
        Box::pin(async move {
            let r = self.send(Method::POST, &url, headers, Bytes::from(body)).await.map_err(|e| e.to_string())?;
            Ok((r.status, r.body))
        })
    }
}

/// rustls client config: system roots plus `extra_ca`.
pub fn client_tls(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, OutboundError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = extra_ca {
        for cert in read_certs(ca).map_err(|e| OutboundError::Tls(e.to_string()))? {
            roots.add(cert).map_err(|e| OutboundError::Tls(format!("{}: bad CA certificate: {e}", ca.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// A URL without its query (which could hold secrets) for messages.
pub fn redact_url(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The error and its sources, joined: hyper's top-level errors say little.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
