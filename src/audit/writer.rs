//! The audit writer: one task that chains, batches, writes and rotates records.
//!
//! Producers hold an [`AuditSink`]. The single [`AuditWriter`] task encodes
//! each record with the hash of the one before, collects what is queued into
//! one batch, and hands the batch to a blocking thread that writes it. A
//! batch is written as soon as the queue is momentarily empty (still empty
//! after one scheduler turn, so that concurrent producers share a batch),
//! when it reaches 256 KiB, or after 50 ms of continuous draining, whichever
//! comes first.
//!
//! Capacity is taken only when a record is written, never held by a request
//! in flight: a request is admitted ([`AuditSink::admit`]) while fewer than
//! `channel_capacity` records wait for the writer, and its record is queued
//! ([`AuditSink::send`]) without waiting when it completes. So the queue holds
//! at most the capacity plus one record per request in flight (bounded by the
//! connection and stream limits), and the only wait is for the writer to
//! drain: nothing a caller does (a body never sent, an answer never read)
//! can take room other callers need.
//!
//! The batch buffer plays the part of a `BufWriter`, but tracks exactly how
//! many bytes reached the OS: after a failed or partial write, the retry
//! resumes at the first unwritten byte, so no record is lost or duplicated.
//! While writes fail the writer stops taking from the queue and the log is
//! unhealthy: new requests are refused at once (503), never served unaudited.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::event::{AuditEvent, ChainHash, encode_record};
use super::target::{FileTarget, Target};

/// Rotation threshold used by [`AuditConfig::new`]: 100 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = crate::config::defaults::AUDIT_MAX_FILE_BYTES;
/// Queue capacity used by [`AuditConfig::new`].
pub const DEFAULT_CHANNEL_CAPACITY: usize = crate::config::defaults::AUDIT_QUEUE;

/// A batch is written at least this often while records keep arriving.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// After a failed write, the next attempt comes this much later.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A batch is written once it holds this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// After a batch is written, the writer waits this long before it looks at
/// the queue again. Records sent meanwhile wake nobody (no waker is
/// registered): under load the request threads hand records over without a
/// cross-thread wake-up each, and the writer takes them in batches.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditPath {
    /// Appended to this file, rotated by size.
    File(PathBuf),
    /// Written to standard output (config value `"-"`); never rotated.
    Stdout,
}

/// Settings of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Where records go.
    pub path: AuditPath,
    /// The file is rotated once it exceeds this many bytes.
    pub max_file_bytes: u64,
    /// How many records may wait for the writer before new requests wait
    /// for room (at least 1).
    pub channel_capacity: usize,
}

impl AuditConfig {
    /// The defaults: rotation at 100 MiB, a queue of 16384 records.
    pub fn new(path: AuditPath) -> Self {
        Self { path, max_file_bytes: DEFAULT_MAX_FILE_BYTES, channel_capacity: DEFAULT_CHANNEL_CAPACITY }
    }
}

/// The writer task has stopped; the record was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditClosed;

impl fmt::Display for AuditClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the audit writer has stopped")
    }
}

impl std::error::Error for AuditClosed {}

/// Why a request is not admitted: the log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// There is room to hold the refusal's own record until the log is writable.
    WithRecord,
    /// The queue is full too: the refusal is answered without a record.
    WithoutRecord,
}

/// What travels from the sinks to the writer.
#[expect(clippy::large_enum_variant, reason = "almost every message is a record; boxing it would add an allocation per request")]
enum Message {
    /// A record stamped with the time it entered the queue.
    Record(OffsetDateTime, AuditEvent),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The producer side of the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    queue: mpsc::UnboundedSender<Message>,
    room: Arc<Room>,
    health: watch::Receiver<bool>,
}

/// How many records wait for the writer, and a wake-up for requests that
/// wait for that number to drop below the capacity.
struct Room {
    queued: AtomicUsize,
    capacity: usize,
    freed: Notify,
}

impl Room {
    fn full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.capacity
    }
}

/// The task side of the audit log; drive it with [`AuditWriter::run`].
pub struct AuditWriter {
    queue: mpsc::UnboundedReceiver<Message>,
    room: Arc<Room>,
    health: watch::Sender<bool>,
    output: Output,
    head: ChainHash,
    retry_interval: Duration,
}

