//! WebSocket proxying end to end: real clients, real backends, real sockets.

mod support;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use support::backends::{
    EchoBackend, HttpBackend, SilentBackend, raw_backend, refusing_addr, switching_protocols,
};
use support::clients::{
    client_frame, handshake_request, http_request, raw_send, read_exact, read_head, read_to_end,
    server_frame, ws_connect,
};
use support::{DEADLINE, Switchboard, eventually, metric, one_upstream};

async fn next_message(ws: &mut support::clients::Ws) -> Message {
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a message within the deadline")
        .expect("stream open")
        .expect("valid message")
}

#[tokio::test]
async fn messages_pass_through_unchanged() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;

    ws.send(Message::text("hello, world")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hello, world"));

    let binary: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(binary));

    let big: Vec<u8> = (0..16 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_message(&mut ws).await {
        Message::Binary(echoed) => assert!(echoed == big, "16 MiB message changed in transit"),
        other => panic!("expected binary, got {other:?}"),
    }

    // A message in three fragments: the backend must reassemble what the client fragmented.
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"frag"),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"men"),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"ted"),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("fragmented"));

    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye for now".into(),
    })))
    .await
    .unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Library(4001));
            assert_eq!(frame.reason.as_str(), "bye for now");
        }
        other => panic!("expected the close frame back, got {other:?}"),
    }
    drop(ws);
    sb.stop().await;
}

#[tokio::test]
async fn handshake_headers_pass_both_ways() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    let mut request = sb.ws_url("/chat?room=1").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    request
        .headers_mut()
        .insert("x-app", "kept".parse().unwrap());
    let key = request.headers()["sec-websocket-key"].clone();
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("handshake");

    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    assert_eq!(response.headers()["set-cookie"], "backend=seen; Path=/");
    let seen = backend.handshakes.lock().unwrap()[0].clone();
    assert_eq!(seen["sec-websocket-key"], key);
    assert_eq!(seen["sec-websocket-version"], "13");
    assert_eq!(seen["sec-websocket-protocol"], "chat, superchat");
    assert_eq!(seen["x-app"], "kept");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(
        seen["connection"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("upgrade")
    );
    assert!(
        seen["upgrade"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );
    drop(ws);
    sb.stop().await;
}

#[tokio::test]
async fn first_frame_pipelined_with_the_handshake_is_not_lost() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;
    let mut bytes = handshake_request("/chat", "").into_bytes();
    bytes.extend(client_frame(0x1, b"early"));
    let mut stream = raw_send(sb.addr, &bytes).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        read_exact(&mut stream, 7).await,
        server_frame(0x1, b"early")
    );
    drop(stream);
    sb.stop().await;
}

#[tokio::test]
async fn server_speaking_first_in_the_101_segment_is_not_lost() {
    let (addr, _) = raw_backend(|mut stream, head| async move {
        let mut reply = switching_protocols(&head).into_bytes();
        reply.extend(server_frame(0x1, b"welcome"));
        stream.write_all(&reply).await.unwrap(); // one write: 101 and the first frame together
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{addr}\""), "")).await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    assert_eq!(next_message(&mut ws).await, Message::text("welcome"));
    drop(ws);
    sb.stop().await;
}

#[tokio::test]
async fn half_close_reaches_the_backend_and_the_other_direction_keeps_flowing() {
    let (addr, _) = raw_backend(|mut stream, head| async move {
        let reply = switching_protocols(&head);
        stream.write_all(reply.as_bytes()).await.unwrap();
        // Wait for the client's EOF, relayed by switchboard; only then answer.
        let got = read_to_end(&mut stream).await;
        let answer = format!("saw {} bytes then EOF", got.len());
        stream
            .write_all(&server_frame(0x1, answer.as_bytes()))
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
    })
    .await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{addr}\""), "")).await;
    let mut stream = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 101"));
    stream
        .write_all(&client_frame(0x1, b"last words"))
        .await
        .unwrap();
    stream.shutdown().await.unwrap(); // FIN: half-close our sending side
    let rest = read_to_end(&mut stream).await;
    assert_eq!(rest, server_frame(0x1, b"saw 16 bytes then EOF"));
    sb.stop().await;
}

#[tokio::test]
async fn backend_closing_mid_tunnel_closes_the_client_cleanly() {
    let (addr, _) = raw_backend(|mut stream, head| async move {
        let reply = switching_protocols(&head);
        stream.write_all(reply.as_bytes()).await.unwrap();
        stream
            .write_all(&server_frame(0x1, b"going away"))
            .await
            .unwrap();
        // Dropping the stream closes the connection mid-tunnel, without a close frame.
    })
    .await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{addr}\""), "")).await;
    let mut stream = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 101"));
    // The client sees the frame and then EOF, not a hang.
    assert_eq!(
        read_to_end(&mut stream).await,
        server_frame(0x1, b"going away")
    );
    drop(stream);
    sb.stop().await;
}

