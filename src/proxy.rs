//! The request pipeline (docs/wire.md), top to bottom:
//! parse → normalize → route → authenticate → authorize → inject → forward → audit.
//! Each stage returns its own error; [`ProxyError`] turns it into the answer.
//! Every request produces exactly one audit record, whatever stage stopped
//! it, including a client that goes away mid-stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;

use crate::audit::{AuditDecision, AuditEvent, AuditSink, Identity, Refused, RequestRecord};
use crate::authn::{Authenticated, Authenticator};
use crate::authz::{AccessRequest, Effect, PolicySet};
use crate::body::{self, Inbound, InboundState, ProxyBody, StreamEnd, Tracked};
use crate::credential::{Caller, UpstreamCredential};
use crate::error::ProxyError;
use crate::forward::{Added, ForwardError, Forwarder, UpstreamBody, strip_hop_by_hop, upstream_headers};
use crate::headers::X_REQUEST_ID;
use crate::metrics::Metrics;
use crate::request::{RequestMeta, check_ambiguity};
use crate::route::Router;

/// Bodies up to this size are kept so a request can be retried once (docs/wire.md).
const REPLAY_LIMIT: u64 = 64 * 1024;

/// One upstream: its client and its credential.
pub struct Upstream {
    pub name: Arc<str>,
    pub forwarder: Forwarder,
    pub credential: UpstreamCredential,
    /// A token younger than this is not refetched after a 401.
    pub min_token_age: Duration,
}

/// Everything the request path reads. Hot state that changes at run time
/// (policies) sits behind `ArcSwap` and is read without locks.
pub struct Gateway {
    pub router: Router,
    pub upstreams: Vec<Upstream>,
    pub authn: Authenticator,
    pub policies: ArcSwap<PolicySet>,
    pub audit: AuditSink,
    pub metrics: Arc<Metrics>,
    pub request_ids: RequestIds,
    /// Longest wait for the next piece of a caller's request body.
    pub body_timeout: Duration,
    /// The credential store, when one is configured (for `gatehouse_store_up`).
    pub store: Option<Arc<dyn crate::store::CredentialStore>>,
}

/// What the server knows about the caller's connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
}

