//! `[log]`: the level (tracing filter directives, checked here so a typo is an error with its
//! line instead of a filter that silently shows nothing) and the access log's switches.

use super::Checker;
use crate::config::raw::RawLog;
use crate::config::{AccessLog, ConfigError};

/// The level words a directive may end in.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

const HINT: &str = "write a level (\"trace\", \"debug\", \"info\", \"warn\", \"error\" or \"off\"), \
                    optionally followed by TARGET=LEVEL pairs, e.g. \"warn,switchboard=debug\"";

/// The directives to log with; `"info"` when the key is absent. Stricter than `EnvFilter`, which
/// reads a bare word such as `"inf"` as a target name: here every directive must end in a level.
pub(super) fn level(check: &Checker, raw: Option<&RawLog>) -> Result<String, ConfigError> {
    let Some(value) = raw.and_then(|log| log.level.as_ref()) else {
        return Ok(crate::logging::DEFAULT_LEVEL.to_owned());
    };
    let text = value.get_ref().trim();
    let fail = |message: String| check.error(value.span(), "log.level", message, HINT.to_owned());
    if text.is_empty() {
        return fail("is empty".into());
    }
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return fail(if directive == level {
                format!("`{directive}` is not a log level")
            } else {
                format!("`{directive}` does not end in a log level")
            });
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(text) {
        return fail(format!("`{text}` is not a log filter: {e}"));
    }
    Ok(text.to_owned())
}

/// `log.access` ("on" or "off", default on) and `log.access_query` (default false).
pub(super) fn access(check: &Checker, raw: Option<&RawLog>) -> Result<AccessLog, ConfigError> {
    let enabled = match raw.and_then(|log| log.access.as_ref()) {
        None => true,
        Some(value) => match value.get_ref().trim().to_ascii_lowercase().as_str() {
            "on" => true,
            "off" => false,
            other => {
                return check.error(
                    value.span(),
                    "log.access",
                    format!("`{other}` is neither \"on\" nor \"off\""),
                    Some("write access = \"on\" (the default) or access = \"off\"".into()),
                );
            }
        },
    };
    let query = raw
        .and_then(|log| log.access_query.as_ref())
        .is_some_and(|q| *q.get_ref());
    Ok(AccessLog { enabled, query })
}
