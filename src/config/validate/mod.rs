//! Raw → typed. Every check that can fail lives here, so the running proxy trusts its config.
//!
//! Each key is checked on its own and a failure is recorded by the [`Checker`], which then goes
//! on with the key's default: one run finds every mistake in the file. Checks that compare two
//! keys run only when neither failed, so one mistake is not reported twice.

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawConfig, RawDrain, RawLimits, RawTimeouts, RawWebSocket};
use super::{Config, ConfigError, Limits, LogFormat, Timeouts};

mod admin;
mod admission;
mod checker;
mod dns;
mod health_check;
mod log;
mod pacing;
mod proxy_protocol;
mod route;
mod sticky_cookie;
mod tls;
mod tunnel;
mod upstream;

use checker::Checker;

/// Upstream names that would collide with a metric label value switchboard uses itself.
const RESERVED_NAMES: [&str; 1] = ["none"];

/// Largest weight accepted; keeps the round-robin schedule small.
const MAX_WEIGHT: i64 = 256;

/// Stands in for an address that failed its check, so the checks after it still run; port 0
/// never clashes with another listener.
const UNUSABLE_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Turns the raw file into a [`Config`] and every error found. The config is only meaningful
/// when there are none: a failed key holds its default.
pub(super) fn validate(raw: RawConfig, src: &str, origin: &str) -> (Config, Vec<ConfigError>) {
    let check = Checker::new(src, origin);
    let listen = check.or(check.addr(&raw.listen, "listen"), UNUSABLE_ADDR);
    let (proxy_protocol, trusted_proxies) = proxy_protocol::listener(&check, &raw);
    let (admin, admin_token, handover_socket) = match &raw.admin {
        Some(admin) => (
            check.keep(check.addr(&admin.listen, "admin.listen")),
            check.or(admin::token(&check, admin), None),
            check.or(admin::handover_socket(&check, admin), None),
        ),
        None => (None, None, None),
    };
    let limits = limits(&check, raw.limits.as_ref().unwrap_or(&RawLimits::default()));
    let timeouts = timeouts(
        &check,
        raw.timeouts.as_ref().unwrap_or(&RawTimeouts::default()),
    );
    let drain = tunnel::drain(&check, raw.drain.as_ref().unwrap_or(&RawDrain::default()));
    let websocket = tunnel::websocket(
        &check,
        raw.websocket.as_ref().unwrap_or(&RawWebSocket::default()),
    );
    let log_format = match raw.log.as_ref().and_then(|log| log.format.as_ref()) {
        None => LogFormat::Text,
        Some(f) => match f.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                check.report(
                    f.span(),
                    "log.format",
                    format!("unknown log format `{other}`"),
                    Some("use \"text\" or \"json\"".into()),
                );
                LogFormat::Text
            }
        },
    };
    let log_level = check.or(
        log::level(&check, raw.log.as_ref()),
        crate::logging::DEFAULT_LEVEL.to_owned(),
    );
    let access_log = check.or(
        log::access(&check, raw.log.as_ref()),
        super::AccessLog {
            enabled: true,
            query: false,
        },
    );
    let tls = raw.tls.as_ref().map(|t| tls::tls(&check, t));
    let runtime = runtime(&check, raw.runtime.as_ref());

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, upstream) in &raw.upstreams {
        if RESERVED_NAMES.contains(&name.as_str()) {
            check.report(
                upstream.span(),
                &format!("upstream.{name}"),
                format!("`{name}` is reserved: metrics use it for requests that matched no route"),
                Some("choose another name for this upstream".into()),
            );
        }
        upstreams.push(upstream::upstream(&check, name, upstream));
    }
    let (routes, route_origins) = route::routes(&check, &raw);
    let dns = dns::dns(&check, raw.dns.as_ref());

    for (key, other, value) in [
        (
            "admin.listen",
            admin,
            raw.admin.as_ref().map(|a| a.listen.span()),
        ),
        (
            "tls.listen",
            tls.as_ref().and_then(|t| t.listen),
            raw.tls
                .as_ref()
                .and_then(|t| t.listen.as_ref())
                .map(|l| l.span()),
        ),
    ] {
        // Port 0 asks the system for a fresh port each time: never a clash.
        if let (Some(addr), Some(span)) = (other, value)
            && addr == listen
            && addr.port() != 0
        {
            check.report(
                span,
                key,
                format!("{addr} is also `listen`: two listeners cannot share one address"),
                Some("give it a port of its own".into()),
            );
        }
    }

    let config = Config {
        path: None,
        listen,
        proxy_protocol,
        trusted_proxies,
        admin,
        admin_token,
        handover_socket,
        limits,
        timeouts,
        drain,
        websocket,
        log_format,
        log_level,
        access_log,
        runtime,
        tls,
        routes,
        route_origins,
        upstreams,
        dns,
    };
    (config, check.into_errors())
}

