//! Typed audit events and their one-line, hash-chained JSON encoding.
//!
//! A record is written as
//! `{"ts":...,"event":...,<event members>,"prev_hash":"<hex>","hash":"<hex>"}`
//! followed by a newline. `hash` is the hex SHA-256 of the line's bytes before
//! `,"hash":`, and `prev_hash` is the `hash` of the record before it.
//!
//! Events are structs, never format strings: there is no member that could
//! carry a token, a secret or a query string.

use std::fmt;

use aws_lc_rs::digest;
use serde::{Serialize, Serializer};
use time::{OffsetDateTime, UtcOffset};

/// One audit event, as handed to an [`AuditSink`](super::AuditSink).
///
/// The sink stamps the record's `ts` when the event enters the writer queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(clippy::large_enum_variant, reason = "request records dominate the log; boxing them would add one allocation per request")]
pub enum AuditEvent {
    /// `event = "request"`: one per proxied (or refused) request.
    Request(RequestRecord),
    /// `event = "credential_refresh"`: an upstream credential was (re)acquired or failed to be.
    CredentialRefresh(CredentialRefreshRecord),
    /// `event = "policy_reload"`: the policy folder was reloaded.
    PolicyReload(ReloadRecord),
}

impl AuditEvent {
    /// The value of the record's `event` member.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Request(_) => "request",
            Self::CredentialRefresh(_) => "credential_refresh",
            Self::PolicyReload(_) => "policy_reload",
        }
    }
}

/// What happened to one request. Members are written in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    /// The proxy's own request id (also in `x-request-id`).
    pub request_id: String,
    /// The peer address of the caller's connection.
    pub client_addr: String,
    /// The request method.
    pub method: String,
    /// The `Host` header (or authority), when there was one.
    pub host: Option<String>,
    /// The normalized request path, never the query string. As a safeguard,
    /// anything from a `?` or `#` on is cut off when the record is written.
    #[serde(serialize_with = "path_without_query")]
    pub path: String,
    /// The name of the matched route, when one matched.
    pub route: Option<String>,
    /// `allow` once authorization passed (even if the upstream then failed).
    pub decision: AuditDecision,
    /// The id of the policy rule that decided, when one did.
    pub rule: Option<String>,
    /// Why the request was refused or failed; `None` when the upstream answered.
    pub reason: Option<&'static str>,
    /// The caller's validated identity; `None` when there was no valid token.
    pub identity: Option<Identity>,
    /// The name of the upstream the request went (or would have gone) to.
    pub upstream: Option<String>,
    /// The status code sent to the caller.
    pub status: u16,
    /// Request body bytes received from the caller.
    pub bytes_in: u64,
    /// Response body bytes sent to the caller.
    pub bytes_out: u64,
    /// Time from the request head to the end of the response, in milliseconds.
    pub duration_ms: u64,
}

/// The authorization decision of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditDecision {
    /// Written as `"allow"`.
    Allow,
    /// Written as `"deny"`.
    Deny,
}

/// The identity taken from a validated caller token. Holds claims, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The `iss` claim.
    pub iss: String,
    /// The `sub` claim.
    pub sub: String,
    /// The `client_id` claim, else `azp`.
    pub client_id: Option<String>,
    /// The granted scopes.
    pub scopes: Vec<String>,
    /// The `jti` claim.
    pub jti: Option<String>,
}

impl From<&crate::identity::Identity> for Identity {
    /// The audited part of the caller's identity: never the token, never
    /// the other claims.
    fn from(id: &crate::identity::Identity) -> Self {
        Self { iss: id.iss.clone(), sub: id.sub.clone(), client_id: id.client_id.clone(), scopes: id.scopes.clone(), jti: id.jti.clone() }
    }
}

/// The result of a background operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Written as `"ok"`.
    Ok,
    /// Written as `"error"`.
    Error,
}

/// An upstream credential refresh. Never holds the credential itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialRefreshRecord {
    /// The upstream name.
    pub upstream: String,
    /// The credential kind (`client_credentials`, `refresh_token`, ...).
    pub kind: String,
    /// Whether a credential was obtained.
    pub outcome: Outcome,
    /// When the new credential expires; written as RFC 3339 UTC with milliseconds.
    #[serde(serialize_with = "optional_time")]
    pub expires_at: Option<OffsetDateTime>,
    /// Why the refresh failed. Must not quote a token endpoint's answer body.
    pub error: Option<String>,
}

/// A policy or config reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadRecord {
    /// Whether the new policies/config were applied.
    pub outcome: Outcome,
    /// Why the reload was refused (the last good set stays in force).
    pub error: Option<String>,
    /// Extra context, e.g. how many files or rules were loaded.
    pub detail: Option<String>,
}

/// A SHA-256 digest linking audit records, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash([u8; 32]);

