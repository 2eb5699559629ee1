//! `gatehouse audit query`: filters request records and prints them.
//!
//! Query reads; it does not verify. Lines that are not audit records are
//! skipped with a warning (run `audit verify` for integrity).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Which request records to select. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryFilter {
    /// Records at or after this time (inclusive).
    pub since: Option<OffsetDateTime>,
    /// Records before this time (exclusive, so windows do not overlap).
    pub until: Option<OffsetDateTime>,
    /// The caller's `sub` claim.
    pub sub: Option<String>,
    /// The caller's `client_id` (or `azp`).
    pub client_id: Option<String>,
    /// The route name.
    pub route: Option<String>,
    /// `allow` or `deny` (case-insensitive).
    pub decision: Option<String>,
    /// The status code sent to the caller.
    pub status: Option<u16>,
}

/// How matched records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOutput {
    /// Aligned columns with one header line:
    /// `TIME DECISION STATUS METHOD PATH ROUTE SUB CLIENT_ID RULE REASON`.
    Table,
    /// The matching records' original lines, unchanged.
    JsonLines,
    /// One row per (sub, client_id, route) with `REQUESTS` and `DENIALS`,
    /// most requests first.
    Summary,
}

/// A summary row's key: (sub, client_id, route).
type CallerRoute = (Option<String>, Option<String>, Option<String>);

/// A summary row's counts.
#[derive(Default)]
struct Counts {
    requests: u64,
    denials: u64,
}

/// The members of a request record that query reads.
#[derive(Deserialize)]
struct QueryRecord {
    ts: String,
    event: String,
    method: Option<String>,
    path: Option<String>,
    route: Option<String>,
    decision: Option<String>,
    rule: Option<String>,
    reason: Option<String>,
    identity: Option<QueryIdentity>,
    status: Option<u16>,
}

#[derive(Deserialize)]
struct QueryIdentity {
    sub: Option<String>,
    client_id: Option<String>,
}

impl QueryRecord {
    fn sub(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|i| i.sub.as_deref())
    }

    fn client_id(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|i| i.client_id.as_deref())
    }

    fn denied(&self) -> bool {
        self.decision.as_deref() == Some("deny")
    }
}

impl QueryFilter {
    fn matches(&self, record: &QueryRecord, ts: OffsetDateTime) -> bool {
        fn same(wanted: Option<&String>, actual: Option<&str>) -> bool {
            wanted.is_none_or(|w| actual == Some(w.as_str()))
        }
        self.since.is_none_or(|since| ts >= since)
            && self.until.is_none_or(|until| ts < until)
            && same(self.sub.as_ref(), record.sub())
            && same(self.client_id.as_ref(), record.client_id())
            && same(self.route.as_ref(), record.route.as_deref())
            && self.decision.as_ref().is_none_or(|wanted| record.decision.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(wanted)))
            && self.status.is_none_or(|status| record.status == Some(status))
    }
}

/// Reads request records from the files (in order), filters them and writes
/// the output. Non-request events are skipped. Returns how many records
/// matched (for [`QueryOutput::Summary`] too, not the number of rows).
pub fn query(paths: &[PathBuf], filter: &QueryFilter, output: QueryOutput, out: &mut dyn Write) -> io::Result<usize> {
    let mut matched = 0;
    let mut table = Vec::new();
    let mut summary: HashMap<CallerRoute, Counts> = HashMap::new();
    for path in paths {
        let file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut buf = Vec::with_capacity(1024);
        let mut line_no = 0usize;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            line_no += 1;
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let record = match serde_json::from_slice::<QueryRecord>(line) {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(file = %path.display(), line = line_no, %error, "skipping a line that is not an audit record");
                    continue;
                }
            };
            if record.event != "request" {
                continue;
            }
            let Ok(ts) = OffsetDateTime::parse(&record.ts, &Rfc3339) else {
                tracing::warn!(file = %path.display(), line = line_no, "skipping a record with an invalid ts");
                continue;
            };
            if !filter.matches(&record, ts) {
                continue;
            }
            matched += 1;
            match output {
                QueryOutput::JsonLines => {
                    out.write_all(line)?;
                    out.write_all(b"\n")?;
                }
                QueryOutput::Table => table.push(table_row(record)),
                QueryOutput::Summary => {
                    let denied = record.denied();
                    let key = (record.sub().map(str::to_owned), record.client_id().map(str::to_owned), record.route);
                    let counts = summary.entry(key).or_default();
                    counts.requests += 1;
                    counts.denials += u64::from(denied);
                }
            }
        }
    }
    match output {
        QueryOutput::JsonLines => {}
        QueryOutput::Table => write_aligned(
            out,
            &["TIME", "DECISION", "STATUS", "METHOD", "PATH", "ROUTE", "SUB", "CLIENT_ID", "RULE", "REASON"],
            &[],
            &table,
        )?,
        QueryOutput::Summary => {
            let mut rows: Vec<_> = summary.into_iter().collect();
            rows.sort_by(|(a_key, a), (b_key, b)| b.requests.cmp(&a.requests).then_with(|| a_key.cmp(b_key)));
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|((sub, client_id, route), counts)| {
                    vec![
                        cell(sub.as_deref()),
                        cell(client_id.as_deref()),
                        cell(route.as_deref()),
                        counts.requests.to_string(),
                        counts.denials.to_string(),
                    ]
                })
                .collect();
            write_aligned(out, &["SUB", "CLIENT_ID", "ROUTE", "REQUESTS", "DENIALS"], &[3, 4], &rows)?;
        }
    }
    out.flush()?;
    Ok(matched)
}

