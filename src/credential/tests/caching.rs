use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_first_calls_cause_one_token_request() {
    let idp = Idp::start(Behaviour { delay: Duration::from_millis(200), ..Behaviour::default() }).await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let cred = h.cred.clone();
            tokio::spawn(async move { value(&cred).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "Bearer tok-1");
    }
    assert_eq!(idp.hits(), 1);
    assert_eq!(h.events.all().len(), 1);
    assert!(h.events.all()[0].ok);
}

#[tokio::test(start_paused = true)]
async fn short_lived_token_is_refreshed_before_expiry_with_zero_errors_under_load() {
    let idp = Idp::start(Behaviour { lifetime: Some(2), ..Behaviour::default() }).await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    h.cred.start();
    let deadline = Instant::now() + Duration::from_secs(6);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let cred = h.cred.clone();
            tokio::spawn(async move {
                let (mut calls, mut errors) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    if let Err(e) = value(&cred).await {
                        errors.push(e);
                    }
                    calls += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (calls, errors)
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        let (calls, errors) = worker.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        total += calls;
    }
    assert!(total > 1000, "only {total} calls");
    let seen = idp.seen();
    // A 2 s token cannot keep the 5 s margin: it is used for 1 s and
    // refreshed at 0.8 s: 8 token requests in 6 s, 0.8 s apart exactly.
    assert_eq!(seen.len(), 8, "token requests at {:?}", seen.iter().map(|s| s.at).collect::<Vec<_>>());
    for pair in seen.windows(2) {
        assert_eq!(pair[1].at - pair[0].at, Duration::from_millis(800), "each refresh at 80 % of the usable window");
    }
    assert!(h.events.all().iter().all(|e| e.ok));
}

#[tokio::test(start_paused = true)]
async fn endpoint_down_keeps_the_cached_token_until_5s_before_expiry_then_unavailable_then_recovers() {
    let idp = Idp::start(Behaviour { lifetime: Some(8), ..Behaviour::default() }).await;
    // The real 5 s margin; the refresh point moved to 2 s: usable until
    // 8 - 5 = 3 s.
    let timing = Timing { refresh_fraction: 0.25, ..Timing::default() };
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, timing);
    h.cred.start();
    let t0 = Instant::now();
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
    h.http.down.store(true, Ordering::SeqCst);

    let mut last_ok = t0;
    let mut first_err = None;
    let deadline = t0 + Duration::from_secs(5);
    while Instant::now() < deadline {
        let now = Instant::now();
        match value(&h.cred).await {
            Ok(v) => {
                assert_eq!(v, "Bearer tok-1");
                assert!(first_err.is_none(), "a token was used again after being refused");
                last_ok = now;
            }
            Err(CredentialError::Unavailable(why)) => {
                assert!(matches!(why, FetchError::Endpoint { why: EndpointFailure::Unreachable, .. }), "{why}");
                first_err.get_or_insert(now);
            }
            Err(other) => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_err = first_err.expect("never became unavailable");
    let served = last_ok - t0;
    assert_eq!(served, Duration::from_millis(2995), "the cached token is served until its usable end (3 s), in 5 ms steps");
    assert_eq!(first_err - t0, Duration::from_secs(3), "and refused from then on");

    // Background attempts failed and were observed; no hammering: on-demand
    // at most once a second plus the backoff schedule.
    let events = h.events.all();
    assert!(events.iter().any(|e| !e.ok && e.error.as_deref().is_some_and(|m| m.contains("unreachable"))));
    let attempts = h.http.attempts.load(Ordering::SeqCst);
    assert!((3..=6).contains(&attempts), "{attempts} attempts in 5 s");

    h.http.down.store(false, Ordering::SeqCst);
    let up = Instant::now();
    let recovered = loop {
        if let Ok(v) = value(&h.cred).await {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(recovered, "Bearer tok-2");
    assert!(up.elapsed() <= Duration::from_secs(1), "recovery within the 1 s retry pacing, took {:?}", up.elapsed());
    assert!(h.events.all().last().unwrap().ok);
}

#[tokio::test(start_paused = true)]
async fn failing_endpoint_is_asked_at_most_once_a_second_on_demand() {
    let idp = Idp::start(Behaviour { fail: Some((503, "{\"error\":\"temporarily_unavailable\"}")), ..Behaviour::default() }).await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut errors = 0;
    while Instant::now() < deadline {
        let err = value(&h.cred).await.unwrap_err();
        assert!(err.to_string().contains("temporarily_unavailable"), "{err}");
        errors += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(errors, 1500);
    assert_eq!(idp.hits(), 2, "one attempt at 0 s and one at 1 s");
    assert_eq!(h.events.all().len(), 2);
    assert!(h.events.all().iter().all(|e| !e.ok && e.expires_at.is_none()));
}

#[tokio::test]
async fn answer_without_expires_in_lasts_five_minutes() {
    let idp = Idp::start(Behaviour { lifetime: None, ..Behaviour::default() }).await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    value(&h.cred).await.unwrap();
    let expires = h.events.all()[0].expires_at.unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::seconds(295) && left <= time::Duration::seconds(300), "{left}");
}

#[tokio::test]
async fn invalidate_makes_the_next_call_fetch_and_a_stale_value_is_ignored() {
    let idp = Idp::start(Behaviour::default()).await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
    h.cred.invalidate(NOBODY);
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-2");
    h.cred.invalidate_value(NOBODY, &HeaderValue::from_static("Bearer tok-1"), Duration::ZERO);
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-2");
    h.cred.invalidate_value(NOBODY, &HeaderValue::from_static("Bearer tok-2"), Duration::ZERO);
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-3");
    assert_eq!(idp.hits(), 3);
}

#[tokio::test]
async fn a_401_for_a_token_younger_than_the_minimum_age_does_not_refetch_it() {
    let idp = Idp::start(Behaviour::default()).await;
    let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
    let used = HeaderValue::from_static("Bearer tok-1");
    for _ in 0..100 {
        assert!(!h.cred.invalidate_value(NOBODY, &used, Duration::from_secs(5)), "a fresh token is kept");
        assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
    }
    assert_eq!(idp.hits(), 1, "a 401 storm makes no token request");
    assert!(h.cred.invalidate_value(NOBODY, &used, Duration::ZERO), "an old enough token is dropped");
    assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-2");
}

#[test]
fn margins_follow_the_spec_and_shrink_only_for_short_lifetimes() {
    let timing = Timing::default();
    let header = HeaderValue::from_static("Bearer x");
    let issued = Instant::now();
    let hour = slot::Token::new(header.clone(), Duration::from_secs(3600), issued, &timing);
    assert_eq!(hour.usable_until - issued, Duration::from_secs(3595));
    assert_eq!(hour.refresh_at - issued, Duration::from_secs(2880));
    // 8 s: the 5 s margin holds; 80 % (6.4 s) lies past the usable 3 s,
    // so the refresh comes at 80 % of those 3 s.
    let eight = slot::Token::new(header.clone(), Duration::from_secs(8), issued, &timing);
    assert_eq!(eight.usable_until - issued, Duration::from_secs(3));
    assert_eq!(eight.refresh_at - issued, Duration::from_millis(2400));
    // 2 s cannot keep a 5 s margin: the first half only.
    let two = slot::Token::new(header, Duration::from_secs(2), issued, &timing);
    assert_eq!(two.usable_until - issued, Duration::from_secs(1));
    assert_eq!(two.refresh_at - issued, Duration::from_millis(800));
}
