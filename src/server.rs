//! The caller-facing listener: accept, connection limit, TLS handshake with
//! a timeout, HTTP/1.1 and HTTP/2 (hyper-util auto), header-size and
//! header-read limits, idle keep-alive timeout, and graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::Limits;
use crate::proxy::{ConnInfo, Gateway, handle};
use crate::tls::TlsSource;

/// Serves callers until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to `limits.drain_timeout`) and returns.
pub async fn serve(listener: TcpListener, tls: TlsSource, gw: Arc<Gateway>, limits: Limits, shutdown: impl Future<Output = ()>) {
    let builder = Arc::new(http_builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, _) = watch::channel(false);
    // Every connection task holds a sender; recv() returns None once all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let limits = Arc::new(limits);
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
        let task = Connection {
            gw: gw.clone(),
            tls: tls.clone(),
            builder: builder.clone(),
            limits: limits.clone(),
            drain: drain_tx.subscribe(),
            info: Arc::new(ConnInfo { peer }),
        };
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            task.run(tcp).await;
            drop(permit);
            drop(alive);
        });
    }
    drop(listener);
    tracing::info!("draining: no new connections; waiting for in-flight requests");
    let _ = drain_tx.send(true);
    drop(alive_tx);
    if tokio::time::timeout(limits.drain_timeout, alive_rx.recv()).await.is_err() {
        tracing::warn!(timeout = ?limits.drain_timeout, "drain deadline passed; closing the remaining connections");
    }
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

struct Connection {
    gw: Arc<Gateway>,
    tls: TlsSource,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    drain: watch::Receiver<bool>,
    info: Arc<ConnInfo>,
}

/// Requests in flight on one connection and when the last one started or
/// ended, for the idle timeout.
struct Activity {
    in_flight: AtomicUsize,
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

impl Connection {
    async fn run(mut self, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        self.gw.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.current());
        let tls = match tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.info.peer, error = %e, "TLS handshake failed");
                self.gw.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.info.peer, "TLS handshake timed out");
                self.gw.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
        let activity = Arc::new(Activity { in_flight: AtomicUsize::new(0), last_ms: AtomicU64::new(0), epoch: Instant::now() });
        let (gw, info, act) = (self.gw.clone(), self.info.clone(), activity.clone());
        let service = service_fn(move |req| {
            let (gw, info, act) = (gw.clone(), info.clone(), act.clone());
            act.in_flight.fetch_add(1, Ordering::Relaxed);
            act.touch();
            let guard = InFlight(act);
            async move {
                let resp = handle(gw, info, req).await;
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        // One timer per connection, set to the moment it would become idle
        // (not a periodic tick: 10,000 idle connections must cost nothing).
        let idle_timeout = self.limits.idle_timeout;
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
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        timer.as_mut().reset(tokio::time::Instant::now() + self.limits.drain_timeout);
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
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                            timer.as_mut().reset(now + self.limits.drain_timeout);
                        }
                        Some(idle) => timer.as_mut().reset(now + (idle_timeout - idle)),
                        None => timer.as_mut().reset(now + idle_timeout),
                    }
                }
            }
        }
        self.gw.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}
