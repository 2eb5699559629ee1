//! One trusted issuer: discovery, its JWKS held as an immutable snapshot
//! swapped whole, refreshed ahead of expiry in the background, kept through
//! outages for a bounded staleness, and an unknown-kid refetch that is
//! coalesced across waiters and rate limited per issuer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{IssuerSettings, is_loopback_host};
use crate::metrics::Metrics;
use crate::outbound::OutboundHttp;

/// Refresh bounds for `Cache-Control: max-age`.
const MIN_REFRESH: Duration = Duration::from_secs(5 * 60);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_REFRESH: Duration = Duration::from_secs(60 * 60);

/// What a key is, for checking that a token's algorithm fits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// True when `alg` may be verified with a key of this kind.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// A verification key from the JWKS.
pub struct VerifyKey {
    pub kind: KeyKind,
    /// The JWK's `alg`, when it has one: the token's must equal it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// An immutable snapshot of an issuer's keys.
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    all: Vec<Arc<VerifyKey>>,
    fetched_at: Instant,
}

impl KeySet {
    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            // No kid: usable only when exactly one key fits the algorithm.
            None => {
                let mut fitting = self.all.iter().filter(|k| k.kind.fits(alg));
                let first = fitting.next()?;
                if fitting.next().is_some() { None } else { Some(first.clone()) }
            }
        }
    }
}

/// One `[[issuer]]` and its keys.
pub struct Issuer {
    pub settings: IssuerSettings,
    keys: ArcSwapOption<KeySet>,
    jwks_uri: ArcSwapOption<String>,
    /// Time of the last unknown-kid refetch; the lock coalesces waiters.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    http: OutboundHttp,
    metrics: Arc<Metrics>,
}

impl Issuer {
    pub fn new(settings: IssuerSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let http = OutboundHttp::new(settings.ca_file.as_deref()).map_err(|e| e.to_string())?;
        let jwks_uri = ArcSwapOption::from(settings.jwks_uri.clone().map(Arc::new));
        Ok(Self { settings, keys: ArcSwapOption::empty(), jwks_uri, refetch: tokio::sync::Mutex::new(None), http, metrics })
    }

    /// Swaps in a key set obtained elsewhere.
    pub fn install(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
    }

    pub fn has_keys(&self) -> bool {
        self.fresh_keys().is_some()
    }

