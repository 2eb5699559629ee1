//! A development OpenID issuer on loopback: discovery, JWKS and an ES256
//! key that mints tokens. For `gatehouse dev` and tests; never production.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::{ProxyBody, full};

/// A running dev issuer.
pub struct DevIssuer {
    /// `http://127.0.0.1:PORT`: the `iss` of its tokens.
    pub issuer: String,
    kid: String,
    key: EncodingKey,
    jwks: Arc<String>,
}

impl DevIssuer {
    /// Generates a key and serves discovery and JWKS on `listener` until the runtime stops.
    pub fn start(listener: TcpListener) -> Result<Arc<Self>, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|e| e.to_string())?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).map_err(|e| e.to_string())?;
        let point = pair.public_key().as_ref();
        let (x, y) = (point.get(1..33).ok_or("bad point")?, point.get(33..65).ok_or("bad point")?);
        let mut kid_bytes = [0u8; 6];
        aws_lc_rs::rand::fill(&mut kid_bytes).map_err(|e| e.to_string())?;
        let kid = format!("dev-{}", URL_SAFE_NO_PAD.encode(kid_bytes));
        let issuer = format!("http://{addr}");
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]});
        let discovery = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        });
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let jwks = Arc::new(jwks.to_string());
        tokio::spawn(serve(listener, Arc::new(discovery.to_string()), jwks.clone()));
        Ok(Arc::new(Self { issuer, kid, key, jwks }))
    }

    /// The JWKS document it serves at `/jwks`.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Mints an ES256 token with these claims, adding `iss`, `iat` and, when
    /// missing, `exp` (one hour).
    pub fn mint(&self, mut claims: serde_json::Map<String, Value>) -> Result<String, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        claims.insert("iss".into(), Value::String(self.issuer.clone()));
        claims.entry("iat").or_insert(json!(now));
        claims.entry("exp").or_insert(json!(now + 3600));
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

async fn serve(listener: TcpListener, discovery: Arc<String>, jwks: Arc<String>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (discovery, jwks) = (discovery.clone(), jwks.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = match req.uri().path() {
                    "/.well-known/openid-configuration" => Some(discovery.to_string()),
                    "/jwks" => Some(jwks.to_string()),
                    _ => None,
                };
                async move { Ok::<_, Infallible>(json_response(body)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

fn json_response(body: Option<String>) -> Response<ProxyBody> {
    let (status, body) = match body {
        Some(b) => (StatusCode::OK, b),
        None => (StatusCode::NOT_FOUND, "{\"error\":\"not_found\"}".to_owned()),
    };
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("max-age=300"));
    r
}
