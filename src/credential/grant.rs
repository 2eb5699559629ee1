//! One attempt at the token endpoint: build the grant request, authenticate
//! the client, read the answer, and for `refresh_token` commit a rotated
//! refresh token to the store before the access token is handed out.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use super::assertion::Signer;
use super::error::{EndpointFailure, FetchError};
use super::slot::{Timing, Token};
use super::{ClientAuth, OAuthClient, RefreshEvent, RefreshObserver, TokenHttp};
use crate::secret::Secret;
use crate::store::CredentialStore;
use crate::store::SharedAccess;

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The crash-test failpoints (test-only feature `failpoints`): the process
/// aborts, as kill -9 would stop it, where `GATEHOUSE_FAILPOINT` names:
/// `after_rotation_received` (a rotated refresh token arrived and is not
/// committed yet) or `after_lease_taken` (the refresh lease is held and no
/// token request was sent). Nothing else reads the variable.
#[cfg(feature = "failpoints")]
fn failpoint(name: &str) {
    if std::env::var("GATEHOUSE_FAILPOINT").as_deref() == Ok(name) {
        std::process::abort();
    }
}

/// Which OAuth grant an upstream uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrantKind {
    ClientCredentials,
    RefreshToken,
    TokenExchange,
}

impl GrantKind {
    /// The name used in `credential_refresh` records and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken => "refresh_token",
            Self::TokenExchange => "token_exchange",
        }
    }
}

/// Everything needed to fetch tokens for one upstream.
pub(crate) struct Grant {
    pub upstream: String,
    pub kind: GrantKind,
    pub client: OAuthClient,
    /// The parsed `private_key_jwt` key (or why it could not be parsed).
    signer: Option<Result<Signer, String>>,
    pub http: Arc<dyn TokenHttp>,
    pub store: Option<Arc<dyn CredentialStore>>,
    pub observer: Arc<dyn RefreshObserver>,
    pub timing: Timing,
}

/// A successful token answer, secrets already wrapped.
struct Answer {
    access_token: Secret,
    refresh_token: Option<Secret>,
    lifetime: Duration,
    /// How long ago it was obtained (zero unless another replica did).
    age: Duration,
}

/// The raw JSON of a token answer. No `Debug`: it holds tokens.
#[derive(Deserialize)]
struct RawAnswer {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
}

/// The raw JSON of an OAuth error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct RawError {
    error: String,
}

/// Why the token endpoint gave no token.
enum EndpointError {
    /// It answered with a (registered) OAuth error code.
    OAuth { status: StatusCode, code: &'static str },
    /// Anything else.
    Failed(EndpointFailure),
}

impl Grant {
    pub fn new(
        upstream: String,
        kind: GrantKind,
        client: OAuthClient,
        http: Arc<dyn TokenHttp>,
        store: Option<Arc<dyn CredentialStore>>,
        observer: Arc<dyn RefreshObserver>,
        timing: Timing,
    ) -> Self {
        let signer = match &client.auth {
            ClientAuth::PrivateKeyJwt { key_pem, key_id } => {
                let parsed = Signer::from_pem(key_pem, key_id).map_err(|why| format!("private_key_jwt key for upstream {upstream}: {why}"));
                if let Err(why) = &parsed {
                    tracing::warn!(upstream, error = %why, "client key unusable");
                }
                Some(parsed)
            }
            ClientAuth::SecretBasic(_) | ClientAuth::SecretPost(_) => None,
        };
        Self { upstream, kind, client, signer, http, store, observer, timing }
    }

    /// One attempt; the observer hears about it whatever the outcome.
    /// `subject` is the caller's token (token exchange only).
    pub async fn fetch(&self, subject: Option<&Secret>) -> Result<Token, FetchError> {
        let result = self.attempt(subject).await;
        self.observer.refreshed(RefreshEvent {
            upstream: self.upstream.clone(),
            kind: self.kind.name(),
            ok: result.is_ok(),
            expires_at: result.as_ref().ok().map(|t| t.expires_at),
            error: result.as_ref().err().map(ToString::to_string),
        });
        result
    }

