//! Humane durations for the CLI (`2s`, `500ms`, `1.5s`, `1m`, `0`), without another
//! dependency.

use std::time::Duration;

use crate::DemoError;

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h` (a bare `0` is allowed), e.g.
/// `2s`, `500ms`, `1.5s`. Used for `--push-interval`, where `0` means "off".
pub fn parse_duration(input: &str) -> Result<Duration, DemoError> {
    let err = |reason| DemoError::InvalidDuration {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(err("expected a number, e.g. 2s or 500ms"));
    }
    let value: f64 = number.parse().map_err(|_| err("not a number"))?;
    let seconds_per_unit = match unit.trim() {
        "" if value == 0.0 => 0.0,
        "" => return Err(err("missing unit (ms, s, m or h)")),
        "ms" => 1e-3,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        _ => return Err(err("unknown unit (expected ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| err("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_common_forms() {
        let ok = |s| parse_duration(s).ok();
        assert_eq!(ok("2s"), Some(Duration::from_secs(2)));
        assert_eq!(ok("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(ok("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(ok("1m"), Some(Duration::from_secs(60)));
        assert_eq!(ok("0"), Some(Duration::ZERO));
        assert_eq!(ok("0s"), Some(Duration::ZERO));
        assert_eq!(ok(" 100ms "), Some(Duration::from_millis(100)));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["", "s", "2", "2 parsecs", "1.2.3s", "-1s", "ms500"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
