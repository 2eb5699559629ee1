//! An OAuth-protected API for credential tests: one loopback server (plain
//! http, which gatehouse accepts for loopback token URLs) with a token
//! endpoint and the API it protects.
//!
//! `POST /token` grants `client_credentials`, `refresh_token` (optionally
//! rotating, optionally tolerating one reuse of the previous refresh token)
//! and token exchange (RFC 8693), after checking client authentication
//! (Basic or post). It can be made slow, down, failing, or failing with an
//! error body that echoes the secrets it was sent.
//!
//! `ANY /api/...` answers 200 with JSON of what it saw only for a bearer
//! token it issued that is neither expired by its own clock nor revoked;
//! else 401. Every presentation is recorded with its time, so a test can
//! prove that no expired token was ever used. Every string it hands out
//! carries a random per-server part, so finding one in a log is never a
//! coincidence.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use gatehouse::body::{ProxyBody, full};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A random lowercase hex string of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("random");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256: how an exchanged token names the subject token it was issued for.
pub fn subject_hash(subject_token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, subject_token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the token endpoint does instead of answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// Answers normally.
    None,
    /// Answers 503 with a plain-text body.
    Unavailable,
    /// Closes the connection without an answer.
    Close,
}

/// An access token the endpoint issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: String,
    /// `client_credentials`, `refresh_token` or `token_exchange`.
    pub grant: &'static str,
    /// When the token request arrived (the token's issue time).
    pub at: Instant,
    /// From this instant on the API refuses it.
    pub expires_at: Instant,
    /// Token exchange: the [`subject_hash`] of the subject token.
    pub exchanged_for: Option<String>,
}

/// One request to the token endpoint.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub at: Instant,
    /// The short grant name (`client_credentials`, `refresh_token`,
    /// `token_exchange`), or the raw `grant_type` when unknown.
    pub grant: String,
    /// `basic`, `post` or `none`.
    pub client_auth: &'static str,
    pub client_id: Option<String>,
    /// The status answered (0 when the connection was closed).
    pub status: u16,
    /// The `refresh_token` parameter, when sent.
    pub refresh_token: Option<String>,
}

/// Why the API accepted or refused a presentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Missing,
    Unknown,
    Expired,
    Revoked,
    /// `refuse_all` was on.
    Refused,
}

/// One request to `/api/...`.
#[derive(Clone, Debug)]
pub struct Presented {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// The bearer token, when the request had one.
    pub token: Option<String>,
    /// Every header as received (to prove what never arrived).
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub verdict: Verdict,
    /// The expiry of `token` when the API issued it.
    pub expires_at: Option<Instant>,
}

#[derive(Clone, Debug)]
enum RefreshState {
    Valid,
    /// Rotated away; `grace` reuses left.
    Superseded {
        grace: u32,
    },
}

#[derive(Default)]
struct Books {
    clients: HashMap<String, String>,
    access: HashMap<String, Issued>,
    issued: Vec<Issued>,
    revoked: std::collections::HashSet<String>,
    accepted: std::collections::HashSet<String>,
    refresh: HashMap<String, RefreshState>,
    refresh_issued: Vec<String>,
    token_requests: Vec<TokenRequest>,
    presented: Vec<Presented>,
    echoed: Vec<String>,
}

struct State {
    tag: String,
    counter: AtomicU64,
    lifetime_s: AtomicU64,
    outage: AtomicU8,
    fail_next: AtomicUsize,
    echo_secrets: AtomicBool,
    rotate: AtomicBool,
    grace: AtomicBool,
    refuse_all: AtomicBool,
    held: watch::Sender<bool>,
    books: Mutex<Books>,
}

/// The server. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct OAuthApi {
    pub addr: SocketAddr,
    client_id: String,
    client_secret: String,
    state: Arc<State>,
}

