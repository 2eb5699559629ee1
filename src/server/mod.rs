//! The caller-facing listener: accept, connection limit, worker threads and
//! graceful drain. `connection` serves one connection (TLS handshake with a
//! timeout, HTTP/1.1 and HTTP/2 by ALPN, idle keep-alive timeout; an idle
//! HTTP/1.1 connection gives its HTTP state back until its next request);
//! `deadline` holds the clocks it runs on (request head, write stall).

mod connection;
mod deadline;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::config::Limits;
use crate::proxy::{ConnInfo, Gateway};
use crate::tls::TlsSource;
use connection::Connection;

/// An accepted connection on its way to a worker.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// What every connection task needs.
pub(super) struct Shared {
    pub(super) gw: Arc<Gateway>,
    pub(super) tls: TlsSource,
    pub(super) h1: http1::Builder,
    pub(super) h2: http2::Builder<TokioExecutor>,
    pub(super) limits: Limits,
    pub(super) drain: watch::Receiver<bool>,
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
