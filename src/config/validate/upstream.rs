//! `[upstream.NAME]`: strategy, hash key, load bound, servers, backend TLS; slow start, pacing,
//! rebalancing and health checks are in their own modules.

use toml::Spanned;

use super::{Checker, MAX_WEIGHT, dns, health_check, pacing, proxy_protocol, sticky_cookie};
use crate::config::raw::{RawBackendTls, RawServer, RawUpstream};
use crate::config::{BackendTls, Balance, ConfigError, DnsServer, HashKeySpec, Server, Upstream};

/// How often `dns:` servers are looked up again when `resolve_interval` is not set.
const DEFAULT_RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// One `[upstream.NAME]`; every key is checked, a wrong one stands in with its default.
pub(super) fn upstream(check: &Checker, name: &str, spanned: &Spanned<RawUpstream>) -> Upstream {
    let raw = spanned.get_ref();
    let key = |field: &str| format!("upstream.{name}.{field}");
    let before = check.errors_so_far();
    let balance = match &raw.balance {
        None => Balance::LeastConn,
        Some(b) => check.or(balance(check, b, &key("balance")), Balance::LeastConn),
    };
    // hash_key and load_factor depend on the strategy: when it was wrong, they are not judged
    // by the default that stands in for it.
    let (hash_key, load_factor) = if check.errors_so_far() == before {
        (
            check
                .keep(hash_key_for(check, spanned, balance, &key("hash_key")))
                .flatten(),
            check
                .keep(load_factor(check, raw, balance, &key("load_factor")))
                .flatten(),
        )
    } else {
        (None, None)
    };
    let (servers, dns) = servers(check, raw, &key("servers"));
    let resolve_interval = resolve_interval(check, raw, !dns.is_empty(), &key("resolve_interval"));
    let tls = raw
        .tls
        .as_ref()
        .and_then(|t| check.keep(backend_tls(check, t, &key("tls"))));
    let slow_start = check.duration_or_zero(
        &raw.slow_start,
        &key("slow_start"),
        std::time::Duration::ZERO,
    );
    let upgrade_pacing = check.or(pacing::upgrade_pacing(check, name, raw), None);
    let (rebalance_skew, rebalance_rate) = pacing::rebalance(check, name, raw, balance);
    let send_proxy_protocol = raw.send_proxy_protocol.as_ref().and_then(|v| {
        check
            .keep(proxy_protocol::version(
                check,
                v,
                &key("send_proxy_protocol"),
            ))
            .flatten()
    });
    let health_check = raw.health_check.as_ref().map(|h| {
        let mut probe = health_check::health_check(check, name, h);
        probe.proxy_header = send_proxy_protocol;
        probe
    });
    let sticky_cookie = raw
        .sticky_cookie
        .as_ref()
        .and_then(|c| check.keep(sticky_cookie::sticky_cookie(check, name, c)));
    Upstream {
        name: name.to_owned(),
        balance,
        hash_key,
        load_factor,
        tls,
        servers,
        dns,
        resolve_interval,
        slow_start,
        upgrade_pacing,
        rebalance_skew,
        rebalance_rate,
        health_check,
        sticky_cookie,
        send_proxy_protocol,
    }
}

fn balance(check: &Checker, b: &Spanned<String>, key: &str) -> Result<Balance, ConfigError> {
    match b.get_ref().as_str() {
        "least-conn" => Ok(Balance::LeastConn),
        "sticky-hash" => Ok(Balance::StickyHash),
        "round-robin" => Ok(Balance::RoundRobin),
        other => check.error(
            b.span(),
            key,
            format!("unknown strategy `{other}`"),
            Some("use \"least-conn\", \"sticky-hash\" or \"round-robin\"".into()),
        ),
    }
}

/// `hash_key`, which sticky-hash needs and the other strategies refuse.
fn hash_key_for(
    check: &Checker,
    spanned: &Spanned<RawUpstream>,
    balance: Balance,
    key: &str,
) -> Result<Option<HashKeySpec>, ConfigError> {
    match &spanned.get_ref().hash_key {
        None if balance == Balance::StickyHash => check.error(
            spanned.span(),
            key,
            "sticky-hash needs a hash_key",
            Some(
                "add hash_key = \"ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"".into(),
            ),
        ),
        None => Ok(None),
        Some(k) if balance != Balance::StickyHash => check.error(
            k.span(),
            key,
            format!(
                "hash_key only applies to balance = \"{}\"",
                Balance::StickyHash
            ),
            Some(format!(
                "remove it, or set balance = \"{}\" (this upstream is \"{balance}\")",
                Balance::StickyHash
            )),
        ),
        Some(k) => hash_key(check, k, key).map(Some),
    }
}

fn load_factor(
    check: &Checker,
    raw: &RawUpstream,
    balance: Balance,
    key: &str,
) -> Result<Option<f64>, ConfigError> {
    match &raw.load_factor {
        None => Ok(None),
        Some(f) if balance != Balance::StickyHash => check.error(
            f.span(),
            key,
            format!(
                "load_factor only applies to balance = \"{}\"",
                Balance::StickyHash
            ),
            Some(format!(
                "remove it, or set balance = \"{}\" (this upstream is \"{balance}\")",
                Balance::StickyHash
            )),
        ),
        Some(f) if !(1.0..=100.0).contains(f.get_ref()) => check.error(
            f.span(),
            key,
            format!("{} is out of range", f.get_ref()),
            Some("use a factor from 1.0 to 100.0, e.g. 1.25".into()),
        ),
        Some(f) => Ok(Some(*f.get_ref())),
    }
}

