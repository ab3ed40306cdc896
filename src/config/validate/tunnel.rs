//! `[drain]` and `[websocket]`: how tunnels are closed politely, pinged and limited.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::{RawDrain, RawWebSocket};
use crate::config::{ConfigError, Drain, WebSocket};

/// Largest `websocket.max_message_bytes`: 2^53, the largest integer every JSON reader keeps exact.
const MAX_MESSAGE_BYTES: i64 = 1 << 53;

/// Largest `websocket.lifetime_jitter`, in percent.
const MAX_JITTER_PERCENT: f64 = 50.0;

/// `[drain]`, with its defaults when the table is absent.
pub(super) fn drain(check: &Checker, raw: &RawDrain) -> Result<Drain, ConfigError> {
    let close_code = match &raw.close_code {
        None => 1001,
        Some(c) => match *c.get_ref() {
            1001 => 1001,
            1012 => 1012,
            other => {
                return check.error(
                    c.span(),
                    "drain.close_code",
                    format!("{other} is not a close code switchboard sends"),
                    Some("use 1001 (Going Away) or 1012 (Service Restart)".into()),
                );
            }
        },
    };
    Ok(Drain {
        spread: check.duration_or_zero(&raw.spread, "drain.spread", Duration::from_secs(5))?,
        close_code,
        close_linger: check.duration(
            &raw.close_linger,
            "drain.close_linger",
            Duration::from_secs(5),
        )?,
        timeout: check.duration(&raw.timeout, "drain.timeout", Duration::from_secs(30))?,
    })
}

/// `[websocket]`, with its defaults (everything off) when the table is absent.
pub(super) fn websocket(check: &Checker, raw: &RawWebSocket) -> Result<WebSocket, ConfigError> {
    let key = "websocket.ping_interval";
    let ping_interval = match &raw.ping_interval {
        Some(v) if !is_off(v) => {
            let d = check
                .duration_or_zero(&raw.ping_interval, key, Duration::ZERO)
                .map_err(or_off("30s"))?;
            if d < Duration::from_secs(1) {
                return check.error(
                    v.span(),
                    key,
                    format!("`{}` is too short a ping interval", v.get_ref()),
                    Some("use at least \"1s\" (20s to 60s is usual), or \"off\"".into()),
                );
            }
            Some(d)
        }
        _ => None,
    };
    let max_lifetime = match &raw.max_lifetime {
        Some(v) if !is_off(v) => Some(
            check
                .duration(&raw.max_lifetime, "websocket.max_lifetime", Duration::ZERO)
                .map_err(or_off("24h"))?,
        ),
        _ => None,
    };
    Ok(WebSocket {
        ping_interval,
        max_message_bytes: max_message_bytes(check, &raw.max_message_bytes)?,
        max_lifetime,
        lifetime_jitter: lifetime_jitter(check, &raw.lifetime_jitter)?,
    })
}

/// Adds the hint for a key that takes a duration or "off", e.g. `or_off("30s")`.
fn or_off(example: &str) -> impl FnOnce(ConfigError) -> ConfigError + '_ {
    move |mut e| {
        e.hint = Some(format!(
            "write a duration such as \"{example}\", or \"off\""
        ));
        e
    }
}

/// `"off"`, in any case: the feature is disabled.
fn is_off(value: &Spanned<String>) -> bool {
    value.get_ref().trim().eq_ignore_ascii_case("off")
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
        _ => check.error(
            value.span(),
            key,
            "expected a number of bytes such as 1048576, or \"off\"",
            Some("write the size as a bare integer (no quotes, no unit), or \"off\"".into()),
        ),
    }
}

fn lifetime_jitter(check: &Checker, value: &Option<Spanned<String>>) -> Result<f64, ConfigError> {
    let Some(value) = value else {
        return Ok(0.10);
    };
    let text = value.get_ref().trim();
    let percent = text
        .strip_suffix('%')
        .map(str::trim_end)
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .and_then(|n| n.parse::<f64>().ok());
    match percent {
        Some(p) if (0.0..=MAX_JITTER_PERCENT).contains(&p) => Ok(p / 100.0),
        Some(_) => check.error(
            value.span(),
            "websocket.lifetime_jitter",
            format!("`{text}` is out of range"),
            Some("use a percentage from \"0%\" to \"50%\", e.g. \"10%\"".into()),
        ),
        None => check.error(
            value.span(),
            "websocket.lifetime_jitter",
            format!("`{text}` is not a percentage"),
            Some("write a percentage from \"0%\" to \"50%\", e.g. \"10%\"".into()),
        ),
    }
}
