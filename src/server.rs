//! The caller-facing listener: accept, connection limit, TLS handshake with
//! a timeout, HTTP/1.1 and HTTP/2 (by ALPN), header-size and header-read
//! limits, idle keep-alive timeout (an idle HTTP/1.1 connection gives its
//! HTTP state back until its next request), and graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::body::ProxyBody;
use crate::config::Limits;
use crate::proxy::{ConnInfo, Gateway, handle};
use crate::tls::TlsSource;

/// An accepted connection on its way to a worker.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// What every connection task needs.
struct Shared {
    gw: Arc<Gateway>,
    tls: TlsSource,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    limits: Limits,
    drain: watch::Receiver<bool>,
}

/// Serves callers until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to `limits.drain_timeout`) and returns.
///
/// Connections are accepted here and handed round-robin to worker threads,
/// each running its own single-threaded event loop: a connection, its
/// requests and its pooled upstream connections stay on one thread, so a
/// request wakes no other thread (the cost that dominated a work-stealing
/// runtime under load).
pub async fn serve(listener: TcpListener, tls: TlsSource, gw: Arc<Gateway>, limits: Limits, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    // Every connection holds a sender; recv() returns None once all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let drain_timeout = limits.drain_timeout;
    let workers = limits.worker_threads();
    let (h1, h2) = http_builders(&limits);
    let shared = Arc::new(Shared { gw, tls, h1, h2, limits, drain: drain_rx });
    let mut lanes = Vec::with_capacity(workers);
    for i in 0..workers {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker's event loop; the others (or the main runtime) serve its share");
                continue;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel::<Accepted>();
        let (shared, alive) = (shared.clone(), alive_tx.clone());
        let spawned = std::thread::Builder::new().name(format!("gatehouse-w{i}")).spawn(move || {
            crate::forward::set_lane(i);
            runtime.block_on(worker(rx, shared, alive));
        });
        match spawned {
            Ok(_) => lanes.push(tx),
            Err(e) => tracing::error!(error = %e, "cannot start a worker thread; the others (or the main runtime) serve its share"),
        }
    }
    let mut next = 0usize;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let accepted = match tcp.into_std() {
            Ok(tcp) => Accepted { tcp, peer, permit },
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        // A worker that is gone hands the connection back; the next one gets
        // it, and the main runtime when none is left.
        let mut pending = Some(accepted);
        for _ in 0..lanes.len() {
            let Some(a) = pending.take() else { break };
            next = (next + 1) % lanes.len();
            if let Err(mpsc::error::SendError(back)) = lanes[next].send(a) {
                pending = Some(back);
            }
        }
        if let Some(a) = pending {
            tokio::spawn(serve_accepted(a, shared.clone(), alive_tx.clone()));
        }
    }
    drop(listener);
    tracing::info!("draining: no new connections; waiting for in-flight requests");
    let _ = drain_tx.send(true);
    drop(lanes);
    drop(alive_tx);
    if tokio::time::timeout(drain_timeout, alive_rx.recv()).await.is_err() {
        tracing::warn!(timeout = ?drain_timeout, "drain deadline passed; closing the remaining connections");
    }
}

/// One worker's event loop: serves the connections handed to it until the
/// acceptor stops, then until the last of them has ended.
async fn worker(mut rx: mpsc::UnboundedReceiver<Accepted>, shared: Arc<Shared>, alive: mpsc::Sender<()>) {
    // The runtime must outlive its connections: wait for them before returning.
    let (mine_tx, mut mine_rx) = mpsc::channel::<()>(1);
    while let Some(a) = rx.recv().await {
        tokio::spawn(serve_accepted(a, shared.clone(), (alive.clone(), mine_tx.clone())));
    }
    drop(mine_tx);
    let _ = mine_rx.recv().await;
}

/// Serves one connection on the current runtime; `guard` is dropped when it ends.
async fn serve_accepted<G: Send>(a: Accepted, shared: Arc<Shared>, guard: G) {
    match TcpStream::from_std(a.tcp) {
        Ok(tcp) => Connection { drain: shared.drain.clone(), shared, info: Arc::new(ConnInfo { peer: a.peer }) }.run(tcp).await,
        Err(e) => tracing::warn!(peer = %a.peer, error = %e, "cannot register the connection with the event loop"),
    }
    drop(a.permit);
    drop(guard);
}

