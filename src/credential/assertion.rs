//! `private_key_jwt` client authentication (RFC 7523 §2.2, OIDC Core §9).
//!
//! Signed directly with aws-lc-rs: jsonwebtoken is built without its PEM
//! feature and its RSA DER path wants PKCS#1 only, while keys arrive as
//! PKCS#8, PKCS#1 or SEC1 PEM. The key is parsed once, when the credential
//! is built; the algorithm follows from it: RS256 (RSA), ES256 (P-256),
//! EdDSA (Ed25519).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use time::OffsetDateTime;

use crate::secret::Secret;

/// How long an assertion is valid.
const ASSERTION_LIFETIME_S: i64 = 60;

/// A parsed client key that signs assertions.
pub(crate) struct Signer {
    key: KeyPair,
    key_id: String,
}

enum KeyPair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Signer {
    /// Parses a PEM private key: `PRIVATE KEY` (PKCS#8: RSA, EC P-256 or
    /// Ed25519), `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1, P-256).
    pub fn from_pem(pem: &Secret, key_id: &str) -> Result<Self, String> {
        let (label, der) = parse_pem(pem.expose())?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der).map(KeyPair::Rsa).map_err(|e| format!("RSA PRIVATE KEY rejected: {e}"))?,
            "EC PRIVATE KEY" => EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map(KeyPair::Ec)
                .map_err(|e| format!("EC PRIVATE KEY rejected (only P-256 is supported): {e}"))?,
            "PRIVATE KEY" => pkcs8(&der)?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err("encrypted private keys are not supported; store it unencrypted with mode 0600".to_owned());
            }
            other => return Err(format!("expected a PEM private key, found `{other}`")),
        };
        Ok(Self { key, key_id: key_id.to_owned() })
    }

    /// The JWS `alg` this key signs with.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            KeyPair::Rsa(_) => "RS256",
            KeyPair::Ec(_) => "ES256",
            KeyPair::Ed(_) => "EdDSA",
        }
    }

    /// A fresh client assertion: `iss` = `sub` = `client_id`, `aud` =
    /// `token_url`, random `jti`, `iat` now, `exp` 60 s later.
    pub fn assertion(&self, client_id: &str, token_url: &str) -> Result<Secret, String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let header = serde_json::json!({ "alg": self.algorithm(), "typ": "JWT", "kid": self.key_id });
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "jti": random_id()?,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
        });
        let mut jwt = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.sign(jwt.as_bytes())?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(Secret::new(jwt))
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let failed = |_| "signing the client assertion failed".to_owned();
        match &self.key {
            KeyPair::Rsa(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut signature).map_err(failed)?;
                Ok(signature)
            }
            KeyPair::Ec(key) => key.sign(&SystemRandom::new(), message).map(|s| s.as_ref().to_vec()).map_err(failed),
            KeyPair::Ed(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }
}

fn pkcs8(der: &[u8]) -> Result<KeyPair, String> {
    if let Ok(key) = RsaKeyPair::from_pkcs8(der) {
        return Ok(KeyPair::Rsa(key));
    }
    if let Ok(key) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
        return Ok(KeyPair::Ec(key));
    }
    if let Ok(key) = Ed25519KeyPair::from_pkcs8(der) {
        return Ok(KeyPair::Ed(key));
    }
    Err("PRIVATE KEY is not an RSA (2048 bits or more), EC P-256 or Ed25519 key".to_owned())
}

/// The label and DER bytes of the first PEM block.
fn parse_pem(text: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or("no PEM block (-----BEGIN ...-----) found")?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut closed = false;
    for line in lines {
        if line == end {
            closed = true;
            break;
        }
        if line.contains(':') {
            // RFC 1421 headers, e.g. `Proc-Type: 4,ENCRYPTED`.
            return Err("encrypted PEM keys are not supported".to_owned());
        }
        body.push_str(line);
    }
    if !closed {
        return Err(format!("PEM block `{label}` has no END line"));
    }
    let der = STANDARD.decode(body).map_err(|_| format!("PEM block `{label}` is not valid base64"))?;
    Ok((label, der))
}

fn random_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "system random generator failed".to_owned())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}