/// Handles one request; never fails: errors become answers.
pub async fn handle(gw: Arc<Gateway>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<ProxyBody> {
    let request_id = gw.request_ids.next();
    // Waits only while the writer drains a full queue; refused at once while
    // the log cannot be written: nothing is served unaudited.
    let admitted = gw.audit.admit().await;
    if admitted == Err(Refused::WithoutRecord) {
        return ProxyError::AuditUnavailable.to_response(&request_id);
    }
    let mut record = Record::new(gw.clone(), &conn, &req, &request_id);
    let header_id = HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("invalid"));
    let outcome = match admitted {
        Ok(()) => pipeline(&gw, &conn, req, &header_id, &mut record).await,
        Err(_) => Err(ProxyError::AuditUnavailable),
    };
    match outcome {
        Ok(resp) => {
            let status = resp.status();
            let (mut parts, upstream_body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.insert(X_REQUEST_ID, header_id);
            let tracked = Tracked::new(upstream_body, move |bytes_out, how| record.finish(status, None, bytes_out, how));
            Response::from_parts(parts, body::boxed(tracked))
        }
        Err(e) => {
            e.log(&request_id);
            let resp = e.to_response(&request_id);
            let bytes_out = resp.body().size_hint().exact().unwrap_or(0);
            record.finish(resp.status(), Some(e.reason()), bytes_out, StreamEnd::Complete);
            resp
        }
    }
}

async fn pipeline(
    gw: &Gateway,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    record: &mut Record,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let meta = RequestMeta::from_request(&req).map_err(ProxyError::BadRequest)?;
    record.meta(&meta);
    let route = gw.router.find(meta.host.as_deref(), &meta.path).map_err(ProxyError::NoRoute)?;
    let upstream = &gw.upstreams[route.upstream_index];
    record.route(&route.name, &upstream.name);
    check_ambiguity(&meta.path, route.allow).map_err(ProxyError::BadRequest)?;
    let caller = match gw.authn.authenticate(req.headers()).await {
        Ok(c) => c,
        Err(e) => {
            let (kid, iss) = crate::authn::refusal_hints(req.headers());
            tracing::info!(request_id = ?request_id, reason = e.reason(), kid, iss, error = %e, "caller not authenticated");
            return Err(ProxyError::Unauthenticated(e));
        }
    };
    record.identity(&caller);
    let subject = &caller.principal.identity;
    let folded;
    let policy_path = if route.case_insensitive {
        folded = meta.path.to_ascii_lowercase();
        &folded
    } else {
        &meta.path
    };
    let access =
        AccessRequest { route: &route.name, method: meta.method.as_str(), path: policy_path, fold_case: route.case_insensitive, subject };
    let decision = gw.policies.load().authorize(&access);
    record.rule(decision.rule.as_str());
    if decision.effect != Effect::Allow {
        return Err(ProxyError::Forbidden(decision));
    }
    record.allowed();
    let who = Caller { iss: &subject.iss, sub: &subject.sub, client_id: subject.client_id.as_deref() };
    let credential = upstream.credential.header(&caller.token, who).await.map_err(ProxyError::Credential)?;
    let sent_value = credential.as_ref().map(|(_, v)| v.clone());
    let uri = upstream
        .forwarder
        .uri(&route.upstream_path(&meta.path), meta.query.as_deref())
        .map_err(|e| ProxyError::Internal(format!("cannot build the upstream URI: {e}")))?;
    let (mut parts, incoming) = req.into_parts();
    upstream_headers(
        &mut parts.headers,
        Added {
            peer: conn.peer.ip(),
            forwarded_host: meta.host_header.as_deref(),
            request_id,
            sub: &subject.sub,
            iss: &subject.iss,
            credential,
        },
    );
    parts.uri = uri;
    // OAuth credentials: an upstream 401 means our token was refused; a
    // body known to be small is copied while it streams, for one retry.
    let oauth = upstream.credential.is_oauth();
    let small = incoming.is_end_stream() || incoming.size_hint().upper().is_some_and(|n| n <= REPLAY_LIMIT);
    let keep = if oauth && small { REPLAY_LIMIT as usize } else { 0 };
    let inbound = body::boxed(Inbound::new(incoming, record.inbound.clone(), gw.body_timeout, keep));
    if !oauth {
        return send(upstream, Request::from_parts(parts, inbound), &record.inbound).await;
    }
    let resp = send(upstream, Request::from_parts(parts.clone(), inbound), &record.inbound).await?;
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    // Drop the refused token only if it is still the cached one (a late 401
    // must not throw away a token fetched since) and old enough: a caller
    // who can provoke 401s must not cause a token request per request.
    let dropped = sent_value.is_some_and(|v| upstream.credential.invalidate_value(who, &v, upstream.min_token_age));
    let replay = if dropped { record.inbound.replay() } else { None };
    let Some(bytes) = replay else { return Err(ProxyError::Forward(ForwardError::CredentialRejected)) };
    drop(resp);
    let fresh = upstream.credential.header(&caller.token, who).await.map_err(ProxyError::Credential)?;
    if let Some((name, value)) = fresh {
        parts.headers.insert(name, value);
    }
    let resp = send(upstream, Request::from_parts(parts, body::full(bytes)), &record.inbound).await?;
    if resp.status() == StatusCode::UNAUTHORIZED {
        return Err(ProxyError::Forward(ForwardError::CredentialRejected));
    }
    Ok(resp)
}

/// Forwards, blaming the caller when its own request body failed (it went
/// away, broke the framing or stalled) rather than the upstream.
async fn send(upstream: &Upstream, req: Request<ProxyBody>, inbound: &InboundState) -> Result<Response<UpstreamBody>, ProxyError> {
    upstream.forwarder.send(req).await.map_err(|e| match inbound.failure() {
        Some(failure) => ProxyError::CallerBody(failure),
        None => ProxyError::Forward(e),
    })
}

/// The audit record of one request, filled in as the stages pass, and
/// written exactly once: by `finish`, or on drop if the caller went away.
struct Record {
    gw: Arc<Gateway>,
    written: bool,
    rec: RequestRecord,
    started: Instant,
    inbound: Arc<InboundState>,
}

impl Record {
    fn new<B>(gw: Arc<Gateway>, conn: &ConnInfo, req: &Request<B>, request_id: &str) -> Self {
        gw.metrics.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            gw,
            written: false,
            rec: RequestRecord {
                request_id: request_id.to_owned(),
                client_addr: conn.peer.to_string(),
                method: req.method().as_str().to_owned(),
                // The raw path until it is normalized; never the query.
                path: req.uri().path().to_owned(),
                ..empty_record()
            },
            started: Instant::now(),
            inbound: Arc::new(InboundState::default()),
        }
    }

    fn meta(&mut self, meta: &RequestMeta) {
        self.rec.host.clone_from(&meta.host);
        self.rec.path.clone_from(&meta.path);
    }

    fn route(&mut self, route: &str, upstream: &str) {
        self.rec.route = Some(route.to_owned());
        self.rec.upstream = Some(upstream.to_owned());
    }

    fn identity(&mut self, caller: &Authenticated) {
        self.rec.identity = Some(Identity::from(&caller.principal.identity));
    }

    fn rule(&mut self, rule: &str) {
        self.rec.rule = Some(rule.to_owned());
    }

    fn allowed(&mut self) {
        self.rec.decision = AuditDecision::Allow;
    }

    fn finish(mut self, status: StatusCode, reason: Option<&'static str>, bytes_out: u64, how: StreamEnd) {
        self.rec.status = status.as_u16();
        self.rec.reason = reason;
        self.rec.bytes_out = bytes_out;
        if how == StreamEnd::Abandoned && reason.is_none() {
            self.rec.reason = Some("client_closed");
        }
        self.write();
    }

    fn write(&mut self) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        self.rec.bytes_in = self.inbound.bytes();
        self.rec.duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let allowed = self.rec.decision == AuditDecision::Allow;
        self.gw.metrics.request(self.rec.route.as_deref(), allowed, self.rec.status, elapsed);
        self.gw.metrics.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        let rec = std::mem::replace(&mut self.rec, empty_record());
        if self.gw.audit.send(AuditEvent::Request(rec)).is_err() {
            tracing::error!("audit writer is gone; request record lost");
        }
    }
}

impl Drop for Record {
    /// The caller went away before an answer was produced.
    fn drop(&mut self) {
        if !self.written {
            self.rec.status = 499;
            self.rec.reason = Some("client_closed");
            self.write();
        }
    }
}

fn empty_record() -> RequestRecord {
    RequestRecord {
        request_id: String::new(),
        client_addr: String::new(),
        method: String::new(),
        host: None,
        path: String::new(),
        route: None,
        decision: AuditDecision::Deny,
        rule: None,
        reason: None,
        identity: None,
        upstream: None,
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0,
    }
}

/// Request ids: a random per-process prefix and a counter, as 32 hex
/// digits. Unique without a syscall per request; not a secret.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut seed);
        let [p @ .., _, _, _, _, _, _, _, _] = seed;
        let [.., c0, c1, c2, c3, c4, c5, c6, c7] = seed;
        Self { prefix: u64::from_be_bytes(p), counter: AtomicU64::new(u64::from_be_bytes([c0, c1, c2, c3, c4, c5, c6, c7])) }
    }

    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:016x}", self.prefix, n)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}
