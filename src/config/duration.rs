//! Human durations in config files — `"250ms"`, `"10s"`, `"1.5s"`, `"1m30s"`, `"2h"` — parsed
//! in this one place, and written back the same way in messages.

use std::fmt;
use std::time::Duration;

/// The units, largest first, with their length in nanoseconds. A compound names each at most
/// once, largest first (`"1h30m"`, not `"30m1h"`), so a slip such as `"1s1s"` is caught.
const UNITS: [(&str, u128); 4] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
];

/// Spellings people reach for, and the unit switchboard writes for them.
const UNIT_ALIASES: [(&str, &str); 14] = [
    ("sec", "s"),
    ("secs", "s"),
    ("second", "s"),
    ("seconds", "s"),
    ("min", "m"),
    ("mins", "m"),
    ("minute", "m"),
    ("minutes", "m"),
    ("hr", "h"),
    ("hour", "h"),
    ("hours", "h"),
    ("msec", "ms"),
    ("millis", "ms"),
    ("milliseconds", "ms"),
];

/// Why a text is not a duration. `Display` is the message; [`DurationError::hint`] says how to
/// write it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// A number without a unit (`"120"`, `"1m30"`): seconds and milliseconds are both plausible,
    /// so switchboard does not guess.
    NoUnit(String),
    /// A unit switchboard does not know (`"10d"`, `"5 secs"`).
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit as written.
        unit: String,
        /// The number in front of it, as written.
        number: String,
    },
    /// A compound whose units repeat or go from small to large (`"30s1m"`).
    UnitOrder(String),
    /// A negative duration.
    Negative(String),
    /// Longer than switchboard can count (about 584 years).
    TooLong(String),
    /// Not a number followed by a unit at all (`"soon"`, `""`).
    Malformed(String),
}

impl DurationError {
    /// How to write the value instead, in the config's own spelling.
    pub fn hint(&self) -> String {
        const FORMS: &str = "\"250ms\", \"10s\", \"1.5s\", \"1m30s\" or \"2h\"";
        match self {
            // In a compound the missing unit is the one after the last written ("1h30" → m).
            DurationError::NoUnit(text) if text.contains(|c: char| c.is_ascii_alphabetic()) => {
                let last_unit = text
                    .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
                    .rsplit(|c: char| c.is_ascii_digit() || c == '.')
                    .next()
                    .unwrap_or_default();
                let rank = UNITS.iter().position(|(u, _)| *u == last_unit);
                match rank.and_then(|r| UNITS.get(r + 1)) {
                    Some((next, _)) => format!("write \"{text}{next}\""),
                    None => format!("end it with a unit, e.g. {FORMS}"),
                }
            }
            DurationError::NoUnit(text) => {
                format!("write \"{text}s\" (or \"{text}ms\" for milliseconds)")
            }
            DurationError::UnknownUnit { unit, number, .. } => {
                let lower = unit.to_ascii_lowercase();
                let known = UNITS
                    .iter()
                    .map(|(u, _)| *u)
                    .find(|u| *u == lower)
                    .or_else(|| UNIT_ALIASES.iter().find(|(a, _)| *a == lower).map(|a| a.1));
                match known {
                    Some(unit) => format!("write \"{number}{unit}\""),
                    None if lower == "d" || lower.starts_with("day") => {
                        match number.parse::<u64>().ok().and_then(|d| d.checked_mul(24)) {
                            Some(hours) => format!("write \"{hours}h\"; the largest unit is h"),
                            None => "the largest unit is h, e.g. \"48h\"".to_owned(),
                        }
                    }
                    None => format!("the units are ms, s, m and h, e.g. {FORMS}"),
                }
            }
            DurationError::UnitOrder(_) => {
                "name each unit once, largest first, e.g. \"1h30m\" or \"1m30s\"".to_owned()
            }
            DurationError::Negative(_) => format!("a duration is zero or more, e.g. {FORMS}"),
            DurationError::TooLong(_) => "use a shorter duration, e.g. \"24h\"".to_owned(),
            DurationError::Malformed(_) => format!("write a number and a unit: {FORMS}"),
        }
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::NoUnit(text) => write!(f, "`{text}` has no unit"),
            DurationError::UnknownUnit { text, unit, .. } => {
                write!(f, "`{text}` has the unknown unit `{unit}`")
            }
            DurationError::UnitOrder(text) => {
                write!(f, "`{text}` repeats a unit or puts a smaller one first")
            }
            DurationError::Negative(text) => write!(f, "`{text}` is negative"),
            DurationError::TooLong(text) => write!(f, "`{text}` is too long"),
            DurationError::Malformed(text) if text.is_empty() => {
                f.write_str("the duration is empty")
            }
            DurationError::Malformed(text) => write!(f, "`{text}` is not a duration"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration: one or more `NUMBER UNIT` parts, largest unit first, where the number may
/// have a fraction (`"1.5s"`, `"0.5h"`, `"1m30s"`, `"250ms"`). A unit is required, so `"10"` is
/// an error rather than a guess between seconds and milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let whole = || text.to_owned();
    if text.starts_with('-') {
        return Err(DurationError::Negative(whole()));
    }
    if text.is_empty() || !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(DurationError::Malformed(whole()));
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    let mut previous_rank: Option<usize> = None;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit = unit.trim();
        let (whole_part, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole_part.is_empty()
            || !digits_ok(whole_part)
            || !digits_ok(fraction)
            || (number.contains('.') && fraction.is_empty())
        {
            return Err(DurationError::Malformed(whole()));
        }
        if unit.is_empty() {
            return Err(DurationError::NoUnit(whole()));
        }
        let Some(rank) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(DurationError::UnknownUnit {
                text: whole(),
                unit: unit.to_owned(),
                number: number.to_owned(),
            });
        };
        if previous_rank.is_some_and(|previous| rank <= previous) {
            return Err(DurationError::UnitOrder(whole()));
        }
        previous_rank = Some(rank);
        let unit_nanos = UNITS[rank].1;
        let too_long = || DurationError::TooLong(text.to_owned());
        let whole_value: u128 = whole_part.parse().map_err(|_| too_long())?;
        // Digits past the nanosecond cannot matter; dropping them keeps the arithmetic small.
        let fraction = &fraction[..fraction.len().min(12)];
        let fraction_nanos = match fraction {
            "" => 0,
            f => {
                f.parse::<u128>().map_err(|_| too_long())? * unit_nanos / 10u128.pow(f.len() as u32)
            }
        };
        nanos = whole_value
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(too_long)?;
        rest = after;
    }
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| DurationError::TooLong(whole()))
}

