//! Human-readable durations in configuration files ("30s", "5m", "8h", "30d"), parsed with
//! `humantime`, shared by the CA and host configurations.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Serde `deserialize_with` helper for a required duration such as `"5m"`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Serde `deserialize_with` helper for an optional duration.
pub fn deserialize_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    text.map(|t| parse(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// Longest duration a configuration may give: 100 years. Durations are added to and
/// subtracted from Unix times as `i64` seconds; with this bound no sum can overflow, where
/// `humantime` alone accepts up to `u64::MAX` seconds.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Parse a duration such as `"90s"`, `"5m"` or `"1h 30m"`, at most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?} ({e}); use e.g. \"30s\", \"5m\", \"8h\"")
    })?;
    if duration > MAX {
        return Err(format!(
            "duration {text:?} is longer than the longest accepted, 100 years"
        ));
    }
    Ok(duration)
}

/// Whole seconds of `duration` as `i64`, for arithmetic on Unix times. Saturating: a
/// duration too long for `i64` is the longest, never a negative one (a configured one is
/// at most [`MAX`] and always fits).
pub fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Render a duration the way configuration files write it.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config_forms() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert!(parse("five minutes").is_err());
    }

    #[test]
    fn secs_saturates() {
        assert_eq!(secs(Duration::from_millis(90_999)), 90);
        assert_eq!(secs(MAX), 100 * 365 * 24 * 60 * 60);
        assert_eq!(secs(Duration::from_secs(i64::MAX as u64)), i64::MAX);
        assert_eq!(secs(Duration::from_secs(u64::MAX)), i64::MAX);
    }

    /// Durations end up in `i64` Unix-time arithmetic: anything that could overflow it is
    /// refused at parse time.
    #[test]
    fn refuses_durations_that_could_overflow_time_arithmetic() {
        assert_eq!(parse("36500days"), Ok(MAX));
        for text in [
            "36501days",
            "101years",
            "500000000000y",
            "18446744073709551615s",
            "9223372036854775807s",
        ] {
            let error = parse(text).expect_err(text);
            assert!(
                error.contains("100 years") || error.contains("invalid"),
                "{text}: {error}"
            );
        }
    }
}
