//! `[drain]` and `[websocket]`: how tunnels are closed politely, pinged and limited.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use super::checker::Takes;
use crate::config::raw::{RawDrain, RawWebSocket};
use crate::config::words::Found;
use crate::config::{ConfigError, Drain, WebSocket, format_duration};

/// Largest `websocket.max_message_bytes`: 2^53, the largest integer every JSON reader keeps exact.
const MAX_MESSAGE_BYTES: i64 = 1 << 53;

/// Largest `websocket.lifetime_jitter`, in percent.
const MAX_JITTER_PERCENT: f64 = 50.0;

/// `websocket.lifetime_jitter` when the key is absent: 10 %.
const DEFAULT_JITTER: f64 = 0.10;

/// Shortest `websocket.ping_interval`: more often only adds traffic.
const MIN_PING_INTERVAL: Duration = Duration::from_secs(1);

/// `[drain]`, with its defaults when the table is absent.
pub(super) fn drain(check: &Checker, raw: &RawDrain) -> Drain {
    let close_code = match &raw.close_code {
        None => 1001,
        Some(c) => match *c.get_ref() {
            1001 => 1001,
            1012 => 1012,
            other => {
                check.report(
                    c.span(),
                    "drain.close_code",
                    format!("{other} is not a close code switchboard sends"),
                    Some("use 1001 (Going Away) or 1012 (Service Restart)".into()),
                );
                1001
            }
        },
    };
    Drain {
        spread: check.duration_or_zero(&raw.spread, "drain.spread", Duration::from_secs(5)),
        close_code,
        close_linger: check.duration(
            &raw.close_linger,
            "drain.close_linger",
            Duration::from_secs(5),
        ),
        timeout: check.duration(&raw.timeout, "drain.timeout", Duration::from_secs(30)),
    }
}

/// `[websocket]`, with its defaults (everything off) when the table is absent.
pub(super) fn websocket(check: &Checker, raw: &RawWebSocket) -> WebSocket {
    let key = "websocket.ping_interval";
    // Zero is taken here so that "0s" gets the minimum in its message.
    let takes = Takes {
        zero: true,
        off: true,
    };
    let ping_interval = check.duration_taking(&raw.ping_interval, key, None, takes, "30s");
    let ping_interval = match (ping_interval, &raw.ping_interval) {
        (Some(d), Some(v)) if d < MIN_PING_INTERVAL => {
            check.report(
                v.span(),
                key,
                format!("`{}` is too short a ping interval", format_duration(d)),
                Some("use at least \"1s\" (20s to 60s is usual), or \"off\"".into()),
            );
            None
        }
        (interval, _) => interval,
    };
    WebSocket {
        ping_interval,
        max_message_bytes: check.or(max_message_bytes(check, &raw.max_message_bytes), None),
        max_lifetime: check.duration_or_off(
            &raw.max_lifetime,
            "websocket.max_lifetime",
            None,
            "24h",
        ),
        lifetime_jitter: check.or(lifetime_jitter(check, &raw.lifetime_jitter), DEFAULT_JITTER),
    }
}

fn max_message_bytes(
    check: &Checker,
    value: &Option<Spanned<toml::Value>>,
) -> Result<Option<u64>, ConfigError> {
    let key = "websocket.max_message_bytes";
    let Some(value) = value else {
        return Ok(None);
    };
    match value.get_ref() {
        toml::Value::String(s) if s.trim().eq_ignore_ascii_case("off") => Ok(None),
        toml::Value::Integer(n) if (1..=MAX_MESSAGE_BYTES).contains(n) => Ok(Some(*n as u64)),
        toml::Value::Integer(n) => check.error(
            value.span(),
            key,
            format!(
                "{n} is out of range; expected a number of bytes from 1 to {MAX_MESSAGE_BYTES}, \
                 or \"off\""
            ),
            Some("e.g. 1048576 for 1 MiB, or \"off\" for no limit".into()),
        ),
        other => {
            let found = Found::of(other);
            check.error(
                value.span(),
                key,
                format!("expected a number of bytes such as 1048576, or \"off\"; found {found}"),
                Some(match found.number() {
                    Some(n) if n.parse::<i64>().is_ok() => {
                        format!("write {n} without quotes (a bare integer, no unit), or \"off\"")
                    }
                    _ => "write the size as a bare integer (no quotes, no unit), or \"off\"".into(),
                }),
            )
        }
    }
}

fn lifetime_jitter(
    check: &Checker,
    value: &Option<Spanned<toml::Value>>,
) -> Result<f64, ConfigError> {
    let key = "websocket.lifetime_jitter";
    let Some(value) = value else {
        return Ok(DEFAULT_JITTER);
    };
    let text = match value.get_ref() {
        toml::Value::String(s) => s.trim(),
        other @ (toml::Value::Integer(_) | toml::Value::Float(_)) => {
            let n = Found::of(other).to_string();
            // 0.1 reads as a fraction (10 %), 10 as percent.
            let percent = match other.as_float() {
                Some(f) if f > 0.0 && f < 1.0 => format!("{}", f * 100.0),
                _ => n.clone(),
            };
            return check.error(
                value.span(),
                key,
                format!("`{n}` is a bare number; the jitter is a percentage in quotes"),
                Some(format!("write \"{percent}%\"")),
            );
        }
        other => {
            return check.error(
                value.span(),
                key,
                format!(
                    "expected a percentage in quotes such as \"10%\", found {}",
                    Found::of(other)
                ),
                Some("write a percentage from \"0%\" to \"50%\", e.g. \"10%\"".into()),
            );
        }
    };
    let percent = text
        .strip_suffix('%')
        .map(str::trim_end)
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .and_then(|n| n.parse::<f64>().ok());
    match percent {
        Some(p) if (0.0..=MAX_JITTER_PERCENT).contains(&p) => Ok(p / 100.0),
        Some(_) => check.error(
            value.span(),
            key,
            format!("`{text}` is out of range"),
            Some("use a percentage from \"0%\" to \"50%\", e.g. \"10%\"".into()),
        ),
        None => check.error(
            value.span(),
            key,
            format!("`{text}` is not a percentage"),
            Some("write a percentage from \"0%\" to \"50%\", e.g. \"10%\"".into()),
        ),
    }
}
