//! Lines said at most once in a while. A refused request is logged where it
//! is refused, but a sender that keeps failing its signature, or someone
//! guessing the admin token, would otherwise write one line per request:
//! thousands a second, on a disk the store may share. Each kind of refusal
//! (per route for webhooks, per client for the admin API) is said at most
//! once every [`EVERY`], with the number of refusals left unsaid since its
//! last line. The metrics count every refused webhook; refused admin
//! requests have no metric.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two lines of one kind.
pub const EVERY: Duration = Duration::from_secs(10);

/// The most kinds kept apart: enough for every route and many clients,
/// little memory however many addresses a flood comes from.
pub const MAX_KINDS: usize = 4096;

/// The kind of every refusal past [`MAX_KINDS`].
pub const OTHERS: &str = "(others)";

#[derive(Debug, Default)]
pub struct Throttle {
    kinds: Mutex<Kinds>,
}

#[derive(Debug, Default)]
struct Kinds {
    kinds: HashMap<String, Kind>,
    /// When the kinds were last looked through for ones to forget.
    swept_at: Option<Instant>,
}

#[derive(Debug)]
struct Kind {
    said_at: Instant,
    unsaid: u64,
}

impl Throttle {
    /// Whether a line of `kind` is said now: `Some(unsaid)`, the number of
    /// refusals of its kind not said since its last line, or `None` to say
    /// nothing. Kinds come from the configuration (a route) or from a
    /// client's address. At [`MAX_KINDS`], the kinds without a line for
    /// [`EVERY`] are forgotten, with what they had left unsaid (looked for
    /// at most once every [`EVERY`]); while the kinds are still that many, a
    /// new one shares [`OTHERS`].
    pub fn should_log(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut guard = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let Kinds { kinds, swept_at } = &mut *guard;
        if kinds.len() >= MAX_KINDS
            && !kinds.contains_key(kind)
            && swept_at.is_none_or(|at| now.saturating_duration_since(at) >= EVERY)
        {
            kinds.retain(|_, seen| now.saturating_duration_since(seen.said_at) < EVERY);
            *swept_at = Some(now);
        }
        let kind = if kinds.len() >= MAX_KINDS && !kinds.contains_key(kind) {
            OTHERS
        } else {
            kind
        };
        match kinds.get_mut(kind) {
            Some(seen) if now.saturating_duration_since(seen.said_at) < EVERY => {
                seen.unsaid += 1;
                None
            }
            Some(seen) => {
                let unsaid = std::mem::take(&mut seen.unsaid);
                seen.said_at = now;
                Some(unsaid)
            }
            None => {
                kinds.insert(
                    kind.to_string(),
                    Kind {
                        said_at: now,
                        unsaid: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_said_once_a_while_with_what_went_unsaid() {
        let throttle = Throttle::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let said: Vec<Option<u64>> = [
            ("verify cms", at(0)),
            ("verify cms", at(1)),
            ("verify cms", at(9)),
            ("verify s3", at(9)),
            ("verify cms", at(10)),
            ("verify cms", at(11)),
            ("verify cms", at(30)),
        ]
        .into_iter()
        .map(|(kind, now)| throttle.should_log(kind, now))
        .collect();
        assert_eq!(said, [Some(0), None, None, Some(0), Some(2), None, Some(1)]);
    }

    #[test]
    fn kinds_past_the_bound_share_one() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for n in 0..MAX_KINDS {
            assert_eq!(
                throttle.should_log(&format!("admin 10.0.{n}"), now),
                Some(0)
            );
        }
        assert_eq!(throttle.should_log("admin 192.0.2.1", now), Some(0));
        assert_eq!(
            throttle.should_log("admin 192.0.2.2", now),
            None,
            "shares the kind of the others"
        );
        assert_eq!(throttle.kinds.lock().unwrap().kinds.len(), MAX_KINDS + 1);
        // Once the kinds have had no line for a while, even those still
        // owing a count, a new one has its own line again.
        let later = now + EVERY;
        assert_eq!(throttle.should_log("admin 192.0.2.3", later), Some(0));
        assert_eq!(throttle.should_log("admin 192.0.2.4", later), Some(0));
        assert_eq!(throttle.kinds.lock().unwrap().kinds.len(), 2);
    }
}
