//! `[upstream.NAME.health_check]`: what an active probe does and how often.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawHealthCheck;
use crate::config::{ConfigError, HealthCheck, HealthCheckKind, format_duration};

/// `[upstream.NAME.health_check]` with its defaults; `name` is the upstream's. A wrong key is
/// reported and stands in with its default.
pub(super) fn health_check(
    check: &Checker,
    name: &str,
    spanned: &Spanned<RawHealthCheck>,
) -> HealthCheck {
    let raw = spanned.get_ref();
    let key = |field: &str| format!("upstream.{name}.health_check.{field}");
    // The keys after it depend on the kind; without a valid one they are not judged.
    let kind = check.keep(kind(check, spanned, &key("kind")));
    let path = raw
        .path
        .as_ref()
        .zip(kind)
        .and_then(|(p, kind)| check.keep(path(check, p, kind, &key("path"))))
        .unwrap_or_else(|| "/".to_owned());
    let host = raw
        .host
        .as_ref()
        .zip(kind)
        .and_then(|(h, kind)| check.keep(host(check, h, kind, &key("host"))));
    let expect_status = raw
        .expect_status
        .as_ref()
        .zip(kind)
        .and_then(|(s, kind)| check.keep(expect_status(check, s, kind, &key("expect_status"))));
    let before = check.errors_so_far();
    let interval = check.duration(&raw.interval, &key("interval"), Duration::from_secs(5));
    let timeout = check.duration(&raw.timeout, &key("timeout"), Duration::from_secs(2));
    if timeout >= interval && check.errors_so_far() == before {
        // Point at the key that was written: the timeout if given, else the interval.
        let (span, field, default) = match (&raw.timeout, &raw.interval) {
            (Some(t), _) => (t.span(), "timeout", ""),
            (None, Some(i)) => (i.span(), "interval", ", the default"),
            (None, None) => (spanned.span(), "timeout", ", the default"),
        };
        check.report(
            span,
            &key(field),
            format!(
                "the timeout ({}{default}) must be shorter than the interval ({}), so probes \
                 of one backend never overlap",
                format_duration(timeout),
                format_duration(interval),
            ),
            Some("e.g. interval = \"5s\" with timeout = \"2s\" (the defaults)".into()),
        );
    }
    HealthCheck {
        kind: kind.unwrap_or(HealthCheckKind::Tcp),
        path,
        host,
        expect_status,
        interval,
        timeout,
        rise: check.count(&raw.rise, &key("rise"), 2, 1..=100) as u32,
        fall: check.count(&raw.fall, &key("fall"), 3, 1..=100) as u32,
        // The upstream's `send_proxy_protocol`, filled in by the upstream check.
        proxy_header: None,
    }
}

fn kind(
    check: &Checker,
    spanned: &Spanned<RawHealthCheck>,
    key: &str,
) -> Result<HealthCheckKind, ConfigError> {
    let Some(k) = &spanned.get_ref().kind else {
        return check.error(
            spanned.span(),
            key,
            "a health check needs a kind",
            Some("add kind = \"tcp\", \"http\" or \"websocket\"".into()),
        );
    };
    match k.get_ref().as_str() {
        "tcp" => Ok(HealthCheckKind::Tcp),
        "http" => Ok(HealthCheckKind::Http),
        "websocket" => Ok(HealthCheckKind::WebSocket),
        other => check.error(
            k.span(),
            key,
            format!("unknown health check kind `{other}`"),
            Some("use \"tcp\", \"http\" or \"websocket\"".into()),
        ),
    }
}

fn path(
    check: &Checker,
    p: &Spanned<String>,
    kind: HealthCheckKind,
    key: &str,
) -> Result<String, ConfigError> {
    if kind == HealthCheckKind::Tcp {
        return not_for_tcp(check, p, key);
    }
    if !p.get_ref().starts_with('/') || !is_token(p.get_ref()) {
        return check.error(
            p.span(),
            key,
            format!("`{}` is not a request path", p.get_ref()),
            Some("write a path that starts with `/` and has no spaces, e.g. \"/healthz\"".into()),
        );
    }
    Ok(p.get_ref().clone())
}

fn host(
    check: &Checker,
    h: &Spanned<String>,
    kind: HealthCheckKind,
    key: &str,
) -> Result<String, ConfigError> {
    if kind == HealthCheckKind::Tcp {
        return not_for_tcp(check, h, key);
    }
    if h.get_ref().is_empty() || !is_token(h.get_ref()) {
        return check.error(
            h.span(),
            key,
            format!("`{}` is not a Host header value", h.get_ref()),
            Some(
                "write a name such as \"chat.internal\", or leave it out for the server address"
                    .into(),
            ),
        );
    }
    Ok(h.get_ref().clone())
}

fn expect_status(
    check: &Checker,
    s: &Spanned<i64>,
    kind: HealthCheckKind,
    key: &str,
) -> Result<u16, ConfigError> {
    if kind != HealthCheckKind::Http {
        return check.error(
            s.span(),
            key,
            "expect_status only applies to kind = \"http\"",
            Some("remove it: a websocket check always expects 101, a tcp check no status".into()),
        );
    }
    if !(100..=599).contains(s.get_ref()) {
        return check.error(
            s.span(),
            key,
            format!("{} is not an HTTP status", s.get_ref()),
            Some("use a status from 100 to 599, or leave it out to accept any 2xx".into()),
        );
    }
    Ok(*s.get_ref() as u16)
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
