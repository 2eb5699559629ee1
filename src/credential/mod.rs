//! Upstream credentials (docs/config.md §10, docs/wire.md §12 the 401 retry).
//!
//! One [`UpstreamCredential`] per upstream answers "what goes on the upstream
//! request". For the OAuth kinds it keeps the access token in a lock-free
//! cache, fetches with exactly one request in flight per key however many
//! callers wait, refreshes in the background once 80 % of the lifetime has
//! passed (backing off 1 s doubling to 60 s while the endpoint fails), keeps
//! serving the cached token while the endpoint is down until 5 s before its
//! expiry, and tells a [`RefreshObserver`] about every attempt.
//!
//! A token is never used within 5 s of its expiry; one that does not live
//! longer than 5 s (which cannot keep that rule) is used for the first half
//! of its life. When 80 % of the lifetime lies past the usable window, the
//! refresh comes at 80 % of the usable window instead.
//!
//! Crash-test failpoint, compiled only with the test-only cargo feature
//! `failpoints`: with `GATEHOUSE_FAILPOINT=after_rotation_received` in the
//! environment, the process aborts (`std::process::abort`) after a
//! rotated refresh token was received and before it is committed to the
//! store, for the kill -9 test. Nothing else reads that variable.

mod assertion;
mod error;
mod grant;
mod slot;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use moka::Expiry;
use tokio::time::Instant;

use crate::secret::Secret;
use crate::store::CredentialStore;
pub use error::{EndpointFailure, FetchError};
use grant::{Grant, GrantKind, OAUTH_HEADER};
use slot::{Got, Slot, Timing};

/// Typed, validated credential config for one upstream (built by the config
/// loader, secrets already read from their files or variables).
#[derive(Clone, Debug)]
pub enum CredentialSpec {
    /// RFC 6749 §4.4, one token per upstream.
    ClientCredentials(OAuthClient),
    /// RFC 6749 §6 with the refresh token from the store.
    RefreshToken(OAuthClient),
    /// RFC 8693 with the caller's token as `subject_token`, cached per caller.
    TokenExchange(OAuthClient),
    /// A fixed header.
    Static {
        /// The header to set (`authorization` unless configured).
        header: HeaderName,
        /// Its value.
        value: Secret,
    },
    /// The caller's own token, as `authorization: Bearer ...`.
    Passthrough,
    /// No credential.
    None,
}

/// The OAuth client gatehouse is towards one token endpoint.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    /// The token endpoint.
    pub token_url: String,
    /// Our client id there.
    pub client_id: String,
    /// How we authenticate.
    pub auth: ClientAuth,
    /// Sent as one space-separated `scope` parameter when not empty.
    pub scopes: Vec<String>,
    /// Sent as `audience` when set.
    pub audience: Option<String>,
    /// Sent as `resource` (RFC 8707) when set.
    pub resource: Option<String>,
}

/// Client authentication at the token endpoint.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic of the form-urlencoded id and secret.
    SecretBasic(Secret),
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    SecretPost(Secret),
    /// `private_key_jwt` (RFC 7523): a signed assertion, `iss` = `sub` =
    /// client id, `aud` = token URL, random `jti`, `exp` 60 s ahead; RS256,
    /// ES256 or EdDSA after the key type (RSA, P-256, Ed25519).
    PrivateKeyJwt {
        /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
        key_pem: Secret,
        /// The `kid` put in the assertion header.
        key_id: String,
    },
}

impl ClientAuth {
    /// Checks what can be checked before the first request: a
    /// `private_key_jwt` key must parse as a supported key. For `gatehouse
    /// check`; the message holds no key material.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::PrivateKeyJwt { key_pem, key_id } => assertion::Signer::from_pem(key_pem, key_id).map(drop),
            Self::SecretBasic(_) | Self::SecretPost(_) => Ok(()),
        }
    }
}

/// The boxed future [`TokenHttp::post_form`] returns.
pub type PostFuture<'a> = Pin<Box<dyn Future<Output = Result<(StatusCode, Bytes), String>> + Send + 'a>>;

/// How the credential module talks HTTP: the proxy supplies a hyper + rustls
/// client, tests their own.
pub trait TokenHttp: Send + Sync + 'static {
    /// POSTs `body` to `url` and returns the status and whole body, or why
    /// no answer came (the error text must not contain the body). `body` is
    /// already `application/x-www-form-urlencoded`; the implementation sets
    /// `content-type: application/x-www-form-urlencoded` and `accept:
    /// application/json` itself. `headers` holds only what the grant adds:
    /// `authorization` (Basic, marked sensitive) for client_secret_basic.
    fn post_form(&self, url: &str, headers: Vec<(HeaderName, HeaderValue)>, body: String) -> PostFuture<'_>;
}

