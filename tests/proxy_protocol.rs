//! PROXY protocol on the listener: real switchboard,
//! real backends, clients that write the header by hand and then speak HTTP and WebSocket on
//! the same connection.

mod proxy_clients;
mod support;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use proxy_clients::{
    Running, TRUST_LOOPBACK, closed_unanswered, connect_with, forwarded_for, get_over, upstream,
    v1, v2,
};
use support::DEADLINE;
use support::backends::{EchoBackend, HttpBackend};
use support::tls::{TempDir, TestCa};

#[tokio::test]
async fn the_header_names_the_client_of_requests_and_upgrades_v1_and_v2() {
    for (version, header) in [("v1", v1 as fn(SocketAddr) -> Vec<u8>), ("v2", v2)] {
        let http = HttpBackend::start("http").await;
        let echo = EchoBackend::start("echo").await;
        let body = format!(
            "[[route]]\npath_prefix = \"/ws\"\nupstream = \"ws\"\n[upstream.ws]\nservers = [\"{}\"]\n{}",
            echo.addr,
            upstream(&[http.addr], "")
        );
        let top = format!("proxy_protocol = \"{version}\"\n{TRUST_LOOPBACK}");
        let sb = Running::start(&top, &body, false).await;

        // Two plain GETs on one kept-alive connection, after one header.
        let client: SocketAddr = "203.0.113.7:5678".parse().unwrap();
        let answers = get_over(connect_with(sb.addr, &header(client)).await, "/x", 2).await;
        assert_eq!(answers, vec![(200, "http".to_owned()); 2], "{version}");
        assert_eq!(
            forwarded_for(&http),
            ["203.0.113.7", "203.0.113.7"],
            "{version}"
        );
        let forwarded = http.recorded()[0]
            .headers
            .get("forwarded")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(forwarded.contains("for=203.0.113.7"), "{forwarded}");

        // A WebSocket upgrade behind a header: the backend's handshake names the client.
        let stream = connect_with(sb.addr, &header("198.51.100.9:4000".parse().unwrap())).await;
        let (mut ws, response) =
            tokio_tungstenite::client_async(format!("ws://{}/ws", sb.addr), stream)
                .await
                .expect("upgrade after the header");
        assert_eq!(response.status(), 101);
        ws.send(Message::text("hello")).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text("hello"));
        let handshake = echo.handshakes.lock().unwrap()[0].clone();
        assert_eq!(
            handshake.get("x-forwarded-for").unwrap(),
            "198.51.100.9",
            "{version}"
        );
        support::clients::close_and_drop(ws).await;
        assert_eq!(
            sb.errors("missing").await + sb.errors("malformed").await,
            0.0
        );
        sb.stop().await;
    }
}