fn limits(check: &Checker, raw: &RawLimits) -> Limits {
    let max_connections = check.count(
        &raw.max_connections,
        "limits.max_connections",
        10_000,
        1..=10_000_000,
    );
    Limits {
        max_connections,
        max_header_bytes: check.count(
            &raw.max_header_bytes,
            "limits.max_header_bytes",
            32 * 1024,
            1024..=1024 * 1024,
        ),
        header_read_timeout: check.duration(
            &raw.header_read_timeout,
            "limits.header_read_timeout",
            Duration::from_secs(10),
        ),
        max_tunnels_per_ip: check.or(admission::max_tunnels_per_ip(check, raw), None),
        upgrades_per_ip_per_second: check
            .or(admission::upgrades_per_ip_per_second(check, raw), None),
        max_tunnels: check.count(
            &raw.max_tunnels,
            "limits.max_tunnels",
            max_connections,
            1..=10_000_000,
        ),
        h2_max_streams: check.count(
            &raw.h2_max_streams,
            "limits.h2_max_streams",
            100,
            1..=10_000,
        ) as u32,
        h2_keepalive: check.duration(
            &raw.h2_keepalive,
            "limits.h2_keepalive",
            Duration::from_secs(20),
        ),
        h2_idle_timeout: check.duration(
            &raw.h2_idle_timeout,
            "limits.h2_idle_timeout",
            Duration::from_secs(60),
        ),
    }
}

fn timeouts(check: &Checker, raw: &RawTimeouts) -> Timeouts {
    Timeouts {
        connect: check.duration(&raw.connect, "timeouts.connect", Duration::from_secs(4)),
        handshake: check.duration(
            &raw.handshake,
            "timeouts.handshake",
            Duration::from_secs(10),
        ),
        request: check.duration(&raw.request, "timeouts.request", Duration::from_secs(60)),
        tunnel_idle: check.duration_or_off(
            &raw.tunnel_idle,
            "timeouts.tunnel_idle",
            Some(Duration::from_secs(3600)),
            "1h",
        ),
        half_closed: check.duration(
            &raw.half_closed,
            "timeouts.half_closed",
            Duration::from_secs(10),
        ),
        shutdown_delay: check.duration_or_zero(
            &raw.shutdown_delay,
            "timeouts.shutdown_delay",
            Duration::ZERO,
        ),
        shutdown_grace: check.duration(
            &raw.shutdown_grace,
            "timeouts.shutdown_grace",
            Duration::from_secs(30),
        ),
        backend_retry: check.duration(
            &raw.backend_retry,
            "timeouts.backend_retry",
            Duration::from_secs(10),
        ),
        request_body_idle: check.duration(
            &raw.request_body_idle,
            "timeouts.request_body_idle",
            Duration::from_secs(60),
        ),
        pool_idle: check.duration(&raw.pool_idle, "timeouts.pool_idle", Duration::from_secs(4)),
    }
}

/// Largest `runtime.threads`: far above any core count, low enough to catch a typo.
const MAX_THREADS: i64 = 1024;

/// `[runtime]`: `mode` ("per-core", the default, or "shared") and `threads` (1 to 1024).
fn runtime(check: &Checker, raw: Option<&super::raw::RawRuntime>) -> super::Runtime {
    let mut runtime = super::Runtime {
        mode: crate::workers::RuntimeMode::PerCore,
        threads: None,
    };
    let Some(raw) = raw else {
        return runtime;
    };
    if let Some(mode) = &raw.mode {
        match mode.get_ref().trim().to_ascii_lowercase().as_str() {
            "per-core" => {}
            "shared" => runtime.mode = crate::workers::RuntimeMode::Shared,
            other => check.report(
                mode.span(),
                "runtime.mode",
                format!("`{other}` is neither \"per-core\" nor \"shared\""),
                Some(
                    "write mode = \"per-core\" (one event loop per core, the default) or \
                     mode = \"shared\" (one work-stealing pool)"
                        .into(),
                ),
            ),
        }
    }
    if let Some(threads) = &raw.threads {
        let n = *threads.get_ref();
        if (1..=MAX_THREADS).contains(&n) {
            runtime.threads = usize::try_from(n).ok();
        } else {
            check.report(
                threads.span(),
                "runtime.threads",
                format!("{n} threads: must be 1 to {MAX_THREADS}"),
                Some("leave it out to run one per core".into()),
            );
        }
    }
    runtime
}