impl OAuthApi {
    /// Starts on 127.0.0.1:0 with one client (see [`client_id`](Self::client_id)),
    /// tokens that live an hour, no rotation, and nothing failing.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tag = random_hex(8);
        let client_id = format!("gatehouse-{tag}");
        let client_secret = format!("cs-{}", random_hex(16));
        let mut books = Books::default();
        books.clients.insert(client_id.clone(), client_secret.clone());
        let state = Arc::new(State {
            tag,
            counter: AtomicU64::new(0),
            lifetime_s: AtomicU64::new(3600),
            outage: AtomicU8::new(0),
            fail_next: AtomicUsize::new(0),
            echo_secrets: AtomicBool::new(false),
            rotate: AtomicBool::new(false),
            grace: AtomicBool::new(false),
            refuse_all: AtomicBool::new(false),
            held: watch::channel(false).0,
            books: Mutex::new(books),
        });
        let server = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let state = Arc::clone(&server);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&state), req));
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        OAuthApi { addr, client_id, client_secret, state }
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// `http://127.0.0.1:PORT/api`: the upstream base URL.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// Registers another client; returns its (random) secret.
    pub fn add_client(&self, id: &str) -> String {
        let secret = format!("cs-{}", random_hex(16));
        self.books().clients.insert(id.to_owned(), secret.clone());
        secret
    }

    /// A new valid refresh token, as if the user had just consented.
    pub fn new_refresh_token(&self) -> String {
        let token = self.next("rt");
        let mut books = self.books();
        books.refresh.insert(token.clone(), RefreshState::Valid);
        books.refresh_issued.push(token.clone());
        token
    }

    /// `expires_in` of the tokens issued from now on.
    pub fn set_lifetime(&self, seconds: u64) {
        self.state.lifetime_s.store(seconds, Ordering::SeqCst);
    }

    pub fn set_outage(&self, outage: Outage) {
        let v = match outage {
            Outage::None => 0,
            Outage::Unavailable => 1,
            Outage::Close => 2,
        };
        self.state.outage.store(v, Ordering::SeqCst);
    }

    /// The next `n` token requests get 400 `invalid_request`.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Error answers quote the client secret, refresh token and subject
    /// token they were sent, as some careless servers do.
    pub fn echo_secrets_in_errors(&self, on: bool) {
        self.state.echo_secrets.store(on, Ordering::SeqCst);
    }

    /// `rotate`: every refresh answers a new refresh token and invalidates
    /// the one used. `grace`: the token rotated away may be used once more.
    pub fn set_rotation(&self, rotate: bool, grace: bool) {
        self.state.rotate.store(rotate, Ordering::SeqCst);
        self.state.grace.store(grace, Ordering::SeqCst);
    }

    /// While held, token requests wait (arrived and counted) for [`release`](Self::release).
    pub fn hold(&self) {
        self.state.held.send_replace(true);
    }

    pub fn release(&self) {
        self.state.held.send_replace(false);
    }

    /// The API refuses this access token from now on.
    pub fn revoke(&self, token: &str) {
        self.books().revoked.insert(token.to_owned());
    }

    /// Revokes every access token issued so far.
    pub fn revoke_all(&self) {
        let mut books = self.books();
        let all: Vec<String> = books.issued.iter().map(|i| i.token.clone()).collect();
        books.revoked.extend(all);
    }

    /// While on, the API refuses every token, even new ones.
    pub fn refuse_all(&self, on: bool) {
        self.state.refuse_all.store(on, Ordering::SeqCst);
    }

    /// The API accepts this bearer value although it did not issue it (a static credential).
    pub fn accept(&self, token: &str) {
        self.books().accepted.insert(token.to_owned());
    }

    /// Token requests with this grant (`client_credentials`, `refresh_token`, `token_exchange`), failed ones included.
    pub fn count(&self, grant: &str) -> usize {
        self.books().token_requests.iter().filter(|r| r.grant == grant).count()
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.books().token_requests.clone()
    }

    /// Every access token issued, in order.
    pub fn issued(&self) -> Vec<Issued> {
        self.books().issued.clone()
    }

    /// Every refresh token handed out (initial and rotated), in order.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.books().refresh_issued.clone()
    }

    /// Whether this refresh token would be accepted now.
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        matches!(self.books().refresh.get(token), Some(RefreshState::Valid))
    }

    pub fn presented(&self) -> Vec<Presented> {
        self.books().presented.clone()
    }

    /// Every error body that quoted a secret (echo mode).
    pub fn echoed(&self) -> Vec<String> {
        self.books().echoed.clone()
    }

    /// The exchange binding of an access token.
    pub fn exchanged_for(&self, token: &str) -> Option<String> {
        self.books().access.get(token).and_then(|i| i.exchanged_for.clone())
    }

    /// Every secret this server knows: client secrets, refresh tokens and access tokens.
    pub fn secrets(&self) -> Vec<String> {
        let books = self.books();
        let mut all: Vec<String> = books.clients.values().cloned().collect();
        all.extend(books.refresh_issued.iter().cloned());
        all.extend(books.issued.iter().map(|i| i.token.clone()));
        all
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.state.books.lock().expect("books lock")
    }

    fn next(&self, kind: &str) -> String {
        next_name(&self.state, kind)
    }
}

