//! Credential tests against an in-memory token endpoint, reached through
//! the `TokenHttp` trait the proxy's own HTTP client implements. No socket,
//! so the timing rules run on paused time: a test that spans seconds of
//! token lifetime takes none, and its windows are exact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::slot::Timing;
use super::*;
use crate::store::{BoxFuture, SqliteStore, StoreError, StoreKey};

// ---------------------------------------------------------------- fixtures

/// What the local token endpoint does.
#[derive(Clone)]
struct Behaviour {
    /// `expires_in`; `None` leaves it out.
    lifetime: Option<u64>,
    /// Answer this status and body instead of a token.
    fail: Option<(u16, &'static str)>,
    /// Answer a new refresh token `rt-N` with every token.
    rotate: bool,
    /// Wait this long before answering.
    delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self { lifetime: Some(3600), fail: None, rotate: false, delay: Duration::ZERO }
    }
}

/// One request the endpoint saw.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    authorization: Option<String>,
    content_type: Option<String>,
    form: HashMap<String, String>,
}

#[derive(Default)]
struct IdpState {
    hits: AtomicUsize,
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Seen>>,
}

struct Idp {
    url: String,
    state: Arc<IdpState>,
}

/// Every endpoint started, by URL: how `MemoryHttp` finds the one a
/// credential's `token_url` names.
static ENDPOINTS: LazyLock<Mutex<HashMap<String, Arc<IdpState>>>> = LazyLock::new(Mutex::default);
static NEXT_ENDPOINT: AtomicUsize = AtomicUsize::new(0);

impl Idp {
    async fn start(behaviour: Behaviour) -> Idp {
        let state = Arc::new(IdpState { behaviour: Mutex::new(behaviour), ..IdpState::default() });
        let url = format!("http://idp-{}.test/oauth/token", NEXT_ENDPOINT.fetch_add(1, Ordering::SeqCst));
        ENDPOINTS.lock().unwrap().insert(url.clone(), Arc::clone(&state));
        Idp { url, state }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

/// The endpoint's answer to one POST: status and body.
async fn answer(state: Arc<IdpState>, headers: &[(HeaderName, HeaderValue)], body: &str) -> (StatusCode, Bytes) {
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap().to_owned());
    let (authorization, content_type) = (header("authorization"), header("content-type"));
    assert_eq!(headers.iter().filter(|(n, _)| n == "content-type").count(), 1);
    let form = form_decode(body);
    let n = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    state.seen.lock().unwrap().push(Seen { at: Instant::now(), authorization, content_type, form: form.clone() });
    let behaviour = state.behaviour.lock().unwrap().clone();
    tokio::time::sleep(behaviour.delay).await;
    if let Some((status, body)) = behaviour.fail {
        return (StatusCode::from_u16(status).unwrap(), Bytes::from_static(body.as_bytes()));
    }
    let access_token = match form.get("subject_token") {
        Some(subject) => format!("tok-{n}-for-{subject}"),
        None => format!("tok-{n}"),
    };
    let mut json = serde_json::json!({ "access_token": access_token, "token_type": "Bearer" });
    if let Some(lifetime) = behaviour.lifetime {
        json["expires_in"] = lifetime.into();
    }
    if behaviour.rotate {
        json["refresh_token"] = format!("rt-{n}").into();
    }
    (StatusCode::OK, Bytes::from(json.to_string()))
}

fn form_decode(body: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (decode(k), decode(v))
        })
        .collect()
}

/// The token endpoint's transport, in memory: it adds the two headers the
/// proxy's HTTP client adds and hands the request to the endpoint its URL
/// names. `down` makes it fail like a refused connection; `attempts`
/// counts every call.
#[derive(Default)]
struct MemoryHttp {
    down: AtomicBool,
    attempts: AtomicUsize,
}

