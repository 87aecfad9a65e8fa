//! Reading what a rate-limited answer says: whether GitHub's answer is a
//! rate limit, and how long it asks the credential to wait, on the host's
//! clock. What the relay then does about it (retrying the job, pausing the
//! queue) is decided in `dispatch::retry` and `dispatch::pacing`.

use std::time::Duration;

use super::{Answer, RateHeaders};

/// The wait when GitHub signals a rate limit without saying for how long;
/// GitHub's guidance for secondary limits is to wait at least a minute.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The longest wait taken from GitHub's headers: an hour, GitHub's
/// rate-limit window, within which a primary limit resets and past which
/// no secondary limit asks to wait. A larger number comes from something
/// else (a proxy, a fault) and pauses every dispatch of the credential:
/// believed, one `retry-after: 999999999` held everything back for a day,
/// and for as long again after a restart. Past the hour the relay asks
/// again, and a limit still in force answers with a wait of its own.
pub const MAX_ASKED_WAIT_SECS: u64 = 3600;

/// How long a rate-limited answer asks us to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitWait {
    /// GitHub said how long: `retry-after`, or `x-ratelimit-reset` with
    /// nothing remaining.
    Stated(Duration),
    /// It did not. The wait is [`DEFAULT_RATE_LIMIT_WAIT`], which the pacer
    /// lengthens while such answers repeat.
    Unstated,
}

impl RateLimitWait {
    /// The wait of this one answer.
    pub fn duration(self) -> Duration {
        match self {
            RateLimitWait::Stated(wait) => wait,
            RateLimitWait::Unstated => DEFAULT_RATE_LIMIT_WAIT,
        }
    }
}

/// `x-ratelimit-reset` on the host's clock: GitHub states it in its own
/// time, so it is moved by how far GitHub's `Date` is from `now_epoch_secs`.
pub fn reset_on_our_clock(rate: &RateHeaders, now_epoch_secs: u64) -> Option<u64> {
    let reset = rate.reset_epoch_secs?;
    Some(match rate.date_epoch_secs {
        // Both come from GitHub's headers, so neither is trusted not to be
        // absurd: the arithmetic saturates rather than overflows.
        Some(date) => reset.saturating_add(now_epoch_secs).saturating_sub(date),
        None => reset,
    })
}

/// Whether the answer is a rate limit: a 429, or a 403 that says so.
pub fn is_rate_limit(answer: &Answer) -> bool {
    match answer.status {
        429 => true,
        403 => {
            let message = answer.message.as_deref().unwrap_or("").to_ascii_lowercase();
            answer.rate.retry_after_secs.is_some()
                || answer.rate.remaining == Some(0)
                || message.contains("rate limit")
                // The older wording of the secondary limit, which GitHub
                // Enterprise Server versions still send.
                || message.contains("abuse detection")
        }
        _ => false,
    }
}

/// How long GitHub asks us to wait, when the answer is a rate limit.
pub fn rate_limit_wait(answer: &Answer, now_epoch_secs: u64) -> Option<RateLimitWait> {
    if !is_rate_limit(answer) {
        return None;
    }
    // A wait of nothing, from a `retry-after: 0` or a reset already past,
    // says nothing usable about a limit GitHub is enforcing right now:
    // taken as stated, it would send again every second for as long as
    // the answers repeat, which is what GitHub warns may get an
    // integration banned. Such a limit waits as an unstated one does.
    if let Some(secs) = answer.rate.retry_after_secs.filter(|secs| *secs > 0) {
        return Some(RateLimitWait::Stated(Duration::from_secs(
            secs.min(MAX_ASKED_WAIT_SECS),
        )));
    }
    if let Some(wait) = exhausted_wait(&answer.rate, now_epoch_secs) {
        return Some(RateLimitWait::Stated(wait));
    }
    Some(RateLimitWait::Unstated)
}

/// How long until the credential's primary limit resets, when an answer of
/// any status says that nothing of it remains: the request after a 2xx
/// that spent the last one would be refused, so it waits for the reset.
pub fn exhausted_wait(rate: &RateHeaders, now_epoch_secs: u64) -> Option<Duration> {
    if rate.remaining != Some(0) {
        return None;
    }
    // The reset is GitHub's time: moved onto our clock, a host clock minutes
    // off neither hammers a limit that has not reset nor waits too long.
    let reset = reset_on_our_clock(rate, now_epoch_secs)?;
    (reset > now_epoch_secs)
        .then(|| Duration::from_secs((reset - now_epoch_secs).min(MAX_ASKED_WAIT_SECS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(remaining: Option<u64>, reset: Option<u64>, date: Option<u64>) -> RateHeaders {
        RateHeaders {
            remaining,
            reset_epoch_secs: reset,
            date_epoch_secs: date,
            ..RateHeaders::default()
        }
    }

    #[test]
    fn an_exhausted_limit_waits_for_its_reset_on_our_clock() {
        let now = 1_000_000;
        let cases = [
            // (remaining, reset, GitHub's Date, the wait)
            (Some(0), Some(now + 30), None, Some(30)),
            (Some(0), Some(now + 30), Some(now - 120), Some(150)),
            (
                Some(0),
                Some(now + 30 * 3600),
                None,
                Some(MAX_ASKED_WAIT_SECS),
            ),
            (Some(0), Some(now), None, None),
            (Some(0), Some(now - 5), None, None),
            (Some(0), None, None, None),
            (Some(1), Some(now + 30), None, None),
            (None, Some(now + 30), None, None),
        ];
        for (remaining, reset, date, expected) in cases {
            assert_eq!(
                exhausted_wait(&rate(remaining, reset, date), now),
                expected.map(Duration::from_secs),
                "remaining {remaining:?}, reset {reset:?}, date {date:?}"
            );
        }
    }
}