    /// The current keys, unless they are older than `max_stale` (fail closed).
    fn fresh_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full().filter(|k| k.fetched_at.elapsed() <= self.settings.max_stale)
    }

    /// The key for `kid`, refetching the JWKS once (shared by all waiters,
    /// at most once per `jwks_refetch_interval`) when the kid is unknown.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
        if let Some(k) = self.fresh_keys().and_then(|ks| ks.lookup(kid, alg)) {
            return Some(k);
        }
        let mut last = self.refetch.lock().await;
        // Someone else may have refetched while we waited for the lock.
        if let Some(k) = self.fresh_keys().and_then(|ks| ks.lookup(kid, alg)) {
            return Some(k);
        }
        if last.is_some_and(|t| t.elapsed() < self.settings.jwks_refetch_interval) {
            return None;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.refresh().await {
            tracing::warn!(issuer = %self.settings.issuer, error = %e, "JWKS refetch for an unknown kid failed");
        }
        self.fresh_keys().and_then(|ks| ks.lookup(kid, alg))
    }

    /// Background refresher: fetch now, then ahead of expiry; back off on failure.
    pub async fn refresh_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.refresh().await {
                Ok(next) => {
                    backoff = Duration::from_secs(1);
                    next
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.settings.issuer, error = %e, retry_in = ?backoff, "JWKS refresh failed; keeping the last good keys");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Fetches the JWKS (discovering its URI first if needed) and swaps it in.
    /// Returns when to refresh next.
    async fn refresh(&self) -> Result<Duration, String> {
        let result = self.fetch().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.jwks_refresh(&self.settings.issuer, outcome);
        let (set, max_age) = result?;
        tracing::debug!(issuer = %self.settings.issuer, keys = set.all.len(), "JWKS loaded");
        self.keys.store(Some(Arc::new(set)));
        Ok(max_age.map_or(DEFAULT_REFRESH, |a| a.clamp(MIN_REFRESH, MAX_REFRESH)))
    }

    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), String> {
        let uri = match self.jwks_uri.load_full() {
            Some(u) => u,
            None => {
                let u = Arc::new(self.discover().await?);
                self.jwks_uri.store(Some(u.clone()));
                u
            }
        };
        let resp = self.http.get(&uri).await.map_err(|e| e.to_string())?;
        if !resp.status.is_success() {
            return Err(format!("JWKS endpoint answered {}", resp.status));
        }
        let max_age = resp.headers.get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
        Ok((parse_jwks(&resp.body)?, max_age))
    }

    /// OIDC discovery with openidconnect; the metadata's `issuer` must equal ours.
    async fn discover(&self) -> Result<String, String> {
        let issuer = openidconnect::IssuerUrl::new(self.settings.issuer.clone()).map_err(|e| format!("bad issuer URL: {e}"))?;
        let http = self.http.clone();
        let client = move |req: openidconnect::HttpRequest| {
            let http = http.clone();
            async move {
                let (parts, body) = req.into_parts();
                let headers = parts.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let r = http
                    .send(parts.method, &parts.uri.to_string(), headers, body.into())
                    .await
                    .map_err(|e| DiscoveryError(e.to_string()))?;
                let mut resp = http::Response::new(r.body.to_vec());
                *resp.status_mut() = r.status;
                *resp.headers_mut() = r.headers;
                Ok::<_, DiscoveryError>(resp)
            }
        };
        let meta = openidconnect::core::CoreProviderMetadata::discover_async(issuer, &client)
            .await
            .map_err(|e| format!("OIDC discovery failed: {}", crate::outbound::error_chain(&e)))?;
        let jwks_uri = meta.jwks_uri().url().to_string();
        let host = meta.jwks_uri().url().host_str().unwrap_or("");
        if meta.jwks_uri().url().scheme() != "https" && !is_loopback_host(host) {
            return Err(format!("discovered jwks_uri {jwks_uri} is not https"));
        }
        Ok(jwks_uri)
    }
}

#[derive(Debug)]
struct DiscoveryError(String);

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DiscoveryError {}

/// `max-age=N` from a Cache-Control value.
fn max_age(v: &str) -> Option<Duration> {
    v.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.trim().parse().ok().map(Duration::from_secs))
}

/// Parses a JWKS, keeping signature keys of supported kinds and skipping
/// (not failing on) the rest.
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    let mut by_kid = HashMap::new();
    let mut all = Vec::new();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => KeyKind::Ed25519,
                _ => continue,
            },
            // Symmetric keys are never used to verify caller tokens.
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => match signing_alg(a) {
                Some(alg) => Some(alg),
                None => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        let key = Arc::new(VerifyKey { kind, alg, key });
        if let Some(kid) = &jwk.common.key_id {
            by_kid.insert(kid.clone(), key.clone());
        }
        all.push(key);
    }
    Ok(KeySet { by_kid, all, fetched_at: Instant::now() })
}

fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("no-store"), None);
    }

    #[test]
    fn jwks_skips_unusable_keys_without_failing() {
        let body = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},{"kty":"EC","crv":"P-256","kid":"e","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},{"kty":"weird"}]}"#;
        let set = parse_jwks(body).unwrap();
        assert_eq!(set.all.len(), 1);
        assert!(set.lookup(Some("h"), Algorithm::RS256).is_none());
        assert!(set.lookup(Some("e"), Algorithm::ES256).is_some());
        assert!(set.lookup(None, Algorithm::ES256).is_some());
    }
}
