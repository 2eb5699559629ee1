//! Secret values (client secrets, tokens, keys) that never print themselves.

use std::fmt;

/// A secret string. `Debug` and `Display` print `[redacted]`; the value is
/// reachable only through [`Secret::expose`], so every use is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Never log or audit what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret file, trimming one trailing newline (docs/config.md).
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let mut s = std::fs::read_to_string(path)?;
        trim_one_newline(&mut s);
        Ok(Self(s))
    }

    /// Reads a secret from an environment variable.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var).ok().map(Self)
    }
}

/// Trims exactly one trailing `\n` (or `\r\n`).
pub fn trim_one_newline(s: &mut String) {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret([redacted]) [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn one_trailing_newline_is_trimmed() {
        let mut a = "x\n\n".to_string();
        trim_one_newline(&mut a);
        assert_eq!(a, "x\n");
        let mut b = "y\r\n".to_string();
        trim_one_newline(&mut b);
        assert_eq!(b, "y");
    }
}