    async fn attempt(&self, subject: Option<&Secret>) -> Result<Token, FetchError> {
        let issued = Instant::now();
        let answer = match self.kind {
            GrantKind::ClientCredentials => {
                let params = vec![("grant_type", "client_credentials".to_owned())];
                self.request(params).await.map_err(|e| self.describe(e))?
            }
            GrantKind::TokenExchange => {
                let subject = subject.ok_or_else(|| FetchError::Internal("token exchange needs the caller's token".into()))?;
                let params = vec![
                    ("grant_type", TOKEN_EXCHANGE_GRANT.to_owned()),
                    ("subject_token", subject.expose().to_owned()),
                    ("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()),
                ];
                self.request(params).await.map_err(|e| self.describe(e))?
            }
            GrantKind::RefreshToken => self.refresh_with_stored_token().await?,
        };
        let value = bearer(&answer.access_token).ok_or_else(|| FetchError::Endpoint {
            upstream: self.upstream.clone(),
            why: EndpointFailure::BadAnswer("the access token holds characters not allowed in an HTTP header".into()),
        })?;
        let issued = issued.checked_sub(answer.age).unwrap_or(issued);
        Ok(Token::new(value, answer.lifetime, issued, &self.timing))
    }

    /// RFC 6749 §6 with the stored refresh token, once for all replicas
    /// sharing the store: the access token another replica committed is
    /// used while it is not yet due; else the replica that takes the refresh
    /// lease refreshes, and the others wait for its commit (woken by the
    /// store, or at the lease's end at the latest) and use its token.
    async fn refresh_with_stored_token(&self) -> Result<Answer, FetchError> {
        let upstream = &self.upstream;
        let store = self.store.as_ref().ok_or_else(|| FetchError::NoStore { upstream: upstream.clone() })?;
        let store_error = |e: crate::store::StoreError| FetchError::Store(e.to_string());
        let give_up = Instant::now() + self.timing.lease * 2;
        loop {
            if let Some(shared) = store.shared_access(upstream).await.map_err(store_error)?
                && let Some(answer) = adoptable(shared, &self.timing)
            {
                return Ok(answer);
            }
            if let Some(fence) = store.take_lease(upstream, holder_id(), self.timing.lease).await.map_err(store_error)? {
                #[cfg(feature = "failpoints")]
                failpoint("after_lease_taken");
                // Another replica may have committed (and given the lease
                // back) between the look above and this taking: look again,
                // holding the lease, so that a token is never refreshed twice.
                if let Some(shared) = store.shared_access(upstream).await.map_err(store_error)?
                    && let Some(answer) = adoptable(shared, &self.timing)
                {
                    if let Err(e) = store.release_lease(upstream, fence).await {
                        tracing::warn!(upstream, error = %e, "refresh lease not released; it ends at its expiry");
                    }
                    return Ok(answer);
                }
                return self.refresh_under_lease(&**store, fence).await;
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(FetchError::LeaseHeld { upstream: upstream.clone() });
            }
            store.wait_change(upstream, (give_up - now).min(self.timing.lease)).await;
        }
    }

    /// The refresh itself, holding lease `fence`: the rotated refresh token
    /// and the new access token are committed together before the access
    /// token is used; a lease lost meanwhile (this replica was too slow and
    /// another took over) commits nothing.
    async fn refresh_under_lease(&self, store: &dyn crate::store::CredentialStore, fence: i64) -> Result<Answer, FetchError> {
        let upstream = &self.upstream;
        let release = |error: FetchError| async move {
            if let Err(e) = store.release_lease(upstream, fence).await {
                tracing::warn!(upstream, error = %e, "refresh lease not released; it ends at its expiry");
            }
            error
        };
        let stored = match store.get(upstream).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return Err(release(FetchError::NotStored { upstream: upstream.clone() }).await),
            Err(e) => return Err(release(FetchError::Store(e.to_string())).await),
        };
        let params = vec![("grant_type", "refresh_token".to_owned()), ("refresh_token", stored.expose().to_owned())];
        // Well within the lease, so that no other replica takes over while
        // this one still waits for an answer.
        let within = self.timing.request_timeout.min(self.timing.lease.mul_f64(0.6));
        let answer = match tokio::time::timeout(within, self.request(params)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(EndpointError::OAuth { code: "invalid_grant", .. })) => {
                return Err(release(FetchError::StoredTokenRejected { upstream: upstream.clone() }).await);
            }
            Ok(Err(other)) => return Err(release(self.describe(other)).await),
            Err(_) => {
                let why = EndpointFailure::Timeout(within.as_secs());
                return Err(release(FetchError::Endpoint { upstream: upstream.clone(), why }).await);
            }
        };
        let rotated = answer.refresh_token.as_ref().filter(|new| **new != stored);
        #[cfg(feature = "failpoints")]
        if rotated.is_some() {
            failpoint("after_rotation_received");
        }
        let issued_at = unix_now();
        let shared = SharedAccess { value: answer.access_token.clone(), issued_at, expires_at: issued_at + answer.lifetime.as_secs_f64() };
        match store.commit_refresh(upstream, fence, &stored, rotated, &shared).await {
            Ok(true) => Ok(answer),
            Ok(false) => Err(FetchError::RotationRaced { upstream: upstream.clone() }),
            Err(e) => Err(FetchError::RotationNotStored { upstream: upstream.clone(), why: e.to_string() }),
        }
    }
}