/// Told about every token-endpoint attempt (the proxy writes a
/// `credential_refresh` audit record and counts it). Never sees a token.
pub trait RefreshObserver: Send + Sync + 'static {
    /// One attempt ended.
    fn refreshed(&self, event: RefreshEvent);
}

/// One token-endpoint attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshEvent {
    /// The upstream name.
    pub upstream: String,
    /// `client_credentials`, `refresh_token` or `token_exchange`.
    pub kind: &'static str,
    /// Whether a token was obtained (and, for a rotation, committed).
    pub ok: bool,
    /// When the new access token expires (wall clock); `None` on error.
    pub expires_at: Option<time::OffsetDateTime>,
    /// Why it failed; never a secret or a token.
    pub error: Option<String>,
}

/// Why no credential could be had (503 `credential_unavailable`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialError {
    /// The token endpoint gave no token (or the stored one is unusable).
    Unavailable(FetchError),
    /// The static credential's value is not a valid header value.
    StaticValue { upstream: String },
    /// The caller's token cannot be passed on as a header value.
    CallerToken,
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "upstream credential unavailable: {why}"),
            Self::StaticValue { upstream } => {
                write!(f, "upstream credential unavailable: the static credential of upstream {upstream} is not a valid header value")
            }
            Self::CallerToken => f.write_str("upstream credential unavailable: the caller's token is not a valid header value"),
        }
    }
}

impl std::error::Error for CredentialError {}

/// The credential of one upstream. Cheap to clone (an `Arc` inside); every
/// clone shares the cache.
#[derive(Clone)]
pub struct UpstreamCredential {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: String,
    source: Source,
    started: AtomicBool,
}

enum Source {
    /// client_credentials and refresh_token: one token for the upstream.
    Shared(Arc<SharedToken>),
    /// token_exchange: one slot per caller (iss, sub), evicted with its token.
    Exchange {
        grant: Arc<Grant>,
        slots: moka::sync::Cache<CallerKey, Arc<Slot>>,
    },
    Static {
        header: HeaderName,
        /// `None` when the configured value is not a valid header value.
        value: Option<HeaderValue>,
    },
    Passthrough,
    None,
}

struct SharedToken {
    grant: Arc<Grant>,
    slot: Arc<Slot>,
}

/// The token-exchange cache key: `iss`, `sub` and `client_id` (docs/config.md §11:
/// never shared between two clients acting for the same subject).
type CallerKey = (String, String, Option<String>);

/// The caller a credential is asked for: its `iss`, `sub` and `client_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub client_id: Option<&'a str>,
}

impl Caller<'_> {
    fn key(&self) -> CallerKey {
        (self.iss.to_owned(), self.sub.to_owned(), self.client_id.map(str::to_owned))
    }
}

/// Upper bound on cached token-exchange callers.
const EXCHANGE_CAPACITY: u64 = 100_000;
/// How long a caller's slot outlives its token (paces retries after failures).
const EXCHANGE_IDLE: Duration = Duration::from_secs(60);

impl UpstreamCredential {
    /// Builds the credential of `upstream`. Nothing is fetched yet; a
    /// `private_key_jwt` key that does not parse makes every fetch fail with
    /// the reason (see [`ClientAuth::check`] to catch it earlier).
    pub fn new(
        upstream: String,
        spec: CredentialSpec,
        http: Arc<dyn TokenHttp>,
        store: Option<Arc<dyn CredentialStore>>,
        observer: Arc<dyn RefreshObserver>,
        lease: Duration,
    ) -> Self {
        Self::with_timing(upstream, spec, http, store, observer, Timing { lease, ..Timing::default() })
    }

