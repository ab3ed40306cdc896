//! `[upstream.NAME.health_check]`: what an active probe does and how often.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawHealthCheck;
use crate::config::{ConfigError, HealthCheck, HealthCheckKind};

/// `[upstream.NAME.health_check]` with its defaults; `name` is the upstream's.
pub(super) fn health_check(
    check: &Checker,
    name: &str,
    spanned: &Spanned<RawHealthCheck>,
) -> Result<HealthCheck, ConfigError> {
    let raw = spanned.get_ref();
    let key = |field: &str| format!("upstream.{name}.health_check.{field}");
    let kind = match &raw.kind {
        None => {
            return check.error(
                spanned.span(),
                &key("kind"),
                "a health check needs a kind",
                Some("add kind = \"tcp\", \"http\" or \"websocket\"".into()),
            );
        }
        Some(k) => match k.get_ref().as_str() {
            "tcp" => HealthCheckKind::Tcp,
            "http" => HealthCheckKind::Http,
            "websocket" => HealthCheckKind::WebSocket,
            other => {
                return check.error(
                    k.span(),
                    &key("kind"),
                    format!("unknown health check kind `{other}`"),
                    Some("use \"tcp\", \"http\" or \"websocket\"".into()),
                );
            }
        },
    };
    let path = match &raw.path {
        None => "/".to_owned(),
        Some(p) if kind == HealthCheckKind::Tcp => return not_for_tcp(check, p, &key("path")),
        Some(p) if !p.get_ref().starts_with('/') || !is_token(p.get_ref()) => {
            return check.error(
                p.span(),
                &key("path"),
                format!("`{}` is not a request path", p.get_ref()),
                Some(
                    "write a path that starts with `/` and has no spaces, e.g. \"/healthz\"".into(),
                ),
            );
        }
        Some(p) => p.get_ref().clone(),
    };
    let host = match &raw.host {
        None => None,
        Some(h) if kind == HealthCheckKind::Tcp => return not_for_tcp(check, h, &key("host")),
        Some(h) if h.get_ref().is_empty() || !is_token(h.get_ref()) => {
            return check.error(
                h.span(),
                &key("host"),
                format!("`{}` is not a Host header value", h.get_ref()),
                Some("write a name such as \"chat.internal\", or leave it out for the server address".into()),
            );
        }
        Some(h) => Some(h.get_ref().clone()),
    };
    let expect_status = match &raw.expect_status {
        None => None,
        Some(s) if kind != HealthCheckKind::Http => {
            return check.error(
                s.span(),
                &key("expect_status"),
                "expect_status only applies to kind = \"http\"",
                Some(
                    "remove it: a websocket check always expects 101, a tcp check no status".into(),
                ),
            );
        }
        Some(s) if !(100..=599).contains(s.get_ref()) => {
            return check.error(
                s.span(),
                &key("expect_status"),
                format!("{} is not an HTTP status", s.get_ref()),
                Some("use a status from 100 to 599, or leave it out to accept any 2xx".into()),
            );
        }
        Some(s) => Some(*s.get_ref() as u16),
    };
    let interval = check.duration(&raw.interval, &key("interval"), Duration::from_secs(5))?;
    let timeout = check.duration(&raw.timeout, &key("timeout"), Duration::from_secs(2))?;
    if timeout >= interval {
        // Point at the key that was written: the timeout if given, else the interval.
        let (span, field, default) = match (&raw.timeout, &raw.interval) {
            (Some(t), _) => (t.span(), "timeout", ""),
            (None, Some(i)) => (i.span(), "interval", ", the default"),
            (None, None) => (spanned.span(), "timeout", ", the default"),
        };
        return check.error(
            span,
            &key(field),
            format!(
                "the timeout ({timeout:?}{default}) must be shorter than the interval \
                 ({interval:?}), so probes of one backend never overlap"
            ),
            Some("e.g. interval = \"5s\" with timeout = \"2s\" (the defaults)".into()),
        );
    }
    Ok(HealthCheck {
        kind,
        path,
        host,
        expect_status,
        interval,
        timeout,
        rise: check.count(&raw.rise, &key("rise"), 2, 1..=100)? as u32,
        fall: check.count(&raw.fall, &key("fall"), 3, 1..=100)? as u32,
    })
}

/// The error for `path` or `host` on a tcp check, which sends no request.
fn not_for_tcp<T>(check: &Checker, value: &Spanned<String>, key: &str) -> Result<T, ConfigError> {
    check.error(
        value.span(),
        key,
        "a tcp check sends no request, so it has no path or host",
        Some("remove it, or use kind = \"http\" or \"websocket\"".into()),
    )
}

/// Visible ASCII only: it goes into the probe's request line or a header as written.
fn is_token(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}