/// The process's name as a lease holder: random, so that a restarted
/// replica never mistakes an old lease for its own.
fn holder_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        format!("gatehouse-{}-{}", std::process::id(), bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The access token another replica committed, as this replica's answer,
/// while it is not yet due for renewal by the same rules as a token fetched
/// here (so every replica renews at the same point, and one of them does);
/// `None` when it is time to refresh.
fn adoptable(shared: SharedAccess, timing: &Timing) -> Option<Answer> {
    let lifetime = Duration::try_from_secs_f64(shared.expires_at - shared.issued_at).ok()?;
    let age = Duration::try_from_secs_f64(unix_now() - shared.issued_at).unwrap_or_default();
    let (_, refresh) = super::slot::windows(lifetime, timing);
    (age < refresh).then_some(Answer { access_token: shared.value, refresh_token: None, lifetime, age })
}

impl Grant {
    /// POSTs the grant with the client's authentication and common parameters.
    async fn request(&self, mut params: Vec<(&'static str, String)>) -> Result<Answer, EndpointError> {
        let client = &self.client;
        if !client.scopes.is_empty() {
            params.push(("scope", client.scopes.join(" ")));
        }
        if let Some(audience) = &client.audience {
            params.push(("audience", audience.clone()));
        }
        if let Some(resource) = &client.resource {
            params.push(("resource", resource.clone()));
        }
        // content-type and accept are the transport's job (see TokenHttp).
        let mut headers = Vec::new();
        match &client.auth {
            ClientAuth::SecretBasic(secret) => headers.push((AUTHORIZATION, basic(&client.client_id, secret)?)),
            ClientAuth::SecretPost(secret) => {
                params.push(("client_id", client.client_id.clone()));
                params.push(("client_secret", secret.expose().to_owned()));
            }
            ClientAuth::PrivateKeyJwt { .. } => {
                let signer = match &self.signer {
                    Some(Ok(signer)) => signer,
                    Some(Err(why)) => return Err(EndpointError::Failed(EndpointFailure::ClientAuth(why.clone()))),
                    None => return Err(EndpointError::Failed(EndpointFailure::ClientAuth("client key missing".to_owned()))),
                };
                let assertion = signer
                    .assertion(&client.client_id, &client.token_url)
                    .map_err(|why| EndpointError::Failed(EndpointFailure::ClientAuth(why)))?;
                params.push(("client_id", client.client_id.clone()));
                params.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()));
                params.push(("client_assertion", assertion.expose().to_owned()));
            }
        }
        let body = form_encode(&params);
        let sent = self.http.post_form(&client.token_url, headers, body);
        let (status, bytes) = match tokio::time::timeout(self.timing.request_timeout, sent).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => {
                // The address and the connection error are for the log only:
                // this message reaches callers' answers and the audit record.
                tracing::warn!(upstream = %self.upstream, error = %why, "token endpoint unreachable");
                return Err(EndpointError::Failed(EndpointFailure::Unreachable));
            }
            Err(_) => return Err(EndpointError::Failed(EndpointFailure::Timeout(self.timing.request_timeout.as_secs()))),
        };
        if status.is_success() {
            parse_answer(&bytes, self.kind, self.timing.default_lifetime)
                .map_err(|why| EndpointError::Failed(EndpointFailure::BadAnswer(why)))
        } else {
            Err(parse_error(status, &bytes))
        }
    }

    fn describe(&self, error: EndpointError) -> FetchError {
        let upstream = self.upstream.clone();
        match error {
            EndpointError::OAuth { status, code } => FetchError::Refused { upstream, status: status.as_u16(), code },
            EndpointError::Failed(why) => FetchError::Endpoint { upstream, why },
        }
    }
}