impl TokenHttp for MemoryHttp {
    fn post_form(&self, url: &str, mut headers: Vec<(HeaderName, HeaderValue)>, body: String) -> PostFuture<'_> {
        let endpoint = ENDPOINTS.lock().unwrap().get(url).cloned();
        Box::pin(async move {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err("connection refused".to_owned());
            }
            let endpoint = endpoint.ok_or("no such host")?;
            headers.push((http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded")));
            headers.push((http::header::ACCEPT, HeaderValue::from_static("application/json")));
            Ok(answer(endpoint, &headers, &body).await)
        })
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<RefreshEvent>>);

impl RefreshObserver for Events {
    fn refreshed(&self, event: RefreshEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn all(&self) -> Vec<RefreshEvent> {
        self.0.lock().unwrap().clone()
    }
}

fn client(idp: &Idp, auth: ClientAuth) -> OAuthClient {
    OAuthClient {
        token_url: idp.url.clone(),
        client_id: "gatehouse".to_owned(),
        auth,
        scopes: vec!["api.read".to_owned(), "api.write".to_owned()],
        audience: None,
        resource: None,
    }
}

fn basic_client(idp: &Idp) -> OAuthClient {
    client(idp, ClientAuth::SecretBasic(Secret::new("s3cret")))
}

struct Harness {
    cred: UpstreamCredential,
    http: Arc<MemoryHttp>,
    events: Arc<Events>,
}

fn harness(spec: CredentialSpec, store: Option<Arc<dyn CredentialStore>>, timing: Timing) -> Harness {
    let http = Arc::new(MemoryHttp::default());
    let events = Arc::new(Events::default());
    let cred = UpstreamCredential::with_timing(
        "crm".to_owned(),
        spec,
        Arc::clone(&http) as Arc<dyn TokenHttp>,
        store,
        Arc::clone(&events) as Arc<dyn RefreshObserver>,
        timing,
    );
    Harness { cred, http, events }
}

const NOBODY: Caller<'static> = Caller { iss: "https://idp.example", sub: "svc-a", client_id: None };

async fn value(cred: &UpstreamCredential) -> Result<String, CredentialError> {
    let caller = Secret::new("caller-token");
    cred.header(&caller, NOBODY).await.map(|h| h.unwrap().1.to_str().unwrap().to_owned())
}

fn store_at(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(&dir.path().join("gatehouse.db"), vec![StoreKey::from_bytes(&[4; 32]).unwrap()]).unwrap())
}

// ---------------------------------------------------------------- single flight and timing

mod caching {
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
}

// ---------------------------------------------------------------- request shapes

mod requests {
    use super::*;

    #[tokio::test]
    async fn client_secret_basic_sends_form_urlencoded_id_and_secret_in_basic() {
        let idp = Idp::start(Behaviour::default()).await;
        let mut oauth = client(&idp, ClientAuth::SecretBasic(Secret::new("p@ss:w/rd é+")));
        oauth.client_id = "gate house".to_owned();
        oauth.audience = Some("https://api.example".to_owned());
        oauth.resource = Some("https://api.example/v1".to_owned());
        let h = harness(CredentialSpec::ClientCredentials(oauth), None, Timing::default());
        value(&h.cred).await.unwrap();
        let seen = &idp.seen()[0];
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode("gate+house:p%40ss%3Aw%2Frd+%C3%A9%2B");
        assert_eq!(seen.authorization.as_deref(), Some(format!("Basic {expected}").as_str()));
        assert_eq!(seen.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
        let form = &seen.form;
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["scope"], "api.read api.write");
        assert_eq!(form["audience"], "https://api.example");
        assert_eq!(form["resource"], "https://api.example/v1");
        assert!(!form.contains_key("client_secret") && !form.contains_key("client_id"));
    }

    #[tokio::test]
    async fn client_secret_post_sends_id_and_secret_in_the_body() {
        let idp = Idp::start(Behaviour::default()).await;
        let mut oauth = client(&idp, ClientAuth::SecretPost(Secret::new("s3cret&x=1")));
        oauth.scopes.clear();
        let h = harness(CredentialSpec::ClientCredentials(oauth), None, Timing::default());
        value(&h.cred).await.unwrap();
        let seen = &idp.seen()[0];
        assert_eq!(seen.authorization, None);
        assert_eq!(seen.form["client_id"], "gatehouse");
        assert_eq!(seen.form["client_secret"], "s3cret&x=1");
        assert!(!seen.form.contains_key("scope") && !seen.form.contains_key("audience"));
    }

