//! An in-process identity provider for attack cases: discovery and a JWKS
//! it can change, fail or count, and keys that sign any header and claims
//! (RS256, PS256, ES256, EdDSA, and HS256 for confusion attacks).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use gatehouse::body::full;
use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Which key signs.
#[derive(Clone, Copy, Debug)]
pub enum Key {
    /// Published as kid `rsa-1` with `alg: RS256`.
    Rsa,
    /// Published as kid `rsa-2` without `alg` (usable for RS* and PS*).
    Rsa2,
    /// Published as kid `ec-1`.
    Ec,
    /// Published as kid `ed-1` (the only Ed25519 key).
    Ed,
    /// Never published: the attacker's keys.
    AttackerRsa,
    AttackerEc,
    AttackerEd,
    /// HMAC with these bytes.
    Hmac(&'static [u8]),
}

pub struct TestIdp {
    pub issuer: String,
    pub jwks_hits: Arc<AtomicUsize>,
    pub jwks: Arc<Mutex<Value>>,
    pub failing: Arc<AtomicBool>,
    rsa: RsaKeyPair,
    rsa2: RsaKeyPair,
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    attacker_rsa: RsaKeyPair,
    attacker_ec: EcdsaKeyPair,
    attacker_ed: Ed25519KeyPair,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn ec_key() -> EcdsaKeyPair {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap()
}

fn rsa_key() -> RsaKeyPair {
    aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()
}

pub fn rsa_jwk(k: &RsaKeyPair, kid: &str, alg: Option<&str>) -> Value {
    let p = k.public_key();
    let mut j = json!({"kty": "RSA", "kid": kid, "use": "sig",
        "n": B64.encode(p.modulus().big_endian_without_leading_zero()),
        "e": B64.encode(p.exponent().big_endian_without_leading_zero())});
    if let Some(a) = alg {
        j["alg"] = json!(a);
    }
    j
}

pub fn ec_jwk(k: &EcdsaKeyPair, kid: &str) -> Value {
    let pt = k.public_key().as_ref();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": B64.encode(&pt[1..33]), "y": B64.encode(&pt[33..65])})
}

pub fn ed_jwk(k: &Ed25519KeyPair, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": B64.encode(k.public_key().as_ref())})
}

impl TestIdp {
    pub async fn start() -> Arc<TestIdp> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let (rsa, rsa2, ec, ed) = (rsa_key(), rsa_key(), ec_key(), Ed25519KeyPair::generate().unwrap());
        let jwks = json!({"keys": [rsa_jwk(&rsa, "rsa-1", Some("RS256")), rsa_jwk(&rsa2, "rsa-2", None), ec_jwk(&ec, "ec-1"), ed_jwk(&ed, "ed-1")]});
        let idp = Arc::new(TestIdp {
            issuer,
            jwks_hits: Arc::default(),
            jwks: Arc::new(Mutex::new(jwks)),
            failing: Arc::default(),
            rsa,
            rsa2,
            ec,
            ed,
            attacker_rsa: rsa_key(),
            attacker_ec: ec_key(),
            attacker_ed: Ed25519KeyPair::generate().unwrap(),
        });
        let server = idp.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(req.uri().path())) }
                    });
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        idp
    }

    fn answer(&self, path: &str) -> Response<gatehouse::body::ProxyBody> {
        let (status, body) = match path {
            "/.well-known/openid-configuration" => (StatusCode::OK, self.discovery().to_string()),
            "/jwks" => {
                self.jwks_hits.fetch_add(1, Ordering::SeqCst);
                if self.failing.load(Ordering::SeqCst) {
                    (StatusCode::SERVICE_UNAVAILABLE, "{}".into())
                } else {
                    (StatusCode::OK, self.jwks.lock().unwrap().to_string())
                }
            }
            _ => (StatusCode::NOT_FOUND, "{}".into()),
        };
        let mut r = Response::new(full(Bytes::from(body)));
        *r.status_mut() = status;
        r
    }

    fn discovery(&self) -> Value {
        let i = &self.issuer;
        json!({"issuer": i, "authorization_endpoint": format!("{i}/authorize"), "jwks_uri": format!("{i}/jwks"),
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"]})
    }

    /// Standard valid claims; `extra` overrides or adds (a null value removes).
    pub fn claims(&self, extra: Value) -> Value {
        let mut c =
            json!({"iss": self.issuer, "sub": "svc-a", "aud": "gatehouse", "exp": now() + 300, "iat": now(), "scope": "test", "jti": "j"});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(&k);
                } else {
                    c[k] = v;
                }
            }
        }
        c
    }

    /// Signs `header` and `claims` as given (no field is added) with `key` under `alg`.
    pub fn sign(&self, key: Key, alg: &str, header: Value, claims: Value) -> String {
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let sig = self.raw_sign(key, alg, input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    pub fn raw_sign(&self, key: Key, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        let rsa = |k: &RsaKeyPair| {
            let pad: &'static dyn signature::RsaEncoding =
                if alg.starts_with("PS") { &signature::RSA_PSS_SHA256 } else { &signature::RSA_PKCS1_SHA256 };
            let mut sig = vec![0; k.public_modulus_len()];
            k.sign(pad, &rng, msg, &mut sig).unwrap();
            sig
        };
        match key {
            Key::Rsa => rsa(&self.rsa),
            Key::Rsa2 => rsa(&self.rsa2),
            Key::AttackerRsa => rsa(&self.attacker_rsa),
            Key::Ec => self.ec.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Key::AttackerEc => self.attacker_ec.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Key::Ed => self.ed.sign(msg).as_ref().to_vec(),
            Key::AttackerEd => self.attacker_ed.sign(msg).as_ref().to_vec(),
            Key::Hmac(secret) => {
                aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret), msg).as_ref().to_vec()
            }
        }
    }

    /// A valid token signed by `key` with `alg` and `kid`.
    pub fn token(&self, key: Key, alg: &str, kid: Option<&str>, extra: Value) -> String {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = json!(k);
        }
        self.sign(key, alg, header, self.claims(extra))
    }

    pub fn attacker_rsa_jwk(&self, kid: &str) -> Value {
        rsa_jwk(&self.attacker_rsa, kid, Some("RS256"))
    }

    /// The published RSA key's public key bytes (for HS256 confusion).
    pub fn rsa_public_der(&self) -> Vec<u8> {
        self.rsa.public_key().as_ref().to_vec()
    }

    /// Publishes a new EC key under `kid` (rotation) and returns a signer for it.
    pub fn rotate_in(&self, kid: &str) -> EcdsaKeyPair {
        let k = ec_key();
        self.jwks.lock().unwrap()["keys"].as_array_mut().unwrap().push(ec_jwk(&k, kid));
        k
    }

    pub fn sign_with(&self, k: &EcdsaKeyPair, kid: &str, extra: Value) -> String {
        let header = json!({"alg": "ES256", "kid": kid});
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(self.claims(extra).to_string()));
        let sig = k.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}
