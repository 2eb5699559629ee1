//! Path globs of policy rules, compiled once at load and matched against the
//! normalized request path (docs/policy.md §3, docs/wire.md §3) without allocating.
//!
//! A glob is a `/`-separated list of segments:
//! - `**` matches zero or more whole segments;
//! - `*` matches exactly one non-empty segment;
//! - a segment with `*` inside (`v*`, `*.json`) matches one segment where each
//!   `*` stands for any run of characters other than `/`;
//! - anything else matches that segment literally, case-sensitively.
//!
//! One trailing `/` is ignored on both sides, so `/crm/admin` also covers
//! `/crm/admin/`: a deny rule cannot be side-stepped by adding a slash, and
//! `/crm/v1/**` matches `/crm/v1`, `/crm/v1/` and `/crm/v1/a/b`.
//!
//! Literal segments are normalized the way request paths are (percent-encoded
//! unreserved characters decoded, the hex of other escapes upper-cased), so a
//! glob written as `/%7Euser` still matches the normalized `/~user`. Segments
//! that a normalized path can never contain (`.`, `..`, empty, `%2F`, raw
//! `?`, `#`, `\`, spaces, control or non-ASCII characters) are load errors
//! rather than rules that silently never match.

use std::fmt;

/// A compiled path glob; `Display` gives the text as written in the policy.
#[derive(Debug, Clone)]
pub(crate) struct PathGlob {
    text: Box<str>,
    segments: Vec<Segment>,
    /// The same segments in ASCII lower case, for case-insensitive routes.
    folded: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`
    AnyMany,
    /// `*`
    AnyOne,
    /// A segment with `*` inside: the literal parts between the stars.
    /// Always at least two parts (one star gives two parts).
    Pattern(Vec<Box<str>>),
    /// A plain segment.
    Literal(Box<str>),
}

impl PathGlob {
    /// Compiles `text`, or says why it is not a usable glob.
    pub(crate) fn parse(text: &str) -> Result<PathGlob, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("a path glob must start with \"/\"".to_string());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for raw in rest.split('/') {
                segments.push(parse_segment(raw)?);
            }
        }
        let folded = segments.iter().map(Segment::folded).collect();
        Ok(PathGlob { text: text.into(), segments, folded })
    }

    /// True when the normalized `path` matches.
    ///
    /// Greedy matching with one backtrack point (the last `**` seen), the
    /// classic wildcard algorithm: O(segments × glob segments) at worst, and
    /// no allocation.
    pub(crate) fn matches(&self, path: &str) -> bool {
        Self::match_segments(&self.segments, path)
    }

    /// [`matches`](Self::matches) without regard to ASCII case; `path` must
    /// already be in lower case.
    pub(crate) fn matches_folded(&self, lower_path: &str) -> bool {
        Self::match_segments(&self.folded, lower_path)
    }

    fn match_segments(segments: &[Segment], path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // `pos` is the byte offset of the next segment; past the end means no
        // segment is left. The root path has no segment at all.
        let end = rest.len() + 1;
        let mut pos = if rest.is_empty() { end } else { 0 };
        let mut glob_at = 0;
        let mut backtrack: Option<(usize, usize)> = None;
        loop {
            let next = next_segment(rest, pos);
            match (segments.get(glob_at), next) {
                (Some(Segment::AnyMany), _) => {
                    glob_at += 1;
                    backtrack = Some((glob_at, pos));
                    continue;
                }
                (Some(segment), Some((text, after))) if segment.matches_one(text) => {
                    glob_at += 1;
                    pos = after;
                    continue;
                }
                (None, None) => return true,
                _ => {}
            }
            // Mismatch: let the last `**` swallow one more segment, if any is left.
            let Some((resume_glob, resume_pos)) = backtrack else {
                return false;
            };
            let Some((_, after)) = next_segment(rest, resume_pos) else {
                return false;
            };
            backtrack = Some((resume_glob, after));
            glob_at = resume_glob;
            pos = after;
        }
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The segment starting at byte `pos` of `rest` and the offset after it.
fn next_segment(rest: &str, pos: usize) -> Option<(&str, usize)> {
    let tail = rest.get(pos..)?;
    match tail.find('/') {
        Some(i) => Some((tail.get(..i)?, pos + i + 1)),
        None => Some((tail, rest.len() + 1)),
    }
}

impl Segment {
    fn folded(&self) -> Segment {
        let lower = |s: &str| s.to_ascii_lowercase().into_boxed_str();
        match self {
            Segment::AnyMany => Segment::AnyMany,
            Segment::AnyOne => Segment::AnyOne,
            Segment::Pattern(parts) => Segment::Pattern(parts.iter().map(|p| lower(p)).collect()),
            Segment::Literal(literal) => Segment::Literal(lower(literal)),
        }
    }

    fn matches_one(&self, text: &str) -> bool {
        match self {
            Segment::AnyMany => true,
            Segment::AnyOne => !text.is_empty(),
            Segment::Literal(literal) => **literal == *text,
            Segment::Pattern(parts) => !text.is_empty() && pattern_matches(parts, text),
        }
    }
}

/// `parts` are the literal pieces between stars: the first must start the
/// text, the last must end it, the middle ones must appear in order between.
/// Taking each middle piece at its leftmost place is always right for
/// star-only patterns.
fn pattern_matches(parts: &[Box<str>], text: &str) -> bool {
    let (Some((first, rest)), Some(last)) = (parts.split_first(), parts.last()) else {
        return false;
    };
    let Some(middle) = rest.len().checked_sub(1).and_then(|n| rest.get(..n)) else {
        return false;
    };
    if text.len() < first.len() + last.len() {
        return false;
    }
    let Some(mut inner) = text.strip_prefix(&**first) else {
        return false;
    };
    let Some(stripped) = inner.strip_suffix(&**last) else {
        return false;
    };
    inner = stripped;
    for part in middle {
        match inner.find(&**part) {
            Some(i) => inner = inner.get(i + part.len()..).unwrap_or(""),
            None => return false,
        }
    }
    true
}

fn parse_segment(raw: &str) -> Result<Segment, String> {
    match raw {
        "" => return Err("empty segment (\"//\") never appears in a normalized path".to_string()),
        "**" => return Ok(Segment::AnyMany),
        "*" => return Ok(Segment::AnyOne),
        _ => {}
    }
    if raw.contains("**") {
        return Err(format!("\"**\" must be a whole segment, not part of {raw:?}"));
    }
    if let Some(c) = raw.chars().find(|c| !is_path_char(*c)) {
        return Err(format!("{c:?} never appears in a normalized path; percent-encode it"));
    }
    if raw.contains('*') {
        let parts = raw.split('*').map(|part| normalize_escapes(part).map(String::into_boxed_str)).collect::<Result<Vec<_>, _>>()?;
        return Ok(Segment::Pattern(parts));
    }
    let literal = normalize_escapes(raw)?;
    if literal == "." || literal == ".." {
        return Err(format!("{raw:?} segment never appears in a normalized path"));
    }
    Ok(Segment::Literal(literal.into_boxed_str()))
}

/// Characters a normalized path may hold (RFC 3986 `pchar`, `%` of escapes and `/`).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

/// Applies the path normalization of docs/wire.md §3 to one literal piece: decode
/// escapes of unreserved characters, upper-case the hex of the others, refuse
/// encoded `/` and `\` and malformed escapes.
fn normalize_escapes(piece: &str) -> Result<String, String> {
    let bytes = piece.as_bytes();
    let mut out = String::with_capacity(piece.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
            return Err(format!("bad percent escape in {piece:?}"));
        };
        match value {
            b'/' | b'\\' => {
                return Err("an encoded \"/\" or \"\\\" never appears in a normalized path".to_string());
            }
            v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(char::from(v)),
            v => out.push_str(&format!("%{v:02X}")),
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(text: &str) -> PathGlob {
        PathGlob::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn folded_globs_match_without_regard_to_ascii_case() {
        let deny = glob("/echo/Admin/**");
        assert!(!deny.matches("/echo/admin/users"), "case-sensitive by default");
        for path in ["/echo/admin/users", "/echo/ADMIN/users", "/echo/aDmIn"] {
            assert!(deny.matches_folded(&path.to_ascii_lowercase()), "{path}");
        }
        assert!(glob("/x/*.JSON").matches_folded("/x/a.json"));
        assert!(!glob("/x/*.JSON").matches_folded("/x/a.jsonx"));
    }

    #[test]
    fn globs_match_the_paths_the_spec_promises() {
        let cases: &[(&str, &str, bool)] = &[
            ("/crm/v1/**", "/crm/v1", true),
            ("/crm/v1/**", "/crm/v1/", true),
            ("/crm/v1/**", "/crm/v1/a/b", true),
            ("/crm/v1/**", "/crm/v2/a", false),
            ("/crm/v1/**", "/crm/v10", false),
            ("/crm/*/accounts", "/crm/v1/accounts", true),
            ("/crm/*/accounts", "/crm/accounts", false),
            ("/crm/*/accounts", "/crm/v1/x/accounts", false),
            ("/crm/*", "/crm", false),
            ("/crm/*", "/crm/x/", true),
            ("/crm/admin", "/crm/admin/", true),
            ("/crm/admin", "/crm/admin/x", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/", "/", true),
            ("/", "/x", false),
            ("/a/**/z", "/a/z", true),
            ("/a/**/z", "/a/b/c/z", true),
            ("/a/**/z", "/a/b/c/z/y", false),
            ("/a/**/b/**/c", "/a/x/b/b/y/c", true),
            ("/a/**/b/**/c", "/a/x/c/b", false),
            ("/api/v*/items", "/api/v2/items", true),
            ("/api/v*/items", "/api/x2/items", false),
            ("/files/*.json", "/files/a.json", true),
            ("/files/*.json", "/files/.json", true),
            ("/files/*.json", "/files/a.jsonx", false),
            ("/files/a*b*c", "/files/abc", true),
            ("/files/a*b*c", "/files/axxbyyc", true),
            ("/files/a*b*c", "/files/acb", false),
            ("/~user", "/~user", true),
            ("/%7euser", "/~user", true),
            ("/a%2fb", "/a%2Fb", false),
            ("/caf%c3%a9", "/caf%C3%A9", true),
            ("/CRM/**", "/crm/x", false),
        ];
        for (g, path, want) in cases {
            let compiled = PathGlob::parse(g);
            let got = compiled.as_ref().map(|c| c.matches(path));
            if *g == "/a%2fb" {
                assert!(got.is_err(), "{g} must be refused");
                continue;
            }
            assert_eq!(got, Ok(*want), "glob {g} on {path}");
        }
    }

    #[test]
    fn globs_that_can_never_match_a_normalized_path_are_refused() {
        for bad in [
            "crm/**", "", "/a//b", "/a/../b", "/a/./b", "/a**", "/a/***", "/a?b", "/a#b", "/a b", "/a\\b", "/%zz", "/%4", "/%2F", "/%5c",
            "/é",
        ] {
            assert!(PathGlob::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn glob_displays_as_written() {
        assert_eq!(glob("/crm/v1/**").to_string(), "/crm/v1/**");
    }

    /// Reference matcher: plain recursion over segment lists, obviously right and slow.
    fn reference(glob: &[&str], path: &[&str]) -> bool {
        match (glob.split_first(), path.split_first()) {
            (None, None) => true,
            (Some((&"**", g)), _) => reference(g, path) || path.split_first().is_some_and(|(_, p)| reference(glob, p)),
            (Some((&"*", g)), Some((s, p))) => !s.is_empty() && reference(g, p),
            (Some((lit, g)), Some((s, p))) => lit == s && reference(g, p),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_matching_agrees_with_a_naive_recursive_matcher(
            g in prop::collection::vec(prop::sample::select(vec!["a", "b", "*", "**"]), 0..6),
            p in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..7),
        ) {
            let glob_text = format!("/{}", g.join("/"));
            let path_text = format!("/{}", p.join("/"));
            let compiled = PathGlob::parse(&glob_text);
            prop_assert!(compiled.is_ok());
            let got = compiled.map(|c| c.matches(&path_text)).unwrap_or(false);
            prop_assert_eq!(got, reference(&g, &p), "glob {} path {}", glob_text, path_text);
        }
    }
}
