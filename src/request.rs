//! First stage after TLS: the request head becomes a [`RequestMeta`], with the
//! path normalized exactly per docs/wire.md. The normalized path is both the one
//! matched and the one forwarded.

use std::fmt;

use http::{Method, Request, Version};

/// What later stages need from the request head.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub method: Method,
    /// Host without port, lower-cased; from `:authority` (h2) or `Host` (h1).
    pub host: Option<String>,
    /// Host as sent, with port, for `x-forwarded-host`.
    pub host_header: Option<String>,
    /// The normalized path.
    pub path: String,
    /// The raw query string, forwarded unchanged, never audited.
    pub query: Option<String>,
}

/// Why a request head is refused (400, audit reason `bad_path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    EncodedSlash,
    Backslash,
    ControlCharacter,
    BadEscape,
    AboveRoot,
    Fragment,
    NotOriginForm,
    ForeignAuthority,
    Connect,
    Asterisk,
    /// A segment carries `;` parameters (Tomcat, Jetty and Spring drop them).
    PathParams,
    /// A segment ends in `.` or a space (IIS and Windows drop them).
    TrailingDotOrSpace,
    /// `%25`: a second decoding by the upstream would read another path.
    EncodedPercent,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EncodedSlash => "the path contains an encoded slash or backslash (%2F, %5C)",
            Self::Backslash => "the path contains a backslash",
            Self::ControlCharacter => "the path contains a NUL or control character",
            Self::BadEscape => "the path contains a malformed percent escape",
            Self::AboveRoot => "the path climbs above the root with ..",
            Self::Fragment => "the request target contains a fragment",
            Self::NotOriginForm => "the path must start with /",
            Self::ForeignAuthority => "an absolute-form target must name the same authority as the Host header",
            Self::Connect => "CONNECT (authority-form) is not supported",
            Self::Asterisk => "asterisk-form (OPTIONS *) is not supported",
            Self::PathParams => "a path segment carries ; parameters, which upstream frameworks read differently",
            Self::TrailingDotOrSpace => "a path segment ends in a dot or a space, which upstream servers read differently",
            Self::EncodedPercent => "the path contains an encoded % (%25), which a second decoding would turn into another path",
        })
    }
}

impl std::error::Error for RequestError {}

impl RequestMeta {
    /// Reads and checks the request head.
    pub fn from_request<B>(req: &Request<B>) -> Result<Self, RequestError> {
        let uri = req.uri();
        if req.method() == Method::CONNECT {
            return Err(RequestError::Connect);
        }
        let raw_path = uri.path();
        if raw_path == "*" {
            return Err(RequestError::Asterisk);
        }
        let host_header = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
        let authority = uri.authority().map(|a| a.as_str().to_owned());
        let host_header = match (req.version(), authority) {
            // h2 (and h3) carry the authority as a pseudo-header: that is the host.
            (Version::HTTP_2, Some(auth)) => Some(auth),
            // h1 absolute-form: accepted only when it names the Host header's authority.
            (_, Some(auth)) => match &host_header {
                Some(h) if h.eq_ignore_ascii_case(&auth) => Some(auth),
                _ => return Err(RequestError::ForeignAuthority),
            },
            (_, None) => host_header,
        };
        let host = host_header.as_deref().map(host_without_port);
        Ok(Self { method: req.method().clone(), host, host_header, path: normalize_path(raw_path)?, query: uri.query().map(str::to_owned) })
    }
}

/// Lower-cased host with any port and any trailing dot removed
/// (`[::1]:8443` → `[::1]`, `API.internal.:443` → `api.internal`): a fully
/// qualified name is the same host as the name without its root dot.
pub fn host_without_port(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority.find(']').map_or(authority, |i| &authority[..=i])
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a route may let through of the path spellings that upstream
/// frameworks read differently from the policy (refused by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathAllowances {
    /// `;` parameters in a segment (`allow_path_params`).
    pub path_params: bool,
    /// `%25` anywhere in the path (`allow_encoded_percent`).
    pub encoded_percent: bool,
}

/// Refuses, unless `allow` lets it through, a normalized path that some
/// upstream would read as another path than the policy did: a segment with
/// `;` parameters, a segment ending in `.` or a space, an encoded `%`.
pub fn check_ambiguity(path: &str, allow: PathAllowances) -> Result<(), RequestError> {
    if !allow.encoded_percent && path.contains("%25") {
        return Err(RequestError::EncodedPercent);
    }
    for segment in path.split('/') {
        if !allow.path_params && segment.contains(';') {
            return Err(RequestError::PathParams);
        }
        // "." and ".." were resolved by normalization and cannot remain.
        if segment.ends_with('.') || segment.ends_with("%20") {
            return Err(RequestError::TrailingDotOrSpace);
        }
    }
    Ok(())
}

/// docs/wire.md §3 normalization, in order: decode escapes of unreserved characters,
/// upper-case the hex of the escapes left, merge runs of `/`, resolve `.` and
/// `..` (RFC 3986 §5.2.4). Encoded `/` or `\`, raw `\`, control characters,
/// malformed escapes, fragments and `..` above the root are refused.
pub fn normalize_path(raw: &str) -> Result<String, RequestError> {
    if !raw.starts_with('/') {
        return Err(RequestError::NotOriginForm);
    }
    let decoded = decode_unreserved(raw)?;
    let mut out = String::with_capacity(decoded.len());
    let mut segments: Vec<&str> = Vec::new();
    // Split on '/', dropping the empty segments made by runs of '/', but
    // remember whether the path ends in '/' (it stays significant).
    let trailing_slash = decoded.ends_with('/');
    let mut last_was_dot = false;
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        last_was_dot = false;
        match seg {
            "." => last_was_dot = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(RequestError::AboveRoot);
                }
                last_was_dot = true;
            }
            s => segments.push(s),
        }
    }
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    // "/a/b/.." and "/a/." end in a directory: RFC 3986 keeps the slash.
    if (trailing_slash || last_was_dot || segments.is_empty()) && !out.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