/// Opens (creating it and its folder if needed) the audit log and recovers
/// the head of the hash chain, so that the first new record links to the
/// last one already written: the last complete line of the file, or, when
/// the file is empty or missing, of the newest rotated file. With neither,
/// the chain starts at 64 zeros. Fails when that last line is not a valid
/// record: appending to a damaged log would hide the damage.
pub fn open(cfg: &AuditConfig) -> io::Result<(AuditSink, AuditWriter)> {
    let (target, head) = match &cfg.path {
        AuditPath::Stdout => (Target::Stdout, ChainHash::GENESIS),
        AuditPath::File(path) => FileTarget::open(path)?,
    };
    Ok(assemble(target, head, cfg.max_file_bytes, cfg.channel_capacity))
}

fn assemble(target: Target, head: ChainHash, max_file_bytes: u64, capacity: usize) -> (AuditSink, AuditWriter) {
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let (health_tx, health_rx) = watch::channel(true);
    let room = Arc::new(Room { queued: AtomicUsize::new(0), capacity: capacity.max(1), freed: Notify::new() });
    let sink = AuditSink { queue: queue_tx, room: room.clone(), health: health_rx };
    let writer = AuditWriter {
        queue: queue_rx,
        room,
        health: health_tx,
        output: Output { target, pending: Vec::with_capacity(BATCH_BYTES + 4096), written: 0, rotate_due: false, max_file_bytes },
        head,
        retry_interval: RETRY_INTERVAL,
    };
    (sink, writer)
}

impl AuditSink {
    /// Admits a request: at once while the log is writable and the queue has
    /// room; while it is writable but full, waits for the writer to drain
    /// (requests wait rather than go unrecorded, and only the disk decides
    /// how long). Refused at once while the log cannot be written.
    pub async fn admit(&self) -> Result<(), Refused> {
        loop {
            if !self.healthy() {
                return Err(if self.room.full() { Refused::WithoutRecord } else { Refused::WithRecord });
            }
            if !self.room.full() {
                return Ok(());
            }
            let freed = self.room.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.room.full() {
                continue;
            }
            let mut health = self.health.clone();
            tokio::select! {
                () = freed => {}
                _ = health.wait_for(|healthy| !healthy) => {}
            }
        }
    }

    /// Queues a record, stamped with the current time. Never waits, so it
    /// can be called from a `Drop` impl; room was taken at admission.
    pub fn send(&self, event: AuditEvent) -> Result<(), AuditClosed> {
        self.room.queued.fetch_add(1, Ordering::Relaxed);
        self.queue.send(Message::Record(OffsetDateTime::now_utc(), event)).map_err(|_| {
            self.room.queued.fetch_sub(1, Ordering::Relaxed);
            AuditClosed
        })
    }

    /// `false` while the last write failed (disk full, ...); `/readyz`
    /// answers 503 then. `true` again once a write succeeds.
    pub fn healthy(&self) -> bool {
        *self.health.borrow()
    }

    /// Records waiting for the writer.
    pub fn queued(&self) -> usize {
        self.room.queued.load(Ordering::Relaxed)
    }

    /// Resolves once every record sent before this call is written and
    /// flushed to the OS (not fsynced). Waits as long as writes fail.
    pub async fn flush(&self) -> Result<(), AuditClosed> {
        let (done_tx, done_rx) = oneshot::channel();
        self.queue.send(Message::Flush(done_tx)).map_err(|_| AuditClosed)?;
        done_rx.await.map_err(|_| AuditClosed)
    }
}

impl fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSink").field("healthy", &self.healthy()).field("queued", &self.queued()).finish()
    }
}

impl fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditWriter").field("target", &self.output.target.to_string()).field("prev_hash", &self.head).finish()
    }
}

