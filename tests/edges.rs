//! Hostile and unlucky inputs at the edge: one host per request, upgrade edge cases. Each
//! test checks what the client gets and that nothing (or exactly the right thing) reached a
//! backend.

mod support;

use support::backends::HttpBackend;
use support::clients::{raw_send, read_head};
use support::{Switchboard, one_upstream};

/// An HTTP/2 connection with prior knowledge to `sb`.
async fn h2c(
    sb: &Switchboard,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(sb.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends `request` on `sender` and waits for the answer's head.
async fn send(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    sender.ready().await.unwrap();
    tokio::time::timeout(support::DEADLINE, sender.send_request(request))
        .await
        .unwrap()
        .unwrap()
}

async fn answer(sb: &Switchboard, request: &str) -> String {
    let mut stream = raw_send(sb.addr, request.as_bytes()).await;
    read_head(&mut stream).await
}

#[tokio::test]
async fn a_request_must_name_one_host_one_way() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    for (request, why) in [
        ("GET / HTTP/1.1\r\n\r\n", "no Host"),
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            "two Hosts",
        ),
        (
            "GET http://a.test/ HTTP/1.1\r\nHost: internal.test\r\n\r\n",
            "absolute form naming another host",
        ),
    ] {
        let head = answer(&sb, request).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{why}: {head}");
    }
    assert!(backend.recorded().is_empty(), "nothing reached the backend");

    // The backend sees exactly the host that was routed on.
    let head = answer(&sb, "GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = answer(&sb, "GET /y HTTP/1.0\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.0 200"),
        "HTTP/1.0 needs no Host: {head}"
    );
    let seen = backend.recorded();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers.get_all("host").iter().count(), 1);
    assert_eq!(seen[0].headers["host"], "a.test");
    sb.stop().await;
}

#[tokio::test]
async fn upgrade_edge_cases_are_plain_requests_or_refused() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    // HTTP/1.0 has no Upgrade: a plain request (the backend sees it without Upgrade headers).
    let head = answer(
        &sb,
        &format!("GET /old HTTP/1.0\r\nHost: a.test\r\n{upgrade}\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let seen = backend.recorded();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("upgrade"));
    // An upgrade with a body is refused before any backend is asked.
    for body in [
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let head = answer(
            &sb,
            &format!("GET /ws HTTP/1.1\r\nHost: a.test\r\n{upgrade}{body}"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{body:?}: {head}");
    }
    assert_eq!(backend.recorded().len(), 1);
    sb.stop().await;
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_fault() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    for chunk in [
        "fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "-1\r\nhello\r\n0\r\n\r\n",
        "0x10\r\nhello\r\n0\r\n\r\n",
        &format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(100_000)),
    ] {
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
        );
        let mut stream = raw_send(sb.addr, request.as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert!(
            head.starts_with("HTTP/1.1 400"),
            "{:?}: {head}",
            &chunk[..10]
        );
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    let text = sb.scrape().await;
    assert_eq!(
        support::metric(
            &text,
            "switchboard_http_requests_total",
            &[("upstream", "app"), ("code", "400")]
        ),
        4.0
    );
    assert_eq!(
        support::metric(&text, "switchboard_http_requests_total", &[("code", "502")]),
        0.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn interim_answers_before_the_101_are_skipped() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;
    let (backend, _) = support::backends::raw_backend(|mut stream, head| async move {
        let interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload\r\n\r\n";
        stream.write_all(interim.as_bytes()).await.unwrap();
        let mut rest = support::backends::switching_protocols(&head).into_bytes();
        rest.extend_from_slice(&[0x81, 2, b'h', b'i']);
        stream.write_all(&rest).await.unwrap();
        let mut sink = [0u8; 64];
        while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{backend}\""),
        "[drain]\nspread = \"0s\"\nclose_linger = \"100ms\"",
    ))
    .await;
    let mut ws = support::clients::ws_connect(&sb.ws_url("/ws")).await;
    let first = tokio::time::timeout(support::DEADLINE, ws.next())
        .await
        .unwrap();
    assert!(
        matches!(&first, Some(Ok(Message::Text(t))) if t.as_str() == "hi"),
        "{first:?}"
    );
    sb.stop().await;
}

#[tokio::test]
async fn over_h2_a_backends_2xx_that_is_no_101_does_not_open_a_tunnel() {
    use tokio::io::AsyncWriteExt;
    let (backend, _) = support::backends::raw_backend(|mut stream, _head| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{backend}\""), "")).await;
    let mut sender = h2c(&sb).await;
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/ws", sb.addr))
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = send(&mut sender, request).await;
    assert_eq!(response.status(), 502);
    sb.stop().await;
}

#[tokio::test]
async fn split_h2_cookies_reach_an_http1_backend_as_one_header() {
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", web.addr), "")).await;
    let mut sender = h2c(&sb).await;
    let request = http::Request::builder()
        .uri(format!("http://{}/page", sb.addr))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = send(&mut sender, request).await;
    assert_eq!(response.status(), 200);
    let seen = web.recorded();
    let cookies: Vec<_> = seen[0].headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
    sb.stop().await;
}

#[tokio::test]
async fn a_client_that_sends_one_byte_of_the_h2_preface_is_closed_at_the_deadline() {
    use tokio::io::AsyncReadExt;
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{}\"", backend.addr),
        "[limits]\nheader_read_timeout = \"300ms\"",
    ))
    .await;
    let mut stream = raw_send(sb.addr, b"P").await;
    let mut rest = [0u8; 16];
    let end = tokio::time::timeout(support::DEADLINE, stream.read(&mut rest))
        .await
        .expect("closed within the deadline");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    // And a client that goes on with the whole preface byte by byte still gets HTTP/2 (the
    // bytes read to tell are replayed to the HTTP/2 server).
    let mut sender = h2c(&sb).await;
    let request = http::Request::builder()
        .uri(format!("http://{}/h2", sb.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = send(&mut sender, request).await;
    assert_eq!(response.status(), 200);
    sb.stop().await;
}

#[tokio::test]
async fn tunnels_over_limits_max_tunnels_get_503_until_one_ends() {
    let echo = support::backends::EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{}\"", echo.addr),
        "[limits]\nmax_tunnels = 2",
    ))
    .await;
    let first = support::clients::ws_connect(&sb.ws_url("/ws")).await;
    let _second = support::clients::ws_connect(&sb.ws_url("/ws")).await;
    let head = answer(&sb, &support::clients::handshake_request("/ws", "")).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        support::backends::header_value(&head, "retry-after").is_some(),
        "{head}"
    );
    let text = sb.scrape().await;
    assert_eq!(
        support::metric(
            &text,
            "switchboard_upgrades_rejected_total",
            &[("reason", "max_tunnels")]
        ),
        1.0
    );
    let mut first = first;
    first.close(None).await.unwrap();
    drop(first);
    support::eventually("a slot free again", || async {
        let head = answer(&sb, &support::clients::handshake_request("/ws", "")).await;
        head.starts_with("HTTP/1.1 101").then_some(())
    })
    .await;
    sb.stop().await;
}

