//! Clients that hold resources on purpose or by accident: hundreds trickling header bytes
//! (slowloris), and tunnels whose clients never read. Legitimate clients keep working, and
//! switchboard pushes back instead of buffering. (What they cost in memory is measured in
//! `benches/edge_memory.rs`, not asserted here.)

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use support::backends::{EchoBackend, HttpBackend, raw_backend, switching_protocols};
use support::clients::{frame_bytes, handshake_request, http_get, read_head, ws_connect};
use support::{DEADLINE, Switchboard, one_upstream};

/// Sends a request head one byte per `every`, up to 100 bytes after the first line; returns
/// whether switchboard closed the connection before the head was done.
async fn trickle_head(addr: std::net::SocketAddr, every: Duration) -> bool {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .is_err()
    {
        return true;
    }
    let mut ticks = tokio::time::interval(every);
    let mut buf = [0u8; 256];
    for _ in 0..100 {
        tokio::select! {
            _ = ticks.tick() => {
                if stream.write_all(b"a").await.is_err() {
                    return true;
                }
            }
            read = stream.read(&mut buf) => {
                // Closed (maybe after a 408): whatever came, the head was never finished.
                if matches!(read, Ok(0) | Err(_)) {
                    return true;
                }
            }
        }
    }
    false
}

#[tokio::test]
async fn slowloris_connections_are_cut_at_the_header_deadline_and_others_are_served() {
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{}\"", web.addr),
        "[limits]\nheader_read_timeout = \"1s\"",
    ))
    .await;
    let addr = sb.addr;
    let slow: Vec<_> = (0..200)
        .map(|_| tokio::spawn(trickle_head(addr, Duration::from_millis(100))))
        .collect();
    for _ in 0..20 {
        let response = http_get(sb.addr, "/", &[]).await;
        assert_eq!(response.status, 200);
    }
    for task in slow {
        let cut = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("every slow connection ends")
            .unwrap();
        assert!(cut, "a slow head was cut before its 100th byte");
    }
    assert_eq!(
        web.recorded().len(),
        20,
        "no slow request reached the backend"
    );
    sb.stop().await;
}

#[tokio::test]
async fn tunnels_whose_clients_never_read_push_back_on_the_backend() {
    // The backend's send buffer, switchboard's toward the client and the client's receive
    // buffer at their kernel maximums, plus slack for switchboard's fixed buffers.
    let (wmem, rmem) = support::tcp_buffer_max();
    let bound = 2 * wmem + rmem + (4 << 20);
    let (pushed_tx, mut pushed_rx) = tokio::sync::mpsc::channel::<usize>(16);
    let (pusher, _live) = raw_backend(move |mut stream, head| {
        let pushed_tx = pushed_tx.clone();
        async move {
            if stream
                .write_all(switching_protocols(&head).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let frame = frame_bytes(true, 0x2, &[7u8; 16 * 1024], None);
            let mut pushed = 0;
            while pushed < bound {
                // A write that cannot finish in 500 ms has met back-pressure; misjudged, the
                // test checks less, never fails wrongly.
                match tokio::time::timeout(Duration::from_millis(500), stream.write_all(&frame))
                    .await
                {
                    Ok(Ok(())) => pushed += frame.len(),
                    Ok(Err(_)) => break,
                    Err(_) => break,
                }
            }
            let _ = pushed_tx.send(pushed).await;
            // Hold the tunnel until the test ends.
            std::future::pending::<()>().await;
        }
    })
    .await;
    let echo = EchoBackend::start("echo").await;
    let body = support::special_and_echo("/push", pusher, echo.addr);
    let sb = Switchboard::start(&body).await;
    let mut readers = Vec::new();
    for _ in 0..10 {
        let mut client = TcpStream::connect(sb.addr).await.unwrap();
        client
            .write_all(handshake_request("/push", "").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // Never reads again.
        readers.push(client);
    }
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    for n in 0..10 {
        let pushed = tokio::time::timeout(Duration::from_secs(60), pushed_rx.recv())
            .await
            .expect("every pusher meets back-pressure")
            .expect("a count");
        assert!(
            pushed < bound,
            "{pushed} bytes went into a tunnel whose client never reads"
        );
        let text = format!("still served {n}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let reply = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("echo within the deadline")
            .expect("a message")
            .unwrap();
        assert_eq!(reply, Message::text(text));
    }
    ws.close(None).await.unwrap();
    drop(readers);
    sb.stop().await;
}
