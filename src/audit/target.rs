//! Where audit bytes go: the log file, with size rotation, reopening when
//! the file was deleted or replaced, and recovery of the chain head from the
//! last record written; or standard output.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::event::ChainHash;
use super::verify::parse_line;

/// The destination of the bytes.
pub(super) enum Target {
    File(FileTarget),
    Stdout,
    #[cfg(test)]
    Mock(std::sync::Arc<MockDisk>),
}

impl Target {
    pub(super) fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::File(file) => file.write(bytes),
            Self::Stdout => io::stdout().lock().write(bytes),
            #[cfg(test)]
            Self::Mock(disk) => disk.write(bytes),
        }
    }

    /// Pushes buffered bytes to the OS and makes sure a file is open.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::File(file) => file.handle().map(|_| ()),
            Self::Stdout => io::stdout().lock().flush(),
            #[cfg(test)]
            Self::Mock(_) => Ok(()),
        }
    }

    pub(super) fn sync(&mut self) -> io::Result<()> {
        match self {
            Self::File(file) => file.sync(),
            Self::Stdout => io::stdout().lock().flush(),
            #[cfg(test)]
            Self::Mock(_) => Ok(()),
        }
    }

    /// The current file size, for targets that rotate.
    pub(super) fn rotating_size(&self) -> Option<u64> {
        match self {
            Self::File(file) if file.regular => Some(file.size),
            _ => None,
        }
    }

    pub(super) fn rotate(&mut self) -> io::Result<()> {
        match self {
            Self::File(file) => file.rotate(),
            Self::Stdout => Ok(()),
            #[cfg(test)]
            Self::Mock(_) => Ok(()),
        }
    }

    pub(super) fn needs_reopen(&self) -> bool {
        matches!(self, Self::File(file) if file.file.is_none())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(file) => write!(f, "{}", file.path.display()),
            Self::Stdout => f.write_str("stdout"),
            #[cfg(test)]
            Self::Mock(_) => f.write_str("mock"),
        }
    }
}

/// An append-only file rotated by size.
pub(super) struct FileTarget {
    path: PathBuf,
    /// `None` after a rotation whose reopen failed; reopened on next use.
    file: Option<File>,
    size: u64,
    /// Only regular files are inspected and rotated (not `/dev/...`).
    regular: bool,
    /// Stamp of the newest rotated file; new stamps are strictly later.
    last_rotation: Option<PrimitiveDateTime>,
}

impl FileTarget {
    pub(super) fn open(path: &Path) -> io::Result<(Target, ChainHash)> {
        let context = |what: &str, error: io::Error| io::Error::new(error.kind(), format!("{}: {what}: {error}", path.display()));
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            fs::create_dir_all(parent).map_err(|e| context("cannot create folder", e))?;
        }
        let mut file = open_append(path).map_err(|e| context("cannot open", e))?;
        let meta = file.metadata().map_err(|e| context("cannot stat", e))?;
        let regular = meta.is_file();
        let mut size = meta.len();
        let rotated = if regular { rotated_files(path)? } else { Vec::new() };
        let mut head = None;
        if regular && size > 0 {
            let tail = read_tail(path, size).map_err(|e| context("cannot read", e))?;
            if tail.torn {
                tracing::warn!(
                    path = %path.display(),
                    "audit log ends in an incomplete line (torn write); terminating it, \
                     `audit verify` will report that line"
                );
                file.write_all(b"\n").map_err(|e| context("cannot write", e))?;
                size += 1;
            }
            head = tail.line.map(|line| chain_head(path, &line)).transpose()?;
        }
        for older in rotated.iter().rev() {
            if head.is_some() {
                break;
            }
            let len = fs::metadata(older)?.len();
            let tail = read_tail(older, len)?;
            head = tail.line.map(|line| chain_head(older, &line)).transpose()?;
        }
        let head = head.unwrap_or(ChainHash::GENESIS);
        tracing::info!(path = %path.display(), prev_hash = %head, "audit log opened");
        let target = Self {
            path: path.to_owned(),
            file: Some(file),
            size,
            regular,
            last_rotation: rotated.last().and_then(|p| rotation_stamp(path, p)),
        };
        Ok((Target::File(target), head))
    }

    /// Closes the file if its path no longer names it, so that the next
    /// write opens a new one there.
    pub(super) fn reopen_if_replaced(&mut self) {
        if self.replaced() {
            tracing::error!(
                path = %self.path.display(),
                "the audit log was removed or replaced while open; records continue in a new file at its path \
                 (its first record's prev_hash points at the last one written to the old file)"
            );
            self.file = None;
        }
    }

    pub(super) fn handle(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let file = open_append(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => Ok(file),
            None => Err(io::Error::other("audit file not open")),
        }
    }

    /// Whether the path no longer names the open file (deleted, or moved
    /// away and replaced): writing on would put records where nobody finds
    /// them. One `stat` per batch.
    #[cfg(unix)]
    pub(super) fn replaced(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(file) = &self.file else { return false };
        if !self.regular {
            return false;
        }
        match (fs::metadata(&self.path), file.metadata()) {
            (Ok(named), Ok(open)) => named.dev() != open.dev() || named.ino() != open.ino(),
            (Err(e), _) => e.kind() == io::ErrorKind::NotFound,
            (_, Err(_)) => false,
        }
    }

    #[cfg(not(unix))]
    pub(super) fn replaced(&self) -> bool {
        false
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.handle()?.write(bytes)?;
        self.size += n as u64;
        Ok(n)
    }

    pub(super) fn sync(&mut self) -> io::Result<()> {
        match &self.file {
            Some(file) if self.regular => file.sync_data(),
            _ => Ok(()),
        }
    }

    /// Renames the file to `<path>.<yyyymmddTHHMMSS.mmm>Z`; the new file is
    /// opened by the next [`Target::flush`] or write. If the rename fails
    /// nothing changed and the rotation is retried.
    pub(super) fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        let mut stamp = truncate_to_millis(OffsetDateTime::now_utc());
        if let Some(last) = self.last_rotation
            && stamp <= last
        {
            stamp = last + time::Duration::MILLISECOND;
        }
        while rotated_name(&self.path, stamp).exists() {
            stamp += time::Duration::MILLISECOND;
        }
        let rotated = rotated_name(&self.path, stamp);
        match fs::rename(&self.path, &rotated) {
            Ok(()) => tracing::info!(rotated = %rotated.display(), "audit log rotated"),
            // Removed from under us: nothing to rename; the next write starts
            // a new file (whose first record's prev_hash shows the gap).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::error!(path = %self.path.display(), "the audit log was removed while open; starting a new one")
            }
            Err(e) => return Err(e),
        }
        self.last_rotation = Some(stamp);
        self.file = None;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
    options.open(path)
}