fn next_name(state: &State, kind: &str) -> String {
    let n = state.counter.fetch_add(1, Ordering::SeqCst) + 1;
    format!("{kind}-{}-{n}", state.tag)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<ProxyBody>, std::io::Error> {
    let path = req.uri().path().to_owned();
    if path == "/token" && req.method() == http::Method::POST {
        return token(state, req).await;
    }
    if path == "/api" || path.starts_with("/api/") {
        return Ok(api(&state, req).await);
    }
    Ok(answer(StatusCode::NOT_FOUND, &json!({"error": "not_found"})))
}

fn answer(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

/// What a token request carried.
struct Form {
    params: HashMap<String, String>,
    client_auth: &'static str,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn grant_name(grant_type: &str) -> String {
    match grant_type {
        "client_credentials" | "refresh_token" => grant_type.to_owned(),
        TOKEN_EXCHANGE => "token_exchange".to_owned(),
        other => other.to_owned(),
    }
}

async fn token(state: Arc<State>, req: Request<Incoming>) -> Result<Response<ProxyBody>, std::io::Error> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, 64 * 1024).collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let form = read_form(&parts.headers, &bytes);
    let grant = grant_name(form.params.get("grant_type").map_or("", String::as_str));
    // Recorded on arrival (status 0 until answered), so a held request counts.
    let index = {
        let mut books = state.books.lock().expect("books");
        books.token_requests.push(TokenRequest {
            at,
            grant: grant.clone(),
            client_auth: form.client_auth,
            client_id: form.client_id.clone(),
            status: 0,
            refresh_token: form.params.get("refresh_token").cloned(),
        });
        books.token_requests.len() - 1
    };
    let set_status = |status: u16| state.books.lock().expect("books").token_requests[index].status = status;
    let mut held = state.held.subscribe();
    let _ = held.wait_for(|h| !*h).await;
    match state.outage.load(Ordering::SeqCst) {
        0 => {}
        1 => {
            set_status(503);
            let mut r = Response::new(full(Bytes::from_static(b"service unavailable")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(r);
        }
        _ => return Err(std::io::Error::other("token endpoint down: closing the connection")),
    }
    let (status, body) = grant_answer(&state, &form, &grant, at);
    set_status(status.as_u16());
    Ok(answer(status, &body))
}

fn read_form(headers: &http::HeaderMap, body: &[u8]) -> Form {
    let params = form_decode(&String::from_utf8_lossy(body));
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(id, secret)| (url_decode(id), url_decode(secret))));
    match basic {
        Some((id, secret)) => Form { params, client_auth: "basic", client_id: Some(id), client_secret: Some(secret) },
        None => {
            let id = params.get("client_id").cloned();
            let secret = params.get("client_secret").cloned();
            let how = if secret.is_some() { "post" } else { "none" };
            Form { params, client_auth: how, client_id: id, client_secret: secret }
        }
    }
}