impl ChainHash {
    /// The `prev_hash` of the very first record: 64 zeros.
    pub const GENESIS: Self = Self([0; 32]);

    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let digest = digest::digest(&digest::SHA256, bytes);
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Parses exactly 64 lowercase hex digits (upper case is refused, so
    /// that a changed letter case is detected as a change).
    pub fn from_hex(hex: &[u8]) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(out))
    }

    /// Appends the 64 lowercase hex digits to `out`.
    fn push_hex(&self, out: &mut Vec<u8>) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for byte in self.0 {
            out.push(DIGITS[usize::from(byte >> 4)]);
            out.push(DIGITS[usize::from(byte & 0x0f)]);
        }
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = Vec::with_capacity(64);
        self.push_hex(&mut hex);
        f.write_str(&String::from_utf8_lossy(&hex))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

/// Appends one complete record line (with its trailing newline) to `out`
/// and returns its `hash`, which becomes the next record's `prev_hash`.
///
/// This is exactly what the writer does for each record; it is public for
/// benchmarks and tools. On error nothing is appended. Errors cannot occur
/// for the event types of this module (their serializers are infallible);
/// the `Result` only reflects `serde_json`'s signature.
pub fn encode_record(
    ts: OffsetDateTime,
    event: &AuditEvent,
    prev_hash: &ChainHash,
    out: &mut Vec<u8>,
) -> Result<ChainHash, serde_json::Error> {
    let start = out.len();
    out.extend_from_slice(b"{\"ts\":\"");
    push_time(out, ts);
    out.extend_from_slice(b"\",\"event\":\"");
    out.extend_from_slice(event.name().as_bytes());
    out.push(b'"');
    let body = out.len();
    let written = match event {
        AuditEvent::Request(record) => serde_json::to_writer(&mut *out, record),
        AuditEvent::CredentialRefresh(record) => serde_json::to_writer(&mut *out, record),
        AuditEvent::PolicyReload(record) => serde_json::to_writer(&mut *out, record),
    };
    // The members are spliced in: the body's `{` becomes the joining comma
    // and its `}` is dropped. Every record struct has at least one member.
    let spliced = out.len() > body + 2 && out[body] == b'{' && out.last() == Some(&b'}');
    if let Err(error) = written {
        out.truncate(start);
        return Err(error);
    }
    if !spliced {
        out.truncate(start);
        return Err(serde::ser::Error::custom("event did not serialize as a JSON object"));
    }
    out[body] = b',';
    out.pop();
    out.extend_from_slice(b",\"prev_hash\":\"");
    prev_hash.push_hex(out);
    out.push(b'"');
    let hash = ChainHash::of(&out[start..]);
    out.extend_from_slice(b",\"hash\":\"");
    hash.push_hex(out);
    out.extend_from_slice(b"\"}\n");
    Ok(hash)
}

/// Formats a time as RFC 3339 in UTC with milliseconds: `2026-11-28T12:00:00.123Z`.
pub fn format_time(ts: OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(24);
    push_time(&mut out, ts);
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends `ts` as RFC 3339 UTC with milliseconds. Infallible: a time whose
/// UTC date would be out of range is written with its own offset's fields.
fn push_time(out: &mut Vec<u8>, ts: OffsetDateTime) {
    let utc = ts.checked_to_offset(UtcOffset::UTC).unwrap_or(ts);
    let year = utc.year();
    if year < 0 {
        out.push(b'-');
    }
    push_digits(out, year.unsigned_abs(), 4);
    out.push(b'-');
    push_digits(out, u32::from(u8::from(utc.month())), 2);
    out.push(b'-');
    push_digits(out, u32::from(utc.day()), 2);
    out.push(b'T');
    push_digits(out, u32::from(utc.hour()), 2);
    out.push(b':');
    push_digits(out, u32::from(utc.minute()), 2);
    out.push(b':');
    push_digits(out, u32::from(utc.second()), 2);
    out.push(b'.');
    push_digits(out, u32::from(utc.millisecond()), 3);
    out.push(b'Z');
}

/// Appends `value` in decimal, zero-padded to at least `width` digits.
fn push_digits(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = [0u8; 10];
    let mut n = value;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(len)));
    out.extend(digits[..len].iter().rev());
}

fn optional_time<S: Serializer>(ts: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => s.serialize_str(&format_time(*ts)),
        None => s.serialize_none(),
    }
}

fn path_without_query<S: Serializer>(path: &str, s: S) -> Result<S::Ok, S::Error> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    s.serialize_str(&path[..end])
}

