//! Parsers for the duration (`500ms`, `30s`, `10m`, `24h`, `7d`) and size
//! (`64KiB`, `1MiB`, `512KB`, `1024`) notations of `routes.yaml`.

use std::time::Duration;

/// Parses a duration written as a whole number and a unit: `ms`, `s`, `m`,
/// `h` or `d`. A unit is required, because a bare number is ambiguous.
/// Errors never quote the text: `${VAR}` may have put a secret there.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let hint = "write a whole number and a unit, such as 500ms, 30s, 10m, 24h or 7d";
    if number.is_empty() {
        return Err(format!("not a duration; {hint}"));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| "too large a duration".to_string())?;
    // `1.5h` would otherwise read as the number 1 with the unit `.5h`.
    if unit.starts_with('.') {
        return Err(format!(
            "a duration is a whole number; write 90m for 1.5h, or {hint}"
        ));
    }
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("a duration needs a unit; {hint}")),
        _ => return Err(format!("not a duration unit; {hint}")),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| "too large a duration".to_string())
}

/// Parses a size: a plain number of bytes, or a number and a unit: `B`,
/// `KB`/`MB`/`GB` (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024).
/// Units are case-insensitive so that `1mb` and `1MB` agree.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let hint = "write a number of bytes or a number and a unit, such as 64KiB, 1MiB or 512KB";
    if number.is_empty() {
        return Err(format!("not a size; {hint}"));
    }
    let value: u64 = number.parse().map_err(|_| "too large a size".to_string())?;
    // `1.5MB` would otherwise read as the number 1 with the unit `.5MB`.
    if unit.starts_with('.') {
        return Err(
            "a size is a whole number of its unit: write 1500KB for 1.5MB, or 1536KiB for 1.5MiB"
                .to_string(),
        );
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(format!("not a size unit; {hint}")),
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| "too large a size".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: [(&str, Result<Duration, &str>); 12] = [
            ("500ms", Ok(Duration::from_millis(500))),
            ("30s", Ok(Duration::from_secs(30))),
            ("10m", Ok(Duration::from_secs(600))),
            ("24h", Ok(Duration::from_secs(86_400))),
            ("7d", Ok(Duration::from_secs(604_800))),
            (" 1s ", Ok(Duration::from_secs(1))),
            ("0s", Ok(Duration::ZERO)),
            ("30", Err("a duration needs a unit")),
            ("5w", Err("not a duration unit")),
            ("s", Err("not a duration;")),
            ("99999999999999999999d", Err("too large")),
            ("1.5h", Err("a duration is a whole number")),
        ];
        for (text, expected) in cases {
            match (parse_duration(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sizes() {
        let cases: [(&str, Result<u64, &str>); 10] = [
            ("1024", Ok(1024)),
            ("64KiB", Ok(65_536)),
            ("1MiB", Ok(1_048_576)),
            ("512KB", Ok(512_000)),
            ("2mb", Ok(2_000_000)),
            ("1GiB", Ok(1 << 30)),
            ("10B", Ok(10)),
            ("1TB", Err("not a size unit")),
            ("MiB", Err("not a size;")),
            ("1.5MB", Err("a size is a whole number")),
        ];
        for (text, expected) in cases {
            match (parse_size(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
