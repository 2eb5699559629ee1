//! Positioned problems in TOML files (config and policies), printed as
//! `FILE:LINE:COL: message`, and a TOML loader that reports every problem it
//! can find in one pass rather than stopping at the first.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;

/// One problem in one file. Lines and columns count from 1; columns count
/// characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}

/// The text of a file together with the name to print for it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as it was given (docs/commands.md: config folder joined with the relative path).
    pub name: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self { name: name.into(), text: text.into() }
    }

    /// Reads a file; an unreadable file is a diagnostic at 1:1.
    pub fn read(path: &std::path::Path) -> Result<Self, Diagnostic> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self { name, text }),
            Err(e) => Err(Diagnostic { file: name, line: 1, col: 1, message: format!("cannot read file: {e}") }),
        }
    }

    /// 1-based (line, column) of a byte offset; offsets past the end clamp to the end.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(&self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, col)
    }

    /// A diagnostic at the start of `span`.
    pub fn at(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(span.start);
        Diagnostic { file: self.name.clone(), line, col, message: message.into() }
    }

    /// A diagnostic at 1:1, for problems that concern the whole file.
    pub fn whole(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic { file: self.name.clone(), line: 1, col: 1, message: message.into() }
    }
}

/// At most this many rounds of "report, blank the line out, parse again".
const MAX_ROUNDS: usize = 64;

/// Deserializes `src` into `T`, reporting as many problems as can be found.
///
/// serde stops at the first unknown key or wrong type. To report them all,
/// the offending line is blanked out (positions of the other lines are kept)
/// and the text is parsed again, until it parses or a syntax error makes
/// further rounds meaningless. "missing field" errors that only appear
/// because an earlier round blanked a line out are not reported.
pub fn parse_toml<T: DeserializeOwned>(src: &SourceFile) -> Result<T, Vec<Diagnostic>> {
    match parse_toml_partial(src) {
        (Some(value), problems) if problems.is_empty() => Ok(value),
        (_, problems) => Err(problems),
    }
}

/// Like [`parse_toml`], but also returns the value parsed once the
/// offending lines were blanked out (when that succeeds), so that callers
/// can run their semantic checks too and report everything in one go.
pub fn parse_toml_partial<T: DeserializeOwned>(src: &SourceFile) -> (Option<T>, Vec<Diagnostic>) {
    let (value, mut problems) = parse_rounds(src);
    problems.sort_by_key(|d| (d.line, d.col));
    (value, problems)
}

fn parse_rounds<T: DeserializeOwned>(src: &SourceFile) -> (Option<T>, Vec<Diagnostic>) {
    let mut text = src.text.clone();
    let mut problems = Vec::new();
    for round in 0..MAX_ROUNDS {
        let err = match toml::from_str::<T>(&text) {
            Ok(value) => return (Some(value), problems),
            Err(err) => err,
        };
        let message = err.message().trim().to_string();
        let span = err.span().unwrap_or(0..0);
        if round > 0 && message.starts_with("missing field") {
            return (None, problems);
        }
        let (line_no, _) = src.position(span.start);
        let col = key_column(&text, span.start);
        problems.push(Diagnostic { file: src.name.clone(), line: line_no, col, message });
        if is_syntax_error(&err) {
            return (None, problems);
        }
        match blank_line(&text, span.start) {
            Some(next) if next != text => text = next,
            _ => return (None, problems),
        }
    }
    (None, problems)
}

/// A syntax error (as opposed to a shape error) has no serde key in its message.
fn is_syntax_error(err: &toml::de::Error) -> bool {
    let m = err.message();
    !(m.starts_with("unknown field")
        || m.starts_with("invalid type")
        || m.starts_with("invalid value")
        || m.starts_with("unknown variant")
        || m.starts_with("missing field")
        || m.starts_with("invalid length")
        || m.starts_with("duplicate field"))
}

/// Column to report for an error at `offset`: the key that starts the line
/// when the offset points into a `key = value` line, else the offset itself.
fn key_column(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..).unwrap_or("");
    let line = line.split('\n').next().unwrap_or("");
    let indent = line.chars().take_while(|c| c.is_whitespace()).count();
    let offset_col = before.get(line_start..).map_or(0, |s| s.chars().count());
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') || !trimmed.contains('=') || trimmed.starts_with('{') { offset_col + 1 } else { indent + 1 }
}

/// Replaces the line holding `offset` by spaces of the same length, so that
/// every other position in the text stays the same.
fn blank_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let end = text.get(offset..)?.find('\n').map_or(text.len(), |i| offset + i);
    let blank = " ".repeat(text.get(start..end)?.len());
    let mut out = String::with_capacity(text.len());
    out.push_str(text.get(..start)?);
    out.push_str(&blank);
    out.push_str(text.get(end..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        a: u32,
        b: Option<String>,
        #[serde(default)]
        t: Vec<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: u32,
    }

    #[test]
    fn two_unknown_keys_are_both_reported_with_positions() {
        let src = SourceFile::new("f.toml", "a = 1\nzz = 2\n[[t]]\nx = 1\n  yy = 3\n");
        let errs = parse_toml::<Doc>(&src).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].starts_with("f.toml:2:1: unknown field `zz`"), "{shown:?}");
        assert!(shown[1].starts_with("f.toml:5:3: unknown field `yy`"), "{shown:?}");
    }

    #[test]
    fn syntax_error_stops_with_its_position() {
        let src = SourceFile::new("f.toml", "a = 1\nb = \"open\n");
        let errs = parse_toml::<Doc>(&src).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 2);
    }

    #[test]
    fn wrong_type_does_not_cascade_into_missing_field() {
        let src = SourceFile::new("f.toml", "a = \"x\"\n");
        let errs = parse_toml::<Doc>(&src).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("invalid type"), "{errs:?}");
    }

    #[test]
    fn position_counts_characters() {
        let src = SourceFile::new("f", "é = 1\nab");
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(src.text.find('=').unwrap_or(0)), (1, 3));
        assert_eq!(src.position(src.text.len()), (2, 3));
    }
}