fn truncate_to_millis(now: OffsetDateTime) -> PrimitiveDateTime {
    let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
    PrimitiveDateTime::new(now.date(), now.time())
}

fn rotated_name(path: &Path, stamp: PrimitiveDateTime) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second(),
        stamp.millisecond()
    ));
    path.with_file_name(name)
}

/// The stamp of a rotated file of `path`, if `candidate` is one.
fn rotation_stamp(path: &Path, candidate: &Path) -> Option<PrimitiveDateTime> {
    let base = path.file_name()?.to_str()?;
    let name = candidate.file_name()?.to_str()?;
    let stamp = name.strip_prefix(base)?.strip_prefix('.')?.as_bytes();
    // yyyymmddTHHMMSS.mmmZ
    if stamp.len() != 20 || stamp[8] != b'T' || stamp[15] != b'.' || stamp[19] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = &stamp[range];
        digits.iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let date = Date::from_calendar_date(
        i32::try_from(number(0..4)?).ok()?,
        Month::try_from(u8::try_from(number(4..6)?).ok()?).ok()?,
        u8::try_from(number(6..8)?).ok()?,
    )
    .ok()?;
    let time = Time::from_hms_milli(
        u8::try_from(number(9..11)?).ok()?,
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(13..15)?).ok()?,
        u16::try_from(number(16..19)?).ok()?,
    )
    .ok()?;
    Some(PrimitiveDateTime::new(date, time))
}

/// The rotated files of the audit log at `path`, oldest first (their names
/// sort by time). Together with `path` itself, this is the whole log in
/// order, as `audit verify` expects it.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut found = Vec::new();
    for entry in entries {
        let candidate = path.with_file_name(entry?.file_name());
        if rotation_stamp(path, &candidate).is_some() {
            found.push(candidate);
        }
    }
    found.sort();
    Ok(found)
}

/// The end of a file: its last newline-terminated line, and whether bytes
/// without a newline follow it.
struct Tail {
    line: Option<Vec<u8>>,
    torn: bool,
}

fn read_tail(path: &Path, len: u64) -> io::Result<Tail> {
    let mut file = File::open(path)?;
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        (&mut file).take(len - start).read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(Tail { line: None, torn: !buf.is_empty() });
            }
            window = window.saturating_mul(2);
            continue;
        };
        let torn = end + 1 != buf.len();
        match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(newline) => {
                return Ok(Tail { line: Some(buf[newline + 1..end].to_vec()), torn });
            }
            None if start == 0 => {
                buf.truncate(end);
                return Ok(Tail { line: Some(buf), torn });
            }
            None => window = window.saturating_mul(2),
        }
    }
}

fn chain_head(path: &Path, line: &[u8]) -> io::Result<ChainHash> {
    parse_line(line).map(|record| record.hash).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: the last record cannot continue the hash chain ({why}); \
                 run `gatehouse audit verify` and move the damaged file aside",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
pub(super) use mock::MockDisk;

#[cfg(test)]
mod mock {
    use std::io;
    use std::sync::Mutex;

    /// An in-memory disk that accepts `budget` more bytes (all when `None`),
    /// then fails like a full disk.
    #[derive(Default)]
    pub(in crate::audit) struct MockDisk {
        pub(in crate::audit) data: Mutex<Vec<u8>>,
        pub(in crate::audit) budget: Mutex<Option<usize>>,
    }

    impl MockDisk {
        pub(in crate::audit) fn write(&self, bytes: &[u8]) -> io::Result<usize> {
            let mut budget = self.budget.lock().unwrap();
            let n = match *budget {
                Some(0) => return Err(io::ErrorKind::StorageFull.into()),
                Some(left) => {
                    let n = left.min(bytes.len());
                    *budget = Some(left - n);
                    n
                }
                None => bytes.len(),
            };
            self.data.lock().unwrap().extend_from_slice(&bytes[..n]);
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_by_time_and_parse_back() {
        let path = Path::new("/var/log/audit.jsonl");
        let stamp = truncate_to_millis(time::macros::datetime!(2026-11-28 12:00:00.123456 UTC));
        let name = rotated_name(path, stamp);
        assert_eq!(name, Path::new("/var/log/audit.jsonl.20261128T120000.123Z"));
        assert_eq!(rotation_stamp(path, &name), Some(stamp));
        let later = rotated_name(path, stamp + time::Duration::MILLISECOND);
        assert!(name < later);
        assert_eq!(rotation_stamp(path, Path::new("/var/log/audit.jsonl.old")), None);
        assert_eq!(rotation_stamp(path, Path::new("/var/log/other.jsonl.20261128T120000.123Z")), None);
    }
}
