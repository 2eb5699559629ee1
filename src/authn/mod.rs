//! Caller authentication (docs/wire.md §6 and §9): exactly one `Authorization: Bearer`
//! JWT, verified against the issuer's cached keys, becomes a [`Principal`].
//! Repeat tokens are served from a verified-token cache keyed by a hash of
//! the token, so the hot path skips signature checks.

mod jwks;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::config::IssuerSettings;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::secret::Secret;
pub use jwks::Issuer;

/// A caller proven by a valid token: its [`Identity`], shared by
/// authorization, the credential and the audit record without copying.
#[derive(Debug)]
pub struct Principal {
    pub identity: Identity,
    /// When the verified-token cache must forget this principal.
    pub cache_until: Instant,
}

/// A proven caller and the bearer token it presented (for `passthrough` and
/// `token_exchange`; never logged).
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Arc<Principal>,
    pub token: Secret,
}

/// Why a caller is not authenticated. Each variant is one audit reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnError {
    /// No token, a non-Bearer scheme, or an empty Bearer (401, no error code).
    MissingToken,
    /// Two `Authorization` headers (400 `invalid_request`).
    DuplicateAuthorization,
    Malformed(String),
    Expired,
    NotYetValid,
    BadSignature,
    UnknownKey,
    BadIssuer,
    BadAudience,
    BadAlgorithm(String),
}

impl AuthnError {
    /// The audit reason code (docs/audit.md).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::DuplicateAuthorization | Self::Malformed(_) => "malformed_token",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::BadIssuer => "bad_issuer",
            Self::BadAudience => "bad_audience",
            Self::BadAlgorithm(_) => "bad_algorithm",
        }
    }
}

impl fmt::Display for AuthnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingToken => f.write_str("a bearer token is required"),
            Self::DuplicateAuthorization => f.write_str("more than one Authorization header"),
            Self::Malformed(why) => write!(f, "malformed token: {why}"),
            Self::Expired => f.write_str("the token has expired"),
            Self::NotYetValid => f.write_str("the token is not valid yet"),
            Self::BadSignature => f.write_str("the token signature is invalid"),
            Self::UnknownKey => f.write_str("the token was signed with an unknown key"),
            Self::BadIssuer => f.write_str("the token issuer is not trusted"),
            Self::BadAudience => f.write_str("the token audience is not accepted"),
            Self::BadAlgorithm(why) => write!(f, "the token algorithm is not accepted: {why}"),
        }
    }
}

impl std::error::Error for AuthnError {}

/// All trusted issuers and the verified-token cache. Shared by all threads.
pub struct Authenticator {
    issuers: HashMap<String, Arc<Issuer>>,
    verified: moka::sync::Cache<[u8; 32], Arc<Principal>>,
    max_token_bytes: usize,
}

impl Authenticator {
    /// Builds issuers from config; keys are fetched by [`Authenticator::start`].
    pub fn new(settings: &[IssuerSettings], metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut issuers = HashMap::new();
        for s in settings {
            issuers.insert(s.issuer.clone(), Arc::new(Issuer::new(s.clone(), metrics.clone())?));
        }
        // A first bound before any decoding; each issuer's own limit is
        // applied once the token names its issuer.
        let max_token_bytes = settings.iter().map(|s| s.max_token_bytes).max().unwrap_or(crate::config::defaults::MAX_TOKEN_BYTES);
        let verified = moka::sync::Cache::builder().max_capacity(100_000).expire_after(CacheUntil).build();
        Ok(Self { issuers, verified, max_token_bytes })
    }

    /// Spawns each issuer's key refresher (first fetch at once).
    pub fn start(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        for issuer in self.issuers.values() {
            tokio::spawn(issuer.clone().refresh_loop(shutdown.clone()));
        }
    }

    /// True once every issuer has usable keys.
    pub fn ready(&self) -> bool {
        self.issuers.values().all(|i| i.has_keys())
    }

    /// Installs a JWKS for `issuer` as if it had been fetched (benchmarks
    /// and tests; the proxy fetches keys itself).
    #[doc(hidden)]
    pub fn install_jwks(&self, issuer: &str, jwks: &[u8]) -> Result<(), String> {
        let i = self.issuers.get(issuer).ok_or_else(|| format!("no issuer {issuer}"))?;
        i.install(jwks::parse_jwks(jwks)?);
        Ok(())
    }

