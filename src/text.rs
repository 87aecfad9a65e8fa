//! How the relay quotes text it did not write (GitHub's answers, a sender's
//! values, what a template rendered) inside its own messages: cut short,
//! and on one line, so that a message stays readable in a log line, a JSON
//! error or a table row whatever it quotes.

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
/// space.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
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
    fn one_line_collapses_every_break() {
        assert_eq!(
            one_line("Invalid request.\n\n  \"x\" is\tnot"),
            "Invalid request. \"x\" is not"
        );
    }
}
