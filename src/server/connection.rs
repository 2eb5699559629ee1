//! One caller connection, from the TLS handshake to its close: the HTTP/1.1
//! or HTTP/2 server of hyper, the service that runs the pipeline for each
//! request, and the timer that closes it when idle, stalled or draining.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Shared;
use super::deadline::{Activity, HeadDeadline, InFlight};
use crate::body::ProxyBody;
use crate::proxy::{ConnInfo, Gateway, handle};

/// A served connection of either protocol.
trait ServedConnection: Future<Output = Result<(), hyper::Error>> + Unpin + Send {
    /// Lets the request in flight finish, then ends (hyper's graceful shutdown).
    fn shutdown(&mut self);
}

impl<C: GracefulConnection<Error = hyper::Error> + Send> ServedConnection for Pin<Box<C>> {
    fn shutdown(&mut self) {
        self.as_mut().graceful_shutdown();
    }
}

/// Boxed: moved between the waiting and serving states, and kept at one
/// place on the heap instead of once per state in the connection's task.
type Tls = Box<tokio_rustls::server::TlsStream<TcpStream>>;

/// An HTTP/1.1 connection that leaves the transport open when it ends, so
/// that an idle one can give hyper's state back and be served anew.
struct Http1(http1::Connection<TokioIo<HeadDeadline<Tls>>, Caller>);

impl Future for Http1 {
    type Output = Result<(), hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_without_shutdown(cx)
    }
}

impl ServedConnection for Http1 {
    fn shutdown(&mut self) {
        Pin::new(&mut self.0).graceful_shutdown();
    }
}

/// How the HTTP side of a connection ended.
enum Ended {
    /// hyper finished: the peer closed or asked to close, or we closed it
    /// gracefully. The transport is still to be closed.
    Done,
    /// Gave its state back while idle (HTTP/1.1): wait for the next request.
    Released,
    /// Failed, or the peer ignored a close for `drain_timeout`: drop it.
    Dropped,
}

/// The caller-facing service of one connection.
#[derive(Clone)]
struct Caller {
    gw: Arc<Gateway>,
    info: Arc<ConnInfo>,
    activity: Arc<Activity>,
}

/// A response body on its way to the caller: keeps its request in flight
/// until it has been sent, and tells the connection's write deadline when
/// the caller has not taken the last piece handed to hyper (a caller that
/// does not read, or keeps its HTTP/2 window shut, leaves hyper no reason
/// to ask for the next piece).
struct CallerBody {
    body: ProxyBody,
    flight: InFlight,
    /// A piece was handed over (or the answer is new) and hyper has not
    /// asked for the next one yet.
    waiting: bool,
}

impl CallerBody {
    fn new(body: ProxyBody, flight: InFlight) -> Self {
        flight.0.waiting.fetch_add(1, Ordering::Relaxed);
        flight.0.progress();
        Self { body, flight, waiting: true }
    }
}