    /// Full validation, skipping the verified-token cache (what a token
    /// seen for the first time costs; benchmarks).
    #[doc(hidden)]
    pub async fn authenticate_uncached(&self, headers: &HeaderMap) -> Result<Arc<Principal>, AuthnError> {
        let token = bearer_token(headers)?;
        Ok(Arc::new(validate::validate(token, &self.issuers).await?))
    }

    /// Authenticates the request's bearer token.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, AuthnError> {
        let token = bearer_token(headers)?;
        if token.len() > self.max_token_bytes {
            return Err(AuthnError::Malformed(format!("token longer than {} bytes", self.max_token_bytes)));
        }
        let key = token_hash(token);
        if let Some(p) = self.verified.get(&key)
            && p.cache_until > Instant::now()
        {
            return Ok(Authenticated { principal: p, token: Secret::new(token) });
        }
        let principal = Arc::new(validate::validate(token, &self.issuers).await?);
        self.verified.insert(key, principal.clone());
        Ok(Authenticated { principal, token: Secret::new(token) })
    }
}

/// Exactly one `Authorization` header with a non-empty Bearer token; the
/// scheme is case-insensitive. Tokens in the query string are never read.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthnError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Err(AuthnError::MissingToken) };
    if values.next().is_some() {
        return Err(AuthnError::DuplicateAuthorization);
    }
    let value = value.to_str().map_err(|_| AuthnError::Malformed("Authorization header is not visible ASCII".into()))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::MissingToken);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthnError::MissingToken);
    }
    Ok(token)
}

/// The `kid` and `iss` of a refused token, read without trusting them and
/// shortened, so that logs can answer "why was I denied" without holding
/// any token bytes.
pub fn refusal_hints(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    use base64::Engine;
    let Ok(token) = bearer_token(headers) else { return (None, None) };
    let mut parts = token.split('.');
    let part = |p: Option<&str>, key: &str| -> Option<String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p?).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let s = v.get(key)?.as_str()?;
        Some(crate::untrusted::printable(s, 128))
    };
    let kid = part(parts.next(), "kid");
    let iss = part(parts.next(), "iss");
    (kid, iss)
}

