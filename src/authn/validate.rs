//! JWT validation (RFC 8725): shape, header, issuer, algorithm against the
//! allow-list AND the key, signature, time and audience. The token alone
//! never chooses the key or the algorithm; `jku`, `x5u`, `jwk` and `x5c`
//! are ignored as key sources.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use serde_json::{Map, Value};

use super::jwks::Issuer;
use super::{AuthnError, Principal};
use crate::config::parse_algorithm;
use crate::identity::Identity;

const ACCEPTED_TYP: [&str; 3] = ["JWT", "at+jwt", "application/at+jwt"];

pub async fn validate(token: &str, issuers: &HashMap<String, Arc<Issuer>>) -> Result<Principal, AuthnError> {
    let malformed = |why: &str| AuthnError::Malformed(why.to_owned());
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err(malformed("encrypted tokens (JWE) are not accepted")),
        _ => return Err(malformed("not a compact JWS (three dot-separated parts)")),
    }
    let header = decode_object(parts[0]).ok_or_else(|| malformed("header is not base64url JSON"))?;
    if header.contains_key("enc") {
        return Err(malformed("encrypted tokens (JWE) are not accepted"));
    }
    if header.contains_key("crit") {
        return Err(malformed("unsupported critical header parameters (crit)"));
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if ACCEPTED_TYP.iter().any(|a| a.eq_ignore_ascii_case(t)) => {}
        Some(_) => return Err(malformed("typ must be JWT or at+jwt")),
    }
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(malformed("header has no alg")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(malformed("kid is not a string")),
    };
    // The payload is read unverified only to choose the issuer; nothing
    // from it is trusted until the signature is checked below.
    let claims = decode_object(parts[1]).ok_or_else(|| malformed("payload is not base64url JSON"))?;
    let iss = match claims.get("iss") {
        Some(Value::String(i)) => i.as_str(),
        _ => return Err(AuthnError::BadIssuer),
    };
    let issuer = issuers.get(iss).ok_or(AuthnError::BadIssuer)?;
    let settings = &issuer.settings;
    if token.len() > settings.max_token_bytes {
        return Err(AuthnError::Malformed(format!("token longer than {} bytes", settings.max_token_bytes)));
    }
    // The algorithm name is the caller's text: shown only escaped and short.
    let shown = || crate::untrusted::printable(alg_name, 32);
    let alg = parse_algorithm(alg_name).ok_or_else(|| AuthnError::BadAlgorithm(format!("`{}` is not allowed", shown())))?;
    if !settings.algorithms.contains(&alg) {
        return Err(AuthnError::BadAlgorithm(format!("`{}` is not allowed for this issuer", shown())));
    }
    let key = issuer.key(kid, alg).await.ok_or(AuthnError::UnknownKey)?;
    if !key.kind.fits(alg) || key.alg.is_some_and(|a| a != alg) {
        return Err(AuthnError::BadAlgorithm(format!("`{}` does not fit the key", shown())));
    }
    // The signature over `header.payload`, with the key the issuer's JWKS
    // holds for this kid and algorithm. Nothing in the claims counts before.
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    match jsonwebtoken::crypto::verify(parts[2], signed.as_bytes(), &key.key, alg) {
        Ok(true) => {}
        Ok(false) => return Err(AuthnError::BadSignature),
        Err(e) => {
            return Err(match e.kind() {
                ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => AuthnError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthnError::BadAlgorithm("does not fit the key".into()),
                _ => malformed("signature is not base64url"),
            });
        }
    }
    let now = unix_now();
    let leeway = settings.leeway.as_secs();
    let exp = match claims.get("exp") {
        None => return Err(malformed("missing required claim `exp`")),
        Some(e) => e.as_u64().ok_or_else(|| malformed("exp must be a number"))?,
    };
    if exp.saturating_add(leeway) < now {
        return Err(AuthnError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_u64().ok_or_else(|| malformed("nbf must be a number"))?;
        if nbf > now.saturating_add(leeway) {
            return Err(AuthnError::NotYetValid);
        }
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => settings.audiences.iter().any(|want| want == a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|a| settings.audiences.iter().any(|want| want == a)),
        _ => false,
    };
    if !audience_ok {
        return Err(AuthnError::BadAudience);
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_u64().ok_or_else(|| malformed("iat must be a number"))?;
        if iat > now + leeway {
            return Err(AuthnError::NotYetValid);
        }
    }
    if !matches!(claims.get("sub"), Some(Value::String(s)) if !s.is_empty()) {
        return Err(malformed("sub is required"));
    }
    // Cache no longer than the configured TTL, and never past exp.
    let left = Duration::from_secs((exp + leeway).saturating_sub(now));
    let cache_until = Instant::now() + left.min(settings.verified_cache_ttl);
    Ok(Principal { identity: Identity::from_claims(claims, settings.scope_claim), cache_until })
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
