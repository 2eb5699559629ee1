//! `gatehouse audit verify`: checks the hash chain of audit files.
//!
//! Every line must be a JSON object whose last member is
//! `"hash":"<64 hex>"`, the SHA-256 of the bytes before `,"hash":`, and whose
//! `prev_hash` is the `hash` of the line before it (the last line of the
//! previous file for a file's first line). So a changed byte breaks that
//! line's hash, and a deleted, inserted or moved line breaks the link at the
//! first line after the gap. Limits, by design of an unkeyed chain: a cut
//! at the very end of the last file is not visible, and neither is a log
//! whose hashes were all recomputed.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::event::ChainHash;

/// What an intact set of files holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifySummary {
    /// Files checked.
    pub files: usize,
    /// Records checked.
    pub records: u64,
    /// The `prev_hash` of the first record when it is not 64 zeros: the
    /// files are the tail of a longer log (e.g. older rotated files were
    /// removed or not given). `None` when the set starts the chain.
    pub starts_after: Option<ChainHash>,
    /// The `hash` of the last record, to compare with a later run.
    pub last_hash: Option<ChainHash>,
}

/// The first broken line. Displayed as `FILE:LINE: why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// The file as given.
    pub file: String,
    /// The 1-based line number; 0 when the file could not be opened.
    pub line: usize,
    /// What is wrong with the line.
    pub why: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.why)
    }
}

impl std::error::Error for VerifyError {}

/// Checks every line of each file and the links between files, in the given
/// order. Err on the FIRST broken line. The very first record of the first
/// file may link to anything (so a rotated tail can be checked alone); that
/// is reported in [`VerifySummary::starts_after`].
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifySummary, VerifyError> {
    let mut chain = Chain::default();
    for path in paths {
        let file_name = path.display().to_string();
        let file =
            File::open(path).map_err(|error| VerifyError { file: file_name.clone(), line: 0, why: format!("cannot open: {error}") })?;
        chain.check_file(&file_name, BufReader::with_capacity(256 * 1024, file))?;
    }
    Ok(chain.summary)
}

/// The state carried from line to line and file to file.
#[derive(Default)]
struct Chain {
    summary: VerifySummary,
    /// Where the previous record was, for messages.
    previous_file: String,
    previous_line: usize,
}

impl Chain {
    fn check_file(&mut self, file_name: &str, mut reader: impl BufRead) -> Result<(), VerifyError> {
        let fail = |line: usize, why: String| VerifyError { file: file_name.to_owned(), line, why };
        let mut buf = Vec::with_capacity(1024);
        let mut line_no = 0;
        loop {
            buf.clear();
            let read = reader.read_until(b'\n', &mut buf).map_err(|error| fail(line_no + 1, format!("cannot read: {error}")))?;
            if read == 0 {
                break;
            }
            line_no += 1;
            let Some(line) = buf.strip_suffix(b"\n") else {
                return Err(fail(line_no, "the line has no terminating newline (cut off or torn write)".to_owned()));
            };
            let record = parse_line(line).map_err(|why| fail(line_no, why))?;
            let summary = &mut self.summary;
            match summary.last_hash {
                None if record.prev != ChainHash::GENESIS => summary.starts_after = Some(record.prev),
                None => {}
                Some(expected) if record.prev == expected => {}
                Some(expected) => {
                    return Err(fail(
                        line_no,
                        format!(
                            "prev_hash {} does not match the hash {expected} of the previous record ({}:{}): \
                             a record was deleted, inserted or reordered",
                            record.prev, self.previous_file, self.previous_line
                        ),
                    ));
                }
            }
            summary.last_hash = Some(record.hash);
            summary.records += 1;
            self.previous_line = line_no;
            if self.previous_file != file_name {
                file_name.clone_into(&mut self.previous_file);
            }
        }
        self.summary.files += 1;
        Ok(())
    }
}

