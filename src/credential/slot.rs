//! One cached access token with single-flight fetching.
//!
//! The common path (a usable token is cached) is one `ArcSwap` load: no lock.
//! Only callers that find no usable token take the slot's gate, a tokio
//! mutex; the first one starts the fetch and the others, queued behind it,
//! find the new token when they get the gate. The fetch runs in its own task
//! holding the gate, so a caller that goes away (client disconnect) cannot
//! cancel it half-way: a rotated refresh token is always committed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use time::OffsetDateTime;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::error::FetchError;

/// The timing rules of docs/config.md, in one place so tests can shorten them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// A token is never used this close to its expiry...
    pub expiry_margin: Duration,
    /// Background refresh starts once this fraction of the lifetime passed.
    pub refresh_fraction: f64,
    /// While fetching fails, callers start at most one attempt per this interval.
    pub min_retry: Duration,
    /// Background refresh backoff: starts here, doubles...
    pub backoff_min: Duration,
    /// ...up to here.
    pub backoff_max: Duration,
    /// Longest wait for the token endpoint's answer.
    pub request_timeout: Duration,
    /// Lifetime assumed when the answer has no `expires_in`.
    pub default_lifetime: Duration,
    /// How long a replica's refresh lease lasts (`[store] lease_s`).
    pub lease: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            expiry_margin: Duration::from_secs(5),
            refresh_fraction: 0.8,
            min_retry: Duration::from_secs(1),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            default_lifetime: Duration::from_secs(300),
            lease: crate::store::DEFAULT_LEASE,
        }
    }
}

/// An access token ready to be put on upstream requests.
pub(crate) struct Token {
    /// The whole header value (`Bearer ...`), marked sensitive.
    pub value: HeaderValue,
    /// Not used from this instant on (the expiry margin before expiry).
    pub usable_until: Instant,
    /// The background refresher renews it from this instant on.
    pub refresh_at: Instant,
    /// Wall-clock expiry, for the audit record.
    pub expires_at: OffsetDateTime,
    /// When it was requested.
    pub issued: Instant,
}

impl Token {
    /// A token that lives `lifetime` from `issued` (taken before the request
    /// was sent, so the estimate errs on the early side).
    pub fn new(value: HeaderValue, lifetime: Duration, issued: Instant, timing: &Timing) -> Self {
        let (usable, refresh) = windows(lifetime, timing);
        let expires_at = OffsetDateTime::now_utc() + time::Duration::try_from(lifetime).unwrap_or(time::Duration::MAX);
        Self { value, usable_until: issued + usable, refresh_at: issued + refresh, expires_at, issued }
    }
}

/// For a token that lives `lifetime`: how long it may be used, and when it
/// is renewed, both counted from when it was obtained (docs/config.md §11).
pub(crate) fn windows(lifetime: Duration, timing: &Timing) -> (Duration, Duration) {
    // Never used within `expiry_margin` (5 s) of its expiry. A token that
    // does not even live that long cannot keep the rule; it is used for the
    // first half of its life only.
    let margin = if lifetime > timing.expiry_margin { timing.expiry_margin } else { lifetime / 2 };
    let usable = lifetime.saturating_sub(margin);
    // Refreshed once `refresh_fraction` (80 %) of the lifetime has passed,
    // or earlier when that point lies past the usable window, so that a
    // fresh token is there before the old one stops being used.
    let nominal = lifetime.mul_f64(timing.refresh_fraction);
    (usable, if nominal < usable { nominal } else { usable.mul_f64(timing.refresh_fraction) })
}

/// A cache of one token plus the single-flight gate around fetching it.
pub(crate) struct Slot {
    token: ArcSwapOption<Token>,
    gate: Arc<Mutex<Attempts>>,
    /// Wakes the background refresher when the token is replaced or dropped.
    changed: Arc<Notify>,
}

/// What the gate protects: the last failure, to pace on-demand retries.
#[derive(Default)]
struct Attempts {
    failed: Option<(Instant, FetchError)>,
}

/// How a caller got its value.
pub(crate) enum Got {
    /// From the cache.
    Cached(HeaderValue),
    /// From a fetch that this call (or one it waited for) stored.
    Fetched(HeaderValue),
}

