//! The text form of a [`Report`]: what `switchboard check` prints for people, one fact per line
//! in the config's own words.

use std::fmt;

use super::report::{HealthCheckReport, Report, UpstreamReport};

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: ok", self.config)?;
        for listener in &self.listeners {
            match listener.kind {
                "admin" => writeln!(f, "admin  {}", listener.address)?,
                kind => writeln!(f, "listen {} ({kind})", listener.address)?,
            }
        }
        if let Some(version) = self.proxy_protocol {
            writeln!(f, "client connections start with a PROXY {version} header")?;
        }
        if !self.trusted_proxies.is_empty() {
            writeln!(f, "trusted proxies {}", self.trusted_proxies.join(", "))?;
        }
        if let Some(path) = &self.handover_socket {
            writeln!(f, "hand-over socket {path}")?;
        }
        writeln!(f, "log    {}, level {}", self.log.format, self.log.level)?;
        writeln!(f, "routes:")?;
        for route in &self.routes {
            let host = route.host.as_deref().unwrap_or("*");
            write!(f, "  {host}{} -> {}", route.path_prefix, route.upstream)?;
            if let Some(origins) = &route.allowed_origins {
                write!(f, "; WebSockets from {}", origins.join(", "))?;
            }
            if route.require_origin {
                write!(f, "; Origin required")?;
            }
            writeln!(f)?;
        }
        if !self.certificates.is_empty() {
            writeln!(f, "certificates:")?;
        }
        for cert in &self.certificates {
            let chosen_for = if cert.server_names.is_empty() {
                "its own names".to_owned()
            } else {
                cert.server_names.join(", ")
            };
            writeln!(
                f,
                "  {}{}: names {}; chosen for {chosen_for}; expires {}",
                cert.cert,
                if cert.default { " (default)" } else { "" },
                cert.names.join(", "),
                cert.expires,
            )?;
        }
        writeln!(f, "upstreams:")?;
        for upstream in &self.upstreams {
            write_upstream(f, upstream)?;
        }
        Ok(())
    }
}

fn write_upstream(f: &mut fmt::Formatter<'_>, upstream: &UpstreamReport) -> fmt::Result {
    write!(f, "  {}: {}", upstream.name, upstream.balance)?;
    if let Some(key) = &upstream.hash_key {
        write!(f, " on {key}")?;
    }
    if let Some(factor) = upstream.load_factor {
        write!(f, ", load_factor {factor}")?;
    }
    writeln!(f)?;
    if let Some(tls) = &upstream.tls {
        writeln!(
            f,
            "    TLS to backends as {} trusting {}",
            tls.server_name,
            tls.ca.as_deref().unwrap_or("the system roots")
        )?;
    }
    if let Some(version) = upstream.send_proxy_protocol {
        writeln!(f, "    PROXY {version} header sent to backends")?;
    }
    for server in &upstream.servers {
        write!(f, "    server {}", server.addr)?;
        if server.weight != 1 {
            write!(f, " weight {}", server.weight)?;
        }
        if server.resolved != server.addr {
            write!(f, " (resolved to {})", server.resolved)?;
        }
        writeln!(f)?;
    }
    if let Some(dns) = &upstream.dns {
        for server in &dns.servers {
            writeln!(
                f,
                "    server {server}: every A/AAAA record, looked up every {}",
                dns.resolve_interval
            )?;
        }
    }
    if let Some(check) = &upstream.health_check {
        write_health_check(f, check)?;
    }
    if upstream.slow_start != "0s" {
        writeln!(f, "    slow start over {}", upstream.slow_start)?;
    }
    if let Some(pacing) = &upstream.upgrade_pacing {
        writeln!(
            f,
            "    upgrades paced at {}/s per backend, burst {}",
            pacing.max_upgrades_per_second, pacing.upgrade_burst
        )?;
    }
    if let Some(rebalance) = &upstream.rebalance {
        writeln!(
            f,
            "    rebalanced above {} x the mean, {} closes/s",
            rebalance.skew, rebalance.rate
        )?;
    }
    Ok(())
}

fn write_health_check(f: &mut fmt::Formatter<'_>, check: &HealthCheckReport) -> fmt::Result {
    write!(f, "    health check: ")?;
    match (check.kind, &check.path) {
        ("http", Some(path)) => write!(f, "http GET {path}")?,
        ("websocket", Some(path)) => write!(f, "websocket upgrade {path}")?,
        _ => write!(f, "tcp connect")?,
    }
    if let Some(host) = &check.host {
        write!(f, " (Host {host})")?;
    }
    if let Some(status) = check.expect_status {
        write!(f, " expecting {status}")?;
    }
    writeln!(
        f,
        " every {}, timeout {}, up after {}, down after {}",
        check.interval, check.timeout, check.rise, check.fall
    )
}
