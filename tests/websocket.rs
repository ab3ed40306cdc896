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
    // One handshake, one outcome; each of the two refused attempts counted apart.
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[("outcome", "connect_error")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_backend_connect_errors_total",
            &[("reason", "refused")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrade_duration_seconds_count",
            &[("outcome", "connect_error")]
        ),
        1.0
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

/// End to end: the backend writes the 101 in two writes. They may still reach switchboard as
/// one read (the kernel coalesces what arrives before the read), so this does not prove that a
/// split head is reassembled; [`a_101_head_delivered_in_fragments_is_reassembled`] does, over a
/// stream that returns one fragment per read.
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

/// What a [`Scripted`] backend connection saw.
#[derive(Default)]
struct ScriptLog {
    /// Reads that returned bytes (one fragment, or the part of one that fitted).
    reads: usize,
    /// Everything written to it: the handshake request.
    written: Vec<u8>,
}

/// A backend connection that answers with a script, one fragment per read, deterministically:
/// each read is first `Pending` (as a socket whose next segment has not arrived) and then
/// returns exactly one fragment, never two together. After the script: end of stream.
struct Scripted {
    fragments: std::collections::VecDeque<Vec<u8>>,
    arrived: bool,
    log: std::sync::Arc<std::sync::Mutex<ScriptLog>>,
}

impl Scripted {
    fn new(fragments: Vec<Vec<u8>>) -> (Scripted, std::sync::Arc<std::sync::Mutex<ScriptLog>>) {
        let log = std::sync::Arc::default();
        let stream = Scripted {
            fragments: fragments.into(),
            arrived: false,
            log: std::sync::Arc::clone(&log),
        };
        (stream, log)
    }
}

impl tokio::io::AsyncRead for Scripted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.arrived {
            this.arrived = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        this.arrived = false;
        if let Some(fragment) = this.fragments.front_mut() {
            let n = fragment.len().min(buf.remaining());
            buf.put_slice(&fragment[..n]);
            fragment.drain(..n);
            if fragment.is_empty() {
                this.fragments.pop_front();
            }
            this.log.lock().unwrap().reads += 1;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Scripted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.log.lock().unwrap().written.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Runs switchboard's backend handshake over `fragments`; returns the 101's headers, what the
/// stream yields after the head, and the log.
async fn exchange_over(fragments: Vec<Vec<u8>>) -> (http::HeaderMap, Vec<u8>, ScriptLog) {
    use switchboard::proxy::handshake::{Answer, exchange};
    let mut request = http::HeaderMap::new();
    request.insert("host", "backend".parse().unwrap());
    request.insert("upgrade", "websocket".parse().unwrap());
    request.insert("connection", "Upgrade".parse().unwrap());
    request.insert("sec-websocket-key", SAMPLE_KEY.parse().unwrap());
    request.insert("sec-websocket-version", "13".parse().unwrap());
    let (stream, log) = Scripted::new(fragments);
    let answer = tokio::time::timeout(DEADLINE, exchange(stream, "/chat", &request))
        .await
        .expect("the handshake ends within the deadline")
        .expect("the answer is read");
    let Answer::Switched { headers, stream } = answer else {
        panic!("a 101 is a switch");
    };
    // What came with and after the head's last fragment, up to the end of the script.
    let after = drain(stream).await;
    let log = std::mem::take(&mut *log.lock().unwrap());
    (headers, after, log)
}

async fn drain(mut stream: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut all))
        .await
        .expect("end of stream within the deadline")
        .unwrap();
    all
}

/// RFC 6455's sample key.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The backend's 101 arrives in pieces, one per read: every split point of the head into two
/// reads, and one byte per read. Each time the head is reassembled, the headers are parsed, no
/// byte behind the head is lost or read twice, and reading stops at the head's last fragment.
#[tokio::test]
async fn a_101_head_delivered_in_fragments_is_reassembled() {
    let reply = switching_protocols(&format!("Sec-WebSocket-Key: {SAMPLE_KEY}\r\n")).into_bytes();
    let frame = server_frame(0x1, b"after split");
    let accept = support::backends::accept_key(&format!("Sec-WebSocket-Key: {SAMPLE_KEY}"));

    // Two reads, split at every byte of the head; the frame rides in the second read.
    for at in 1..reply.len() {
        let mut second = reply[at..].to_vec();
        second.extend_from_slice(&frame);
        let (headers, after, log) = exchange_over(vec![reply[..at].to_vec(), second]).await;
        assert_eq!(
            headers["sec-websocket-accept"],
            accept.as_str(),
            "split at {at}"
        );
        assert_eq!(after, frame, "split at {at}");
        assert_eq!(log.reads, 2, "split at {at}: one read per fragment");
        assert!(log.written.starts_with(b"GET /chat HTTP/1.1\r\n"));
    }

    // One byte per read, the head and then the frame: the head is complete after exactly
    // `reply.len()` reads, and the frame's bytes come through the returned stream.
    let bytes: Vec<Vec<u8>> = reply.iter().chain(&frame).map(|&b| vec![b]).collect();
    let (headers, after, log) = exchange_over(bytes).await;
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["sec-websocket-accept"], accept.as_str());
    assert_eq!(after, frame);
    assert_eq!(log.reads, reply.len() + frame.len());
}