#[tokio::test]
async fn ip_hashing_and_per_ip_limits_use_the_header_address() {
    let backends = [HttpBackend::start("a").await, HttpBackend::start("b").await];
    let echo = EchoBackend::start("echo").await;
    let body = format!(
        "[limits]\nmax_tunnels_per_ip = 1\n\
         [[route]]\npath_prefix = \"/ws\"\nupstream = \"ws\"\n[upstream.ws]\nservers = [\"{}\"]\n{}",
        echo.addr,
        upstream(
            &[backends[0].addr, backends[1].addr],
            "balance = \"sticky-hash\"\nhash_key = \"ip\""
        )
    );
    let sb = Running::start(
        &format!("proxy_protocol = \"v2\"\n{TRUST_LOOPBACK}"),
        &body,
        false,
    )
    .await;
    // Every TCP peer is 127.0.0.1: only the header's addresses can spread the clients.
    let mut picked = std::collections::HashMap::new();
    for round in 0..2 {
        for i in 1..=24u16 {
            let client = SocketAddr::from(([203, 0, 113, i as u8], 1000 + round));
            let answer = get_over(connect_with(sb.addr, &v2(client)).await, "/", 1).await;
            let backend = answer[0].1.clone();
            let first = picked.entry(client.ip()).or_insert_with(|| backend.clone());
            assert_eq!(*first, backend, "{} moved between connections", client.ip());
        }
    }
    let used: std::collections::HashSet<&String> = picked.values().collect();
    assert_eq!(
        used.len(),
        2,
        "24 client addresses all hashed to one backend"
    );

    // One tunnel per client address: a second from the same header address is refused, one from
    // another address is not.
    let open = |ip: [u8; 4], port: u16| {
        let addr = sb.addr;
        async move {
            let stream = connect_with(addr, &v2(SocketAddr::from((ip, port)))).await;
            tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await
        }
    };
    let (first, _) = open([192, 0, 2, 1], 1).await.expect("first tunnel");
    let second = open([192, 0, 2, 1], 2).await;
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!(
            "second tunnel of 192.0.2.1 was not refused: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    let (other, _) = open([192, 0, 2, 2], 3)
        .await
        .expect("another client's tunnel");
    support::clients::close_and_drop(first).await;
    support::clients::close_and_drop(other).await;
    sb.stop().await;
}

#[tokio::test]
async fn untrusted_missing_malformed_and_silent_peers_are_closed_and_counted() {
    let http = HttpBackend::start("http").await;
    // 127.0.0.1 is not trusted here.
    let sb = Running::start(
        "proxy_protocol = \"v1\"\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        &upstream(&[http.addr], ""),
        false,
    )
    .await;
    let stream = connect_with(sb.addr, &v1("203.0.113.7:1".parse().unwrap())).await;
    assert!(closed_unanswered(stream).await);
    assert_eq!(sb.errors("untrusted").await, 1.0);
    sb.stop().await;

    let sb = Running::start(
        &format!("proxy_protocol = \"v2\"\n{TRUST_LOOPBACK}"),
        &format!(
            "[limits]\nheader_read_timeout = \"300ms\"\n{}",
            upstream(&[http.addr], "")
        ),
        false,
    )
    .await;
    let plain = connect_with(sb.addr, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert!(
        closed_unanswered(plain).await,
        "a request without a header is not served"
    );
    let v1_on_v2 = connect_with(sb.addr, &v1("203.0.113.7:1".parse().unwrap())).await;
    assert!(
        closed_unanswered(v1_on_v2).await,
        "a v1 header on a v2 listener"
    );
    assert_eq!(sb.errors("missing").await, 2.0);
    let mut bad = v2("203.0.113.7:1".parse().unwrap());
    bad[12] = 0x31; // version 3
    assert!(closed_unanswered(connect_with(sb.addr, &bad).await).await);
    let mut short_block = v2("203.0.113.7:1".parse().unwrap());
    short_block[15] = 4; // an IPv4 block of 4 bytes
    assert!(closed_unanswered(connect_with(sb.addr, &short_block[..20]).await).await);
    assert_eq!(sb.errors("malformed").await, 2.0);
    // Half a header, then silence: closed at header_read_timeout.
    let half = connect_with(sb.addr, &v2("203.0.113.7:1".parse().unwrap())[..10]).await;
    assert!(closed_unanswered(half).await);
    assert_eq!(sb.errors("timeout").await, 1.0);
    assert!(http.recorded().is_empty(), "nothing reached the backend");
    // A connection closed before any byte (a balancer's TCP check) is not an error.
    drop(tokio::net::TcpStream::connect(sb.addr).await.unwrap());
    let ok = get_over(
        connect_with(sb.addr, &v2("203.0.113.8:2".parse().unwrap())).await,
        "/",
        1,
    )
    .await;
    assert_eq!(ok[0].0, 200);
    let text = sb.scrape().await;
    let total = support::metric(&text, "switchboard_proxy_protocol_errors_total", &[]);
    assert_eq!(total, 5.0, "{text}");
    sb.stop().await;
}

#[tokio::test]
async fn a_tls_listener_reads_the_header_before_the_client_hello() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("proxy-tls");
    let (cert, key) = ca.write_leaf(&dir, "site", &["site.test"]);
    let http = HttpBackend::start("http").await;
    let body = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        upstream(&[http.addr], "")
    );
    let sb = Running::start(
        &format!("proxy_protocol = \"v2\"\n{TRUST_LOOPBACK}"),
        &body,
        true,
    )
    .await;
    let tcp = connect_with(sb.addr, &v2("203.0.113.44:443".parse().unwrap())).await;
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
    let tls = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .unwrap()
        .expect("TLS handshake after the header");
    let answers = get_over(tls, "/", 1).await;
    assert_eq!(answers[0].0, 200);
    assert_eq!(forwarded_for(&http), ["203.0.113.44"]);
    assert_eq!(
        http.recorded()[0].headers.get("x-forwarded-proto").unwrap(),
        "https"
    );
    sb.stop().await;
}
