//! How the relay quotes text it did not write (GitHub's answers, a sender's
//! values, what a template rendered) inside its own messages: cut short,
//! and on one line, so that a message stays readable in a log line, a JSON
//! error or a table row whatever it quotes, and cannot act on a terminal.
//! Also which known name a misspelt one was meant to be, for the "did you
//! mean" of configuration errors.

use std::borrow::Cow;

/// The name of `known` most like `name`, when it is at least `least`
/// alike (Jaro-Winkler, from 0 to 1). Known names are lower case, so
/// `GitHub` is read as a slip for `github`.
pub fn closest<'a, S: AsRef<str>>(name: &str, known: &'a [S], least: f64) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(&name, candidate.as_ref()), candidate))
        .filter(|(score, _)| *score >= least)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate.as_ref())
}

/// `text` cut to at most `max` bytes at a character boundary, with `…`
/// added when something was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `text` with every run of whitespace, line breaks included, made one
/// space, and its other control characters escaped.
pub fn one_line(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    escaped_controls(&collapsed, false).into_owned()
}

/// `text` with every control character escaped as `\u{..}` (`\n` and
/// `\r` for line breaks), except tabs and, when `keep_colours` is set,
/// colour sequences (`ESC [ 31 m`). C1 controls and Unicode's line and
/// paragraph separators are escaped too: a terminal or a log viewer may act
/// on them, and a sender's text must not start a line, change a terminal's
/// title or clear its screen.
pub fn escaped_controls(text: &str, keep_colours: bool) -> Cow<'_, str> {
    let escaped = |c: char| c != '\t' && (c.is_control() || c == '\u{2028}' || c == '\u{2029}');
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for (at, c) in text.char_indices() {
        match c {
            '\x1b' if keep_colours && is_colour(&text[at..]) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if escaped(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `text` starts with a colour sequence: `ESC [`, digits and `;`,
/// then `m`. Any other escape sequence (a title change, a screen clear) is
/// not one.
fn is_colour(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("\x1b[") else {
        return false;
    };
    let parameters = rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';');
    parameters.starts_with('m')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_a_character_boundary_and_says_so() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), "abc…");
        // `é` is two bytes: a cut inside it moves back before it.
        assert_eq!(truncate("aé", 2), "a…");
    }

    #[test]
    fn one_line_collapses_every_break_and_escapes_controls() {
        assert_eq!(
            one_line("Invalid request.\n\n  \"x\" is\tnot"),
            "Invalid request. \"x\" is not"
        );
        assert_eq!(
            one_line("x\u{1b}[31mred\u{1b}]0;t\u{7}\u{9b}\u{2028}y"),
            "x\\u{1b}[31mred\\u{1b}]0;t\\u{7}\\u{9b} y"
        );
    }
}
