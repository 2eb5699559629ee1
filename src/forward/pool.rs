//! Upstream keep-alive connections, one pool per worker thread.
//!
//! A worker thread's pool holds only the connections that worker opened, and
//! their tasks run on it: sending a request wakes no other thread and takes
//! an uncontended lock. HTTP/1.1 connections go back to the pool when the
//! response body has been read to its end (or was empty); a body dropped
//! half-read takes its connection down with it. An HTTP/2 connection is
//! shared by every request of its worker.

use std::cell::Cell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

use crate::body::ProxyBody;

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index`: the requests it sends use
/// that worker's pools. The server calls it once when it starts a worker.
pub fn set_lane(index: usize) {
    LANE.set(index);
}

/// The index of the worker thread running the caller; 0 off the workers.
pub(super) fn lane() -> usize {
    LANE.with(Cell::get)
}

/// How long an idle connection is kept, and how many at most per worker.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

struct Idle {
    tx: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// One worker thread's connections to one upstream.
#[derive(Default)]
pub struct Lane {
    idle: Mutex<VecDeque<Idle>>,
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lane {
    /// The most recently used idle HTTP/1.1 connection that is still open and
    /// not older than `limits.idle_timeout`; older ones are closed on the way.
    pub fn take_h1(&self, limits: PoolLimits) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = locked(&self.idle);
        let now = Instant::now();
        while let Some(front) = idle.front() {
            if now.duration_since(front.since) <= limits.idle_timeout {
                break;
            }
            idle.pop_front();
        }
        while let Some(Idle { tx, .. }) = idle.pop_back() {
            if !tx.is_closed() {
                return Some(tx);
            }
        }
        None
    }

    fn put_h1(&self, tx: http1::SendRequest<ProxyBody>, limits: PoolLimits) {
        if tx.is_closed() {
            return;
        }
        let mut idle = locked(&self.idle);
        if idle.len() >= limits.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle { tx, since: Instant::now() });
    }

    /// A handle on this worker's HTTP/2 connection, if it is open.
    pub fn h2(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let mut h2 = locked(&self.h2);
        match &*h2 {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    pub fn set_h2(&self, tx: http2::SendRequest<ProxyBody>) {
        *locked(&self.h2) = Some(tx);
    }

    /// Forgets the HTTP/2 connection (it refused a request).
    pub fn drop_h2(&self) {
        *locked(&self.h2) = None;
    }
}

/// An upstream response body; an HTTP/1.1 connection rides along and goes
/// back to its lane once the body has been read to its end.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<Back>,
}

struct Back {
    lane: Arc<Lane>,
    tx: http1::SendRequest<ProxyBody>,
    limits: PoolLimits,
}

impl UpstreamBody {
    /// A body whose connection is not pooled by it (HTTP/2).
    pub fn plain(inner: Incoming) -> Self {
        Self { inner, back: None }
    }

    pub fn pooled(inner: Incoming, lane: Arc<Lane>, tx: http1::SendRequest<ProxyBody>, limits: PoolLimits) -> Self {
        Self { inner, back: Some(Back { lane, tx, limits }) }
    }

    fn release(&mut self) {
        if let Some(Back { lane, tx, limits }) = self.back.take() {
            lane.put_h1(tx, limits);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A connection whose response failed half-way is not reused.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, a zero length) may never be polled;
        // one dropped before its end leaves the connection mid-response, and
        // dropping its handle closes it.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
