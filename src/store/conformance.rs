//! The behaviour every [`CredentialStore`] backend must show, as functions a
//! backend's tests call with a fresh store:
//!
//! ```text
//! conformance::conformance(store.clone()).await.unwrap();
//! conformance::conformance_at_rest(store, || async { dump_all_bytes() }).await.unwrap();
//! ```
//!
//! They use upstream names with a random suffix, so a shared database works.
//! Each returns `Err` with what failed instead of panicking.

use std::future::Future;
use std::sync::Arc;

use super::CredentialStore;
use crate::secret::Secret;

/// Runs the behavioural checks: missing value, put/get, overwrite, rotate
/// success, rotate with a stale `old`, rotate of a missing value, concurrent
/// rotations (exactly one wins), upstream isolation, unusual values.
pub async fn conformance(store: Arc<dyn CredentialStore>) -> Result<(), String> {
    let run = random_suffix()?;
    let a = format!("conformance-a-{run}");
    let b = format!("conformance-b-{run}");
    let s = |v: &str| Secret::new(v);

    expect_value(&*store, &a, None, "a missing upstream reads as None").await?;

    put(&*store, &a, &s("rt-1")).await?;
    expect_value(&*store, &a, Some("rt-1"), "put then get").await?;

    put(&*store, &a, &s("rt-2")).await?;
    expect_value(&*store, &a, Some("rt-2"), "put overwrites").await?;

    expect_rotate(&*store, &a, "rt-2", "rt-3", true, "rotate from the current value").await?;
    expect_value(&*store, &a, Some("rt-3"), "rotate writes the new value").await?;

    expect_rotate(&*store, &a, "rt-2", "rt-4", false, "rotate from a stale value").await?;
    expect_value(&*store, &a, Some("rt-3"), "a failed rotate writes nothing").await?;

    expect_rotate(&*store, &b, "x", "y", false, "rotate of a missing value").await?;
    expect_value(&*store, &b, None, "a failed rotate creates nothing").await?;

    put(&*store, &b, &s("rt-b")).await?;
    expect_value(&*store, &a, Some("rt-3"), "a put to b leaves a alone").await?;
    expect_value(&*store, &b, Some("rt-b"), "b holds its own value").await?;
    expect_rotate(&*store, &b, "rt-3", "z", false, "a's value does not rotate b").await?;

    let mut racers = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        let a = a.clone();
        racers.push(tokio::spawn(async move { store.rotate(&a, &Secret::new("rt-3"), &Secret::new(format!("race-{i}"))).await }));
    }
    let mut winners = 0;
    for racer in racers {
        match racer.await {
            Ok(Ok(true)) => winners += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return Err(format!("concurrent rotate failed: {e}")),
            Err(e) => return Err(format!("concurrent rotate task failed: {e}")),
        }
    }
    if winners != 1 {
        return Err(format!("concurrent rotations from one value: {winners} won, expected 1"));
    }

    let odd = format!("é\u{1F511} {}", "x".repeat(4096));
    put(&*store, &b, &s(&odd)).await?;
    expect_value(&*store, &b, Some(&odd), "a long non-ASCII value round-trips").await?;
    Ok(())
}

/// Checks that a stored token never appears in clear in the backend's bytes.
/// `raw` returns everything the backend persisted (file and journal bytes,
/// or a dump of the table), read after the write.
pub async fn conformance_at_rest<F, Fut>(store: Arc<dyn CredentialStore>, raw: F) -> Result<(), String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Vec<u8>>,
{
    let run = random_suffix()?;
    let upstream = format!("conformance-rest-{run}");
    let token = format!("plaintext-canary-{run}");
    put(&*store, &upstream, &Secret::new(token.as_str())).await?;
    expect_value(&*store, &upstream, Some(&token), "the canary reads back").await?;
    let bytes = raw().await;
    if bytes.is_empty() {
        return Err("the raw dump is empty: nothing to inspect".to_owned());
    }
    if contains(&bytes, token.as_bytes()) {
        return Err("the stored token appears in clear in the backend's bytes".to_owned());
    }
    Ok(())
}

async fn put(store: &dyn CredentialStore, upstream: &str, value: &Secret) -> Result<(), String> {
    store.put(upstream, value).await.map_err(|e| format!("put({upstream}) failed: {e}"))
}

async fn expect_value(store: &dyn CredentialStore, upstream: &str, want: Option<&str>, what: &str) -> Result<(), String> {
    let got = store.get(upstream).await.map_err(|e| format!("{what}: get({upstream}) failed: {e}"))?;
    if got.as_ref().map(Secret::expose) == want {
        Ok(())
    } else {
        // The values are test fixtures, not real secrets: showing them helps.
        Err(format!("{what}: get({upstream}) = {:?}, expected {want:?}", got.as_ref().map(Secret::expose)))
    }
}

async fn expect_rotate(store: &dyn CredentialStore, upstream: &str, old: &str, new: &str, want: bool, what: &str) -> Result<(), String> {
    let got = store
        .rotate(upstream, &Secret::new(old), &Secret::new(new))
        .await
        .map_err(|e| format!("{what}: rotate({upstream}) failed: {e}"))?;
    if got == want { Ok(()) } else { Err(format!("{what}: rotate({upstream}) = {got}, expected {want}")) }
}

fn random_suffix() -> Result<String, String> {
    let mut bytes = [0u8; 6];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "random generator failed".to_owned())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