#[tokio::test]
async fn backend_refusing_the_upgrade_is_passed_through() {
    let (addr, _) = raw_backend(|mut stream, _head| async move {
        stream
            .write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nX-Reason: no token\r\n\r\ndenied",
            )
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{addr}\""), "")).await;
    let mut stream = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-reason: no token"),
        "{head}"
    );
    assert_eq!(read_exact(&mut stream, 6).await, b"denied");
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[("outcome", "rejected")]
        ),
        1.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn refused_connect_moves_on_to_the_next_backend() {
    let backend = EchoBackend::start("echo").await;
    let dead = refusing_addr().await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{dead}\", \"{}\"", backend.addr),
        "",
    ))
    .await;
    for _ in 0..4 {
        let mut ws = ws_connect(&sb.ws_url("/chat")).await;
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text("ping"));
    }
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_backend_up",
            &[("backend", &dead.to_string())]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[("outcome", "upgraded")]
        ),
        4.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn all_backends_down_is_502() {
    let (a, b) = (refusing_addr().await, refusing_addr().await);
    let sb = Switchboard::start(&one_upstream(&format!("\"{a}\", \"{b}\""), "")).await;
    let mut stream = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[("outcome", "connect_error")]
        ),
        2.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn silent_backend_gives_504_after_the_handshake_timeout() {
    let silent = SilentBackend::start().await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{}\"", silent.addr),
        "[timeouts]\nhandshake = \"300ms\"",
    ))
    .await;
    let mut stream = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    sb.stop().await;
}

#[tokio::test]
async fn upgrade_header_alone_or_on_post_is_a_plain_request() {
    let backend = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", backend.addr), "")).await;

    // No `Connection: upgrade`: not a handshake.
    let r = http_request(
        sb.addr,
        "GET",
        "/chat",
        &[("upgrade", "websocket")],
        Default::default(),
    )
    .await;
    assert_eq!(r.status, 200);
    // POST with both headers: not a handshake either (RFC 6455 requires GET).
    let r = http_request(
        sb.addr,
        "POST",
        "/chat",
        &[("connection", "upgrade"), ("upgrade", "websocket")],
        "body".into(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "body");

    let seen = backend.recorded();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert!(!request.headers.contains_key("upgrade"), "{request:?}");
    }
    assert_eq!(seen[1].method, "POST");
    sb.stop().await;
}

#[tokio::test]
async fn idle_tunnels_are_closed_after_the_idle_timeout() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{}\"", backend.addr),
        "[timeouts]\ntunnel_idle = \"300ms\"",
    ))
    .await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("still here"));
    // Then silence: switchboard closes the tunnel politely, with Close 1001 (Going Away).
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("closed within the deadline");
    match end {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    backend
        .live
        .wait_for("backend connection closed", |n| n == 0)
        .await;
    let closed = eventually("idle close counted", || async {
        let text = sb.scrape().await;
        let n = metric(
            &text,
            "switchboard_tunnels_closed_total",
            &[("reason", "idle_timeout")],
        );
        (n == 1.0).then_some(n)
    })
    .await;
    assert_eq!(closed, 1.0);
    sb.stop().await;
}

#[tokio::test]
async fn a_chunked_refusal_is_streamed_to_the_client() {
    let (addr, _) = raw_backend(|mut stream, _head| async move {
        stream
            .write_all(b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(b"5\r\nnope!\r\n0\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{addr}\""), "")).await;
    let mut stream = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // Re-framed by switchboard: read the chunked body to its end.
    let mut body = Vec::new();
    while !body.ends_with(b"0\r\n\r\n") {
        body.extend(read_exact(&mut stream, 1).await);
        assert!(body.len() < 1024);
    }
    assert!(String::from_utf8_lossy(&body).contains("nope!"), "{body:?}");
    drop(stream);
    sb.stop().await;
}

#[tokio::test]
async fn a_101_head_split_across_segments_is_reassembled() {
    let (addr, _) = raw_backend(|mut stream, head| async move {
        let reply = switching_protocols(&head);
        let (first, second) = reply.split_at(20);
        stream.write_all(first.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        let mut rest = second.as_bytes().to_vec();
        rest.extend(server_frame(0x1, b"after split"));
        stream.write_all(&rest).await.unwrap();
        let mut tail = Vec::new();
        let _ = stream.read_to_end(&mut tail).await;
    })
    .await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{addr}\""), "")).await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    assert_eq!(next_message(&mut ws).await, Message::text("after split"));
    drop(ws);
    sb.stop().await;
}
