//! A wrapper for every secret the relay holds (webhook secrets, tokens,
//! passwords, private keys, notification URLs) so that formatting one for a
//! log line or an error message can never reveal its value.

use std::fmt;

/// A secret string whose `Debug` and `Display` print `[redacted]`.
///
/// The value is reachable only through [`Secret::expose`], which makes every
/// place that needs the real value easy to find in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// Returns the secret value; callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn formatting_never_shows_the_value() {
        let secret = Secret::new("hunter2".to_owned());
        let cases = [
            format!("{secret}"),
            format!("{secret:?}"),
            format!("{:?}", Some(secret.clone())),
            format!("{:?}", vec![secret.clone()]),
        ];
        for printed in cases {
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains("[redacted]"), "{printed}");
        }
        assert_eq!(secret.expose(), "hunter2");
    }
}