    #[tokio::test]
    async fn oauth_errors_are_reported_by_code_and_other_bodies_are_not_echoed() {
        let idp = Idp::start(Behaviour {
            fail: Some((401, "{\"error\":\"invalid_client\",\"error_description\":\"bad secret s3cret\"}")),
            ..Behaviour::default()
        })
        .await;
        let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
        let err = value(&h.cred).await.unwrap_err().to_string();
        assert!(err.contains("answered 401: invalid_client") && err.contains("crm"), "{err}");
        assert!(!err.contains("s3cret") && !err.contains("bad secret"), "error_description is never repeated: {err}");

        let idp = Idp::start(Behaviour { fail: Some((500, "<html>internal leak-me</html>")), ..Behaviour::default() }).await;
        let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
        let err = value(&h.cred).await.unwrap_err().to_string();
        assert!(err.contains("answered 500") && !err.contains("leak-me"), "{err}");
        let event = &h.events.all()[0];
        assert_eq!((event.kind, event.ok), ("client_credentials", false));
        assert!(!event.error.as_deref().unwrap().contains("leak-me"));
    }

    #[tokio::test]
    async fn header_values_are_sensitive_and_debug_output_holds_no_secret() {
        let idp = Idp::start(Behaviour::default()).await;
        let spec = CredentialSpec::ClientCredentials(basic_client(&idp));
        assert!(!format!("{spec:?}").contains("s3cret"));
        let h = harness(spec, None, Timing::default());
        let (name, value) = h.cred.header(&Secret::new("c"), NOBODY).await.unwrap().unwrap();
        assert_eq!(name, http::header::AUTHORIZATION);
        assert!(value.is_sensitive());
        assert!(!format!("{:?}", h.cred).contains("tok-"));
    }

    #[test]
    fn form_encoding_follows_the_urlencoded_rules() {
        let body = grant::form_encode(&[("a b", "x+y&z=é~*".to_owned()), ("k", String::new())]);
        assert_eq!(body, "a+b=x%2By%26z%3D%C3%A9%7E*&k=");
    }
}

// ---------------------------------------------------------------- private_key_jwt

mod private_key_jwt {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;

