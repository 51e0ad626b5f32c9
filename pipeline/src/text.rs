//! Outside text as Jetline repeats it in errors, logs and tables: cut to a
//! bounded length, so one oversized value cannot flood a log line or a
//! terminal.

use std::borrow::Cow;

/// `text` cut to at most `max_chars` characters, marked with `...` when cut.
pub fn cut(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some(_) => {
            let kept = max_chars.saturating_sub(3);
            let end = text
                .char_indices()
                .nth(kept)
                .map_or(text.len(), |(at, _)| at);
            Cow::Owned(format!("{}...", &text[..end]))
        }
    }
}

/// How much of an input value an error message quotes.
pub const QUOTED_CHARS: usize = 64;

/// How much of an error a log line carries.
pub const LOGGED_CHARS: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_by_characters_and_marks_the_cut() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("exactly10!", 10), "exactly10!");
        assert_eq!(cut("eleven chars", 10), "eleven ...");
        assert_eq!(cut("ééééééé", 5), "éé...");
        assert_eq!(cut(&"x".repeat(70_000), 64).chars().count(), 64);
    }
}