/// The chain members of one checked line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineHashes {
    /// The line's `prev_hash`.
    pub(crate) prev: ChainHash,
    /// The line's `hash`, checked against its content.
    pub(crate) hash: ChainHash,
}

/// The members every record has; others are ignored here.
#[derive(Deserialize)]
struct ChainMembers {
    ts: String,
    event: String,
    prev_hash: String,
    #[serde(rename = "hash")]
    _hash: serde::de::IgnoredAny,
}

/// Checks one line (without its newline) on its own: valid JSON, the
/// required members, `hash` last and equal to the SHA-256 of the bytes
/// before `,"hash":`. The error says why, for `FILE:LINE: why`.
pub(crate) fn parse_line(line: &[u8]) -> Result<LineHashes, String> {
    const HASH_KEY: &[u8] = b",\"hash\":\"";
    let members: ChainMembers = serde_json::from_slice(line)
        .map_err(|error| if error.is_data() { format!("not an audit record: {error}") } else { format!("invalid JSON: {error}") })?;
    // A `"` inside a JSON string is always escaped, so `,"hash":"` can only
    // be member syntax; the last one must be followed by exactly 64 hex
    // digits and the end of the object.
    let cut =
        line.windows(HASH_KEY.len()).rposition(|window| window == HASH_KEY).ok_or_else(|| "\"hash\" is not the last member".to_owned())?;
    let suffix = &line[cut + HASH_KEY.len()..];
    let hash = match suffix.strip_suffix(b"\"}") {
        Some(hex) => ChainHash::from_hex(hex),
        None => None,
    }
    .ok_or_else(|| "\"hash\" is not the last member, or not 64 lowercase hex digits".to_owned())?;
    let computed = ChainHash::of(&line[..cut]);
    if computed != hash {
        return Err(format!("hash mismatch: the record was altered (content hashes to {computed}, recorded {hash})"));
    }
    let prev = ChainHash::from_hex(members.prev_hash.as_bytes()).ok_or_else(|| "prev_hash is not 64 lowercase hex digits".to_owned())?;
    if OffsetDateTime::parse(&members.ts, &Rfc3339).is_err() {
        return Err(format!("ts {:?} is not an RFC 3339 time", members.ts));
    }
    if members.event.is_empty() {
        return Err("event is empty".to_owned());
    }
    Ok(LineHashes { prev, hash })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{encode_record, sample_request};
    use std::path::Path;

    /// Writes `files` files of `per_file` chained records each, continuing
    /// the chain from `prev`; returns the paths and the new head.
    fn write_chain(dir: &Path, files: usize, per_file: usize) -> Vec<PathBuf> {
        let mut prev = ChainHash::GENESIS;
        let mut paths = Vec::new();
        for f in 0..files {
            let mut bytes = Vec::new();
            for r in 0..per_file {
                let event = sample_request(f * per_file + r);
                prev = encode_record(OffsetDateTime::now_utc(), &event, &prev, &mut bytes).unwrap();
            }
            let path = dir.join(format!("audit.jsonl.{f}"));
            std::fs::write(&path, bytes).unwrap();
            paths.push(path);
        }
        paths
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn intact_rotated_set_given_in_order_passes() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 3, 4);
        let summary = verify_files(&paths).unwrap();
        assert_eq!(summary.files, 3);
        assert_eq!(summary.records, 12);
        assert_eq!(summary.starts_after, None);
        let last = lines(&paths[2]).pop().unwrap();
        assert!(last.contains(&summary.last_hash.unwrap().to_string()));
    }

    #[test]
    fn every_one_byte_change_is_caught_at_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 1, 4);
        let original = std::fs::read(&paths[0]).unwrap();
        assert_eq!(verify_files(&paths).unwrap().records, 4);
        for position in 0..original.len() {
            let mut changed = original.clone();
            changed[position] ^= 0x01;
            let line = 1 + original[..position].iter().filter(|&&b| b == b'\n').count();
            // The same check verify_files runs per file, without a disk round trip per byte.
            let error = Chain::default().check_file("audit.jsonl", &changed[..]).expect_err("a changed byte must be caught");
            assert_eq!(error.line, line, "byte {position}: {error}");
        }
        let mut changed = original;
        changed[10] ^= 0x01;
        std::fs::write(&paths[0], &changed).unwrap();
        assert_eq!(verify_files(&paths).unwrap_err().line, 1);
    }

    #[test]
    fn deleted_line_is_reported_at_the_line_after_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 1, 5);
        let mut all = lines(&paths[0]);
        all.remove(2);
        write_lines(&paths[0], &all);
        let error = verify_files(&paths).unwrap_err();
        assert_eq!((error.line, error.file.as_str()), (3, paths[0].to_str().unwrap()));
        assert!(error.why.contains("prev_hash"), "{error}");
        assert!(error.to_string().starts_with(&format!("{}:3: ", paths[0].display())));
    }

    #[test]
    fn reordered_lines_are_reported_at_the_first_moved_line() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 1, 5);
        let mut all = lines(&paths[0]);
        all.swap(1, 3);
        write_lines(&paths[0], &all);
        assert_eq!(verify_files(&paths).unwrap_err().line, 2);
    }

    #[test]
    fn files_given_out_of_order_break_at_the_first_line_of_the_misplaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 3, 2);
        let swapped = vec![paths[0].clone(), paths[2].clone(), paths[1].clone()];
        let error = verify_files(&swapped).unwrap_err();
        assert_eq!((error.file.as_str(), error.line), (paths[2].to_str().unwrap(), 1));
    }

    #[test]
    fn a_missing_middle_file_breaks_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 3, 2);
        let error = verify_files(&[paths[0].clone(), paths[2].clone()]).unwrap_err();
        assert_eq!((error.file.as_str(), error.line), (paths[2].to_str().unwrap(), 1));
        assert!(error.why.contains(":2)"), "names the previous record: {error}");
    }

    #[test]
    fn a_rotated_tail_alone_passes_and_reports_where_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 2, 3);
        let summary = verify_files(&paths[1..]).unwrap();
        assert_eq!(summary.records, 3);
        let first = lines(&paths[1]).remove(0);
        let starts_after = summary.starts_after.unwrap().to_string();
        assert!(first.contains(&format!("\"prev_hash\":\"{starts_after}\"")));
    }

    #[test]
    fn hash_must_be_present_and_last() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 1, 2);
        let all = lines(&paths[0]);

        let cut = all[1].rfind(",\"hash\":").unwrap();
        let without_hash = format!("{}}}", &all[1][..cut]);
        write_lines(&paths[0], &[all[0].clone(), without_hash]);
        let error = verify_files(&paths).unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.why.contains("hash"), "{error}");

        let not_last = format!("{},\"extra\":1}}", &all[1][..all[1].len() - 1]);
        write_lines(&paths[0], &[all[0].clone(), not_last]);
        let error = verify_files(&paths).unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.why.contains("not the last member"), "{error}");
    }

    #[test]
    fn invalid_json_and_blank_lines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_chain(dir.path(), 1, 2);
        let all = lines(&paths[0]);
        write_lines(&paths[0], &[all[0].clone(), "{not json".to_owned(), all[1].clone()]);
        let error = verify_files(&paths).unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.why.starts_with("invalid JSON"), "{error}");

        write_lines(&paths[0], &[all[0].clone(), String::new(), all[1].clone()]);
        assert_eq!(verify_files(&paths).unwrap_err().line, 2);
    }

    #[test]
    fn unreadable_file_is_reported_at_line_zero() {
        let error = verify_files(&[PathBuf::from("/nonexistent/audit.jsonl")]).unwrap_err();
        assert_eq!(error.line, 0);
        assert!(error.to_string().starts_with("/nonexistent/audit.jsonl:0: cannot open"));
    }

    #[test]
    fn empty_files_keep_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = write_chain(dir.path(), 2, 2);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        paths.insert(1, empty);
        assert_eq!(verify_files(&paths).unwrap().records, 4);
    }
}
