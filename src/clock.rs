//! The wall clock, in the units the relay keeps time in: Unix milliseconds
//! for what it stores and Unix seconds for what GitHub states (rate-limit
//! resets, token lifetimes). Whatever needs the time as a number reads it
//! here, so that every part of the relay reads it the same way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the store's unit of time. A clock
/// set before 1970 reads as 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, GitHub's unit in its headers and tokens.
/// A clock set before 1970 reads as 0.
pub fn now_epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