/// Writes a duration the way a config file would: `"250ms"`, `"2s"`, `"1.5s"`, `"1m30s"`,
/// `"2h"`; [`parse_duration`] reads every output back to the same value.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        // Below a millisecond: the exact seconds, which parse back as written.
        let secs = d.as_secs();
        let fraction = format!("{:09}", d.subsec_nanos());
        return format!("{secs}.{}s", fraction.trim_end_matches('0'));
    }
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.subsec_millis());
    }
    let secs = d.as_secs();
    let (hours, minutes, seconds) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let millis = d.subsec_millis();
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    match (seconds, millis) {
        (0, 0) => {}
        (s, 0) => out.push_str(&format!("{s}s")),
        (s, ms) => {
            let fraction = format!("{ms:03}");
            out.push_str(&format!("{s}.{}s", fraction.trim_end_matches('0')));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Result<Duration, DurationError> {
        Ok(Duration::from_millis(n))
    }

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("250ms"), ms(250));
        assert_eq!(parse_duration("10s"), ms(10_000));
        assert_eq!(parse_duration("5m"), ms(300_000));
        assert_eq!(parse_duration("1h"), ms(3_600_000));
        assert_eq!(parse_duration(" 0s "), ms(0));
    }

    #[test]
    fn parses_fractions_and_compounds() {
        assert_eq!(parse_duration("1.5s"), ms(1_500));
        assert_eq!(parse_duration("0.5s"), ms(500));
        assert_eq!(parse_duration("0.25h"), ms(900_000));
        assert_eq!(parse_duration("1m30s"), ms(90_000));
        assert_eq!(parse_duration("1h30m"), ms(5_400_000));
        assert_eq!(parse_duration("2h"), ms(7_200_000));
        assert_eq!(parse_duration("1h2m3s4ms"), ms(3_723_004));
        assert_eq!(parse_duration("1m0.5s"), ms(60_500));
        assert_eq!(
            parse_duration("0.0000000015s"),
            Ok(Duration::from_nanos(1)),
            "past the nanosecond is dropped"
        );
    }

    #[test]
    fn rejects_garbage_with_the_reason() {
        let no_unit = parse_duration("120").unwrap_err();
        assert_eq!(no_unit, DurationError::NoUnit("120".into()));
        assert_eq!(
            no_unit.hint(),
            "write \"120s\" (or \"120ms\" for milliseconds)"
        );
        assert_eq!(
            parse_duration("1m30").unwrap_err().hint(),
            "write \"1m30s\""
        );
        assert_eq!(
            parse_duration("1h30").unwrap_err().hint(),
            "write \"1h30m\""
        );
        assert!(
            parse_duration("1s500")
                .unwrap_err()
                .hint()
                .contains("1s500ms")
        );
        let days = parse_duration("2d").unwrap_err();
        assert!(days.to_string().contains("unknown unit `d`"), "{days}");
        assert_eq!(days.hint(), "write \"48h\"; the largest unit is h");
        assert_eq!(parse_duration("5 secs").unwrap_err().hint(), "write \"5s\"");
        assert!(
            parse_duration("99999999999999999999d")
                .unwrap_err()
                .hint()
                .contains("48h")
        );
        assert_eq!(parse_duration("10S").unwrap_err().hint(), "write \"10s\"");
        for order in ["30s1m", "1s1s", "1ms1s"] {
            assert_eq!(
                parse_duration(order),
                Err(DurationError::UnitOrder(order.into())),
                "{order}"
            );
        }
        for bad in [
            "soon", "", "s", ".5s", "1.s", "1..5s", "1.2.3s", "1s x", "off",
        ] {
            assert!(
                matches!(
                    parse_duration(bad),
                    Err(DurationError::Malformed(_)) | Err(DurationError::UnknownUnit { .. })
                ),
                "{bad}: {:?}",
                parse_duration(bad)
            );
        }
        assert_eq!(
            parse_duration("-5s"),
            Err(DurationError::Negative("-5s".into()))
        );
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("999999999999h"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn formats_as_a_config_would_and_reads_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(5_400), "1h30m"),
            (Duration::from_millis(3_723_004), "1h2m3.004s"),
            (Duration::from_nanos(1_500), "0.0000015s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_formatted_duration_parses_back(nanos in 0u64..u64::MAX / 2) {
            let d = Duration::from_nanos(nanos);
            proptest::prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