    fn pem(label: &str, der: &[u8]) -> Secret {
        let b64 = STANDARD.encode(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        Secret::new(format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n")))
    }

    async fn assertion_for(key_pem: Secret) -> (Idp, Seen) {
        let idp = Idp::start(Behaviour::default()).await;
        let auth = ClientAuth::PrivateKeyJwt { key_pem, key_id: "key-1".to_owned() };
        auth.check().unwrap();
        let h = harness(CredentialSpec::ClientCredentials(client(&idp, auth)), None, Timing::default());
        value(&h.cred).await.unwrap();
        let seen = idp.seen().remove(0);
        (idp, seen)
    }

    fn verify(idp: &Idp, seen: &Seen, alg: Algorithm, key: &DecodingKey) {
        assert_eq!(seen.authorization, None);
        assert_eq!(seen.form["client_id"], "gatehouse");
        assert_eq!(seen.form["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        let jwt = &seen.form["client_assertion"];
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        assert_eq!(header.alg, alg);
        assert_eq!(header.kid.as_deref(), Some("key-1"));
        let mut validation = Validation::new(alg);
        validation.set_audience(&[&idp.url]);
        validation.set_issuer(&["gatehouse"]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, key, &validation).unwrap().claims;
        assert_eq!(claims["sub"], "gatehouse");
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 60);
        assert!(claims["jti"].as_str().unwrap().len() >= 16);
    }

    #[tokio::test]
    async fn rsa_pkcs8_key_signs_rs256_assertions_that_verify() {
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = key.as_der().unwrap();
        let (idp, seen) = assertion_for(pem("PRIVATE KEY", der.as_ref())).await;
        let public = key.public_key();
        let decoding = DecodingKey::from_rsa_raw_components(
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        );
        verify(&idp, &seen, Algorithm::RS256, &decoding);
    }

    #[tokio::test]
    async fn p256_keys_pkcs8_and_sec1_sign_es256_assertions_that_verify() {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = key.public_key().as_ref();
        let decoding =
            DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(&point[1..33]), &URL_SAFE_NO_PAD.encode(&point[33..65])).unwrap();
        let pkcs8 = key.to_pkcs8v1().unwrap();
        let (idp, seen) = assertion_for(pem("PRIVATE KEY", pkcs8.as_ref())).await;
        verify(&idp, &seen, Algorithm::ES256, &decoding);
        let sec1 = key.private_key().as_der().unwrap();
        let (idp, seen) = assertion_for(pem("EC PRIVATE KEY", sec1.as_ref())).await;
        verify(&idp, &seen, Algorithm::ES256, &decoding);
    }

    #[tokio::test]
    async fn ed25519_key_signs_eddsa_assertions_that_verify() {
        let key = Ed25519KeyPair::generate().unwrap();
        let decoding = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(key.public_key().as_ref())).unwrap();
        let (idp, seen) = assertion_for(pem("PRIVATE KEY", key.to_pkcs8v1().unwrap().as_ref())).await;
        verify(&idp, &seen, Algorithm::EdDSA, &decoding);
    }

    #[tokio::test]
    async fn unusable_key_is_reported_by_check_and_makes_fetches_unavailable() {
        let p384 = EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        for key_pem in [Secret::new("not a pem"), pem("PRIVATE KEY", p384.to_pkcs8v1().unwrap().as_ref()), pem("CERTIFICATE", b"xyz")] {
            let auth = ClientAuth::PrivateKeyJwt { key_pem, key_id: "k".to_owned() };
            assert!(auth.check().is_err());
            let idp = Idp::start(Behaviour::default()).await;
            let h = harness(CredentialSpec::ClientCredentials(client(&idp, auth)), None, Timing::default());
            let err = value(&h.cred).await.unwrap_err().to_string();
            assert!(err.contains("private_key_jwt key for upstream crm"), "{err}");
            assert_eq!(idp.hits(), 0);
        }
    }
}

// ---------------------------------------------------------------- refresh_token

/// A store that remembers the order of operations and can be told to fail.
struct RecordingStore {
    inner: Arc<SqliteStore>,
    log: Arc<Mutex<Vec<String>>>,
    fail_rotate: bool,
}

impl CredentialStore for RecordingStore {
    fn get(&self, upstream: &str) -> BoxFuture<'_, Result<Option<Secret>, StoreError>> {
        self.log.lock().unwrap().push("get".to_owned());
        self.inner.get(upstream)
    }

    fn put(&self, upstream: &str, refresh_token: &Secret) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.put(upstream, refresh_token)
    }

    fn rotate(&self, upstream: &str, old: &Secret, new: &Secret) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.log.lock().unwrap().push(format!("rotate {} -> {}", old.expose(), new.expose()));
        if self.fail_rotate {
            return Box::pin(async { Err(StoreError::Backend("disk full".to_owned())) });
        }
        self.inner.rotate(upstream, old, new)
    }
}

mod refresh_token {
    use super::*;

