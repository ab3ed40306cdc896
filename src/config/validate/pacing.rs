//! `[upstream.NAME]` keys that pace change: the upgrade token bucket and rebalancing.
//!
//! Rates and the skew may be written as integers or floats (`200`, `1.5`), so the raw values are
//! `toml::Value`s and are checked here by hand, with a message that says what was expected.

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawUpstream;
use crate::config::words::Found;
use crate::config::{Balance, ConfigError};

/// Default `rebalance_rate`: polite closes per second per upstream.
const DEFAULT_REBALANCE_RATE: f64 = 10.0;

/// `max_upgrades_per_second` and `upgrade_burst` → `(rate, burst)`, `None` when pacing is off.
pub(super) fn upgrade_pacing(
    check: &Checker,
    name: &str,
    raw: &RawUpstream,
) -> Result<Option<(f64, u32)>, ConfigError> {
    let rate_key = format!("upstream.{name}.max_upgrades_per_second");
    let burst_key = format!("upstream.{name}.upgrade_burst");
    let Some(rate_value) = &raw.max_upgrades_per_second else {
        return match &raw.upgrade_burst {
            None => Ok(None),
            Some(b) => check.error(
                b.span(),
                &burst_key,
                "upgrade_burst needs max_upgrades_per_second",
                Some("add max_upgrades_per_second = N (upgrades per second per backend), or remove upgrade_burst".into()),
            ),
        };
    };
    let rate = number(check, rate_value, &rate_key, "200")?;
    if rate <= 0.0 {
        return check.error(
            rate_value.span(),
            &rate_key,
            format!("{rate} is not a rate; use a number of upgrades per second above zero"),
            Some(
                "e.g. 200, or 0.5 for one every two seconds; leave the key out for no pacing"
                    .into(),
            ),
        );
    }
    let burst = match &raw.upgrade_burst {
        // One second's worth of upgrades, and at least one so a slow rate still admits any.
        None => rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
        Some(b) => {
            let n = *b.get_ref();
            if !(1..=i64::from(u32::MAX)).contains(&n) {
                return check.error(
                    b.span(),
                    &burst_key,
                    format!("{n} is out of range; use 1 to {}", u32::MAX),
                    Some("the most upgrades a backend admits at once; default: the rate".into()),
                );
            }
            n as u32
        }
    };
    Ok(Some((rate, burst)))
}

/// `rebalance_skew` and `rebalance_rate` → `(skew, rate)`; each falls back to its default
/// when it is wrong.
pub(super) fn rebalance(
    check: &Checker,
    name: &str,
    raw: &RawUpstream,
    balance: Balance,
) -> (Option<f64>, f64) {
    let skew = raw
        .rebalance_skew
        .as_ref()
        .and_then(|s| check.keep(rebalance_skew(check, name, s, balance)));
    let rate = match &raw.rebalance_rate {
        None => DEFAULT_REBALANCE_RATE,
        Some(r) => check.or(rebalance_rate(check, name, r), DEFAULT_REBALANCE_RATE),
    };
    (skew, rate)
}

fn rebalance_skew(
    check: &Checker,
    name: &str,
    s: &Spanned<toml::Value>,
    balance: Balance,
) -> Result<f64, ConfigError> {
    let key = format!("upstream.{name}.rebalance_skew");
    if balance == Balance::StickyHash {
        return check.error(
            s.span(),
            &key,
            "rebalance_skew does not apply to balance = \"sticky-hash\" (affinity wins: \
             rebalancing would move sticky keys)",
            Some("remove it; to bound sticky loads, use load_factor".into()),
        );
    }
    let skew = number(check, s, &key, "1.5")?;
    if skew <= 1.0 {
        return check.error(
            s.span(),
            &key,
            format!("{skew} is too small; the skew must be above 1.0"),
            Some("e.g. 1.5: a backend above 1.5 × the mean has its excess closed".into()),
        );
    }
    Ok(skew)
}

fn rebalance_rate(
    check: &Checker,
    name: &str,
    r: &Spanned<toml::Value>,
) -> Result<f64, ConfigError> {
    let key = format!("upstream.{name}.rebalance_rate");
    let rate = number(check, r, &key, "10")?;
    if rate <= 0.0 {
        return check.error(
            r.span(),
            &key,
            format!("{rate} is not a rate; use polite closes per second above zero"),
            Some("e.g. 10 (the default), or 0.5 for one every two seconds".into()),
        );
    }
    Ok(rate)
}

/// A finite number written as an integer or a float.
pub(super) fn number(
    check: &Checker,
    value: &Spanned<toml::Value>,
    key: &str,
    example: &str,
) -> Result<f64, ConfigError> {
    match value.get_ref() {
        toml::Value::Integer(n) => Ok(*n as f64),
        toml::Value::Float(f) if f.is_finite() => Ok(*f),
        toml::Value::Float(f) => check.error(
            value.span(),
            key,
            format!("{f} is not a usable number"),
            Some(format!("write a finite number such as {example}")),
        ),
        other => {
            let found = Found::of(other);
            check.error(
                value.span(),
                key,
                format!("expected a number such as {example}, found {found}"),
                Some(match found.number() {
                    Some(n) => format!("write {n} without quotes"),
                    None if matches!(&found, Found::Text(t) if t.trim().eq_ignore_ascii_case("off")) => {
                        format!("this key cannot be \"off\"; write a number such as {example}")
                    }
                    None => "write the number bare (no quotes, no unit); integers and decimals \
                             both work"
                        .into(),
                }),
            )
        }
    }
}
