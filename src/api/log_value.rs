//! A caller's value as a log line may carry it: short, and unable to forge a line.
/// Longest prefix of a caller's value written to a log line, in bytes.
const LOGGED_VALUE_BYTES: usize = 64;

/// `value` as a log line may carry it: its first [`LOGGED_VALUE_BYTES`] bytes (cut at a
/// character boundary, then `…`), with every control or format character escaped (`\n`,
/// `\u{1b}`…) so that a caller's value can never end the line, start a forged one or colour
/// a terminal. (These fields are written with `%` in plain-text logs, where nothing else would
/// escape them.)
pub fn loggable(value: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || crate::policy::is_format_char(c);
    if value.len() <= LOGGED_VALUE_BYTES && !value.chars().any(unsafe_char) {
        return value.into();
    }
    let mut end = LOGGED_VALUE_BYTES.min(value.len());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let mut shown = String::with_capacity(end + 8);
    for c in value[..end].chars() {
        if unsafe_char(c) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    if end < value.len() {
        shown.push('…');
    }
    shown.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_values_are_cut_short_at_a_character_boundary() {
        assert_eq!(loggable("alice"), "alice");
        assert_eq!(
            loggable("eve\n2026 INFO forged\r\u{1b}[31m\u{202e}"),
            "eve\\n2026 INFO forged\\r\\u{1b}[31m\\u{202e}"
        );
        let long = "é".repeat(1_000_000);
        let cut = loggable(&long);
        assert!(cut.len() <= LOGGED_VALUE_BYTES + "…".len());
        assert!(cut.ends_with('…'));
    }
}
