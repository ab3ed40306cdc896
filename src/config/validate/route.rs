//! `[[route]]`: host, path prefix, the upstream by name, and the origin policy.

use std::collections::BTreeMap;

use toml::Spanned;

use super::{Checker, admission};
use crate::config::raw::RawConfig;
use crate::config::{HostPattern, OriginPolicy, Route};

/// The routes in file order and their origin policies, index-aligned. A route whose upstream
/// is unknown is left out (after its other keys are checked).
pub(super) fn routes(check: &Checker, raw: &RawConfig) -> (Vec<Route>, Vec<OriginPolicy>) {
    if raw.routes.is_empty() {
        check.report(
            raw.listen.span(),
            "route",
            "no [[route]] is defined, so every request would be 404",
            Some("add [[route]] with path_prefix = \"/\" and upstream = \"NAME\"".into()),
        );
    }
    let index: BTreeMap<&str, usize> = raw
        .upstreams
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
    let mut route_origins = Vec::with_capacity(raw.routes.len());
    for route in &raw.routes {
        let r = route.get_ref();
        let upstream = index.get(r.upstream.get_ref().as_str()).copied();
        if upstream.is_none() {
            let known: Vec<&str> = index.keys().copied().collect();
            check.report(
                r.upstream.span(),
                "route.upstream",
                format!("unknown upstream `{}`", r.upstream.get_ref()),
                Some(if known.is_empty() {
                    "define it with [upstream.NAME] and servers = [\"HOST:PORT\"]".to_owned()
                } else {
                    format!("defined upstreams: {}", known.join(", "))
                }),
            );
        }
        let before = check.errors_so_far();
        let host = r
            .host
            .as_ref()
            .and_then(|h| check.keep(host_pattern(check, h)));
        let path_prefix = match &r.path_prefix {
            None => "/".to_owned(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                check.report(
                    p.span(),
                    "route.path_prefix",
                    format!("`{}` does not start with `/`", p.get_ref()),
                    Some(format!("write \"/{}\"", p.get_ref())),
                );
                "/".to_owned()
            }
        };
        // With a bad host or prefix the route stands in with a default: no duplicate to find.
        let sound = check.errors_so_far() == before;
        let origins = admission::origin_policy(check, route);
        let Some(upstream) = upstream else {
            continue;
        };
        if sound
            && let Some(earlier) = routes
                .iter()
                .position(|other| other.host == host && other.path_prefix == path_prefix)
        {
            check.report(
                route.span(),
                "route",
                format!(
                    "this route has the same host and path_prefix as route {} (the first wins, so this one is dead)",
                    earlier + 1
                ),
                Some("remove one, or give them different hosts or path prefixes".into()),
            );
        }
        routes.push(Route {
            host,
            path_prefix,
            upstream,
        });
        route_origins.push(origins);
    }
    (routes, route_origins)
}

fn host_pattern(
    check: &Checker,
    host: &Spanned<String>,
) -> Result<HostPattern, crate::config::ConfigError> {
    let name = host.get_ref().trim().to_ascii_lowercase();
    let valid_label = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
    };
    if let Some(suffix) = name.strip_prefix("*.") {
        if valid_label(suffix) {
            return Ok(HostPattern::Wildcard(format!(".{suffix}")));
        }
    } else if valid_label(&name) {
        return Ok(HostPattern::Exact(name));
    }
    check.error(
        host.span(),
        "route.host",
        format!("`{}` is not a host name", host.get_ref()),
        Some("write \"chat.example.com\" or \"*.example.com\", without port or scheme".into()),
    )
}