impl AuditWriter {
    /// Writes records until every [`AuditSink`] clone is dropped, then
    /// writes what is left, syncs the file and returns. Failed writes are
    /// retried every second, forever: a record is never dropped.
    pub async fn run(self) {
        let Self { mut queue, room, health, mut output, mut head, retry_interval } = self;
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        while let Some(message) = queue.recv().await {
            let batch_started = Instant::now();
            let mut taken = accept(message, &mut output, &mut head, &mut waiters);
            let mut yielded = false;
            while !output.batch_full() && batch_started.elapsed() < FLUSH_INTERVAL {
                match queue.try_recv() {
                    Ok(message) => taken += accept(message, &mut output, &mut head, &mut waiters),
                    // Let producers that are about to send join this batch:
                    // one scheduler turn, not a timer.
                    Err(mpsc::error::TryRecvError::Empty) if !yielded => {
                        yielded = true;
                        tokio::task::yield_now().await;
                    }
                    Err(_) => break,
                }
            }
            // Encoded records are in memory, whatever the disk does next;
            // while it fails, `admit` refuses new requests instead.
            room.queued.fetch_sub(taken, Ordering::Relaxed);
            room.freed.notify_waiters();
            let Some(back) = commit(output, &health, retry_interval).await else {
                return;
            };
            output = back;
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
            tokio::time::sleep(BATCH_PAUSE).await;
        }
        let synced = tokio::task::spawn_blocking(move || output.target.sync()).await;
        match synced {
            Ok(Ok(())) => tracing::debug!("audit writer stopped"),
            Ok(Err(error)) => tracing::error!(%error, "audit log could not be synced at shutdown"),
            Err(error) => tracing::error!(%error, "audit log sync task failed at shutdown"),
        }
    }
}

/// Adds one message to the current batch; returns how many records it took.
fn accept(message: Message, output: &mut Output, head: &mut ChainHash, waiters: &mut Vec<oneshot::Sender<()>>) -> usize {
    match message {
        Message::Flush(waiter) => {
            waiters.push(waiter);
            0
        }
        Message::Record(ts, event) => {
            match encode_record(ts, &event, head, &mut output.pending) {
                Ok(hash) => {
                    *head = hash;
                    output.note_appended();
                }
                Err(error) => tracing::error!(
                    event = event.name(),
                    %error,
                    "audit record could not be encoded and was not written"
                ),
            }
            1
        }
    }
}

/// Writes the batch (and rotates if due) on a blocking thread, retrying
/// until it succeeds. `None` only if the blocking task itself died.
async fn commit(mut output: Output, health: &watch::Sender<bool>, retry_interval: Duration) -> Option<Output> {
    if !output.has_work() {
        return Some(output);
    }
    loop {
        let attempt = tokio::task::spawn_blocking(move || {
            let result = output.drive();
            (output, result)
        })
        .await;
        let (back, result) = match attempt {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "audit writer I/O task failed; unwritten records are lost");
                health.send_replace(false);
                return None;
            }
        };
        output = back;
        match result {
            Ok(()) => {
                if !*health.borrow() {
                    tracing::info!("audit log is writable again; held records were written");
                    health.send_replace(true);
                }
                return Some(output);
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    audit_log = %output.target,
                    unwritten_bytes = output.pending.len() - output.written,
                    "AUDIT LOG WRITE FAILED: records are held in memory and retried every second; \
                     requests wait once the queue is full and /readyz reports 503"
                );
                health.send_replace(false);
                tokio::time::sleep(retry_interval).await;
            }
        }
    }
}

/// The batch and where it goes.
struct Output {
    target: Target,
    /// Encoded records not yet (completely) written.
    pending: Vec<u8>,
    /// How many bytes at the start of `pending` already reached the OS.
    written: usize,
    /// Rotate once `pending` is written.
    rotate_due: bool,
    max_file_bytes: u64,
}

impl Output {
    /// Marks rotation due once the file plus the batch exceed the threshold;
    /// the batch then closes, so that later records go to the new file.
    fn note_appended(&mut self) {
        if let Some(size) = self.target.rotating_size() {
            let unwritten = (self.pending.len() - self.written) as u64;
            if size.saturating_add(unwritten) > self.max_file_bytes {
                self.rotate_due = true;
            }
        }
    }

    fn batch_full(&self) -> bool {
        self.rotate_due || self.pending.len() >= BATCH_BYTES
    }

    fn has_work(&self) -> bool {
        self.written < self.pending.len() || self.rotate_due || self.target.needs_reopen()
    }

