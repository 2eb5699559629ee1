//! The clocks a caller connection runs on: what is in flight and when it
//! last moved (for the idle and write timeouts), and the request-head
//! deadline of HTTP/1.1 (slowloris).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Requests in flight on one connection, how many have started, and when
/// the last one started or ended: for the idle and request-head timeouts;
/// answers waiting for the caller to read, and when one last moved: for
/// the write timeout.
pub(super) struct Activity {
    pub(super) in_flight: AtomicUsize,
    pub(super) started: AtomicU64,
    /// `started + 1` while an HTTP/1.1 request head is being read (bytes
    /// arrived with no request in flight), 0 otherwise.
    pub(super) head: AtomicU64,
    pub(super) last_ms: AtomicU64,
    /// Answers whose last piece the caller has not taken yet.
    pub(super) waiting: AtomicUsize,
    /// When hyper last asked an answer of this connection for a piece.
    pub(super) progress_ms: AtomicU64,
    pub(super) epoch: Instant,
}

impl Activity {
    pub(super) fn new() -> Self {
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

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(super) fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long an answer has waited for the caller to read it, if one does.
    pub(super) fn write_stalled_for(&self) -> Option<Duration> {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(Duration::from_millis(self.now_ms().saturating_sub(self.progress_ms.load(Ordering::Relaxed))))
    }

    pub(super) fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// A request head has begun arriving and has not reached the service.
    pub(super) fn head_pending(&self) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        head != 0 && head - 1 == self.started.load(Ordering::Relaxed)
    }
}

/// Marks a request finished when hyper drops its response body: sent to
/// its end, or abandoned with the connection.
pub(super) struct InFlight(pub(super) Arc<Activity>);

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
pub(super) struct HeadDeadline<T> {
    pub(super) io: T,
    pub(super) prefix: Bytes,
    pub(super) activity: Arc<Activity>,
    pub(super) timeout: Duration,
    /// Running since a head began; `started` as it was then.
    pub(super) armed: Option<u64>,
    /// Allocated on the first request head, then reset for each one.
    pub(super) sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> HeadDeadline<T> {
    pub(super) fn new(io: T, prefix: Bytes, activity: Arc<Activity>, timeout: Duration) -> Self {
        Self { io, prefix, activity, timeout, armed: None, sleep: None }
    }

    /// After a read: stops the clock once a request has started since it was
    /// armed, starts it when bytes arrived with none in flight, and says
    /// whether the deadline has passed.
    pub(super) fn check(&mut self, cx: &mut Context<'_>, got_bytes: bool) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A caller's side and gatehouse's side with the head deadline, and a
    /// task reading from it as hyper would: it reports the read's result.
    fn connection(timeout: Duration) -> (tokio::io::DuplexStream, Arc<Activity>, tokio::task::JoinHandle<std::io::Result<usize>>) {
        let (caller, ours) = tokio::io::duplex(4096);
        let activity = Arc::new(Activity::new());
        let mut deadline = HeadDeadline::new(ours, Bytes::new(), activity.clone(), timeout);
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 64];
            loop {
                match deadline.read(&mut buf).await {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n,
                    Err(e) => return Err(e),
                }
            }
        });
        (caller, activity, reader)
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_not_complete_in_time_fails_the_read_at_the_deadline_not_before() {
        let (mut caller, _activity, reader) = connection(Duration::from_secs(10));
        caller.write_all(b"GET / HT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert!(!reader.is_finished(), "the head still has time");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let error = reader.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_left_to_the_idle_timeout() {
        let (caller, _activity, reader) = connection(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!reader.is_finished(), "no byte, no head deadline");
        drop(caller);
        assert_eq!(reader.await.unwrap().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_reaching_the_service_stops_the_clock() {
        let (mut caller, activity, reader) = connection(Duration::from_secs(10));
        caller.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // What the service does when hyper hands it the request.
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        caller.write_all(b"body bytes").await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!reader.is_finished(), "a request in flight is not a slow head");
        drop(caller);
        assert_eq!(reader.await.unwrap().unwrap(), 28);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_waiting_for_the_caller_counts_its_stall_from_the_last_progress() {
        let activity = Activity::new();
        assert_eq!(activity.write_stalled_for(), None, "nothing waits");
        activity.waiting.fetch_add(1, Ordering::Relaxed);
        activity.progress();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(activity.write_stalled_for(), Some(Duration::from_secs(5)));
        activity.progress();
        assert_eq!(activity.write_stalled_for(), Some(Duration::ZERO), "hyper asked for the next piece");
        activity.waiting.fetch_sub(1, Ordering::Relaxed);
        assert_eq!(activity.write_stalled_for(), None);
    }
}