/// Step 1 and 2: decode `%XX` of unreserved characters, upper-case the rest.
fn decode_unreserved(raw: &str) -> Result<String, RequestError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|c| hex(*c)), bytes.get(i + 2).and_then(|c| hex(*c))) else {
                    return Err(RequestError::BadEscape);
                };
                let v = h << 4 | l;
                match v {
                    b'/' | b'\\' => return Err(RequestError::EncodedSlash),
                    0x00..=0x1f | 0x7f => return Err(RequestError::ControlCharacter),
                    _ if is_unreserved(v) => out.push(char::from(v)),
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(h)]));
                        out.push(char::from(HEX_UPPER[usize::from(l)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(RequestError::Backslash),
            b'#' => return Err(RequestError::Fragment),
            0x00..=0x1f | 0x7f => return Err(RequestError::ControlCharacter),
            0x80..=0xff => {
                // Raw bytes of UTF-8 (or anything else) are forwarded
                // percent-encoded once, never re-read as Latin-1 characters.
                out.push('%');
                out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
                out.push(char::from(HEX_UPPER[usize::from(b & 0x0f)]));
                i += 1;
            }
            _ => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let ok = [
            ("/", "/"),
            ("/a/./b/../c", "/a/c"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%61%62c", "/abc"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/x%3a%3Ay", "/x%3A%3Ay"),
            ("/sp%20ace", "/sp%20ace"),
            ("/%7e~", "/~~"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
        let bad = [
            ("/a%2Fb", RequestError::EncodedSlash),
            ("/a%2fb", RequestError::EncodedSlash),
            ("/a%5Cb", RequestError::EncodedSlash),
            ("/a%5cb", RequestError::EncodedSlash),
            ("/a\\b", RequestError::Backslash),
            ("/a%00b", RequestError::ControlCharacter),
            ("/a%1Fb", RequestError::ControlCharacter),
            ("/a%7fb", RequestError::ControlCharacter),
            ("/..", RequestError::AboveRoot),
            ("/a/../..", RequestError::AboveRoot),
            ("/%2e%2e/etc/passwd", RequestError::AboveRoot),
            ("//..//a", RequestError::AboveRoot),
            ("/a%zz", RequestError::BadEscape),
            ("/a%2", RequestError::BadEscape),
            ("a/b", RequestError::NotOriginForm),
            ("/a#frag", RequestError::Fragment),
        ];
        for (raw, want) in bad {
            assert_eq!(normalize_path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn absolute_form_must_match_host() {
        let same = Request::get("http://api.example:8443/a/../b").header("host", "api.example:8443").body(()).unwrap();
        let meta = RequestMeta::from_request(&same).unwrap();
        assert_eq!(meta.path, "/b");
        assert_eq!(meta.host.as_deref(), Some("api.example"));
        let foreign = Request::get("http://evil.example/a").header("host", "api.example").body(()).unwrap();
        assert_eq!(RequestMeta::from_request(&foreign).unwrap_err(), RequestError::ForeignAuthority);
    }

    #[test]
    fn connect_and_asterisk_are_refused() {
        let connect = Request::connect("api.example:443").body(()).unwrap();
        assert_eq!(RequestMeta::from_request(&connect).unwrap_err(), RequestError::Connect);
        let star = Request::options("*").body(()).unwrap();
        assert_eq!(RequestMeta::from_request(&star).unwrap_err(), RequestError::Asterisk);
    }

    #[test]
    fn query_is_kept_raw() {
        let r = Request::get("/a?x=%2F&y=1").header("host", "h").body(()).unwrap();
        let meta = RequestMeta::from_request(&r).unwrap();
        assert_eq!(meta.query.as_deref(), Some("x=%2F&y=1"));
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("Api.Example:1"), "api.example");
        assert_eq!(host_without_port("api.internal.:8443"), "api.internal");
        assert_eq!(host_without_port("api.internal."), "api.internal");
    }

    #[test]
    fn ambiguous_spellings_are_refused_unless_the_route_allows_them() {
        let strict = PathAllowances::default();
        let cases = [
            ("/echo/admin;x=1/users", Err(RequestError::PathParams)),
            ("/echo/admin;/users", Err(RequestError::PathParams)),
            ("/echo/admin./users", Err(RequestError::TrailingDotOrSpace)),
            ("/echo/admin%20/users", Err(RequestError::TrailingDotOrSpace)),
            ("/echo/%252e%252e/admin", Err(RequestError::EncodedPercent)),
            ("/echo/a.b/c", Ok(())),
            ("/echo/a%20b", Ok(())),
        ];
        for (raw, want) in cases {
            let path = normalize_path(raw).unwrap();
            assert_eq!(check_ambiguity(&path, strict), want, "{raw}");
        }
        let lax = PathAllowances { path_params: true, encoded_percent: true };
        assert_eq!(check_ambiguity("/echo/a;b/c%25", lax), Ok(()));
        assert_eq!(check_ambiguity("/echo/a./c", lax), Err(RequestError::TrailingDotOrSpace));
    }
}