    /// Writes the rest of the batch, then rotates if due. Resumable: after an
    /// error, calling it again continues where it stopped.
    fn drive(&mut self) -> io::Result<()> {
        if let Target::File(file) = &mut self.target
            && self.written == 0
        {
            file.reopen_if_replaced();
        }
        while self.written < self.pending.len() {
            match self.target.write(&self.pending[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.pending.clear();
        self.written = 0;
        if self.rotate_due {
            self.target.rotate()?;
            self.rotate_due = false;
        }
        self.target.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::target::MockDisk;
    use super::*;
    use crate::audit::event::sample_request;
    use crate::audit::rotated_files;
    use crate::audit::verify::parse_line;
    use crate::audit::verify::verify_files;
    use std::fs::OpenOptions;
    use std::future::Future;
    use std::io::Write;
    use std::path::Path;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::Poll;

    fn config(path: &Path, max_file_bytes: u64) -> AuditConfig {
        AuditConfig { max_file_bytes, ..AuditConfig::new(AuditPath::File(path.to_owned())) }
    }

    /// Opens the log, writes records `ids`, and lets the writer finish by
    /// dropping the sink: `run` must write everything before returning.
    async fn write_records(cfg: &AuditConfig, ids: std::ops::Range<usize>) {
        let (sink, writer) = open(cfg).unwrap();
        let task = tokio::spawn(writer.run());
        for id in ids {
            sink.send(sample_request(id)).unwrap();
        }
        drop(sink);
        task.await.unwrap();
    }

    fn whole_log(path: &Path) -> Vec<PathBuf> {
        let mut files = rotated_files(path).unwrap();
        files.push(path.to_owned());
        files
    }

    fn request_ids(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        v["request_id"].as_str().unwrap().to_owned()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn expected_ids(ids: std::ops::Range<usize>) -> Vec<String> {
        ids.map(|i| format!("req-{i}")).collect()
    }

    async fn poll_once<F: Future>(mut future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
    }

    #[tokio::test]
    async fn chain_continues_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.jsonl");
        write_records(&config(&path, 1000), 0..10).await;
        let files = whole_log(&path);
        assert!(files.len() >= 4, "rotated: {files:?}");
        let summary = verify_files(&files).unwrap();
        assert_eq!(summary.records, 10);
        assert_eq!(summary.starts_after, None);
        assert_eq!(request_ids(&files), expected_ids(0..10));
    }

    #[tokio::test]
    async fn chain_continues_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = config(&path, DEFAULT_MAX_FILE_BYTES);
        write_records(&cfg, 0..3).await;
        write_records(&cfg, 3..6).await;
        let summary = verify_files(std::slice::from_ref(&path)).unwrap();
        assert_eq!((summary.records, summary.starts_after), (6, None));
        assert_eq!(request_ids(&[path]), expected_ids(0..6));
    }

    #[tokio::test]
    async fn reopen_with_an_empty_current_file_continues_from_the_newest_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // Every record rotates, so the current file is empty at each reopen.
        let cfg = config(&path, 1);
        write_records(&cfg, 0..3).await;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        write_records(&cfg, 3..5).await;
        let files = whole_log(&path);
        assert_eq!(files.len(), 6);
        assert_eq!(verify_files(&files).unwrap().records, 5);
        assert_eq!(request_ids(&files), expected_ids(0..5));
    }

    #[tokio::test]
    async fn a_record_sent_from_drop_when_the_request_is_cancelled_is_written() {
        struct RequestGuard(AuditSink);
        impl Drop for RequestGuard {
            fn drop(&mut self) {
                self.0.send(sample_request(42)).unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (sink, writer) = open(&config(&path, DEFAULT_MAX_FILE_BYTES)).unwrap();
        let writer = tokio::spawn(writer.run());
        let (admitted_tx, admitted_rx) = oneshot::channel();
        let request_sink = sink.clone();
        let request = tokio::spawn(async move {
            request_sink.admit().await.unwrap();
            let _guard = RequestGuard(request_sink);
            admitted_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        admitted_rx.await.unwrap();
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        sink.flush().await.unwrap();
        assert_eq!(request_ids(std::slice::from_ref(&path)), expected_ids(42..43));
        drop(sink);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn requests_in_flight_hold_no_room_and_a_full_queue_makes_admit_wait_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = AuditConfig { channel_capacity: 2, ..config(&path, DEFAULT_MAX_FILE_BYTES) };
        let (sink, writer) = open(&cfg).unwrap();
        // Any number of admitted requests in flight take no room.
        for _ in 0..100 {
            sink.admit().await.unwrap();
        }
        // Records do, once written; sending never waits, even past the capacity.
        for id in 1..4 {
            sink.send(sample_request(id)).unwrap();
        }
        assert_eq!(sink.queued(), 3);
        let writer = {
            let mut waiting = pin!(sink.admit());
            assert!(poll_once(waiting.as_mut()).await.is_pending(), "full: the next request waits for the writer");
            let writer = tokio::spawn(writer.run());
            waiting.await.unwrap();
            writer
        };
        sink.send(sample_request(4)).unwrap();
        sink.flush().await.unwrap();
        assert_eq!(sink.queued(), 0);
        assert_eq!(request_ids(std::slice::from_ref(&path)), expected_ids(1..5));
        drop(sink);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn failed_writes_mark_the_log_unhealthy_and_no_record_is_lost() {
        let disk = Arc::new(MockDisk::default());
        *disk.budget.lock().unwrap() = Some(100); // part of the first record, then "disk full"
        let (sink, mut writer) = assemble(Target::Mock(disk.clone()), ChainHash::GENESIS, u64::MAX, 16);
        writer.retry_interval = Duration::from_millis(5);
        let writer = tokio::spawn(writer.run());
        assert!(sink.healthy());
        for id in 0..3 {
            sink.send(sample_request(id)).unwrap();
        }
        sink.health.clone().wait_for(|healthy| !healthy).await.unwrap();
        assert!(!sink.healthy());
        for id in 3..5 {
            sink.send(sample_request(id)).unwrap();
        }
        *disk.budget.lock().unwrap() = None; // space freed
        sink.flush().await.unwrap();
        assert!(sink.healthy());
        drop(sink);
        writer.await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        std::fs::write(&file, &*disk.data.lock().unwrap()).unwrap();
        assert_eq!(verify_files(std::slice::from_ref(&file)).unwrap().records, 5);
        assert_eq!(request_ids(&[file]), expected_ids(0..5));
    }

    #[tokio::test]
    async fn a_request_is_refused_at_once_while_the_log_is_unwritable() {
        let disk = Arc::new(MockDisk::default());
        *disk.budget.lock().unwrap() = Some(0); // every write fails
        let (sink, mut writer) = assemble(Target::Mock(disk.clone()), ChainHash::GENESIS, u64::MAX, 2);
        writer.retry_interval = Duration::from_secs(3600);
        let writer = tokio::spawn(writer.run());
        // Healthy with room: admitted.
        sink.admit().await.unwrap();
        sink.send(sample_request(0)).unwrap();
        sink.health.clone().wait_for(|healthy| !healthy).await.unwrap();
        // Unwritable, room left: refused, with room to hold the refusal's record.
        assert_eq!(sink.admit().await, Err(Refused::WithRecord));
        sink.send(sample_request(1)).unwrap();
        sink.send(sample_request(2)).unwrap();
        // Unwritable and full: refused without a record, without waiting for the disk.
        assert_eq!(sink.admit().await, Err(Refused::WithoutRecord));
        writer.abort();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn writing_to_a_full_device_marks_the_log_unhealthy() {
        let cfg = AuditConfig::new(AuditPath::File(PathBuf::from("/dev/full")));
        let (sink, writer) = open(&cfg).unwrap();
        let writer = tokio::spawn(writer.run());
        sink.send(sample_request(1)).unwrap();
        sink.health.clone().wait_for(|healthy| !healthy).await.unwrap();
        assert!(!sink.healthy());
        writer.abort();
    }

    #[tokio::test]
    async fn torn_last_line_is_terminated_and_the_chain_skips_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = config(&path, DEFAULT_MAX_FILE_BYTES);
        write_records(&cfg, 0..2).await;
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"ts\":\"2026-").unwrap();
        write_records(&cfg, 2..3).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[2], "{\"ts\":\"2026-");
        let error = verify_files(std::slice::from_ref(&path)).unwrap_err();
        assert_eq!(error.line, 3, "{error}");
        let second = parse_line(lines[1].as_bytes()).unwrap();
        assert_eq!(parse_line(lines[3].as_bytes()).unwrap().prev, second.hash);
    }

    #[test]
    fn a_damaged_last_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "garbage\n").unwrap();
        let error = open(&config(&path, DEFAULT_MAX_FILE_BYTES)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("audit.jsonl"), "{error}");
    }

    #[tokio::test]
    async fn sending_after_the_writer_stopped_reports_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, writer) = open(&config(&dir.path().join("a"), DEFAULT_MAX_FILE_BYTES)).unwrap();
        drop(writer);
        assert_eq!(sink.send(sample_request(1)), Err(AuditClosed));
        assert_eq!(sink.flush().await, Err(AuditClosed));
    }
}