fn table_row(record: QueryRecord) -> Vec<String> {
    vec![
        cell(Some(&record.ts)),
        cell(record.decision.as_deref()),
        record.status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        cell(record.method.as_deref()),
        cell(record.path.as_deref()),
        cell(record.route.as_deref()),
        cell(record.sub()),
        cell(record.client_id()),
        cell(record.rule.as_deref()),
        cell(record.reason.as_deref()),
    ]
}

/// A printable cell: `-` for no value; control characters escaped, so a
/// crafted path cannot drive the terminal; no empty cells, so columns stay
/// aligned.
fn cell(value: Option<&str>) -> String {
    match value {
        None | Some("") => "-".to_owned(),
        Some(value) if value.chars().any(|c| c.is_control() || c == ' ') => {
            value.chars().map(|c| if c.is_control() || c == ' ' { c.escape_unicode().to_string() } else { c.to_string() }).collect()
        }
        Some(value) => value.to_owned(),
    }
}

/// Writes the header and rows in columns two spaces apart; `right` lists the
/// columns aligned right (numbers). The last column is not padded.
fn write_aligned(out: &mut dyn Write, header: &[&str], right: &[usize], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (column, (value, width)) in row.iter().zip(&widths).enumerate() {
            let last = column + 1 == widths.len();
            if column > 0 {
                line.push_str("  ");
            }
            let pad = width.saturating_sub(value.chars().count());
            if right.contains(&column) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(value);
            } else {
                line.push_str(value);
                if !last {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{AuditDecision, AuditEvent, ChainHash, Identity, Outcome, ReloadRecord, RequestRecord, encode_record};
    use std::path::Path;
    use time::macros::datetime;

    fn request(minute: u8, sub: Option<&str>, route: &str, decision: AuditDecision, status: u16) -> (OffsetDateTime, AuditEvent) {
        let ts = datetime!(2026-11-28 12:00:00 UTC).replace_minute(minute).unwrap();
        let event = AuditEvent::Request(RequestRecord {
            request_id: format!("req-{minute}"),
            client_addr: "10.0.0.1:4000".to_owned(),
            method: "GET".to_owned(),
            host: None,
            path: format!("/{route}/v1/item{minute}"),
            route: Some(route.to_owned()),
            decision,
            rule: Some(if decision == AuditDecision::Allow { "read" } else { "default-deny" }.to_owned()),
            reason: (decision == AuditDecision::Deny).then_some("insufficient_scope"),
            identity: sub.map(|sub| Identity {
                iss: "https://idp".to_owned(),
                sub: sub.to_owned(),
                client_id: Some(format!("{sub}-client")),
                scopes: vec![],
                jti: None,
            }),
            upstream: Some(route.to_owned()),
            status,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 1,
        });
        (ts, event)
    }

    /// Two files: five requests and a policy reload in between.
    fn fixture(dir: &Path) -> Vec<PathBuf> {
        use AuditDecision::{Allow, Deny};
        let events = [
            request(1, Some("alice"), "crm", Allow, 200),
            request(2, Some("alice"), "crm", Deny, 403),
            (
                datetime!(2026-11-28 12:02:30 UTC),
                AuditEvent::PolicyReload(ReloadRecord { outcome: Outcome::Ok, error: None, detail: None }),
            ),
            request(3, Some("bob"), "billing", Allow, 502),
            request(4, None, "crm", Deny, 401),
            request(5, Some("alice"), "crm", Allow, 200),
        ];
        let mut prev = ChainHash::GENESIS;
        let mut files = vec![Vec::new(), Vec::new()];
        for (i, (ts, event)) in events.iter().enumerate() {
            prev = encode_record(*ts, event, &prev, &mut files[i / 3]).unwrap();
        }
        files
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let path = dir.join(format!("audit.{i}"));
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect()
    }

    fn run(paths: &[PathBuf], filter: &QueryFilter, output: QueryOutput) -> (usize, String) {
        let mut out = Vec::new();
        let matched = query(paths, filter, output, &mut out).unwrap();
        (matched, String::from_utf8(out).unwrap())
    }

    fn ids(json_lines: &str) -> Vec<String> {
        json_lines
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["request_id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn each_filter_selects_only_matching_requests() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fixture(dir.path());
        let cases: Vec<(QueryFilter, Vec<&str>)> = vec![
            (QueryFilter::default(), vec!["req-1", "req-2", "req-3", "req-4", "req-5"]),
            (QueryFilter { sub: Some("alice".into()), ..Default::default() }, vec!["req-1", "req-2", "req-5"]),
            (QueryFilter { client_id: Some("bob-client".into()), ..Default::default() }, vec!["req-3"]),
            (QueryFilter { route: Some("crm".into()), ..Default::default() }, vec!["req-1", "req-2", "req-4", "req-5"]),
            (QueryFilter { decision: Some("DENY".into()), ..Default::default() }, vec!["req-2", "req-4"]),
            (QueryFilter { status: Some(502), ..Default::default() }, vec!["req-3"]),
            (
                QueryFilter {
                    since: Some(datetime!(2026-11-28 12:02:00 UTC)),
                    until: Some(datetime!(2026-11-28 12:04:00 UTC)),
                    ..Default::default()
                },
                vec!["req-2", "req-3"],
            ),
            (QueryFilter { sub: Some("alice".into()), decision: Some("allow".into()), ..Default::default() }, vec!["req-1", "req-5"]),
        ];
        for (filter, expected) in cases {
            let (matched, out) = run(&paths, &filter, QueryOutput::JsonLines);
            assert_eq!(ids(&out), expected, "{filter:?}");
            assert_eq!(matched, expected.len());
        }
    }

    #[test]
    fn json_lines_are_the_original_lines() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fixture(dir.path());
        let filter = QueryFilter { status: Some(502), ..Default::default() };
        let (_, out) = run(&paths, &filter, QueryOutput::JsonLines);
        let original = std::fs::read_to_string(&paths[1]).unwrap();
        assert_eq!(out, original.lines().next().unwrap().to_owned() + "\n");
    }

    #[test]
    fn table_has_one_header_and_aligned_columns() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fixture(dir.path());
        let (matched, out) = run(&paths, &QueryFilter::default(), QueryOutput::Table);
        assert_eq!(matched, 5);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[0].starts_with("TIME                      DECISION  STATUS  METHOD  PATH"));
        assert!(lines[0].ends_with("RULE          REASON"));
        assert_eq!(
            lines[4],
            "2026-11-28T12:04:00.000Z  deny      401     GET     /crm/v1/item4      crm      -      -             default-deny  insufficient_scope"
        );
        let path_column = lines[0].find("PATH").unwrap();
        for line in &lines[1..] {
            assert_eq!(line.find(" /").map(|i| i + 1), Some(path_column), "{line}");
        }
        assert!(!out.contains("policy_reload"));
    }

    #[test]
    fn summary_counts_requests_and_denials_per_caller_and_route() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fixture(dir.path());
        let (matched, out) = run(&paths, &QueryFilter::default(), QueryOutput::Summary);
        assert_eq!(matched, 5);
        assert_eq!(
            out,
            concat!(
                "SUB    CLIENT_ID     ROUTE    REQUESTS  DENIALS\n",
                "alice  alice-client  crm             3        1\n",
                "-      -             crm             1        1\n",
                "bob    bob-client    billing         1        0\n",
            )
        );
    }

    #[test]
    fn control_characters_in_values_are_escaped_in_the_table() {
        assert_eq!(cell(Some("/a\u{1b}[2Jb c")), "/a\\u{1b}[2Jb\\u{20}c");
        assert_eq!(cell(None), "-");
    }

    #[test]
    fn non_record_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = fixture(dir.path());
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not json\n{\"ts\":1}\n").unwrap();
        paths.push(junk);
        let (matched, _) = run(&paths, &QueryFilter::default(), QueryOutput::JsonLines);
        assert_eq!(matched, 5);
    }
}