fn parse_answer(bytes: &[u8], kind: GrantKind, default_lifetime: Duration) -> Result<Answer, String> {
    let raw: RawAnswer =
        serde_json::from_slice(bytes).map_err(|_| "token endpoint answered success without a valid token response".to_owned())?;
    if raw.access_token.is_empty() {
        return Err("token endpoint answered an empty access_token".to_owned());
    }
    if let Some(token_type) = &raw.token_type {
        // RFC 8693 §2.2.1: N_A when the issued token is not an access token
        // in the OAuth sense; it is still presented as a bearer token.
        let exchanged_na = kind == GrantKind::TokenExchange && token_type == "N_A";
        if !token_type.eq_ignore_ascii_case("bearer") && !exchanged_na {
            return Err(format!("token endpoint answered token_type {}; only Bearer is supported", sanitize(token_type, 40)));
        }
    }
    let lifetime = match &raw.expires_in {
        None | Some(serde_json::Value::Null) => default_lifetime,
        Some(value) => seconds(value)
            .map(|s| Duration::from_secs(s.max(1)))
            .ok_or("token endpoint answered an expires_in that is not a number of seconds")?,
    };
    Ok(Answer {
        access_token: Secret::new(raw.access_token),
        refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
        lifetime,
        age: Duration::ZERO,
    })
}

/// `expires_in` as a count of seconds: a JSON number, or a string of digits
/// (some servers send one).
fn seconds(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_error(status: StatusCode, bytes: &[u8]) -> EndpointError {
    match serde_json::from_slice::<RawError>(bytes) {
        Ok(raw) => {
            // Only a registered error code is repeated: `error_description`
            // (and any unknown code) is free text in which a token endpoint
            // may quote what it was sent, client secret included, and this
            // message reaches the audit log and the caller's 503.
            EndpointError::OAuth { status, code: known_error_code(&raw.error).unwrap_or("unrecognized_error_code") }
        }
        // The body is not echoed: it is not ours to trust or to log.
        Err(_) => EndpointError::Failed(EndpointFailure::Status(status.as_u16())),
    }
}

/// Keeps printable ASCII only (RFC 6749 §5.2 allows nothing else) and caps the length.
/// OAuth error codes (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707, RFC 6750,
/// RFC 9449), the only token-endpoint text that is repeated.
fn known_error_code(code: &str) -> Option<&'static str> {
    const CODES: [&str; 14] = [
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
        "invalid_token",
        "insufficient_scope",
        "invalid_dpop_proof",
        "use_dpop_nonce",
    ];
    CODES.into_iter().find(|c| *c == code)
}

fn sanitize(text: &str, max: usize) -> String {
    text.chars().filter(|c| (' '..='~').contains(c)).take(max).collect()
}

fn bearer(token: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// RFC 6749 §2.3.1: id and secret form-urlencoded, then HTTP Basic.
fn basic(client_id: &str, secret: &Secret) -> Result<HeaderValue, EndpointError> {
    let pair = format!("{}:{}", form_component(client_id), form_component(secret.expose()));
    let mut value = HeaderValue::try_from(format!("Basic {}", STANDARD.encode(pair)))
        .map_err(|_| EndpointError::Failed(EndpointFailure::ClientAuth("client credentials do not fit a header".to_owned())))?;
    value.set_sensitive(true);
    Ok(value)
}

/// `application/x-www-form-urlencoded` (WHATWG URL §5.2).
pub(crate) fn form_encode(params: &[(&str, String)]) -> String {
    params.iter().map(|(name, value)| format!("{}={}", form_component(name), form_component(value))).collect::<Vec<_>>().join("&")
}

fn form_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The header carrying an upstream OAuth credential.
pub(crate) const OAUTH_HEADER: HeaderName = AUTHORIZATION;
