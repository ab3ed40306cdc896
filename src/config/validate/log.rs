//! `[log]`: the access log's switches.

use super::Checker;
use crate::config::raw::RawLog;
use crate::config::{AccessLog, ConfigError};

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