/// Request smuggling probes, pinned end to end: each gets 400 (or is re-framed unambiguously),
/// and the recording backend never sees the request hidden in a body as a request of its own.
#[tokio::test]
async fn smuggling_probes_never_reach_the_backend_as_two_requests() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    let hidden = "GET /hidden HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let probes = [
        (
            "CL+TE",
            format!(
                "POST /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
            ),
        ),
        (
            "two Content-Lengths",
            format!(
                "POST /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello{hidden}"
            ),
        ),
        (
            "TE chunked, identity",
            format!(
                "POST /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{hidden}"
            ),
        ),
        (
            "a request hidden in a body",
            format!(
                "POST /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{hidden}",
                hidden.len()
            ),
        ),
        // Header-only probes (no body to hide anything in): 400, or one well-framed request.
        (
            "obs-fold",
            "GET /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nX-Folded: a\r\n b\r\n\r\n"
                .to_owned(),
        ),
        (
            "bare LF",
            "GET /p HTTP/1.1\nHost: a.test\nConnection: close\nX-Bare: lf\n\n".to_owned(),
        ),
        (
            "NUL in a value",
            "GET /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nX-Nul: a\0b\r\n\r\n"
                .to_owned(),
        ),
        (
            "bare CR in a value",
            "GET /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nX-Cr: a\rb\r\n\r\n".to_owned(),
        ),
    ];
    for (name, probe) in probes {
        let before = backend.recorded().len();
        // `Connection: close`: what matters is what the backend is sent, and the client side
        // then ends after its answer instead of waiting for more.
        let mut stream = raw_send(sb.addr, probe.as_bytes()).await;
        // Read every answer until switchboard closes the connection.
        let mut answers = Vec::new();
        for _ in 0..3 {
            let mut line = [0u8; 1];
            match tokio::time::timeout(
                support::DEADLINE,
                tokio::io::AsyncReadExt::read(&mut stream, &mut line),
            )
            .await
            {
                Ok(Ok(1)) => {}
                _ => break,
            }
            let mut head = vec![line[0]];
            head.extend(read_head(&mut stream).await.into_bytes());
            let head = String::from_utf8_lossy(&head).into_owned();
            let length = support::backends::header_value(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            support::clients::read_exact(&mut stream, length).await;
            answers.push(head);
        }
        let seen: Vec<String> = backend.recorded()[before..]
            .iter()
            .map(|r| r.uri.clone())
            .collect();
        assert!(
            !seen.iter().any(|uri| uri.contains("hidden")),
            "{name}: the hidden request reached the backend: {seen:?} (answers {answers:?})"
        );
        assert!(seen.len() <= 1, "{name}: {seen:?}");
        assert!(
            answers
                .iter()
                .all(|a| a.starts_with("HTTP/1.1 400") || a.starts_with("HTTP/1.1 200")),
            "{name}: {answers:?}"
        );
    }
    sb.stop().await;
}
