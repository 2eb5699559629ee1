//! The request pipeline (SPEC §4), top to bottom:
//! parse → normalize → route → authenticate → authorize → inject → forward → audit.
//! Each stage returns its own error; [`ProxyError`] turns it into the answer.
//! Every request produces exactly one audit record, whatever stage stopped
//! it, including a client that goes away mid-stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::audit::{AuditDecision, AuditEvent, AuditSink, AuditSlot, Identity, RequestRecord};
use crate::authn::{Authenticated, Authenticator};
use crate::authz::{AccessRequest, Effect, PolicySet};
use crate::body::{self, Counted, ProxyBody, StreamEnd, Tracked};
use crate::credential::UpstreamCredential;
use crate::error::ProxyError;
use crate::forward::{Added, ForwardError, Forwarder, UpstreamBody, X_REQUEST_ID, strip_hop_by_hop, upstream_headers};
use crate::metrics::Metrics;
use crate::request::RequestMeta;
use crate::route::Router;

/// Bodies up to this size are kept so a request can be retried once (SPEC §4).
const REPLAY_LIMIT: u64 = 64 * 1024;

/// One upstream: its client and its credential.
pub struct Upstream {
    pub name: Arc<str>,
    pub forwarder: Forwarder,
    pub credential: UpstreamCredential,
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
}

/// What the server knows about the caller's connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
}

/// Handles one request; never fails: errors become answers.
pub async fn handle(gw: Arc<Gateway>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<ProxyBody> {
    let request_id = gw.request_ids.next();
    let mut record = match gw.audit.reserve_or_unavailable().await {
        Ok(slot) => Record::new(gw.clone(), slot, &conn, &req, &request_id),
        Err(_) => return ProxyError::AuditUnavailable.into_response(&request_id),
    };
    let header_id = HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("invalid"));
    let outcome =
        if gw.audit.healthy() { pipeline(&gw, &conn, req, &header_id, &mut record).await } else { Err(ProxyError::AuditUnavailable) };
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
            let resp = e.into_response(&request_id);
            record.finish(resp.status(), Some(e.reason()), 0, StreamEnd::Complete);
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
    let caller = match gw.authn.authenticate(req.headers()).await {
        Ok(c) => c,
        Err(e) => {
            let (kid, iss) = crate::authn::refusal_hints(req.headers());
            tracing::info!(request_id = ?request_id, reason = e.reason(), kid, iss, error = %e, "caller not authenticated");
            return Err(ProxyError::Unauthenticated(e));
        }
    };
    record.identity(&caller);
    let subject = &caller.principal.subject;
    let access = AccessRequest { route: &route.name, method: meta.method.as_str(), path: &meta.path, subject };
    let decision = gw.policies.load().authorize(&access);
    record.rule(decision.rule.as_str());
    if decision.effect != Effect::Allow {
        return Err(ProxyError::Forbidden(decision));
    }
    record.allowed();
    let caller_key = (subject.iss.as_str(), subject.sub.as_str());
    let credential = upstream.credential.header(&caller.token, caller_key).await.map_err(ProxyError::Credential)?;
    let sent_value = credential.as_ref().map(|(_, v)| v.clone());
    let uri = upstream.forwarder.uri(&route.upstream_path(&meta.path), meta.query.as_deref()).map_err(ProxyError::Forward)?;
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
    let counted = Counted::new(incoming, record.bytes_in.clone());
    if !upstream.credential.is_oauth() {
        let req = Request::from_parts(parts, body::boxed(counted));
        return upstream.forwarder.send(req).await.map_err(ProxyError::Forward);
    }
    // OAuth credentials: an upstream 401 means our token was refused; fetch
    // a fresh one and retry once if the body can be replayed (SPEC §4).
    let (first_body, kept) = replayable(counted).await?;
    let first = Request::from_parts(parts.clone(), first_body);
    let resp = upstream.forwarder.send(first).await.map_err(ProxyError::Forward)?;
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    // Drop the refused token only if it is still the cached one: a late 401
    // must not throw away a token fetched since.
    match &sent_value {
        Some(v) => upstream.credential.invalidate_value(caller_key, v),
        None => upstream.credential.invalidate(caller_key),
    }
    let Some(bytes) = kept else { return Err(ProxyError::Forward(ForwardError::CredentialRejected)) };
    drop(resp);
    let fresh = upstream.credential.header(&caller.token, caller_key).await.map_err(ProxyError::Credential)?;
    if let Some((name, value)) = fresh {
        parts.headers.insert(name, value);
    }
    let retry = Request::from_parts(parts, body::full(bytes));
    let resp = upstream.forwarder.send(retry).await.map_err(ProxyError::Forward)?;
    if resp.status() == StatusCode::UNAUTHORIZED {
        return Err(ProxyError::Forward(ForwardError::CredentialRejected));
    }
    Ok(resp)
}

/// The body to send first and, when it is known to be at most
/// [`REPLAY_LIMIT`] bytes (empty, or a length within the limit), a copy
/// kept for one retry. Larger or unknown-length bodies stream and are not
/// retried.
async fn replayable(body: Counted<Incoming>) -> Result<(ProxyBody, Option<Bytes>), ProxyError> {
    let small = body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= REPLAY_LIMIT);
    if !small {
        return Ok((body::boxed(body), None));
    }
    match Limited::new(body, REPLAY_LIMIT as usize).collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            Ok((body::full(bytes.clone()), Some(bytes)))
        }
        Err(e) => Err(ProxyError::Forward(ForwardError::Unreachable(format!("reading the request body: {e}")))),
    }
}

/// The audit record of one request, filled in as the stages pass, and
/// written exactly once: by `finish`, or on drop if the caller went away.
struct Record {
    gw: Arc<Gateway>,
    slot: Option<AuditSlot>,
    rec: RequestRecord,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
}

impl Record {
    fn new<B>(gw: Arc<Gateway>, slot: AuditSlot, conn: &ConnInfo, req: &Request<B>, request_id: &str) -> Self {
        gw.metrics.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            gw,
            slot: Some(slot),
            rec: RequestRecord {
                request_id: request_id.to_owned(),
                client_addr: conn.peer.to_string(),
                method: req.method().as_str().to_owned(),
                // The raw path until it is normalized; never the query.
                path: req.uri().path().to_owned(),
                ..empty_record()
            },
            started: Instant::now(),
            bytes_in: Arc::new(AtomicU64::new(0)),
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
        let p = &caller.principal;
        self.rec.identity = Some(Identity {
            iss: p.subject.iss.clone(),
            sub: p.subject.sub.clone(),
            client_id: p.client_id.clone(),
            scopes: p.subject.scopes.clone(),
            jti: p.jti.clone(),
        });
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
        let Some(slot) = self.slot.take() else { return };
        let elapsed = self.started.elapsed();
        self.rec.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.rec.duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let allowed = self.rec.decision == AuditDecision::Allow;
        self.gw.metrics.request(self.rec.route.as_deref(), allowed, self.rec.status, elapsed);
        self.gw.metrics.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        let rec = std::mem::replace(&mut self.rec, empty_record());
        slot.send(AuditEvent::Request(rec));
    }
}

impl Drop for Record {
    /// The caller went away before an answer was produced.
    fn drop(&mut self) {
        if self.slot.is_some() {
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