    /// [`new`](Self::new) with other timing rules (tests shorten them).
    pub(crate) fn with_timing(
        upstream: String,
        spec: CredentialSpec,
        http: Arc<dyn TokenHttp>,
        store: Option<Arc<dyn CredentialStore>>,
        observer: Arc<dyn RefreshObserver>,
        timing: Timing,
    ) -> Self {
        let grant = |kind, client| {
            let u = upstream.clone();
            Arc::new(Grant::new(u, kind, client, http, store, observer, timing))
        };
        let source = match spec {
            CredentialSpec::ClientCredentials(client) => {
                Source::Shared(Arc::new(SharedToken { grant: grant(GrantKind::ClientCredentials, client), slot: Arc::new(Slot::new()) }))
            }
            CredentialSpec::RefreshToken(client) => {
                Source::Shared(Arc::new(SharedToken { grant: grant(GrantKind::RefreshToken, client), slot: Arc::new(Slot::new()) }))
            }
            CredentialSpec::TokenExchange(client) => Source::Exchange {
                grant: grant(GrantKind::TokenExchange, client),
                slots: moka::sync::Cache::builder().max_capacity(EXCHANGE_CAPACITY).expire_after(SlotExpiry).build(),
            },
            CredentialSpec::Static { header, value } => Source::Static { header, value: sensitive(value.expose()) },
            CredentialSpec::Passthrough => Source::Passthrough,
            CredentialSpec::None => Source::None,
        };
        Self { inner: Arc::new(Inner { upstream, source, started: AtomicBool::new(false) }) }
    }

    /// Starts the background refresh-ahead task (client_credentials and
    /// refresh_token; nothing for the other kinds). It fetches a first token
    /// at once, renews it once 80 % of its lifetime has passed, backs off
    /// 1 s doubling to 60 s while the endpoint fails, and ends when the last
    /// clone of this credential is dropped. Idempotent; needs a tokio runtime.
    pub fn start(&self) {
        let Source::Shared(shared) = &self.inner.source else {
            return;
        };
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(refresh_ahead(Arc::downgrade(shared)))),
            Err(_) => {
                self.inner.started.store(false, Ordering::Release);
                tracing::warn!(upstream = %self.inner.upstream, "credential refresh not started: no tokio runtime");
            }
        }
    }

    /// What to put on the upstream request: `Ok(Some((name, value)))`, or
    /// `Ok(None)` for `none`. Values are marked sensitive. `caller_token` is
    /// the caller's validated token (passthrough, token_exchange) and
    /// `caller` its identity, the token_exchange cache key.
    pub async fn header(&self, caller_token: &Secret, caller: Caller<'_>) -> Result<Option<(HeaderName, HeaderValue)>, CredentialError> {
        match &self.inner.source {
            Source::Shared(shared) => {
                if let Some(value) = shared.slot.usable(Instant::now()) {
                    return Ok(Some((OAUTH_HEADER, value)));
                }
                let grant = Arc::clone(&shared.grant);
                let got = shared
                    .slot
                    .get_or_fetch(&shared.grant.timing, move || async move { grant.fetch(None).await })
                    .await
                    .map_err(CredentialError::Unavailable)?;
                Ok(Some((OAUTH_HEADER, got.into_value())))
            }
            Source::Exchange { grant, slots } => {
                let key = caller.key();
                let slot = slots.get_with(key.clone(), || Arc::new(Slot::new()));
                let fetcher = Arc::clone(grant);
                let subject = caller_token.clone();
                let got = slot
                    .get_or_fetch(&grant.timing, move || async move { fetcher.fetch(Some(&subject)).await })
                    .await
                    .map_err(CredentialError::Unavailable)?;
                if let Got::Fetched(_) = got {
                    // Re-insert so the entry's expiry follows the new token.
                    slots.insert(key, slot);
                }
                Ok(Some((OAUTH_HEADER, got.into_value())))
            }
            Source::Static { header, value } => match value {
                Some(value) => Ok(Some((header.clone(), value.clone()))),
                None => Err(CredentialError::StaticValue { upstream: self.inner.upstream.clone() }),
            },
            Source::Passthrough => sensitive(&format!("Bearer {}", caller_token.expose()))
                .map(|value| Some((OAUTH_HEADER, value)))
                .ok_or(CredentialError::CallerToken),
            Source::None => Ok(None),
        }
    }

    /// Drops the token cached for this caller, so the next
    /// [`header`](Self::header) fetches a fresh one.
    #[cfg(test)]
    pub(crate) fn invalidate(&self, caller: Caller<'_>) {
        if let Some(slot) = self.slot_of(caller) {
            slot.invalidate();
        }
    }

    /// The upstream answered 401 to `used`: drops it if it is still the
    /// cached value and at least `min_age` old, and says whether it did (the
    /// request may then be retried with a fresh token). A late 401 for an
    /// old token does not throw away the one fetched after it, and a token
    /// younger than `min_age` is kept: a caller who can provoke 401s must not
    /// make one token request per request.
    pub fn invalidate_value(&self, caller: Caller<'_>, used: &HeaderValue, min_age: Duration) -> bool {
        self.slot_of(caller).is_some_and(|slot| slot.invalidate_value(used, min_age))
    }

    /// True for the OAuth kinds (docs/wire.md §12: their 401 that survives the retry
    /// becomes 502 `upstream_credential_rejected`).
    pub fn is_oauth(&self) -> bool {
        match &self.inner.source {
            Source::Shared(_) | Source::Exchange { .. } => true,
            Source::Static { .. } | Source::Passthrough | Source::None => false,
        }
    }

    fn slot_of(&self, caller: Caller<'_>) -> Option<Arc<Slot>> {
        match &self.inner.source {
            Source::Shared(shared) => Some(Arc::clone(&shared.slot)),
            Source::Exchange { slots, .. } => slots.get(&caller.key()),
            Source::Static { .. } | Source::Passthrough | Source::None => None,
        }
    }
}