/// `resolve_interval`, which only `dns:` servers use.
fn resolve_interval(
    check: &Checker,
    raw: &RawUpstream,
    has_dns: bool,
    key: &str,
) -> std::time::Duration {
    if let (Some(value), false) = (&raw.resolve_interval, has_dns) {
        check.report(
            value.span(),
            key,
            "resolve_interval only applies to \"dns:NAME:PORT\" servers",
            Some("remove it, or list a server as \"dns:NAME:PORT\"".into()),
        );
        return DEFAULT_RESOLVE_INTERVAL;
    }
    check.duration(&raw.resolve_interval, key, DEFAULT_RESOLVE_INTERVAL)
}

/// The static servers and the `dns:` servers, each in file order; a wrong one is reported and
/// left out.
fn servers(check: &Checker, raw: &RawUpstream, key: &str) -> (Vec<Server>, Vec<DnsServer>) {
    if raw.servers.get_ref().is_empty() {
        check.report(
            raw.servers.span(),
            key,
            "the server list is empty",
            Some("list at least one backend, e.g. servers = [\"127.0.0.1:9001\"]".into()),
        );
    }
    let mut servers: Vec<Server> = Vec::with_capacity(raw.servers.get_ref().len());
    let mut discovered: Vec<DnsServer> = Vec::new();
    for server in raw.servers.get_ref() {
        if server.get_ref().addr.starts_with(dns::PREFIX) {
            if let Some(s) = check.keep(dns_server(check, server, &discovered, key)) {
                discovered.push(s);
            }
        } else if let Some(s) = check.keep(one_server(check, server, &servers, key)) {
            servers.push(s);
        }
    }
    (servers, discovered)
}

/// The weight of a server, 1..=MAX_WEIGHT (1 when not written).
fn weight_of(check: &Checker, server: &Spanned<RawServer>, key: &str) -> Result<u32, ConfigError> {
    let weight = server.get_ref().weight.unwrap_or(1);
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return check.error(
            server.span(),
            key,
            format!("weight {weight} is out of range; use 1 to {MAX_WEIGHT}"),
            None,
        );
    }
    Ok(weight as u32)
}

fn dns_server(
    check: &Checker,
    server: &Spanned<RawServer>,
    earlier: &[DnsServer],
    key: &str,
) -> Result<DnsServer, ConfigError> {
    let spec = server.get_ref().addr.trim();
    let weight = weight_of(check, server, key)?;
    let parsed = dns::server(check, server.span(), spec, weight, key)?;
    if earlier
        .iter()
        .any(|d| d.host.eq_ignore_ascii_case(&parsed.host) && d.port == parsed.port)
    {
        return check.error(
            server.span(),
            key,
            format!("`{spec}` is listed twice"),
            Some("give it a higher weight instead".into()),
        );
    }
    Ok(parsed)
}

fn one_server(
    check: &Checker,
    server: &Spanned<RawServer>,
    earlier: &[Server],
    key: &str,
) -> Result<Server, ConfigError> {
    let addr = &server.get_ref().addr;
    let spanned_addr = Spanned::new(server.span(), addr.clone());
    let socket = check.addr(&spanned_addr, key)?;
    let weight = weight_of(check, server, key)?;
    if earlier.iter().any(|s| s.name == *addr) {
        return check.error(
            server.span(),
            key,
            format!("`{addr}` is listed twice"),
            Some("give it a higher weight instead".into()),
        );
    }
    if let Some(same) = earlier.iter().find(|s| s.addr == socket) {
        return check.error(
            server.span(),
            key,
            format!(
                "`{addr}` is the same backend as `{}` ({socket}): it would be balanced as two",
                same.name
            ),
            Some("list it once (with a higher weight if it should get more)".into()),
        );
    }
    Ok(Server {
        addr: socket,
        name: addr.clone(),
        weight,
    })
}

fn hash_key(check: &Checker, k: &Spanned<String>, key: &str) -> Result<HashKeySpec, ConfigError> {
    let text = k.get_ref().as_str();
    let parsed = match text.split_once(':') {
        None if text == "ip" => Some(HashKeySpec::Ip),
        Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
            .ok()
            .map(HashKeySpec::Header),
        Some(("cookie", name)) if !name.is_empty() => Some(HashKeySpec::Cookie(name.to_owned())),
        Some(("query", name)) if !name.is_empty() => Some(HashKeySpec::Query(name.to_owned())),
        _ => None,
    };
    match parsed {
        Some(spec) => Ok(spec),
        None => check.error(
            k.span(),
            key,
            format!("`{text}` is not a hash key"),
            Some("use \"ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"".into()),
        ),
    }
}

fn backend_tls(
    check: &Checker,
    raw: &Spanned<RawBackendTls>,
    key: &str,
) -> Result<BackendTls, ConfigError> {
    let t = raw.get_ref();
    let server_name = t.server_name.get_ref().trim().to_owned();
    if rustls::pki_types::ServerName::try_from(server_name.clone()).is_err() {
        return check.error(
            t.server_name.span(),
            &format!("{key}.server_name"),
            format!("`{server_name}` is not a DNS name or IP address"),
            Some("write the name the backends' certificate carries, e.g. \"chat.internal\"".into()),
        );
    }
    let ca = t.ca.as_ref().map(|c| std::path::PathBuf::from(c.get_ref()));
    match crate::tls::client::client_config(ca.as_deref()) {
        Ok(client) => Ok(BackendTls {
            server_name,
            ca,
            client,
        }),
        Err(e) => check.error(
            t.ca.as_ref().map_or(raw.span(), |c| c.span()),
            &format!("{key}.ca"),
            e.to_string(),
            Some("the file must hold the PEM certificate of the CA that signs the backends".into()),
        ),
    }
}
