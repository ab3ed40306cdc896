//! `trusted_proxies` without the PROXY protocol (a peer that is an HTTP proxy names the client in
//! its last X-Forwarded-For entry), and the config checks of the PROXY protocol keys.

mod proxy_clients;
mod support;

use proxy_clients::{Running, TRUST_LOOPBACK, forwarded_for, upstream};
use support::backends::{EchoBackend, HttpBackend};

#[tokio::test]
async fn a_trusted_http_proxy_names_the_client_in_x_forwarded_for() {
    let backends = [HttpBackend::start("a").await, HttpBackend::start("b").await];
    let sb = Running::start(
        TRUST_LOOPBACK,
        &upstream(
            &[backends[0].addr, backends[1].addr],
            "balance = \"sticky-hash\"\nhash_key = \"ip\"",
        ),
        false,
    )
    .await;
    let get = |xff: String| {
        let addr = sb.addr;
        async move {
            let headers = [("x-forwarded-for", xff.as_str())];
            support::clients::http_get(addr, "/", &headers)
                .await
                .body_text()
        }
    };
    let mut picked = std::collections::HashMap::new();
    for i in 1..=24u8 {
        // The client's own claim first, then the trusted proxy's entry: the last one counts.
        let first = get(format!("10.9.9.9, 198.51.100.{i}")).await;
        let again = get(format!("1.1.1.1,198.51.100.{i}")).await;
        assert_eq!(first, again, "198.51.100.{i} moved");
        picked.insert(i, first);
    }
    let used: std::collections::HashSet<&String> = picked.values().collect();
    assert_eq!(
        used.len(),
        2,
        "the last X-Forwarded-For entry did not drive the hash"
    );
    // Forwarding headers are appended as ever: the chain, then the peer.
    let all: Vec<String> = backends.iter().flat_map(forwarded_for).collect();
    assert!(
        all.contains(&"10.9.9.9, 198.51.100.1, 127.0.0.1".to_owned()),
        "{all:?}"
    );
    sb.stop().await;

    // Without trust the header is the client's word only: every request hashes by the peer.
    let untrusting = Running::start(
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &upstream(
            &[backends[0].addr, backends[1].addr],
            "balance = \"sticky-hash\"\nhash_key = \"ip\"",
        ),
        false,
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    for i in 1..=12u8 {
        let headers = [("x-forwarded-for", format!("198.51.100.{i}"))];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        seen.insert(
            support::clients::http_get(untrusting.addr, "/", &headers)
                .await
                .body_text(),
        );
    }
    assert_eq!(
        seen.len(),
        1,
        "an untrusted peer's X-Forwarded-For moved the hash"
    );
    untrusting.stop().await;
}

/// A WebSocket upgrade whose request carries `X-Forwarded-For: xff`: the tunnel, or the status
/// of the refusal.
async fn upgrade_from(addr: std::net::SocketAddr, xff: &str) -> Result<support::clients::Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    let answer = tokio::time::timeout(support::DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("an answer within the deadline");
    match answer {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn per_ip_limits_count_the_client_a_trusted_proxy_names() {
    let echo = EchoBackend::start("echo").await;
    let body = format!(
        "[limits]\nmax_tunnels_per_ip = 1\n{}",
        upstream(&[echo.addr], "")
    );
    let sb = Running::start(TRUST_LOOPBACK, &body, false).await;
    // Every TCP peer is 127.0.0.1; the trusted peer's last entry is the client.
    let first = upgrade_from(sb.addr, "198.51.100.1")
        .await
        .expect("first tunnel");
    assert_eq!(
        upgrade_from(sb.addr, "10.9.9.9, 198.51.100.1").await.err(),
        Some(429),
        "a second tunnel of 198.51.100.1"
    );
    let other = upgrade_from(sb.addr, "198.51.100.1, 198.51.100.2")
        .await
        .expect("another client behind the same proxy");
    support::clients::close_and_drop(first).await;
    support::clients::close_and_drop(other).await;
    sb.stop().await;

    // Untrusted, the header is the client's word only: all tunnels are 127.0.0.1's.
    let sb = Running::start("trusted_proxies = [\"10.0.0.0/8\"]", &body, false).await;
    let first = upgrade_from(sb.addr, "198.51.100.1")
        .await
        .expect("first tunnel");
    assert_eq!(
        upgrade_from(sb.addr, "198.51.100.2").await.err(),
        Some(429),
        "an untrusted X-Forwarded-For escaped the per-IP limit"
    );
    support::clients::close_and_drop(first).await;
    sb.stop().await;
}

#[test]
fn config_errors_name_the_key_and_line() {
    let parse = |top: &str, upstream_extra: &str| {
        let text = format!(
            "listen = \"127.0.0.1:0\"\n{top}\n[[route]]\nupstream = \"app\"\n[upstream.app]\n\
             servers = [\"127.0.0.1:9\"]\n{upstream_extra}\n"
        );
        switchboard::config::from_toml_str(&text, "t.toml")
    };
    let errors = |top: &str, extra: &str| -> Vec<(usize, String, String)> {
        let e = parse(top, extra).expect_err("invalid");
        e.errors()
            .map(|e| {
                (
                    e.line.unwrap(),
                    e.key.clone().unwrap(),
                    format!("{} {}", e.message, e.hint.clone().unwrap_or_default()),
                )
            })
            .collect()
    };
    let found = errors(
        "trusted_proxies = [\n  \"10.0.0.0/8\",\n  \"10.0.0.1/8\",\n  \"fe80::/129\",\n  \"nope\",\n]",
        "",
    );
    let lines: Vec<(usize, &str)> = found.iter().map(|(l, k, _)| (*l, k.as_str())).collect();
    assert_eq!(
        lines,
        [
            (4, "trusted_proxies"),
            (5, "trusted_proxies"),
            (6, "trusted_proxies")
        ],
        "{found:?}"
    );
    assert!(
        found[0].2.contains("10.0.0.0/8"),
        "the hint names the network: {found:?}"
    );

    let found = errors("proxy_protocol = \"v2\"", "");
    assert_eq!((found[0].0, found[0].1.as_str()), (2, "proxy_protocol"));
    assert!(found[0].2.contains("trusted_proxies"), "{found:?}");
    let found = errors(
        "proxy_protocol = \"v3\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
        "send_proxy_protocol = \"yes\"",
    );
    let keys: Vec<&str> = found.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["proxy_protocol", "upstream.app.send_proxy_protocol"],
        "{found:?}"
    );

    let config = parse(
        "proxy_protocol = \"V1\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]",
        "send_proxy_protocol = \"v2\"",
    )
    .unwrap();
    assert_eq!(
        config.proxy_protocol,
        Some(switchboard::proxy_protocol::Version::V1)
    );
    assert!(
        config
            .trusted_proxies
            .contains("10.200.0.1".parse().unwrap())
    );
    assert!(
        config
            .trusted_proxies
            .contains("::ffff:10.0.0.9".parse().unwrap()),
        "IPv4-mapped peers"
    );
    assert!(config.trusted_proxies.contains("::1".parse().unwrap()));
    assert!(!config.trusted_proxies.contains("11.0.0.1".parse().unwrap()));
    assert_eq!(
        config.upstreams[0].send_proxy_protocol,
        Some(switchboard::proxy_protocol::Version::V2)
    );
    assert!(
        parse("proxy_protocol = \"off\"", "")
            .unwrap()
            .proxy_protocol
            .is_none()
    );
}