    async fn setup(
        behaviour: Behaviour,
        fail_rotate: bool,
        initial: Option<&str>,
    ) -> (Idp, Harness, Arc<SqliteStore>, Arc<Mutex<Vec<String>>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = store_at(&dir);
        if let Some(rt) = initial {
            sqlite.put("crm", &Secret::new(rt)).await.unwrap();
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::new(RecordingStore { inner: Arc::clone(&sqlite), log: Arc::clone(&log), fail_rotate });
        let idp = Idp::start(behaviour).await;
        let h = harness(CredentialSpec::RefreshToken(basic_client(&idp)), Some(store), Timing::default());
        (idp, h, sqlite, log, dir)
    }

    #[tokio::test]
    async fn rotated_refresh_token_is_committed_before_the_access_token_is_used() {
        let rotating = Behaviour { rotate: true, ..Behaviour::default() };
        let (idp, h, sqlite, log, _dir) = setup(rotating, false, Some("rt-0")).await;
        assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
        // By the time the token was handed out, the store already had rt-1.
        assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-1");
        assert_eq!(*log.lock().unwrap(), ["get", "rotate rt-0 -> rt-1"]);

        h.cred.invalidate(NOBODY);
        assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-2");
        let seen = idp.seen();
        assert_eq!(seen[0].form["grant_type"], "refresh_token");
        assert_eq!(seen[0].form["refresh_token"], "rt-0");
        assert_eq!(seen[1].form["refresh_token"], "rt-1");
        assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-2");
        let events = h.events.all();
        assert!(events.iter().all(|e| e.ok && e.kind == "refresh_token"));
    }

    #[tokio::test]
    async fn a_failed_store_write_means_the_access_token_is_not_used() {
        let rotating = Behaviour { rotate: true, ..Behaviour::default() };
        let (idp, h, sqlite, _log, _dir) = setup(rotating, true, Some("rt-0")).await;
        let err = value(&h.cred).await.unwrap_err().to_string();
        assert!(err.contains("could not be stored") && err.contains("disk full"), "{err}");
        assert!(!err.contains("tok-1") && !err.contains("rt-1"));
        assert_eq!(idp.hits(), 1);
        assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-0");
        assert!(!h.events.all()[0].ok);
    }

    #[tokio::test]
    async fn a_refresh_token_changed_meanwhile_is_not_overwritten() {
        let rotating = Behaviour { rotate: true, delay: Duration::from_millis(300), ..Behaviour::default() };
        let (_idp, h, sqlite, _log, _dir) = setup(rotating, false, Some("rt-0")).await;
        let cred = h.cred.clone();
        let pending = tokio::spawn(async move { value(&cred).await });
        // The operator stores a new token while the refresh is in flight.
        while _idp.hits() == 0 {
            tokio::task::yield_now().await;
        }
        sqlite.put("crm", &Secret::new("rt-operator")).await.unwrap();
        let err = pending.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("changed during the refresh"), "{err}");
        assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-operator");
    }

    #[tokio::test]
    async fn an_unrotated_answer_keeps_the_stored_refresh_token() {
        let (_idp, h, sqlite, log, _dir) = setup(Behaviour::default(), false, Some("rt-0")).await;
        assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
        assert_eq!(sqlite.get("crm").await.unwrap().unwrap().expose(), "rt-0");
        assert_eq!(*log.lock().unwrap(), ["get"]);
    }

    #[tokio::test]
    async fn invalid_grant_says_how_to_store_a_new_refresh_token() {
        let rejected = Behaviour {
            fail: Some((400, "{\"error\":\"invalid_grant\",\"error_description\":\"Token is not active\"}")),
            ..Behaviour::default()
        };
        let (_idp, h, _sqlite, _log, _dir) = setup(rejected, false, Some("rt-0")).await;
        let err = value(&h.cred).await.unwrap_err();
        let CredentialError::Unavailable(why) = &err else { panic!("{err}") };
        assert_eq!(*why, FetchError::StoredTokenRejected { upstream: "crm".into() });
        let text = why.to_string();
        assert_eq!(
            text,
            "stored refresh token for upstream crm was rejected (invalid_grant); run `gatehouse credentials set crm --refresh-token-stdin`"
        );
        assert_eq!(h.events.all()[0].error.as_deref(), Some(text.as_str()));
    }

    #[tokio::test]
    async fn no_stored_refresh_token_is_unavailable_with_instructions() {
        let (idp, h, _sqlite, _log, _dir) = setup(Behaviour::default(), false, None).await;
        let CredentialError::Unavailable(why) = value(&h.cred).await.unwrap_err() else { panic!("unavailable") };
        assert_eq!(why, FetchError::NotStored { upstream: "crm".into() });
        assert_eq!(why.to_string(), "no refresh token stored for upstream crm; run `gatehouse credentials set crm --refresh-token-stdin`");
        assert_eq!(idp.hits(), 0);
        assert_eq!(h.events.all()[0].kind, "refresh_token");
    }
}

// ---------------------------------------------------------------- token_exchange and the simple kinds

mod other_kinds {
    use super::*;