/// The protocol is what ALPN chose: `h2`, or HTTP/1.1 otherwise (HTTP/2
/// over TLS is negotiated with ALPN, RFC 9113 §3.2), so no connection pays
/// for sniffing a preface or for the other protocol's state.
fn http_builders(limits: &Limits) -> (http1::Builder, http2::Builder<TokioExecutor>) {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        // The request-head deadline is HeadDeadline's: hyper's also runs
        // while a keep-alive connection idles between requests.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    (h1, h2)
}

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

struct Connection {
    shared: Arc<Shared>,
    drain: watch::Receiver<bool>,
    info: Arc<ConnInfo>,
}

/// Requests in flight on one connection, how many have started, and when
/// the last one started or ended: for the idle and request-head timeouts;
/// answers waiting for the caller to read, and when one last moved: for
/// the write timeout.
struct Activity {
    in_flight: AtomicUsize,
    started: AtomicU64,
    /// `started + 1` while an HTTP/1.1 request head is being read (bytes
    /// arrived with no request in flight), 0 otherwise.
    head: AtomicU64,
    last_ms: AtomicU64,
    /// Answers whose last piece the caller has not taken yet.
    waiting: AtomicUsize,
    /// When hyper last asked an answer of this connection for a piece.
    progress_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            head: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long an answer has waited for the caller to read it, if one does.
    fn write_stalled_for(&self) -> Option<Duration> {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(Duration::from_millis(self.now_ms().saturating_sub(self.progress_ms.load(Ordering::Relaxed))))
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// A request head has begun arriving and has not reached the service.
    fn head_pending(&self) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        head != 0 && head - 1 == self.started.load(Ordering::Relaxed)
    }
}

/// Marks a request finished when hyper drops its response body: sent to
/// its end, or abandoned with the connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The caller's side of an HTTP/1.1 connection with the request-head
/// deadline: bytes that arrive while no request is in flight start the
/// clock, a request reaching the service stops it, and a head not complete
/// by then fails the read, which closes the connection (slowloris). An idle
/// keep-alive connection that sends nothing is left to the idle timeout.
/// (hyper's own header_read_timeout also runs while the connection idles,
/// which would cut keep-alive connections at the head deadline.)
/// `prefix` holds bytes read before hyper took over (a released connection's
/// next request), served before the transport's.
struct HeadDeadline<T> {
    io: T,
    prefix: Bytes,
    activity: Arc<Activity>,
    timeout: Duration,
    /// Running since a head began; `started` as it was then.
    armed: Option<u64>,
    /// Allocated on the first request head, then reset for each one.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> HeadDeadline<T> {
    fn new(io: T, prefix: Bytes, activity: Arc<Activity>, timeout: Duration) -> Self {
        Self { io, prefix, activity, timeout, armed: None, sleep: None }
    }

    /// After a read: stops the clock once a request has started since it was
    /// armed, starts it when bytes arrived with none in flight, and says
    /// whether the deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>, got_bytes: bool) -> bool {
        let started = self.activity.started.load(Ordering::Relaxed);
        if self.armed.is_some_and(|at| at != started) {
            self.armed = None;
            self.activity.head.store(0, Ordering::Relaxed);
        }
        if self.armed.is_none() && got_bytes && self.activity.in_flight.load(Ordering::Relaxed) == 0 {
            let deadline = tokio::time::Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = Some(started);
            self.activity.head.store(started + 1, Ordering::Relaxed);
        }
        match (&self.armed, &mut self.sleep) {
            (Some(_), Some(sleep)) => sleep.as_mut().poll(cx).is_ready(),
            _ => false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = if !self.prefix.is_empty() && buf.remaining() > 0 {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut self.io).poll_read(cx, buf)
        };
        let got_bytes = buf.filled().len() > before;
        if self.check(cx, got_bytes) {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request head not received in time")));
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection {
    async fn run(mut self, tcp: TcpStream) {
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
