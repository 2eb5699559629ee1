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

mod caching;

// ---------------------------------------------------------------- request shapes

mod requests;

// ---------------------------------------------------------------- private_key_jwt

mod private_key_jwt;

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

mod refresh_token;

// ---------------------------------------------------------------- token_exchange and the simple kinds

mod other_kinds;
