//! `[dns]` and the `dns:NAME:PORT` servers of an upstream: backend discovery through DNS.
//!
//! Nameservers are IP literals (a nameserver found by name would need a resolver to find the
//! resolver); names are checked for the characters and lengths RFC 1035 §2.3.4 allows, so a
//! typo fails `check` rather than every lookup at run time.

use std::net::SocketAddr;

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawDns;
use crate::config::{ConfigError, Dns, DnsServer};

/// What marks a server as discovered through DNS.
pub(super) const PREFIX: &str = "dns:";

/// `[dns]`; absent: the system resolver.
pub(super) fn dns(check: &Checker, raw: Option<&Spanned<RawDns>>) -> Dns {
    let Some(nameservers) = raw.and_then(|d| d.get_ref().nameservers.as_ref()) else {
        return Dns::default();
    };
    let key = "dns.nameservers";
    if nameservers.get_ref().is_empty() {
        check.report(
            nameservers.span(),
            key,
            "the nameserver list is empty",
            Some(
                "list at least one \"IP:PORT\", e.g. [\"127.0.0.1:53\"], or remove it to use \
                 the system resolver (/etc/resolv.conf)"
                    .into(),
            ),
        );
    }
    let mut found: Vec<SocketAddr> = Vec::new();
    for server in nameservers.get_ref() {
        let text = server.get_ref().trim();
        match text.parse::<SocketAddr>() {
            Ok(addr) if found.contains(&addr) => check.report(
                server.span(),
                key,
                format!("`{text}` is listed twice"),
                Some("list each nameserver once".into()),
            ),
            Ok(addr) if addr.port() == 0 => check.report(
                server.span(),
                key,
                format!("`{text}` has port 0"),
                Some("DNS servers listen on port 53, e.g. \"10.0.0.10:53\"".into()),
            ),
            Ok(addr) => found.push(addr),
            Err(_) => check.report(
                server.span(),
                key,
                format!("`{text}` is not an IP:PORT address"),
                Some(
                    "write the nameserver's IP and port, e.g. \"127.0.0.1:53\" or \
                     \"[fd00::10]:53\" (a nameserver cannot be given by name)"
                        .into(),
                ),
            ),
        }
    }
    Dns { nameservers: found }
}

/// One `dns:NAME:PORT` server with its weight; `span` is where it is written.
pub(super) fn server(
    check: &Checker,
    span: std::ops::Range<usize>,
    spec: &str,
    weight: u32,
    key: &str,
) -> Result<DnsServer, ConfigError> {
    let form = "write \"dns:NAME:PORT\", e.g. \"dns:chat.default.svc.cluster.local:9000\"";
    let rest = &spec[PREFIX.len()..];
    let Some((host, port)) = rest.rsplit_once(':') else {
        return check.error(
            span,
            key,
            format!("`{spec}` has no port"),
            Some(form.into()),
        );
    };
    let port = match port.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => {
            return check.error(
                span,
                key,
                format!("`{port}` in `{spec}` is not a port (1 to 65535)"),
                Some(form.into()),
            );
        }
    };
    if let Err(why) = name_problem(host) {
        return check.error(
            span,
            key,
            format!("`{host}` in `{spec}` is not a DNS name: {why}"),
            Some(form.into()),
        );
    }
    Ok(DnsServer {
        spec: spec.to_owned(),
        host: host.to_owned(),
        port,
        weight,
    })
}

/// Why `host` cannot be looked up, if it cannot: RFC 1035 lengths, letters, digits, `-` and
/// `_` (service names such as `_grpc._tcp` use it), an optional final dot.
fn name_problem(host: &str) -> Result<(), &'static str> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-', '_' and dots are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::name_problem;

    #[test]
    fn names_as_kubernetes_writes_them_pass() {
        for ok in [
            "chat-backend.default.svc.cluster.local",
            "chat.",
            "localhost",
            "_ws._tcp.chat.internal",
        ] {
            assert_eq!(name_problem(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a b",
            "[::1]",
            "x".repeat(64).as_str(),
        ] {
            assert!(name_problem(bad).is_err(), "{bad}");
        }
    }
}
