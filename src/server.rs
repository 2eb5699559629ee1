//! The caller-facing listener: accept, connection limit, TLS handshake with
//! a timeout, HTTP/1.1 and HTTP/2 (hyper-util auto), header-size and
//! header-read limits, idle keep-alive timeout, and graceful drain.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Response;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::body::ProxyBody;
use crate::config::Limits;
use crate::proxy::{ConnInfo, Gateway, handle};
use crate::tls::TlsSource;

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker thread running the caller; 0 off the workers.
/// Per-worker state (the upstream connection pools) is picked by it.
pub fn lane() -> usize {
    LANE.with(Cell::get)
}

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
            LANE.set(i);
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

/// A served connection of either protocol, boxed at its own size.
trait ServedConnection: Future<Output = Result<(), hyper::Error>> + Send {
    fn shutdown(self: Pin<&mut Self>);
}

impl<C: GracefulConnection<Error = hyper::Error> + Send> ServedConnection for C {
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

struct Connection {
    shared: Arc<Shared>,
    drain: watch::Receiver<bool>,
    info: Arc<ConnInfo>,
}

/// Requests in flight on one connection, how many have started, and when
/// the last one started or ended: for the idle and request-head timeouts.
struct Activity {
    in_flight: AtomicUsize,
    started: AtomicU64,
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

/// Marks a request finished when its response has been handed to hyper.
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
struct HeadDeadline<T> {
    io: T,
    activity: Arc<Activity>,
    timeout: Duration,
    /// Running since a head began; `started` as it was then.
    armed: Option<u64>,
    /// Allocated on the first request head, then reset for each one.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> HeadDeadline<T> {
    fn new(io: T, activity: Arc<Activity>, timeout: Duration) -> Self {
        Self { io, activity, timeout, armed: None, sleep: None }
    }

    /// After a read: stops the clock once a request has started since it was
    /// armed, starts it when bytes arrived with none in flight, and says
    /// whether the deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>, got_bytes: bool) -> bool {
        let started = self.activity.started.load(Ordering::Relaxed);
        if self.armed.is_some_and(|at| at != started) {
            self.armed = None;
        }
        if self.armed.is_none() && got_bytes && self.activity.in_flight.load(Ordering::Relaxed) == 0 {
            let deadline = tokio::time::Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = Some(started);
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
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
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
        let tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return tracing::debug!(peer = %self.info.peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(peer = %self.info.peer, "TLS handshake timed out"),
        };
        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let (gw, info, act) = (shared.gw.clone(), self.info.clone(), activity.clone());
        // Boxed: hyper keeps the service future's slot for the connection's
        // whole life, so an idle connection would hold a request's worth.
        let service = service_fn(move |req| -> Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>> {
            let (gw, info, act) = (gw.clone(), info.clone(), act.clone());
            act.in_flight.fetch_add(1, Ordering::Relaxed);
            act.started.fetch_add(1, Ordering::Relaxed);
            act.touch();
            let guard = InFlight(act);
            Box::pin(async move {
                let resp = handle(gw, info, req).await;
                drop(guard);
                Ok(resp)
            })
        });
        // HTTP/2 has no request-head phase to bound (hyper's h2 handles slow
        // frames); its connections only get the idle timeout.
        let mut conn: Pin<Box<dyn ServedConnection>> = if http2 {
            Box::pin(shared.h2.serve_connection(TokioIo::new(tls), service))
        } else {
            let io = HeadDeadline::new(tls, activity.clone(), limits.header_timeout);
            Box::pin(shared.h1.serve_connection(TokioIo::new(io), service))
        };
        // Runs the connection to its end: closes it gracefully when idle for
        // `idle_timeout` or when the server drains, and cuts it off when the
        // peer ignores the close for `drain_timeout`.
        // One timer per connection, set to the moment it would become idle
        // (not a periodic tick: 10,000 idle connections must cost nothing).
        let idle_timeout = limits.idle_timeout;
        let timer = tokio::time::sleep(idle_timeout);
        tokio::pin!(timer);
        let mut closing = false;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(peer = %self.info.peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                changed = self.drain.changed(), if !closing => {
                    if changed.is_err() || *self.drain.borrow() {
                        conn.as_mut().shutdown();
                        closing = true;
                        timer.as_mut().reset(tokio::time::Instant::now() + limits.drain_timeout);
                    }
                }
                _ = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if closing {
                        // A peer that ignores the close is cut off.
                        break;
                    }
                    match activity.idle_for() {
                        Some(idle) if idle >= idle_timeout => {
                            conn.as_mut().shutdown();
                            closing = true;
                            timer.as_mut().reset(now + limits.drain_timeout);
                        }
                        Some(idle) => timer.as_mut().reset(now + (idle_timeout - idle)),
                        None => timer.as_mut().reset(now + idle_timeout),
                    }
                }
            }
        }
    }
}
