//! Header rules of a proxy: upgrade detection, hop-by-hop removal, forwarding headers.
//!
//! RFC 9110 §7.6.1: `Connection` and every header it names are meant for the next hop only, and
//! so are `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Trailer` and `Upgrade`;
//! a proxy removes them before forwarding. RFC 6455 §4.1 and §4.2.1: a WebSocket handshake is a
//! GET whose `Connection` has the token `upgrade` and whose `Upgrade` names `websocket`.
//! RFC 7239 defines `Forwarded`; `X-Forwarded-*` are the de-facto equivalents most apps read.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, request::Parts};

/// How many headers are hop-by-hop whatever `Connection` says.
const HOP_BY_HOP_COUNT: usize = 7;

/// Headers that are hop-by-hop whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `name` appears as a token in any of the comma-separated values of `header`.
fn has_token(headers: &HeaderMap, header: &HeaderName, token: &str) -> bool {
    headers.get_all(header).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// True for a WebSocket opening handshake (RFC 6455 §4.1): GET, `Connection: upgrade` among
/// other tokens, `Upgrade: websocket`, any case.
pub fn is_websocket_upgrade(parts: &Parts) -> bool {
    // HTTP/1.0 has no Upgrade (RFC 9110 §7.8 builds on HTTP/1.1): such a request is plain.
    parts.version == http::Version::HTTP_11
        && parts.method == Method::GET
        && has_token(&parts.headers, &header::CONNECTION, "upgrade")
        && has_token(&parts.headers, &header::UPGRADE, "websocket")
}

/// Removes `Connection`, every header it names, and the fixed hop-by-hop set.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // What browsers and servers put in `Connection` (`upgrade`, `keep-alive`, `close`) is in
    // the fixed set or names no header: only other names are collected, so the usual request
    // allocates nothing here.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            let fixed = HOP_BY_HOP
                .iter()
                .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()));
            if fixed || token.is_empty() || token.eq_ignore_ascii_case(b"close") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    // One pass over the names is cheaper than seven hashed removes, most of them of headers
    // that are not there.
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
}

/// Joins split `cookie` fields into one, with "; " (RFC 9113 §8.2.3): an HTTP/2 client may
/// send each cookie as its own field, and an HTTP/1.1 backend expects a single `Cookie` header.
/// A no-op (no allocation) for zero or one field.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = header::HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Appends the client to `X-Forwarded-For` and `Forwarded`, and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`. `host` is the Host the client asked for. Runs on every request and
/// upgrade, so each list is built in one string that becomes the header value without a copy.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&str>,
) {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
        v4 => v4,
    };
    let mut for_list = list_so_far(headers, &X_FORWARDED_FOR, 16);
    let start = for_list.len();
    push_ip(&mut for_list, client);
    let client_text = &for_list[start..];

    // RFC 7239 §6: an IPv6 address is bracketed and the whole node quoted; a host with a port
    // contains ':' which is not a token character, so it is always quoted.
    let mut forwarded = list_so_far(headers, &header::FORWARDED, 64);
    match client {
        IpAddr::V4(_) => {
            forwarded.push_str("for=");
            forwarded.push_str(client_text);
        }
        IpAddr::V6(_) => {
            forwarded.push_str("for=\"[");
            forwarded.push_str(client_text);
            forwarded.push_str("]\"");
        }
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    let quotable = |host: &str| {
        host.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    };
    if let Some(host) = host.filter(|h| quotable(h)) {
        forwarded.push_str(";host=\"");
        forwarded.push_str(host);
        forwarded.push('"');
    }

    set_value(headers, &X_FORWARDED_FOR, for_list);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host
        && let Ok(value) = HeaderValue::from_str(host)
    {
        headers.insert(&X_FORWARDED_HOST, value);
    }
    set_value(headers, &header::FORWARDED, forwarded);
}

/// The values of list header `name` joined with ", " and followed by ", " (empty when there
/// are none), with room for `more` bytes: where the next item goes.
fn list_so_far(headers: &HeaderMap, name: &HeaderName, more: usize) -> String {
    let mut joined = String::new();
    for value in headers.get_all(name) {
        if let Ok(text) = value.to_str() {
            joined.push_str(text);
            joined.push_str(", ");
        }
    }
    joined.reserve(more);
    joined
}

/// Replaces header `name` with `text`, whose buffer becomes the value (no copy). Text that is
/// not a valid value (a client's own bytes in a list) leaves the header as it was.
fn set_value(headers: &mut HeaderMap, name: &HeaderName, text: String) {
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(text)) {
        headers.insert(name, value);
    }
}

/// Writes `ip` as text: IPv4 digit by digit (the common case, without `core::fmt`).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn upgrade_needs_get_connection_token_and_websocket() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(is_websocket_upgrade(&parts(Method::GET, &ws)));
        assert!(!is_websocket_upgrade(&parts(Method::POST, &ws)));
        assert!(!is_websocket_upgrade(&parts(
            Method::GET,
            &[("upgrade", "websocket")]
        )));
        assert!(!is_websocket_upgrade(&parts(
            Method::GET,
            &[("connection", "upgrade"), ("upgrade", "h2c")]
        )));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut p = parts(
            Method::GET,
            &[
                ("connection", "close, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "yes"),
            ],
        );
        remove_hop_by_hop(&mut p.headers);
        let names: Vec<&str> = p.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        let mut ips: Vec<IpAddr> = (0..=255u8)
            .map(|n| IpAddr::from([n, 255 - n, n / 3, 100]))
            .collect();
        ips.push("::1".parse().unwrap());
        ips.push("2001:db8::8a2e:370:7334".parse().unwrap());
        for ip in ips {
            let mut text = String::from("x");
            push_ip(&mut text, ip);
            assert_eq!(text, format!("x{ip}"));
        }
    }

    #[test]
    fn forwarded_headers_append() {
        let mut p = parts(
            Method::GET,
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("forwarded", "for=10.0.0.1"),
            ],
        );
        add_forwarded(
            &mut p.headers,
            "::1".parse().unwrap(),
            "http",
            Some("chat.example.com:8080"),
        );
        assert_eq!(p.headers["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-host"], "chat.example.com:8080");
        assert_eq!(
            p.headers["forwarded"],
            "for=10.0.0.1, for=\"[::1]\";proto=http;host=\"chat.example.com:8080\""
        );
    }
}