impl http_body::Body for CallerBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let activity = &this.flight.0;
        activity.progress();
        if this.waiting {
            this.waiting = false;
            activity.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.waiting = true;
            activity.waiting.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for CallerBody {
    fn drop(&mut self) {
        if self.waiting {
            self.flight.0.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Caller {
    type Response = Response<CallerBody>;
    type Error = Infallible;
    // Boxed: hyper keeps the service future's slot for the connection's
    // whole life, so an idle connection would hold a request's worth.
    type Future = Pin<Box<dyn Future<Output = Result<Response<CallerBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let act = &self.activity;
        act.in_flight.fetch_add(1, Ordering::Relaxed);
        act.started.fetch_add(1, Ordering::Relaxed);
        act.touch();
        let guard = InFlight(act.clone());
        let (gw, info) = (self.gw.clone(), self.info.clone());
        Box::pin(async move {
            let resp = handle(gw, info, req).await;
            Ok(resp.map(|body| CallerBody::new(body, guard)))
        })
    }
}

pub(super) struct Connection {
    pub(super) shared: Arc<Shared>,
    pub(super) drain: watch::Receiver<bool>,
    pub(super) info: Arc<ConnInfo>,
}

impl Connection {
    pub(super) async fn run(mut self, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        let metrics = self.shared.gw.metrics.clone();
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        self.serve(tcp).await;
        metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    async fn serve(&mut self, tcp: TcpStream) {
        let shared = self.shared.clone();
        let limits = &shared.limits;
        let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.current());
        // Boxed, like the stream: the handshake's state lives on the heap
        // for the handshake only, not in every connection's task.
        let tls = match tokio::time::timeout(limits.tls_handshake_timeout, Box::pin(acceptor.accept(tcp))).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => return tracing::debug!(peer = %self.info.peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(peer = %self.info.peer, "TLS handshake timed out"),
        };
        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let activity = Arc::new(Activity::new());
        let caller = Caller { gw: shared.gw.clone(), info: self.info.clone(), activity: activity.clone() };
        if http2 {
            // HTTP/2 has no request-head phase to bound (hyper's h2 handles
            // slow frames) and no state to give back while idle: it gets the
            // idle timeout only, and closes the transport itself.
            let mut conn = Box::pin(shared.h2.serve_connection(TokioIo::new(tls), caller));
            self.drive(&mut conn, &activity, None).await;
        } else {
            self.serve_http1(tls, caller, &activity).await;
        }
    }

    /// HTTP/1.1: hyper serves the connection while requests come; once it
    /// has idled for `idle_release` it ends, giving back its buffers (16 KiB
    /// and more), and the connection waits holding only its TLS state until
    /// the next request's first byte starts a new hyper connection. The first
    /// request is awaited the same way, so a connection that never sends one
    /// costs no HTTP state either.
    async fn serve_http1(&mut self, mut io: Tls, mut caller: Caller, activity: &Arc<Activity>) {
        let shared = self.shared.clone();
        let limits = &shared.limits;
        let mut prefix = Bytes::new();
        loop {
            if prefix.is_empty() {
                match self.next_request(&mut io, activity).await {
                    Some(first) => prefix = first,
                    None => return close(io, limits.drain_timeout).await,
                }
            }
            let deadline = HeadDeadline::new(io, prefix, activity.clone(), limits.header_timeout);
            let mut conn = Box::new(Http1(shared.h1.serve_connection(TokioIo::new(deadline), caller)));
            let ended = self.drive(&mut *conn, activity, Some(limits.idle_release)).await;
            let parts = conn.0.into_parts();
            let deadline = parts.io.into_inner();
            match ended {
                Ended::Released => {
                    // Bytes hyper had read past the last request (none, as it
                    // was idle) come first next time.
                    prefix = match (deadline.prefix.is_empty(), parts.read_buf.is_empty()) {
                        (_, true) => deadline.prefix,
                        (true, false) => parts.read_buf,
                        (false, false) => [deadline.prefix, parts.read_buf].concat().into(),
                    };
                    (io, caller) = (deadline.io, parts.service);
                }
                Ended::Done => return close(deadline.io, limits.drain_timeout).await,
                Ended::Dropped => return,
            }
        }
    }

    /// Waits, holding no HTTP state, for the first byte of the next request;
    /// None when the peer closes, the idle timeout passes or the server drains.
    async fn next_request(&mut self, io: &mut Tls, activity: &Activity) -> Option<Bytes> {
        if *self.drain.borrow() {
            return None;
        }
        let idle_timeout = self.shared.limits.idle_timeout;
        let idle = activity.idle_for().unwrap_or_default();
        let mut first = [0u8; 1];
        let released = &self.shared.gw.metrics.connections_released;
        released.fetch_add(1, Ordering::Relaxed);
        let got = tokio::select! {
            read = io.read(&mut first) => match read {
                Ok(1) => Some(Bytes::copy_from_slice(&first)),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(peer = %self.info.peer, error = %e, "connection ended with an error");
                    None
                }
            },
            _ = self.drain.changed() => None,
            _ = tokio::time::sleep(idle_timeout.saturating_sub(idle)) => None,
        };
        released.fetch_sub(1, Ordering::Relaxed);
        got
    }

    /// Runs an HTTP connection until it ends: closes it gracefully when idle
    /// for `idle_timeout` or when the server drains, cuts it off when the
    /// peer ignores the close for `drain_timeout`, and ends it (HTTP/1.1) once
    /// it has idled for `release`.
    async fn drive(&mut self, conn: &mut dyn ServedConnection, activity: &Activity, release: Option<Duration>) -> Ended {
        let limits = &self.shared.limits;
        let (idle_timeout, drain_timeout, write_timeout) = (limits.idle_timeout, limits.drain_timeout, limits.write_timeout);
        let busy_wait = release.map_or(idle_timeout, |r| r.min(idle_timeout)).min(write_timeout);
        // One timer per connection, set to the next moment something may be
        // due (not a periodic tick: 10,000 idle connections must cost nothing).
        let timer = tokio::time::sleep(busy_wait);
        tokio::pin!(timer);
        let (mut closing, mut releasing) = (false, false);
        loop {
            tokio::select! {
                res = &mut *conn => {
                    return match res {
                        Err(e) => {
                            tracing::debug!(peer = %self.info.peer, error = %e, "connection ended with an error");
                            Ended::Dropped
                        }
                        Ok(()) if releasing && !closing => Ended::Released,
                        Ok(()) => Ended::Done,
                    };
                }
                changed = self.drain.changed(), if !closing => {
                    if changed.is_err() || *self.drain.borrow() {
                        conn.shutdown();
                        closing = true;
                        timer.as_mut().reset(tokio::time::Instant::now() + drain_timeout);
                    }
                }
                _ = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if closing {
                        // A peer that ignores the close is cut off.
                        return Ended::Dropped;
                    }
                    let Some(idle) = activity.idle_for() else {
                        // A caller that does not take its answers holds
                        // streams and upstream connections: it is cut off.
                        // (Per connection: on HTTP/2, one stream that moves
                        // keeps the others' clock at zero.)
                        let stalled = activity.write_stalled_for().unwrap_or_default();
                        if stalled >= write_timeout {
                            tracing::debug!(peer = %self.info.peer, ?stalled, "the caller did not read its answer in time; connection closed");
                            return Ended::Dropped;
                        }
                        timer.as_mut().reset(now + busy_wait.min(write_timeout - stalled));
                        continue;
                    };
                    if idle >= idle_timeout {
                        conn.shutdown();
                        closing = true;
                        timer.as_mut().reset(now + drain_timeout);
                        continue;
                    }
                    let mut wait = idle_timeout - idle;
                    if let Some(release) = release.filter(|_| !releasing) {
                        if idle < release {
                            wait = wait.min(release - idle);
                        } else if activity.head_pending() {
                            // hyper would answer the request being read with
                            // `Connection: close`: try again later.
                            wait = wait.min(release);
                        } else {
                            // Idle: hyper stops at once, without a byte written.
                            conn.shutdown();
                            releasing = true;
                        }
                    }
                    timer.as_mut().reset(now + wait);
                }
            }
        }
    }
}

/// Closes the transport gracefully (TLS close_notify, then FIN), giving up
/// after `limit` on a peer that does not read.
async fn close(mut io: Tls, limit: Duration) {
    let _ = tokio::time::timeout(limit, io.shutdown()).await;
}
