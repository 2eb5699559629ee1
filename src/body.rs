//! Body types: one boxed streaming body for both directions, the caller's
//! request body with its idle timeout and replay copy, and a wrapper that reports once when a stream ends,
//! fails, or is dropped half-way (client gone), so that every request gets
//! its audit record with the bytes that really flowed.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use std::future::Future as _;

/// Errors of any body in the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the proxy produces.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Why a caller's request body did not arrive whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// The caller reset the stream or closed the connection (499).
    Closed,
    /// The body broke the framing rules (bad chunk, length mismatch) (400).
    Malformed,
    /// No piece of it arrived within `body_timeout_ms` (408).
    TimedOut,
}

/// What happened to a caller's request body, shared between the body (owned
/// by the upstream connection while it is sent) and the request's pipeline.
#[derive(Debug, Default)]
pub struct InboundState {
    bytes: AtomicU64,
    /// 0 flowing, 1 complete, else a [`BodyFailure`] code.
    end: AtomicU8,
    /// The body's frames while they fit the replay limit; `None` once they
    /// do not (or when nothing is kept).
    kept: Mutex<Option<Vec<Bytes>>>,
}

const FLOWING: u8 = 0;
const COMPLETE: u8 = 1;

impl BodyFailure {
    fn code(self) -> u8 {
        match self {
            Self::Closed => 2,
            Self::Malformed => 3,
            Self::TimedOut => 4,
        }
    }
}

impl InboundState {
    /// Body bytes received from the caller so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Why the body did not arrive whole, if it failed.
    pub fn failure(&self) -> Option<BodyFailure> {
        match self.end.load(Ordering::Acquire) {
            2 => Some(BodyFailure::Closed),
            3 => Some(BodyFailure::Malformed),
            4 => Some(BodyFailure::TimedOut),
            _ => None,
        }
    }

    /// The whole body, when it was kept (small enough) and has arrived to
    /// its end: what a retry sends again.
    pub fn replay(&self) -> Option<Bytes> {
        if self.end.load(Ordering::Acquire) != COMPLETE {
            return None;
        }
        let kept = self.kept.lock().ok()?;
        let frames = kept.as_ref()?;
        Some(match frames.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => many.concat().into(),
        })
    }

    fn end(&self, code: u8) {
        let _ = self.end.compare_exchange(FLOWING, code, Ordering::AcqRel, Ordering::Acquire);
    }

    fn keep(&self, data: &Bytes, limit: usize) {
        if let Ok(mut kept) = self.kept.lock()
            && let Some(frames) = kept.as_mut()
        {
            let held: usize = frames.iter().map(Bytes::len).sum();
            if held + data.len() <= limit {
                frames.push(data.clone());
            } else {
                *kept = None;
            }
        }
    }
}

/// A caller's request body on its way upstream: counts the bytes, records
/// how it ended (for blame: a caller that stops sending is not the
/// upstream's fault), fails when no piece arrives within `timeout` (an idle
/// wait, not a total: a long upload that keeps moving is never cut), and
/// keeps a copy of up to `keep` bytes while it streams, for one retry.
pub struct Inbound {
    inner: hyper::body::Incoming,
    state: Arc<InboundState>,
    timeout: Duration,
    keep: usize,
    /// Armed while waiting for the next piece; allocated on the first wait.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl Inbound {
    /// `keep`: bytes to copy for a replay (0: none).
    pub fn new(inner: hyper::body::Incoming, state: Arc<InboundState>, timeout: Duration, keep: usize) -> Self {
        if keep > 0
            && let Ok(mut kept) = state.kept.lock()
        {
            *kept = Some(Vec::new());
        }
        if inner.is_end_stream() {
            state.end(COMPLETE);
        }
        Self { inner, state, timeout, keep, sleep: None, armed: false }
    }
}

/// The body error a timed-out caller body ends with.
#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the caller sent no part of its request body in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// How a caller's body error is blamed.
fn classify(error: &hyper::Error) -> BodyFailure {
    if error.is_parse() || error.is_user() {
        return BodyFailure::Malformed;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) {
            return BodyFailure::Malformed;
        }
        source = e.source();
    }
    BodyFailure::Closed
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                if let Some(data) = frame.data_ref() {
                    this.state.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if this.keep > 0 {
                        this.state.keep(data, this.keep);
                    }
                }
                if this.inner.is_end_stream() {
                    this.state.end(COMPLETE);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.end(classify(&e).code());
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.state.end(COMPLETE);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    sleep.as_mut().reset(deadline);
                    this.armed = true;
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    this.state.end(BodyFailure::TimedOut.code());
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a tracked stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    Complete,
    Failed,
    /// Dropped before the end: the client went away.
    Abandoned,
}

/// Calls `on_end(bytes, how)` exactly once when the stream ends, fails or is dropped.
pub struct Tracked<B: Body> {
    inner: B,
    bytes: u64,
    on_end: Option<Box<dyn FnOnce(u64, StreamEnd) + Send>>,
}

impl<B: Body> Tracked<B> {
    pub fn new(inner: B, on_end: impl FnOnce(u64, StreamEnd) + Send + 'static) -> Self {
        Self { inner, bytes: 0, on_end: Some(Box::new(on_end)) }
    }

    fn finish(&mut self, how: StreamEnd) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes, how);
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(StreamEnd::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(StreamEnd::Failed),
            Poll::Ready(None) => self.finish(StreamEnd::Complete),
            Poll::Pending => {}
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

impl<B: Body> Drop for Tracked<B> {
    fn drop(&mut self) {
        // hyper may never poll a body that says it is already at its end.
        let how = if self.inner.is_end_stream() { StreamEnd::Complete } else { StreamEnd::Abandoned };
        self.finish(how);
    }
}
