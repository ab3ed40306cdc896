//! `proxy_protocol`, `trusted_proxies` and `[upstream.NAME] send_proxy_protocol`.

use std::sync::Arc;

use toml::Spanned;

use super::Checker;
use crate::config::ConfigError;
use crate::config::raw::RawConfig;
use crate::proxy_protocol::Version;
use crate::proxy_protocol::trusted::{Cidr, CidrError, TrustedProxies};

/// A version word: "v1", "v2", or "off" (`None`).
pub(super) fn version(
    check: &Checker,
    value: &Spanned<String>,
    key: &str,
) -> Result<Option<Version>, ConfigError> {
    match value.get_ref().trim().to_ascii_lowercase().as_str() {
        "v1" => Ok(Some(Version::V1)),
        "v2" => Ok(Some(Version::V2)),
        "off" => Ok(None),
        other => check.error(
            value.span(),
            key,
            format!("unknown PROXY protocol version `{other}`"),
            Some("use \"v1\", \"v2\" or \"off\"".into()),
        ),
    }
}

/// The listener's `proxy_protocol` and `trusted_proxies`: a header is only taken from a
/// trusted peer, so turning it on with no peer trusted would refuse every connection.
pub(super) fn listener(check: &Checker, raw: &RawConfig) -> (Option<Version>, Arc<TrustedProxies>) {
    let trusted = raw
        .trusted_proxies
        .as_ref()
        .map(|list| {
            let blocks = list
                .get_ref()
                .iter()
                .filter_map(|entry| check.keep(block(check, entry)))
                .collect();
            TrustedProxies::new(blocks)
        })
        .unwrap_or_default();
    let Some(value) = &raw.proxy_protocol else {
        return (None, Arc::new(trusted));
    };
    let version = check.or(version(check, value, "proxy_protocol"), None);
    if version.is_some()
        && raw
            .trusted_proxies
            .as_ref()
            .is_none_or(|l| l.get_ref().is_empty())
    {
        check.report(
            value.span(),
            "proxy_protocol",
            "a PROXY header is accepted only from trusted_proxies, and none are set: every \
             connection would be refused",
            Some(
                "list the load balancers' addresses, e.g. trusted_proxies = [\"10.0.0.0/8\"]"
                    .into(),
            ),
        );
    }
    (version, Arc::new(trusted))
}

fn block(check: &Checker, entry: &Spanned<String>) -> Result<Cidr, ConfigError> {
    entry.get_ref().parse::<Cidr>().or_else(|e| {
        let hint = match &e {
            CidrError::HostBits(_, network) => format!("write \"{network}\""),
            _ => "write an address (\"10.1.2.3\") or a CIDR block (\"10.0.0.0/8\", \
                  \"2001:db8::/32\")"
                .to_owned(),
        };
        check.error(entry.span(), "trusted_proxies", e.to_string(), Some(hint))
    })
}
