//! Caller-token verification: RS256, ES256 and EdDSA cold (full signature
//! check, verified-token cache skipped) and the cached path.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark set-up")]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::authn::Authenticator;
use gatehouse::config::{DEFAULT_ALGORITHMS, IssuerSettings, ScopeClaim};
use gatehouse::metrics::Metrics;
use http::{HeaderMap, HeaderValue};
use serde_json::json;

const ISS: &str = "https://idp.bench";

fn settings() -> IssuerSettings {
    IssuerSettings {
        issuer: ISS.into(),
        audiences: vec!["gatehouse".into()],
        jwks_uri: Some("https://idp.bench/jwks".into()),
        algorithms: DEFAULT_ALGORITHMS.to_vec(),
        scope_claim: ScopeClaim::Both,
        leeway: Duration::from_secs(30),
        jwks_refetch_interval: Duration::from_secs(10),
        max_stale: Duration::from_secs(86400),
        verified_cache_ttl: Duration::from_secs(60),
        max_token_bytes: 16384,
        ca_file: None,
    }
}

fn token(alg: &str, kid: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> HeaderMap {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let claims = json!({"iss": ISS, "sub": "svc-a", "aud": "gatehouse", "exp": now + 3600, "iat": now, "scope": "crm.read crm.write", "client_id": "c", "jti": "j"});
    let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
    let sig = sign(input.as_bytes());
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {input}.{}", B64.encode(sig))).unwrap());
    h
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let rng = SystemRandom::new();
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let ec_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref()).unwrap();
    let ed = Ed25519KeyPair::generate().unwrap();
    let p = rsa.public_key();
    let pt = ec.public_key().as_ref();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": B64.encode(p.modulus().big_endian_without_leading_zero()), "e": B64.encode(p.exponent().big_endian_without_leading_zero())},
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": B64.encode(&pt[1..33]), "y": B64.encode(&pt[33..65])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": B64.encode(ed.public_key().as_ref())},
    ]});
    let metrics = Arc::new(Metrics::new([], [ISS], []));
    let authn = rt.block_on(async { Authenticator::new(&[settings()], metrics).unwrap() });
    authn.install_jwks(ISS, jwks.to_string().as_bytes()).unwrap();
    let rs256 = token("RS256", "rsa", |m| {
        let mut sig = vec![0; rsa.public_modulus_len()];
        rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, m, &mut sig).unwrap();
        sig
    });
    let es256 = token("ES256", "ec", |m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
    let eddsa = token("EdDSA", "ed", |m| ed.sign(m).as_ref().to_vec());
    let mut g = c.benchmark_group("verify");
    for (name, headers) in [("rs256_cold", &rs256), ("es256_cold", &es256), ("eddsa_cold", &eddsa)] {
        assert!(rt.block_on(authn.authenticate_uncached(headers)).is_ok(), "{name} must verify");
        g.bench_function(name, |b| b.to_async(&rt).iter(|| async { authn.authenticate_uncached(headers).await.unwrap() }));
    }
    rt.block_on(authn.authenticate(&rs256)).unwrap();
    g.bench_function("rs256_cached", |b| b.to_async(&rt).iter(|| async { authn.authenticate(&rs256).await.unwrap() }));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