fn token_hash(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Verified-token cache entries live until the principal's `cache_until`.
struct CacheUntil;

impl moka::Expiry<[u8; 32], Arc<Principal>> for CacheUntil {
    fn expire_after_create(&self, _: &[u8; 32], p: &Arc<Principal>, now: Instant) -> Option<Duration> {
        Some(p.cache_until.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["bEaReR abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&[])), Err(AuthnError::MissingToken));
        assert_eq!(bearer_token(&headers(&["Bearer "])), Err(AuthnError::MissingToken));
        assert_eq!(bearer_token(&headers(&["Bearer"])), Err(AuthnError::MissingToken));
        assert_eq!(bearer_token(&headers(&["Basic YWI6Yw=="])), Err(AuthnError::MissingToken));
        assert_eq!(bearer_token(&headers(&["Bearer a", "Bearer b"])), Err(AuthnError::DuplicateAuthorization));
    }

    /// The proxy (a signed token through authentication), `policy test`
    /// (claims in a `[[test]]` case) and `policy explain` (claims on the
    /// command line) build the same identity and reach the same decision,
    /// whatever shape the scope claims take and whichever `scope_claim` the
    /// issuer has.
    #[test]
    fn the_proxy_policy_test_and_explain_reach_the_same_decision_for_the_same_claims() {
        use crate::authz::{AccessRequest, PolicySet, Resolved, run_tests};
        use crate::config::Config;
        use crate::diagnostic::SourceFile;
        use proptest::prelude::*;
        use serde_json::{Value, json};

        const RULES: &str = "[[rule]]\nid = \"readers\"\nroute = \"crm\"\nscopes_all = [\"crm.read\"]\nscopes_any = [\"a\", \"b\"]\n\n\
                             [[rule]]\nid = \"tabbed\"\nroute = \"crm\"\nmethods = [\"POST\"]\nscopes_all = [\"crm.write\"]\n";
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dev = rt
            .block_on(async { crate::dev::issuer::DevIssuer::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()) })
            .unwrap();
        let word = prop_oneof![Just("crm.read"), Just("crm.write"), Just("a"), Just("b"), Just("zz")];
        let sep = prop_oneof![Just(" "), Just("  "), Just("\t"), Just(" \t ")];
        let scope = proptest::option::of(
            proptest::collection::vec((word.clone(), sep), 0..4)
                .prop_map(|ws| ws.into_iter().map(|(w, s)| format!("{w}{s}")).collect::<String>()),
        );
        let scp = proptest::option::of(prop_oneof![
            proptest::collection::vec(word.clone(), 0..3).prop_map(|ws| json!(ws)),
            proptest::collection::vec(word, 0..3).prop_map(|ws| json!(ws.join(" "))),
        ]);
        let method = prop_oneof![Just("GET"), Just("POST")];
        for which in ["scope", "scp", "both"] {
            let config = Config::parse(
                std::path::Path::new("/equivalence/gatehouse.toml"),
                &SourceFile::new(
                    "gatehouse.toml",
                    format!(
                        "[listen]\naddr = \"127.0.0.1:0\"\ntls_cert = \"c\"\ntls_key = \"k\"\n\
                         [[issuer]]\nissuer = \"{iss}\"\naudiences = [\"gatehouse\"]\njwks_uri = \"{iss}/jwks\"\n{line}\
                         [[upstream]]\nname = \"crm\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\nname = \"crm\"\npath_prefix = \"/crm/\"\nupstream = \"crm\"\n",
                        iss = dev.issuer,
                        line = if which == "both" { String::new() } else { format!("scope_claim = \"{which}\"\n") },
                    ),
                ),
            )
            .unwrap_or_else(|p| panic!("{p:?}"));
            let metrics = Arc::new(Metrics::new(std::iter::empty(), std::iter::once(dev.issuer.as_str()), std::iter::empty()));
            let authn = Authenticator::new(&config.issuers, metrics).unwrap();
            authn.install_jwks(&dev.issuer, dev.jwks().as_bytes()).unwrap();
            let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config { cases: 200, ..Default::default() });
            runner
                .run(&(scope.clone(), scp.clone(), method.clone()), |(scope, scp, method)| {
                    let mut claims = json!({"sub": "svc-a", "aud": "gatehouse", "client_id": "c"});
                    if let Some(s) = scope {
                        claims["scope"] = json!(s);
                    }
                    if let Some(s) = scp {
                        claims["scp"] = s;
                    }
                    let Value::Object(mut claims) = claims else { unreachable!() };
                    let mut headers = HeaderMap::new();
                    let token = dev.mint(claims.clone()).unwrap();
                    headers.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
                    let live = rt.block_on(authn.authenticate(&headers)).unwrap().principal;
                    claims.insert("iss".into(), json!(dev.issuer));
                    let tool = config.identity(claims.clone());
                    prop_assert_eq!(&live.identity.scopes, &tool.scopes);
                    let set = PolicySet::from_sources(&[SourceFile::new("p.toml", RULES)], &["crm"]).unwrap();
                    let request = |identity| AccessRequest { route: "crm", method, path: "/crm/x", fold_case: false, subject: identity };
                    let proxy = set.authorize(&request(&live.identity));
                    let explained = set.explain(&request(&tool)).decision;
                    prop_assert_eq!(&proxy, &explained);
                    // policy test: the same claims in a [[test]] case, expecting what the proxy decided.
                    let case = format!(
                        "{RULES}\n[[test]]\nname = \"t\"\nmethod = \"{method}\"\npath = \"/crm/x\"\nexpect = \"{}\"\nrule = \"{}\"\nclaims = {}\n",
                        proxy.effect,
                        proxy.rule.as_str(),
                        toml::Value::try_from(&claims).unwrap()
                    );
                    let with_case = PolicySet::from_sources(&[SourceFile::new("p.toml", case)], &["crm"]).unwrap();
                    let resolve = |_: Option<&str>, path: &str| Ok(Resolved { route: "crm".into(), path: path.into(), fold_case: false });
                    let failures = run_tests(&with_case, &resolve, &|c| config.identity(c));
                    prop_assert!(failures.is_empty(), "{:?}", failures);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("scope_claim = {which}: {e}"));
        }
    }
}