impl fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner.source {
            Source::Shared(shared) => shared.grant.kind.name(),
            Source::Exchange { .. } => "token_exchange",
            Source::Static { .. } => "static",
            Source::Passthrough => "passthrough",
            Source::None => "none",
        };
        f.debug_struct("UpstreamCredential").field("upstream", &self.inner.upstream).field("kind", &kind).finish_non_exhaustive()
    }
}

impl Got {
    fn into_value(self) -> HeaderValue {
        match self {
            Self::Cached(value) | Self::Fetched(value) => value,
        }
    }
}

/// The background refresher of one shared token. Holds only a weak
/// reference while sleeping, so dropping the credential ends it.
async fn refresh_ahead(source: Weak<SharedToken>) {
    let mut backoff: Option<Duration> = None;
    loop {
        let Some(shared) = source.upgrade() else {
            return;
        };
        let timing = shared.grant.timing;
        let now = Instant::now();
        let due = shared.slot.refresh_due().unwrap_or(now);
        if due > now {
            backoff = None;
            sleep_until(shared, due).await;
            continue;
        }
        let grant = Arc::clone(&shared.grant);
        match shared.slot.refresh_if_due(grant.fetch(None)).await {
            Ok(()) => backoff = None,
            Err(_) => {
                let wait = backoff.map_or(timing.backoff_min, |b| (b * 2).min(timing.backoff_max));
                backoff = Some(wait);
                // Try once more right before the cached token turns unusable.
                let mut until = Instant::now() + wait;
                if let Some(last) = shared.slot.usable_until().filter(|u| *u > Instant::now()) {
                    until = until.min(last);
                }
                sleep_until_retry(shared, until).await;
            }
        }
    }
}

/// Sleeps until `until` or until the token changes.
async fn sleep_until(shared: Arc<SharedToken>, until: Instant) {
    let changed = shared.slot.changed();
    drop(shared);
    tokio::select! {
        () = tokio::time::sleep_until(until) => {}
        () = changed.notified() => {}
    }
}

/// Sleeps out a backoff; a token stored meanwhile (an on-demand fetch
/// succeeded) ends it early, a dropped one does not.
async fn sleep_until_retry(shared: Arc<SharedToken>, until: Instant) {
    let changed = shared.slot.changed();
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let sleep = tokio::time::sleep_until(until);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return,
            () = changed.notified() => {
                let renewed = weak.upgrade().is_some_and(|s| s.slot.refresh_due().is_some_and(|d| d > Instant::now()));
                if renewed {
                    return;
                }
            }
        }
    }
}

fn sensitive(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Keeps a caller's slot as long as its token is usable (at least
/// [`EXCHANGE_IDLE`]), re-evaluated on every read and write.
struct SlotExpiry;

impl Expiry<CallerKey, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &CallerKey, slot: &Arc<Slot>, _: std::time::Instant) -> Option<Duration> {
        Some(slot.keep_for(EXCHANGE_IDLE))
    }

    fn expire_after_read(
        &self,
        _: &CallerKey,
        slot: &Arc<Slot>,
        _: std::time::Instant,
        _: Option<Duration>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(slot.keep_for(EXCHANGE_IDLE))
    }

    fn expire_after_update(&self, _: &CallerKey, slot: &Arc<Slot>, _: std::time::Instant, _: Option<Duration>) -> Option<Duration> {
        Some(slot.keep_for(EXCHANGE_IDLE))
    }
}

#[cfg(test)]
mod tests;
