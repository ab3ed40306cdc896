//! `[upstream.NAME]`: strategy, hash key, load bound, servers, backend TLS; slow start, pacing,
//! rebalancing and health checks are in their own modules.

use toml::Spanned;

use super::{Checker, MAX_WEIGHT, health_check, pacing, sticky_cookie};
use crate::config::raw::{RawBackendTls, RawServer, RawUpstream};
use crate::config::{BackendTls, Balance, ConfigError, HashKeySpec, Server, Upstream};

pub(super) fn upstream(
    check: &Checker,
    name: &str,
    spanned: &Spanned<RawUpstream>,
) -> Result<Upstream, ConfigError> {
    let raw = spanned.get_ref();
    let key = |field: &str| format!("upstream.{name}.{field}");
    let balance = match &raw.balance {
        None => Balance::LeastConn,
        Some(b) => match b.get_ref().as_str() {
            "least-conn" => Balance::LeastConn,
            "sticky-hash" => Balance::StickyHash,
            "round-robin" => Balance::RoundRobin,
            other => {
                return check.error(
                    b.span(),
                    &key("balance"),
                    format!("unknown strategy `{other}`"),
                    Some("use \"least-conn\", \"sticky-hash\" or \"round-robin\"".into()),
                );
            }
        },
    };
    let hash_key = match &raw.hash_key {
        None if balance == Balance::StickyHash => {
            return check.error(
                spanned.span(),
                &key("hash_key"),
                "sticky-hash needs a hash_key",
                Some(
                    "add hash_key = \"ip\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\""
                        .into(),
                ),
            );
        }
        None => None,
        Some(k) if balance != Balance::StickyHash => {
            return check.error(
                k.span(),
                &key("hash_key"),
                "hash_key only applies to balance = \"sticky-hash\"",
                Some("remove it, or set balance = \"sticky-hash\"".into()),
            );
        }
        Some(k) => Some(hash_key(check, k, &key("hash_key"))?),
    };
    let load_factor = match &raw.load_factor {
        None => None,
        Some(f) if balance != Balance::StickyHash => {
            return check.error(
                f.span(),
                &key("load_factor"),
                "load_factor only applies to balance = \"sticky-hash\"",
                None,
            );
        }
        Some(f) if !(1.0..=100.0).contains(f.get_ref()) => {
            return check.error(
                f.span(),
                &key("load_factor"),
                format!("{} is out of range", f.get_ref()),
                Some("use a factor from 1.0 to 100.0, e.g. 1.25".into()),
            );
        }
        Some(f) => Some(*f.get_ref()),
    };

    if raw.servers.get_ref().is_empty() {
        return check.error(
            raw.servers.span(),
            &key("servers"),
            "the server list is empty",
            Some("list at least one backend, e.g. servers = [\"127.0.0.1:9001\"]".into()),
        );
    }
    let mut servers: Vec<Server> = Vec::with_capacity(raw.servers.get_ref().len());
    for server in raw.servers.get_ref() {
        let RawServer { addr, weight } = server.get_ref();
        let spanned_addr = Spanned::new(server.span(), addr.clone());
        let socket = check.addr(&spanned_addr, &key("servers"))?;
        let weight = weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return check.error(
                server.span(),
                &key("servers"),
                format!("weight {weight} is out of range; use 1 to {MAX_WEIGHT}"),
                None,
            );
        }
        if servers.iter().any(|s| s.name == *addr) {
            return check.error(
                server.span(),
                &key("servers"),
                format!("`{addr}` is listed twice"),
                Some("give it a higher weight instead".into()),
            );
        }
        if let Some(same) = servers.iter().find(|s| s.addr == socket) {
            return check.error(
                server.span(),
                &key("servers"),
                format!(
                    "`{addr}` is the same backend as `{}` ({socket}): it would be balanced as two",
                    same.name
                ),
                Some("list it once (with a higher weight if it should get more)".into()),
            );
        }
        servers.push(Server {
            addr: socket,
            name: addr.clone(),
            weight: weight as u32,
        });
    }
    let tls = match &raw.tls {
        Some(t) => Some(backend_tls(check, t, &key("tls"))?),
        None => None,
    };
    let slow_start = check.duration_or_zero(
        &raw.slow_start,
        &key("slow_start"),
        std::time::Duration::ZERO,
    )?;
    let upgrade_pacing = pacing::upgrade_pacing(check, name, raw)?;
    let (rebalance_skew, rebalance_rate) = pacing::rebalance(check, name, raw, balance)?;
    let health_check = match &raw.health_check {
        Some(h) => Some(health_check::health_check(check, name, h)?),
        None => None,
    };
    let sticky_cookie = match &raw.sticky_cookie {
        Some(c) => Some(sticky_cookie::sticky_cookie(check, name, c)?),
        None => None,
    };
    Ok(Upstream {
        name: name.to_owned(),
        balance,
        hash_key,
        load_factor,
        tls,
        servers,
        slow_start,
        upgrade_pacing,
        rebalance_skew,
        rebalance_rate,
        health_check,
        sticky_cookie,
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
            None,
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
