//! Token minting for the whole-proxy load harness (`benches/load/run`).
//!
//! ```text
//! cargo run --release --example mint -- jwks   KEY.pem KID [KEY.pem KID ...]    > jwks.json
//! cargo run --release --example mint -- tokens KEY.pem KID COUNT ISS AUD SCOPE [EXP_IN_S] > tokens.txt
//! ```
//!
//! `KEY.pem` is a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`, as
//! `openssl genpkey` writes it): RSA signs RS256, EC P-256 signs ES256.
//! `tokens` prints COUNT distinct tokens (a distinct `jti` each), one per
//! line, with `iss`, `sub`, `aud` (a string), `scope`, `iat` and `exp` (now +
//! EXP_IN_S, default 3600; negative for an expired token, `iat` is one hour
//! before `exp`); it signs on every core.

use std::io::{BufWriter, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use serde_json::json;

const USAGE: &str = "usage: mint jwks KEY.pem KID [KEY.pem KID ...] | mint tokens KEY.pem KID COUNT ISS AUD SCOPE [EXP_IN_S]";

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl Key {
    fn load(path: &str) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        if body.is_empty() {
            bail!("{path}: no `BEGIN PRIVATE KEY` block (PKCS#8 PEM expected)");
        }
        let der = STANDARD.decode(body.trim()).with_context(|| format!("{path}: bad base64"))?;
        if let Ok(k) = RsaKeyPair::from_pkcs8(&der) {
            return Ok(Self::Rsa(k));
        }
        match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der) {
            Ok(k) => Ok(Self::Ec(k)),
            Err(e) => bail!("{path}: neither an RSA nor an EC P-256 PKCS#8 key ({e})"),
        }
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "RS256",
            Self::Ec(_) => "ES256",
        }
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Self::Rsa(k) => {
                let p = k.public_key();
                json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                       "n": B64.encode(p.modulus().big_endian_without_leading_zero()),
                       "e": B64.encode(p.exponent().big_endian_without_leading_zero())})
            }
            Self::Ec(k) => {
                let pt = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                       "x": B64.encode(&pt[1..33]), "y": B64.encode(&pt[33..65])})
            }
        }
    }

    fn sign(&self, rng: &SystemRandom, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Self::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, rng, msg, &mut sig).map_err(|e| anyhow::anyhow!("RSA signing failed: {e}"))?;
                Ok(sig)
            }
            Self::Ec(k) => Ok(k.sign(rng, msg).map_err(|e| anyhow::anyhow!("EC signing failed: {e}"))?.as_ref().to_vec()),
        }
    }
}

struct Claims<'a> {
    kid: &'a str,
    iss: &'a str,
    aud: &'a str,
    scope: &'a str,
    exp: i64,
    /// Random per run, so that two runs never mint the same token.
    run: String,
}

fn token(key: &Key, rng: &SystemRandom, c: &Claims<'_>, n: usize) -> anyhow::Result<String> {
    let header = json!({"alg": key.alg(), "typ": "JWT", "kid": c.kid});
    let claims = json!({"iss": c.iss, "sub": "load-client", "aud": c.aud, "scope": c.scope, "client_id": "load-client",
                        "iat": c.exp - 3600, "exp": c.exp, "jti": format!("load-{}-{n}", c.run)});
    let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
    let sig = key.sign(rng, input.as_bytes())?;
    Ok(format!("{input}.{}", B64.encode(sig)))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = BufWriter::new(std::io::stdout().lock());
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["jwks", pairs @ ..] if !pairs.is_empty() && pairs.len() % 2 == 0 => {
            let keys = pairs.chunks(2).map(|p| Ok(Key::load(p[0])?.jwk(p[1]))).collect::<anyhow::Result<Vec<_>>>()?;
            writeln!(out, "{}", json!({ "keys": keys }))?;
        }
        ["tokens", key, kid, count, iss, aud, scope, rest @ ..] if rest.len() <= 1 => {
            let key = Key::load(key)?;
            let count: usize = count.parse().with_context(|| format!("COUNT `{count}` is not a number"))?;
            let exp_in: i64 = match rest.first() {
                Some(v) => v.parse().with_context(|| format!("EXP_IN_S `{v}` is not a number"))?,
                None => 3600,
            };
            let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
            let mut nonce = [0u8; 8];
            aws_lc_rs::rand::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let c = Claims { kid, iss, aud, scope, exp: now + exp_in, run: B64.encode(nonce) };
            let threads = std::thread::available_parallelism().map_or(1, usize::from).min(count.max(1));
            let per = count.div_ceil(threads);
            let chunks: Vec<anyhow::Result<Vec<String>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (key, c) = (&key, &c);
                        s.spawn(move || {
                            let rng = SystemRandom::new();
                            (t * per..((t + 1) * per).min(count)).map(|n| token(key, &rng, c, n)).collect()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a signing thread panicked")))).collect()
            });
            for chunk in chunks {
                for t in chunk? {
                    writeln!(out, "{t}")?;
                }
            }
        }
        _ => bail!("{USAGE}"),
    }
    out.flush()?;
    Ok(())
}
