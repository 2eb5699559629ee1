//! Text a caller sent, made safe to show in a log line or an answer: control
//! characters (newlines, escape sequences) are escaped, so a caller cannot
//! forge log lines or terminal output, and the length is capped, so a caller
//! cannot fill a log.

/// At most `max_chars` characters of `text`, control characters and
/// non-ASCII escaped as `\u{..}`, `…` appended when it was cut.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars) + 8);
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_length_is_capped() {
        assert_eq!(printable("RS256", 64), "RS256");
        assert_eq!(printable("XX\n2026-12-04 INFO forged", 64), "XX\\u{a}2026-12-04 INFO forged");
        assert_eq!(printable("\u{1b}[31mred", 64), "\\u{1b}[31mred");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert!(!printable("a\r\nb\u{2028}c", 64).contains(['\r', '\n', '\u{2028}']));
    }
}