/// The answer to a well-formed request, or an OAuth error.
fn grant_answer(state: &State, form: &Form, grant: &str, at: Instant) -> (StatusCode, Value) {
    let echo = state.echo_secrets.load(Ordering::SeqCst);
    let error = |status: StatusCode, code: &str, what: &str| -> (StatusCode, Value) {
        let mut description = what.to_owned();
        if echo {
            // A careless server quoting back what it was sent.
            description = format!(
                "{what}: client_secret={} refresh_token={} subject_token={}",
                form.client_secret.as_deref().unwrap_or("-"),
                form.params.get("refresh_token").map_or("-", String::as_str),
                form.params.get("subject_token").map_or("-", String::as_str),
            );
            state.books.lock().expect("books").echoed.push(description.clone());
        }
        (status, json!({"error": code, "error_description": description}))
    };
    if state.fail_next.load(Ordering::SeqCst) > 0 {
        state.fail_next.fetch_sub(1, Ordering::SeqCst);
        return error(StatusCode::BAD_REQUEST, "invalid_request", "told to fail");
    }
    let mut books = state.books.lock().expect("books");
    let client_ok = match (&form.client_id, &form.client_secret) {
        (Some(id), Some(secret)) => books.clients.get(id).is_some_and(|s| s == secret),
        _ => false,
    };
    if !client_ok {
        drop(books);
        return error(StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed");
    }
    let lifetime = Duration::from_secs(state.lifetime_s.load(Ordering::SeqCst));
    let mut rotated = None;
    let mut exchanged_for = None;
    let short: &'static str = match grant {
        "client_credentials" => "client_credentials",
        "refresh_token" => {
            let presented = form.params.get("refresh_token").cloned().unwrap_or_default();
            let rotate = state.rotate.load(Ordering::SeqCst);
            match books.refresh.get(&presented).cloned() {
                Some(RefreshState::Valid) => {
                    if rotate {
                        let grace = u32::from(state.grace.load(Ordering::SeqCst));
                        books.refresh.insert(presented, RefreshState::Superseded { grace });
                    }
                }
                Some(RefreshState::Superseded { grace }) if grace > 0 => {
                    books.refresh.insert(presented, RefreshState::Superseded { grace: grace - 1 });
                }
                _ => {
                    drop(books);
                    return error(StatusCode::BAD_REQUEST, "invalid_grant", "refresh token is not active");
                }
            }
            if rotate {
                let new = next_name(state, "rt");
                books.refresh.insert(new.clone(), RefreshState::Valid);
                books.refresh_issued.push(new.clone());
                rotated = Some(new);
            }
            "refresh_token"
        }
        "token_exchange" => {
            let subject = form.params.get("subject_token").filter(|s| !s.is_empty());
            let typ_ok = form.params.get("subject_token_type").is_some_and(|t| t == ACCESS_TOKEN_TYPE);
            let Some(subject) = subject.filter(|_| typ_ok) else {
                drop(books);
                return error(StatusCode::BAD_REQUEST, "invalid_request", "subject_token and its type are required");
            };
            exchanged_for = Some(subject_hash(subject));
            "token_exchange"
        }
        _ => {
            drop(books);
            return error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "unsupported grant type");
        }
    };
    let kind = if short == "token_exchange" { "xchg" } else { "at" };
    let token = next_name(state, kind);
    let issued = Issued { token: token.clone(), grant: short, at, expires_at: at + lifetime, exchanged_for };
    books.access.insert(token.clone(), issued.clone());
    books.issued.push(issued);
    let mut body = json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime.as_secs()});
    if let Some(rt) = rotated {
        body["refresh_token"] = json!(rt);
    }
    if short == "token_exchange" {
        body["issued_token_type"] = json!(ACCESS_TOKEN_TYPE);
    }
    (StatusCode::OK, body)
}

async fn api(state: &State, req: Request<Incoming>) -> Response<ProxyBody> {
    let at = Instant::now();
    let (parts, mut body) = req.into_parts();
    // Read the body frame by frame, never whole.
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let token = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_owned);
    let headers = parts.headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let mut books = state.books.lock().expect("books");
    let issued = token.as_ref().and_then(|t| books.access.get(t).cloned());
    let verdict = match &token {
        None => Verdict::Missing,
        Some(_) if state.refuse_all.load(Ordering::SeqCst) => Verdict::Refused,
        Some(t) if books.revoked.contains(t) => Verdict::Revoked,
        Some(t) if books.accepted.contains(t) => Verdict::Accepted,
        Some(_) => match &issued {
            None => Verdict::Unknown,
            Some(i) if at >= i.expires_at => Verdict::Expired,
            Some(_) => Verdict::Accepted,
        },
    };
    books.presented.push(Presented {
        at,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        token: token.clone(),
        headers,
        body_len,
        verdict,
        expires_at: issued.as_ref().map(|i| i.expires_at),
    });
    drop(books);
    if verdict != Verdict::Accepted {
        let mut r = answer(StatusCode::UNAUTHORIZED, &json!({"error": "invalid_token", "from": "api"}));
        r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"api\", error=\"invalid_token\""));
        return r;
    }
    let exchanged_for = issued.and_then(|i| i.exchanged_for);
    answer(StatusCode::OK, &json!({"token": token, "path": parts.uri.path(), "body_len": body_len, "exchanged_for": exchanged_for}))
}

/// `application/x-www-form-urlencoded` into a map (last value wins).
pub fn form_decode(body: &str) -> HashMap<String, String> {
    body.split('&').filter(|kv| !kv.is_empty()).filter_map(|kv| kv.split_once('=')).map(|(k, v)| (url_decode(k), url_decode(v))).collect()
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
