//! [`Checker`]: collects every validation error of one file, and the checks shared by many keys
//! (addresses, durations, counts).
//!
//! A check of one key returns `Result`; the caller hands it to [`Checker::keep`] or
//! [`Checker::or`], which records the error and goes on with a default, so one run reports every
//! mistake in the file. The partial `Config` built from the defaults is thrown away whenever
//! anything was recorded.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;

use crate::config::duration::{DurationError, format_duration, parse_duration};
use crate::config::raw::RawDuration;
use crate::config::words::Found;
use crate::config::{ConfigError, line_of};

/// Carries the source text (so spans become line numbers) and the errors found so far.
pub(super) struct Checker<'a> {
    src: &'a str,
    origin: &'a str,
    found: RefCell<Vec<ConfigError>>,
}

/// What a duration key takes besides a duration longer than zero.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Takes {
    /// `"0s"` (for keys where zero means "none" or "at once").
    pub zero: bool,
    /// `"off"`, in any case: the feature is disabled.
    pub off: bool,
}

impl<'a> Checker<'a> {
    pub(super) fn new(src: &'a str, origin: &'a str) -> Checker<'a> {
        Checker {
            src,
            origin,
            found: RefCell::new(Vec::new()),
        }
    }

    /// The errors recorded, in the order found.
    pub(super) fn into_errors(self) -> Vec<ConfigError> {
        self.found.into_inner()
    }

    /// How many errors are recorded so far: a check that compares two keys runs only when
    /// neither of them failed, so it does not repeat their errors.
    pub(super) fn errors_so_far(&self) -> usize {
        self.found.borrow().len()
    }

    /// The error for `key`, written at `span`: what a check returns when the value is wrong.
    pub(super) fn error<T>(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::new(
            self.origin,
            Some(line_of(self.src, span.start)),
            Some(key.to_owned()),
            message,
            hint.into(),
        ))
    }

    /// Records the error of a failed check and goes on with `None`.
    pub(super) fn keep<T>(&self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.found.borrow_mut().push(e);
                None
            }
        }
    }

    /// Records the error of a failed check and goes on with `fallback`.
    pub(super) fn or<T>(&self, result: Result<T, ConfigError>, fallback: T) -> T {
        self.keep(result).unwrap_or(fallback)
    }

    /// Records an error found outside a check that returns one.
    pub(super) fn report(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        self.keep(self.error::<()>(span, key, message, hint));
    }

    pub(super) fn addr(
        &self,
        value: &Spanned<String>,
        key: &str,
    ) -> Result<SocketAddr, ConfigError> {
        if let Ok(addr) = value.get_ref().parse::<SocketAddr>() {
            return Ok(addr);
        }
        let resolved = value
            .get_ref()
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next());
        match resolved {
            Some(addr) => Ok(addr),
            None => self.error(
                value.span(),
                key,
                format!("`{}` is not a usable address", value.get_ref()),
                Some("write \"IP:PORT\" or \"HOSTNAME:PORT\", e.g. \"127.0.0.1:8080\"".into()),
            ),
        }
    }

    /// A duration longer than zero; `default` when the key is absent or wrong.
    pub(super) fn duration(
        &self,
        value: &Option<RawDuration>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let example = format_duration(default);
        self.duration_taking(value, key, Some(default), Takes::default(), &example)
            .unwrap_or(default)
    }

    /// Like [`Checker::duration`], but `"0s"` is accepted (for keys where zero means "none").
    pub(super) fn duration_or_zero(
        &self,
        value: &Option<RawDuration>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let takes = Takes {
            zero: true,
            off: false,
        };
        let example = match default.is_zero() {
            true => "5s".to_owned(),
            false => format_duration(default),
        };
        self.duration_taking(value, key, Some(default), takes, &example)
            .unwrap_or(default)
    }

    /// A duration longer than zero or `"off"` (`None`); `example` is shown in the hint.
    pub(super) fn duration_or_off(
        &self,
        value: &Option<RawDuration>,
        key: &str,
        default: Option<Duration>,
        example: &str,
    ) -> Option<Duration> {
        let takes = Takes {
            zero: false,
            off: true,
        };
        self.duration_taking(value, key, default, takes, example)
    }

    /// A duration key that `takes` what it says; `None` is "off". `default` when the key is
    /// absent or wrong.
    pub(super) fn duration_taking(
        &self,
        value: &Option<RawDuration>,
        key: &str,
        default: Option<Duration>,
        takes: Takes,
        example: &str,
    ) -> Option<Duration> {
        match value {
            None => default,
            Some(v) => self.or(self.duration_value(v, key, takes, example), default),
        }
    }

    /// The one reading of a duration key: `Ok(None)` is `"off"` (when taken). Any TOML value
    /// arrives here, so a bare number gets "write \"120s\"" instead of a type error.
    fn duration_value(
        &self,
        value: &RawDuration,
        key: &str,
        takes: Takes,
        example: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        let or_off = if takes.off { ", or \"off\"" } else { "" };
        let form = format!("write a duration such as \"{example}\"{or_off}");
        let fail = |message: String, hint: String| self.error(value.span(), key, message, hint);
        match value.get_ref() {
            toml::Value::String(s) if s.trim().eq_ignore_ascii_case("off") => {
                if takes.off {
                    Ok(None)
                } else if takes.zero {
                    fail(
                        "this key cannot be \"off\"".into(),
                        "write \"0s\" for none".into(),
                    )
                } else {
                    fail("this key cannot be \"off\"".into(), form)
                }
            }
            toml::Value::String(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() && !takes.zero => {
                    fail("must be longer than zero".into(), form)
                }
                Ok(d) => Ok(Some(d)),
                Err(e) => fail(e.to_string(), format!("{}{or_off}", e.hint())),
            },
            other @ (toml::Value::Integer(_) | toml::Value::Float(_)) => {
                let written = Found::of(other).to_string();
                // A bare number always lacks its unit; `parse_duration` says what else is wrong
                // with it (negative, not finite).
                let e = parse_duration(&written)
                    .err()
                    .unwrap_or_else(|| DurationError::NoUnit(written.clone()));
                let message = match e {
                    DurationError::NoUnit(_) => format!(
                        "`{written}` is a bare number; a duration is written in quotes, with a \
                         unit"
                    ),
                    _ => e.to_string(),
                };
                fail(message, format!("{}{or_off}", e.hint()))
            }
            other => fail(
                format!(
                    "expected a duration in quotes such as \"{example}\", found {}",
                    Found::of(other)
                ),
                form,
            ),
        }
    }

    /// A whole number in `range`; `default` when the key is absent or out of range.
    pub(super) fn count(
        &self,
        value: &Option<Spanned<i64>>,
        key: &str,
        default: usize,
        range: RangeInclusive<i64>,
    ) -> usize {
        let Some(value) = value else {
            return default;
        };
        let n = *value.get_ref();
        if !range.contains(&n) {
            self.report(
                value.span(),
                key,
                format!(
                    "{n} is out of range; use {} to {}",
                    range.start(),
                    range.end()
                ),
                None,
            );
            return default;
        }
        n as usize
    }
}