impl Slot {
    pub fn new() -> Self {
        Self { token: ArcSwapOption::empty(), gate: Arc::new(Mutex::new(Attempts::default())), changed: Arc::new(Notify::new()) }
    }

    /// The cached value if it is still usable. Lock-free.
    pub fn usable(&self, now: Instant) -> Option<HeaderValue> {
        let guard = self.token.load();
        guard.as_ref().filter(|t| now < t.usable_until).map(|t| t.value.clone())
    }

    /// The cached value, or a freshly fetched one. At most one `fetch` runs
    /// at a time; while fetching fails, a new attempt starts at most once per
    /// `timing.min_retry` and callers in between get the last error.
    pub async fn get_or_fetch<F, Fut>(self: &Arc<Self>, timing: &Timing, fetch: F) -> Result<Got, FetchError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Token, FetchError>> + Send + 'static,
    {
        if let Some(value) = self.usable(Instant::now()) {
            return Ok(Got::Cached(value));
        }
        let attempts = Arc::clone(&self.gate).lock_owned().await;
        if let Some(value) = self.usable(Instant::now()) {
            return Ok(Got::Fetched(value));
        }
        if let Some((at, error)) = &attempts.failed
            && at.elapsed() < timing.min_retry
        {
            return Err(error.clone());
        }
        let slot = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut attempts = attempts;
            let result = fetch().await;
            slot.record(&mut attempts, result)
        });
        match task.await {
            Ok(result) => result.map(Got::Fetched),
            Err(e) => Err(FetchError::Internal(format!("token fetch task failed: {e}"))),
        }
    }

    /// For the background refresher: fetches unless someone else already
    /// renewed the token since it became due.
    pub async fn refresh_if_due<Fut>(&self, fetch: Fut) -> Result<(), FetchError>
    where
        Fut: Future<Output = Result<Token, FetchError>>,
    {
        let mut attempts = self.gate.lock().await;
        if self.refresh_due().is_some_and(|due| Instant::now() < due) {
            return Ok(());
        }
        let result = fetch.await;
        self.record(&mut attempts, result).map(drop)
    }

    /// When the cached token should be renewed; `None` when there is none.
    pub fn refresh_due(&self) -> Option<Instant> {
        self.token.load().as_ref().map(|t| t.refresh_at)
    }

    /// When the cached token stops being usable; `None` when there is none.
    pub fn usable_until(&self) -> Option<Instant> {
        self.token.load().as_ref().map(|t| t.usable_until)
    }

    /// How long a cache holding this slot should keep it: as long as its
    /// token is usable, and at least `floor` (so a failure keeps pacing retries).
    pub fn keep_for(&self, floor: Duration) -> Duration {
        self.usable_until().map_or(floor, |until| until.saturating_duration_since(Instant::now()).max(floor))
    }

    /// The notifier the background refresher sleeps on.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// Drops the cached token so the next caller fetches a new one.
    #[cfg(test)]
    pub fn invalidate(&self) {
        self.token.store(None);
        self.changed.notify_one();
    }

    /// Drops the cached token only if it is still `used` (a 401 for an older
    /// token must not throw away the one fetched after it) and at least
    /// `min_age` old; says whether it was dropped.
    pub fn invalidate_value(&self, used: &HeaderValue, min_age: Duration) -> bool {
        let current = self.token.load_full();
        if !current.as_ref().is_some_and(|t| t.value == *used && t.issued.elapsed() >= min_age) {
            return false;
        }
        let previous = self.token.compare_and_swap(&current, None);
        let dropped = arc_swap_same(&previous, &current);
        if dropped {
            self.changed.notify_one();
        }
        dropped
    }

    fn record(&self, attempts: &mut Attempts, result: Result<Token, FetchError>) -> Result<HeaderValue, FetchError> {
        match result {
            Ok(token) => {
                let value = token.value.clone();
                self.token.store(Some(Arc::new(token)));
                attempts.failed = None;
                self.changed.notify_one();
                Ok(value)
            }
            Err(error) => {
                attempts.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }
}

fn arc_swap_same<T>(a: &impl std::ops::Deref<Target = Option<Arc<T>>>, b: &Option<Arc<T>>) -> bool {
    match (a.as_ref(), b) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        (None, None) => true,
        _ => false,
    }
}
