//! The audit log: typed events, a hash-chained append-only writer, and the
//! `audit verify` / `audit query` commands.
//!
//! The proxy opens the log once with [`open`], spawns [`AuditWriter::run`],
//! and hands clones of the [`AuditSink`] to the request path, which calls
//! [`AuditSink::admit`] before doing work and [`AuditSink::send`] when the
//! request completes (also from `Drop`, so an aborted request is recorded).
//!
//! Each record is one JSON line; see [`encode_record`] for the exact layout
//! and chaining. Records are stamped with `ts` when they enter the writer
//! queue, which is at request completion for requests. Records from
//! concurrent requests may therefore appear with `ts` a few microseconds out
//! of order; the file order (and the chain) is the order of arrival.

mod event;
mod query;
mod target;
mod verify;
mod writer;

pub use event::{
    AuditDecision, AuditEvent, ChainHash, CredentialRefreshRecord, Identity, Outcome, ReloadRecord, RequestRecord, encode_record,
    format_time,
};
pub use query::{QueryFilter, QueryOutput, query};
pub use target::rotated_files;
#[cfg(test)]
pub(crate) use verify::parse_line;
pub use verify::{VerifyError, VerifySummary, verify_files};
pub use writer::{
    AuditClosed, AuditConfig, AuditPath, AuditSink, AuditWriter, DEFAULT_CHANNEL_CAPACITY, DEFAULT_MAX_FILE_BYTES, Refused, open,
};