/// A request record for tests, varied by `n`.
#[cfg(test)]
pub(crate) fn sample_request(n: usize) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        request_id: format!("req-{n}"),
        client_addr: "127.0.0.1:50000".to_owned(),
        method: "GET".to_owned(),
        host: Some("api.internal".to_owned()),
        path: format!("/crm/v1/accounts/{n}"),
        route: Some("crm".to_owned()),
        decision: AuditDecision::Allow,
        rule: Some("crm-read".to_owned()),
        reason: None,
        identity: Some(Identity {
            iss: "https://idp.example.com".to_owned(),
            sub: "svc-a".to_owned(),
            client_id: Some("client-a".to_owned()),
            scopes: vec!["crm.read".to_owned()],
            jti: Some(format!("jti-{n}")),
        }),
        upstream: Some("crm".to_owned()),
        status: 200,
        bytes_in: 0,
        bytes_out: 512,
        duration_ms: 3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn line_of(ts: OffsetDateTime, event: &AuditEvent, prev: &ChainHash) -> (String, ChainHash) {
        let mut out = Vec::new();
        let hash = encode_record(ts, event, prev, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), hash)
    }

    #[test]
    fn request_record_members_are_in_contract_order() {
        let ts = datetime!(2026-11-28 12:00:00.123456 UTC);
        let (line, _) = line_of(ts, &sample_request(7), &ChainHash::GENESIS);
        let expected_prefix = concat!(
            r#"{"ts":"2026-11-28T12:00:00.123Z","event":"request","request_id":"req-7","#,
            r#""client_addr":"127.0.0.1:50000","method":"GET","host":"api.internal","#,
            r#""path":"/crm/v1/accounts/7","route":"crm","decision":"allow","rule":"crm-read","#,
            r#""reason":null,"identity":{"iss":"https://idp.example.com","sub":"svc-a","#,
            r#""client_id":"client-a","scopes":["crm.read"],"jti":"jti-7"},"upstream":"crm","#,
            r#""status":200,"bytes_in":0,"bytes_out":512,"duration_ms":3,"#,
            r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","hash":""#
        );
        assert!(line.starts_with(expected_prefix), "{line}");
        assert!(line.ends_with("\"}\n"));
        assert_eq!(line.len(), expected_prefix.len() + 64 + 3);
    }

    #[test]
    fn hash_covers_the_bytes_before_the_hash_member() {
        let (line, hash) = line_of(OffsetDateTime::now_utc(), &sample_request(1), &ChainHash::GENESIS);
        let cut = line.rfind(",\"hash\":").unwrap();
        assert_eq!(ChainHash::of(&line.as_bytes()[..cut]), hash);
        assert!(line.contains(&format!("\"hash\":\"{hash}\"}}")));
    }

    #[test]
    fn prev_hash_is_written_as_given() {
        let prev = ChainHash::of(b"previous");
        let (line, _) = line_of(OffsetDateTime::now_utc(), &sample_request(1), &prev);
        assert!(line.contains(&format!(",\"prev_hash\":\"{prev}\",\"hash\":")));
    }

    #[test]
    fn times_are_written_in_utc_with_milliseconds() {
        let ts = datetime!(2026-11-28 13:00:00.5 +01:00);
        assert_eq!(format_time(ts), "2026-11-28T12:00:00.500Z");
        assert_eq!(format_time(datetime!(0042-01-02 03:04:05 UTC)), "0042-01-02T03:04:05.000Z");
    }

    #[test]
    fn credential_refresh_record_has_rfc3339_expiry_and_no_secret_member() {
        let event = AuditEvent::CredentialRefresh(CredentialRefreshRecord {
            upstream: "crm".to_owned(),
            kind: "client_credentials".to_owned(),
            outcome: Outcome::Ok,
            expires_at: Some(datetime!(2026-11-28 12:05:00 UTC)),
            error: None,
        });
        let (line, _) = line_of(datetime!(2026-11-28 12:00:00 UTC), &event, &ChainHash::GENESIS);
        assert!(line.starts_with(concat!(
            r#"{"ts":"2026-11-28T12:00:00.000Z","event":"credential_refresh","upstream":"crm","#,
            r#""kind":"client_credentials","outcome":"ok","expires_at":"2026-11-28T12:05:00.000Z","#,
            r#""error":null,"prev_hash":"#
        )));
    }

    #[test]
    fn reload_events_use_their_own_event_name() {
        let record = ReloadRecord { outcome: Outcome::Error, error: Some("policies/a.toml:3:1: unknown key".to_owned()), detail: None };
        let ts = datetime!(2026-11-28 12:00:00 UTC);
        let (policy, _) = line_of(ts, &AuditEvent::PolicyReload(record), &ChainHash::GENESIS);
        assert!(policy.contains(r#""event":"policy_reload","outcome":"error","error":"policies/a.toml:3:1: unknown key","detail":null,"#));
    }

    #[test]
    fn query_string_never_reaches_the_record() {
        let AuditEvent::Request(mut record) = sample_request(1) else { unreachable!() };
        record.path = "/crm/v1/x?access_token=secret#frag".to_owned();
        let (line, _) = line_of(OffsetDateTime::now_utc(), &AuditEvent::Request(record), &ChainHash::GENESIS);
        assert!(line.contains(r#""path":"/crm/v1/x","#));
        assert!(!line.contains("secret"));
    }

    #[test]
    fn hex_parsing_refuses_upper_case_and_wrong_length() {
        let hash = ChainHash::of(b"x");
        assert_eq!(ChainHash::from_hex(hash.to_string().as_bytes()), Some(hash));
        assert_eq!(ChainHash::from_hex(hash.to_string().to_uppercase().as_bytes()), None);
        assert_eq!(ChainHash::from_hex(&hash.to_string().as_bytes()[..63]), None);
    }
}
