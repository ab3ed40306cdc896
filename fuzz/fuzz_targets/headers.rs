//! Hop-by-hop removal, forwarding headers and upgrade detection (`proxy::headers`) on header
//! sets built from the input.
//!
//! Input: a flags byte (method, proto, whether a Host is given, IPv4 or IPv6), the client
//! address (4 or 16 bytes), then lines: the Host first when one is given, then `name:value`
//! lines. Lines whose name or value `http` refuses are skipped.
//!
//! Checked: after `remove_hop_by_hop` none of the fixed hop-by-hop headers and none named by a
//! `Connection` token is left, and every other header is there with the same values in the same
//! order; `is_websocket_upgrade` agrees with RFC 6455 §4.1 as written out here, and is false once
//! the hop-by-hop headers are gone; `add_forwarded` leaves one `X-Forwarded-For`, one
//! `Forwarded`, one `X-Forwarded-Proto` (and one `X-Forwarded-Host` when the host is a valid
//! value) with the client appended, and touches nothing else.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use switchboard::proxy::headers::{add_forwarded, is_websocket_upgrade, remove_hop_by_hop};

const FIXED: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "trailer",
    "upgrade",
];
const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

fn trim(token: &[u8]) -> &[u8] {
    let start = token.iter().position(|b| !b" \t".contains(b));
    let end = token.iter().rposition(|b| !b" \t".contains(b));
    match (start, end) {
        (Some(s), Some(e)) => &token[s..=e],
        _ => &[],
    }
}

/// The comma-separated tokens of every value of `name`, trimmed, lower-cased.
fn tokens(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| trim(t).to_ascii_lowercase())
        .collect()
}

/// Every header as (name, values in order), sorted by name.
fn entries(headers: &HeaderMap) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = headers
        .keys()
        .map(|k| {
            let values = headers.get_all(k).iter().map(|v| v.as_bytes().to_vec());
            (k.as_str().to_owned(), values.collect())
        })
        .collect();
    out.sort();
    out
}

/// `items` of the to_str-able `name` values before, joined with ", ", then `item`.
fn appended(before: &HeaderMap, name: &str, item: &str) -> String {
    let mut joined = String::new();
    for value in before.get_all(name) {
        if let Ok(text) = value.to_str() {
            joined.push_str(text);
            joined.push_str(", ");
        }
    }
    joined + item
}

fn only(headers: &HeaderMap, name: &str) -> Vec<u8> {
    let values: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0].as_bytes().to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let method = match flags & 3 {
        0 | 1 => Method::GET,
        2 => Method::POST,
        _ => Method::CONNECT,
    };
    let proto = if flags & 4 == 0 { "http" } else { "https" };
    let with_host = flags & 8 != 0;
    let (client, rest) = if flags & 16 == 0 {
        let Some((ip, rest)) = rest.split_first_chunk::<4>() else {
            return;
        };
        (IpAddr::V4(Ipv4Addr::from(*ip)), rest)
    } else {
        let Some((ip, rest)) = rest.split_first_chunk::<16>() else {
            return;
        };
        (IpAddr::V6(Ipv6Addr::from(*ip)), rest)
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let host = if with_host {
        lines
            .next()
            .map(|h| String::from_utf8_lossy(h).into_owned())
    } else {
        None
    };
    let mut original = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            original.append(name, value);
        }
    }

    // Upgrade detection, against RFC 6455 §4.1 written out.
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.headers_mut() = original.clone();
    let (mut parts, ()) = request.into_parts();
    let expected = method == Method::GET
        && tokens(&original, "connection")
            .iter()
            .any(|t| t == b"upgrade")
        && tokens(&original, "upgrade")
            .iter()
            .any(|t| t == b"websocket");
    assert_eq!(is_websocket_upgrade(&parts), expected);

    // Hop-by-hop removal.
    remove_hop_by_hop(&mut parts.headers);
    let mut gone: Vec<Vec<u8>> = tokens(&original, "connection");
    gone.extend(FIXED.iter().map(|n| n.as_bytes().to_vec()));
    for name in &gone {
        if let Ok(name) = std::str::from_utf8(name) {
            assert!(
                !parts.headers.contains_key(name),
                "{name} left after remove_hop_by_hop: {:?}",
                parts.headers
            );
        }
    }
    let kept: Vec<_> = entries(&original)
        .into_iter()
        .filter(|(name, _)| !gone.iter().any(|g| g == name.as_bytes()))
        .collect();
    assert_eq!(
        entries(&parts.headers),
        kept,
        "remove_hop_by_hop took too much"
    );
    assert!(
        !is_websocket_upgrade(&parts),
        "still an upgrade without Connection"
    );

    // Forwarding headers.
    let stripped = parts.headers.clone();
    add_forwarded(&mut parts.headers, client, proto, host.as_deref());
    let shown = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
        v4 => v4,
    };
    let shown_text = shown.to_string();
    assert_eq!(
        only(&parts.headers, "x-forwarded-for"),
        appended(&stripped, "x-forwarded-for", &shown_text).as_bytes()
    );
    assert_eq!(only(&parts.headers, "x-forwarded-proto"), proto.as_bytes());
    match host.as_deref().filter(|h| HeaderValue::from_str(h).is_ok()) {
        Some(host) => assert_eq!(only(&parts.headers, "x-forwarded-host"), host.as_bytes()),
        None => assert_eq!(
            entries(&parts.headers)
                .into_iter()
                .find(|(n, _)| n == "x-forwarded-host"),
            entries(&stripped)
                .into_iter()
                .find(|(n, _)| n == "x-forwarded-host"),
            "x-forwarded-host changed without a usable host"
        ),
    }
    // RFC 7239 §4, §6: a node is a token or a quoted string; an IPv6 node is bracketed and
    // quoted; a host goes in only when it fits a quoted string with no escapes.
    let mut element = match shown {
        IpAddr::V4(_) => format!("for={shown_text}"),
        IpAddr::V6(_) => format!("for=\"[{shown_text}]\""),
    };
    element += ";proto=";
    element += proto;
    if let Some(host) = &host
        && host
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        element += &format!(";host=\"{host}\"");
    }
    assert_eq!(
        only(&parts.headers, "forwarded"),
        appended(&stripped, "forwarded", &element).as_bytes()
    );
    // Nothing else changed.
    let others = |h: &HeaderMap| -> Vec<_> {
        entries(h)
            .into_iter()
            .filter(|(n, _)| !FORWARDING.contains(&n.as_str()))
            .collect()
    };
    assert_eq!(others(&parts.headers), others(&stripped));
});
