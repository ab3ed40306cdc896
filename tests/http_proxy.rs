//! Plain HTTP proxying end to end.

mod support;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use support::backends::{HttpBackend, SilentBackend, header_value, refusing_addr};
use support::clients::{http_get, http_request, raw_send, read_head, read_to_end};
use support::{Switchboard, metric, one_upstream};

#[tokio::test]
async fn requests_and_bodies_stream_both_ways() {
    let backend = HttpBackend::start("web-1").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;

    let r = http_get(sb.addr, "/hello?x=1", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "web-1");
    assert_eq!(r.headers["x-backend"], "web-1");
    // The backend's Connection header named x-backend-private: hop-by-hop, removed.
    assert!(!r.headers.contains_key("x-backend-private"));

    let body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 253) as u8).collect();
    let r = http_request(sb.addr, "POST", "/upload", &[], Bytes::from(body.clone())).await;
    assert_eq!(r.status, 200);
    assert!(r.body == body, "1 MiB body changed in transit");

    let seen = backend.recorded();
    assert_eq!(seen[0].uri, "/hello?x=1");
    assert_eq!(seen[1].body_len, body.len());
    drop(seen);
    sb.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_go_and_forwarding_headers_come() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    let request = "GET /a HTTP/1.1\r\nHost: chat.example.com:8080\r\nConnection: keep-alive, X-Secret\r\n\
                   X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
                   X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\nX-End-To-End: kept\r\n\r\n";
    let mut stream = raw_send(sb.addr, request.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(stream);

    let seen = &backend.recorded()[0].headers;
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the backend");
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(seen["host"], "chat.example.com:8080");
    assert_eq!(seen["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "chat.example.com:8080");
    assert_eq!(
        seen["forwarded"],
        "for=10.0.0.1, for=127.0.0.1;proto=http;host=\"chat.example.com:8080\""
    );
    sb.stop().await;
}

#[tokio::test]
async fn routes_by_host_then_longest_prefix() {
    let (a, b, c, d) = (
        HttpBackend::start("any").await,
        HttpBackend::start("chat-root").await,
        HttpBackend::start("chat-ws").await,
        HttpBackend::start("wildcard").await,
    );
    let sb = Switchboard::start(&format!(
        r#"
[[route]]
path_prefix = "/app"
upstream = "any"
[[route]]
host = "chat.example.com"
upstream = "chat_root"
[[route]]
host = "chat.example.com"
path_prefix = "/ws"
upstream = "chat_ws"
[[route]]
host = "*.example.com"
upstream = "wild"
[upstream.any]
servers = ["{}"]
[upstream.chat_root]
servers = ["{}"]
[upstream.chat_ws]
servers = ["{}"]
[upstream.wild]
servers = ["{}"]
"#,
        a.addr, b.addr, c.addr, d.addr
    ))
    .await;
    let cases = [
        ("chat.example.com", "/ws/room", "chat-ws"),
        ("CHAT.example.com:8080", "/other", "chat-root"),
        ("game.example.com", "/ws", "wildcard"),
        ("localhost", "/app/x", "any"),
    ];
    for (host, path, expected) in cases {
        let r = http_get(sb.addr, path, &[("host", host)]).await;
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (200, expected),
            "{host}{path}"
        );
    }
    let r = http_get(sb.addr, "/nothing-here", &[("host", "localhost")]).await;
    assert_eq!(r.status, 404);
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_http_requests_total",
            &[("upstream", "none"), ("code", "404")]
        ),
        1.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{}\"", backend.addr),
        "[limits]\nmax_header_bytes = 2048",
    ))
    .await;
    let big = "x".repeat(4096);
    let request = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let mut stream = raw_send(sb.addr, request.as_bytes()).await;
    let response = String::from_utf8_lossy(&read_to_end(&mut stream).await).into_owned();
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(backend.recorded().is_empty());
    sb.stop().await;
}

#[tokio::test]
async fn garbage_gets_400_and_the_connection_is_closed() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    let mut stream = raw_send(sb.addr, b"\x16\x03\x01 this is not http\r\n\r\n").await;
    // read_to_end returning proves the connection was closed.
    let response = String::from_utf8_lossy(&read_to_end(&mut stream).await).into_owned();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    sb.stop().await;
}

#[tokio::test]
async fn refused_get_is_retried_on_the_next_backend() {
    let backend = HttpBackend::start("alive").await;
    let dead = refusing_addr().await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{dead}\", \"{}\"", backend.addr),
        "",
    ))
    .await;
    for _ in 0..4 {
        let r = http_get(sb.addr, "/", &[]).await;
        assert_eq!((r.status, r.body_text().as_str()), (200, "alive"));
    }
    sb.stop().await;
}

#[tokio::test]
async fn all_backends_down_is_502() {
    let (a, b) = (refusing_addr().await, refusing_addr().await);
    let sb = Switchboard::start(&one_upstream(&format!("\"{a}\", \"{b}\""), "")).await;
    let r = http_get(sb.addr, "/", &[]).await;
    assert_eq!(r.status, 502);
    let text = sb.scrape().await;
    assert_eq!(
        metric(&text, "switchboard_http_requests_total", &[("code", "502")]),
        1.0
    );
    assert_eq!(metric(&text, "switchboard_backend_up", &[]), 0.0);
    sb.stop().await;
}

#[tokio::test]
async fn slow_backend_is_504() {
    let silent = SilentBackend::start().await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{}\"", silent.addr),
        "[timeouts]\nrequest = \"300ms\"",
    ))
    .await;
    let r = http_get(sb.addr, "/", &[]).await;
    assert_eq!(r.status, 504);
    sb.stop().await;
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    let mut stream = raw_send(sb.addr, b"").await;
    for i in 0..3 {
        let request = format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = header_value(&head, "content-length")
            .unwrap()
            .parse()
            .unwrap();
        support::clients::read_exact(&mut stream, len).await;
    }
    assert_eq!(backend.recorded().len(), 3);
    drop(stream);
    sb.stop().await;
}