    #[tokio::test]
    async fn token_exchange_gives_each_caller_its_own_token_and_caches_it() {
        let idp = Idp::start(Behaviour::default()).await;
        let h = harness(CredentialSpec::TokenExchange(basic_client(&idp)), None, Timing::default());
        let alice = Caller { iss: "https://idp.example", sub: "alice", client_id: Some("connector-1") };
        let bob = Caller { iss: "https://idp.example", sub: "bob", client_id: Some("connector-1") };
        let get = |token: &'static str, key| {
            let cred = h.cred.clone();
            async move {
                let (_, v) = cred.header(&Secret::new(token), key).await.unwrap().unwrap();
                v.to_str().unwrap().to_owned()
            }
        };
        let a1 = get("alice-jwt", alice).await;
        let b1 = get("bob-jwt", bob).await;
        assert_eq!(a1, "Bearer tok-1-for-alice-jwt");
        assert_eq!(b1, "Bearer tok-2-for-bob-jwt");
        assert_eq!(get("alice-jwt-2", alice).await, a1, "same caller: cached");
        assert_eq!(idp.hits(), 2);
        let form = &idp.seen()[0].form;
        assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:token-exchange");
        assert_eq!(form["subject_token"], "alice-jwt");
        assert_eq!(form["subject_token_type"], "urn:ietf:params:oauth:token-type:access_token");
        assert_eq!(form["scope"], "api.read api.write");

        h.cred.invalidate(alice);
        assert_eq!(get("alice-jwt-3", alice).await, "Bearer tok-3-for-alice-jwt-3");
        assert_eq!(get("bob-jwt", bob).await, b1);
        let alice_via_other_client = Caller { client_id: Some("connector-2"), ..alice };
        assert_eq!(
            get("alice-jwt-4", alice_via_other_client).await,
            "Bearer tok-4-for-alice-jwt-4",
            "two clients acting for the same subject never share an exchanged token"
        );
        assert!(h.events.all().iter().all(|e| e.ok && e.kind == "token_exchange"));
        assert!(h.cred.is_oauth());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn token_exchange_is_single_flight_per_caller() {
        let idp = Idp::start(Behaviour { delay: Duration::from_millis(200), ..Behaviour::default() }).await;
        let h = harness(CredentialSpec::TokenExchange(basic_client(&idp)), None, Timing::default());
        let callers: Vec<_> = (0..100)
            .map(|i| {
                let cred = h.cred.clone();
                tokio::spawn(async move {
                    let sub = if i % 2 == 0 { "alice" } else { "bob" };
                    cred.header(&Secret::new(format!("{sub}-jwt")), Caller { iss: "iss", sub, client_id: None }).await.unwrap()
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        assert_eq!(idp.hits(), 2);
    }

    #[tokio::test]
    async fn static_passthrough_and_none_need_no_token_endpoint() {
        let never = || Arc::new(MemoryHttp::default());
        let make = |spec| UpstreamCredential::new("u".to_owned(), spec, never(), None, Arc::new(Events::default()));
        let caller = Secret::new("caller.jwt");

        let fixed = make(CredentialSpec::Static { header: HeaderName::from_static("x-api-key"), value: Secret::new("k-123") });
        let (name, value) = fixed.header(&caller, NOBODY).await.unwrap().unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-api-key", "k-123"));
        assert!(value.is_sensitive() && !fixed.is_oauth());

        let pass = make(CredentialSpec::Passthrough);
        let (name, value) = pass.header(&caller, NOBODY).await.unwrap().unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("authorization", "Bearer caller.jwt"));
        assert!(value.is_sensitive() && !pass.is_oauth());

        let none = make(CredentialSpec::None);
        assert_eq!(none.header(&caller, NOBODY).await.unwrap(), None);
        assert!(!none.is_oauth());
        none.start();
        none.invalidate(NOBODY);

        let broken = make(CredentialSpec::Static { header: HeaderName::from_static("x-api-key"), value: Secret::new("bad\nvalue") });
        let err = broken.header(&caller, NOBODY).await.unwrap_err().to_string();
        assert!(err.contains("not a valid header value") && !err.contains("bad"), "{err}");
    }

    #[tokio::test]
    async fn start_is_idempotent_and_prefetches() {
        let idp = Idp::start(Behaviour::default()).await;
        let h = harness(CredentialSpec::ClientCredentials(basic_client(&idp)), None, Timing::default());
        h.cred.start();
        h.cred.start();
        let prefetched = async {
            while h.events.all().is_empty() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(3), prefetched).await.expect("start() fetches a first token");
        assert_eq!(value(&h.cred).await.unwrap(), "Bearer tok-1");
        assert_eq!(idp.hits(), 1);
    }
}
