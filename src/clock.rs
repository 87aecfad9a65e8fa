//! The wall clock, in the units the relay keeps time in: Unix milliseconds
//! for what it stores and Unix seconds for what GitHub states (rate-limit
//! resets, token lifetimes). Whatever needs the time as a number reads it
//! here, and every time written as text (RFC 3339, HTTP's `Date`) is read
//! and written here, so that every part of the relay does so the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the store's unit of time. A clock
/// set before 1970 reads as 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

/// A duration in the store's unit, saturating: a configured duration can
/// be far longer than an `i64` of milliseconds holds (`retention: 150000000000d`
/// for "keep everything"), and a wrapped value would turn "that long ago"
/// into a time in the future. Add and subtract it with `saturating_*`.
pub fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// An RFC 3339 time (GitHub's `expires_at`, SNS's `Timestamp`) in Unix
/// milliseconds; `None` when it is not one, or out of range.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Formats Unix milliseconds as RFC 3339 in UTC, as the relay shows
/// every time it stores.
pub fn rfc3339(ms: i64) -> String {
    // Always three decimals (`…04.510Z`, not `…04.51Z`), so that times
    // line up and sort as text; `time`'s RFC 3339 format drops zeros.
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        })
        .unwrap_or_default()
}

/// The IMF-fixdate layout of HTTP's `Date` header.
pub(crate) const HTTP_DATE: &str =
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT";

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to epoch seconds.
pub fn parse_http_date(date: &str) -> Option<i64> {
    let format = time::format_description::parse_borrowed::<2>(HTTP_DATE).ok()?;
    time::PrimitiveDateTime::parse(date.trim(), &format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// Seconds since the Unix epoch, GitHub's unit in its headers and tokens.
/// A clock set before 1970 reads as 0.
pub fn now_epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_longer_than_the_store_holds_saturates() {
        assert_eq!(duration_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_ms(Duration::MAX), i64::MAX);
        // `retention: 150000000000d` keeps everything: its cutoff lies
        // before any time the store holds, not after them all.
        let retention = Duration::from_secs(150_000_000_000 * 86_400);
        let cutoff = now_ms().saturating_sub(duration_ms(retention));
        assert!(cutoff < 0, "{cutoff}");
    }

    #[test]
    fn received_at_is_rfc3339() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        // Always three decimals, so that times sort as text.
        assert_eq!(rfc3339(1_700_000_000_510), "2023-11-14T22:13:20.510Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }
}
