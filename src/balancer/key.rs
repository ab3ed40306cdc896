//! The sticky-hash key of a request: client IP, a header, a cookie or a query parameter.
//!
//! Plain requests and upgrades go through the same extraction, so with no load bound a
//! socket.io session's polling requests and its later WebSocket upgrade land on one backend.

use std::net::IpAddr;

use http::request::Parts;

use super::hash::hash_bytes;
use crate::config::HashKeySpec;

/// The hashed key of this request, or `None` when the request does not carry it.
pub fn key_hash(spec: &HashKeySpec, parts: &Parts, client_ip: IpAddr) -> Option<u64> {
    match spec {
        HashKeySpec::Ip => Some(match client_ip {
            IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            // An IPv4 client reached over a dual-stack socket hashes like plain IPv4.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => hash_bytes(&v4.octets()),
                None => hash_bytes(&v6.octets()),
            },
        }),
        HashKeySpec::Header(name) => parts
            .headers
            .get(name)
            .map(|value| hash_bytes(value.as_bytes())),
        HashKeySpec::Cookie(name) => cookie(parts, name).map(hash_bytes),
        HashKeySpec::Query(name) => {
            query_param(parts.uri.query()?, name).map(|value| hash_bytes(&value))
        }
    }
}

/// The value of cookie `name` from any `Cookie` header (RFC 6265 §5.4: `a=1; b=2`).
fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a [u8]> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            (k.trim_ascii() == name.as_bytes()).then(|| {
                let v = v.trim_ascii();
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            })
        })
}

/// The percent-decoded value of query parameter `name`, so `room=a%20b` and `room=a+b` agree.
fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name.as_bytes()).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::get(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn query_values_are_decoded() {
        let spec = HashKeySpec::Query("room".into());
        let a = key_hash(&spec, &parts("/ws?x=1&room=a%20b", &[]), IP);
        let b = key_hash(&spec, &parts("/ws?room=a+b", &[]), IP);
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(key_hash(&spec, &parts("/ws?rooms=a", &[]), IP), None);
        assert_eq!(key_hash(&spec, &parts("/ws", &[]), IP), None);
    }

    #[test]
    fn cookie_is_found_among_others() {
        let spec = HashKeySpec::Cookie("sid".into());
        let a = key_hash(&spec, &parts("/", &[("cookie", "a=1; sid=xyz; b=2")]), IP);
        let b = key_hash(
            &spec,
            &parts("/", &[("cookie", "x=0"), ("cookie", "sid=\"xyz\"")]),
            IP,
        );
        assert_eq!(a, Some(hash_bytes(b"xyz")));
        assert_eq!(a, b);
        assert_eq!(
            key_hash(&spec, &parts("/", &[("cookie", "sidx=1")]), IP),
            None
        );
    }

    #[test]
    fn header_and_ip() {
        let spec = HashKeySpec::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(
            key_hash(&spec, &parts("/", &[("x-user", "42")]), IP),
            Some(hash_bytes(b"42"))
        );
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            key_hash(&HashKeySpec::Ip, &parts("/", &[]), mapped),
            key_hash(&HashKeySpec::Ip, &parts("/", &[]), IP)
        );
    }

    #[test]
    fn broken_percent_escapes_are_kept_literally() {
        assert_eq!(percent_decode("a%2"), b"a%2");
        assert_eq!(percent_decode("%zz"), b"%zz");
        assert_eq!(percent_decode("%41"), b"A");
    }
}
