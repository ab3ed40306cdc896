//! How tunnels end: on shutdown (Close 1001 or 1012 to both sides, after the bytes already on
//! their way, spread over `drain.spread`), and on switchboard's own limits (idle, lifetime,
//! unanswered pings, message size, broken framing, half-close), with each end labelled in
//! `switchboard_tunnels_closed_total`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

use support::backends::{EchoBackend, FrameBackend, raw_backend, switching_protocols};
use support::clients::{
    WireFrame, Ws, client_frame, extended_connect, frame_bytes, handshake_request, http_get,
    raw_send, read_exact, read_frame, read_head, ws_connect,
};
use support::{DEADLINE, Switchboard, eventually, metric, one_upstream};

/// How a client's side of a tunnel ended.
struct Ended {
    /// Messages before the Close (Pings included: tungstenite surfaces them).
    before: Vec<Message>,
    /// The Close frame; `None` when the stream ended without one.
    close: Option<CloseFrame>,
    /// When the Close (or the end) arrived.
    at: Instant,
}

/// Reads until switchboard's Close (or the end of the stream), then finishes the closing
/// handshake: the next reads send tungstenite's Close reply and wait for the end.
async fn until_close(ws: &mut Ws) -> Ended {
    let mut before = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        for _ in 0..100_000 {
            match ws.next().await {
                Some(Ok(Message::Close(close))) => return close,
                Some(Ok(message)) => before.push(message),
                Some(Err(_)) | None => return None,
            }
        }
        panic!("no Close after 100000 messages");
    })
    .await;
    let at = Instant::now();
    let close = read.unwrap_or_else(|_| panic!("no Close within the deadline; got {before:?}"));
    let drained = tokio::time::timeout(DEADLINE, async {
        for _ in 0..1000 {
            if !matches!(ws.next().await, Some(Ok(_))) {
                return;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the tunnel did not end after the Close");
    Ended { before, close, at }
}

/// Like [`until_close`], for a tunnel that must end with a Close of `code`.
async fn expect_close(ws: &mut Ws, code: CloseCode) -> Ended {
    let ended = until_close(ws).await;
    match &ended.close {
        Some(frame) => assert_eq!(frame.code, code, "close frame {frame:?}"),
        None => panic!(
            "expected Close {code}, the stream ended without one after {:?}",
            ended.before
        ),
    }
    ended
}

async fn next_message(ws: &mut Ws) -> Message {
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a message within the deadline")
        .expect("stream open")
        .expect("valid message")
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next_message(ws).await, Message::text(text));
}

/// `switchboard_tunnels_closed_total` for a reason and code, read from the registry.
fn closed(metrics: &switchboard::metrics::Metrics, reason: &str, code: &str) -> f64 {
    metric(
        &metrics.render(),
        "switchboard_tunnels_closed_total",
        &[("reason", reason), ("code", code)],
    )
}

/// Waits until `closed(&sb.metrics, reason, code)` is `n` (tunnels are counted as their task
/// ends); on timeout, fails with every `switchboard_tunnels_closed_total` sample.
async fn wait_closed(sb: &Switchboard, reason: &str, code: &str, n: f64) {
    let waited = tokio::time::timeout(DEADLINE, async {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        loop {
            ticks.tick().await;
            if closed(&sb.metrics, reason, code) == n {
                return;
            }
        }
    })
    .await;
    if waited.is_err() {
        let text = sb.metrics.render();
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("switchboard_tunnels_closed_total"))
            .collect();
        panic!(
            "timed out waiting for {n} tunnel(s) closed as {reason}/{code}; counted: {samples:#?}"
        );
    }
}

/// Waits for `run` to return and checks it returned `Ok`.
async fn run_returns(task: tokio::task::JoinHandle<Result<(), switchboard::RunError>>) {
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("run returns within the deadline")
        .expect("run did not panic")
        .expect("run returned Ok");
}

async fn refused(addr: std::net::SocketAddr) -> Option<()> {
    TcpStream::connect(addr).await.is_err().then_some(())
}

/// The Close frame a backend connection received, if any.
fn close_of(frames: &[WireFrame]) -> Option<&WireFrame> {
    frames.iter().find(|f| f.opcode == 0x8)
}

/// Waits until each of the backend's first `n` connections received a Close; returns them.
async fn backend_closes(backend: &FrameBackend, n: usize) -> Vec<WireFrame> {
    backend
        .wait_until(&format!("a Close on each of {n} connections"), |all| {
            let closes: Vec<WireFrame> = all.iter().filter_map(|c| close_of(c).cloned()).collect();
            (all.len() >= n && closes.len() >= n).then_some(closes)
        })
        .await
}

fn servers(addr: std::net::SocketAddr) -> String {
    format!("\"{addr}\"")
}

#[tokio::test]
async fn shutdown_closes_every_tunnel_with_1001_after_its_last_bytes_spread_over_the_window() {
    const TUNNELS: usize = 50;
    let backend = FrameBackend::start().await;
    let sb = Switchboard::start(&one_upstream(
        &servers(backend.addr),
        "[drain]\nspread = \"2s\"\nclose_linger = \"2s\"\n[timeouts]\nshutdown_grace = \"10s\"",
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..TUNNELS {
        clients.push(ws_connect(&sb.ws_url("/chat")).await);
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
    }
    // Each backend connection has its message, and its echo is on the way back.
    backend
        .wait_until("every message", |all| {
            let echoed = all
                .iter()
                .filter(|frames| frames.iter().any(|f| f.opcode == 0x1))
                .count();
            (echoed == TUNNELS).then_some(())
        })
        .await;

    let (done, mut ended) = mpsc::channel(TUNNELS);
    for (i, mut ws) in clients.into_iter().enumerate() {
        let done = done.clone();
        tokio::spawn(async move {
            let end = until_close(&mut ws).await;
            let _ = done.send((i, end)).await;
        });
    }
    sb.shutdown.trigger();
    assert_eq!(http_get(sb.admin, "/readyz", &[]).await.status, 503);

    let mut times = Vec::new();
    for _ in 0..TUNNELS {
        let (i, end) = tokio::time::timeout(DEADLINE, ended.recv())
            .await
            .expect("every client gets its Close within the deadline")
            .expect("client task did not panic");
        assert_eq!(
            end.before,
            vec![Message::text(format!("message {i}"))],
            "client {i}: its echo, then the Close"
        );
        let frame = end.close.unwrap_or_else(|| panic!("client {i}: no Close"));
        assert_eq!(frame.code, CloseCode::Away, "client {i}");
        assert!(!frame.reason.is_empty(), "client {i}: Close without reason");
        times.push(end.at);
    }
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(
        *last - *first >= Duration::from_secs(1),
        "closes spread over {:?}, expected at least half of the 2 s window",
        *last - *first
    );

    let closes = backend_closes(&backend, TUNNELS).await;
    for close in &closes {
        assert!(close.masked, "switchboard's Close to the backend is masked");
        assert_eq!(close.close_code(), Some(1001));
    }
    run_returns(sb.task).await;
    assert_eq!(closed(&sb.metrics, "shutdown", "1001"), TUNNELS as f64);
}

#[tokio::test]
async fn shutdown_with_close_code_1012_sends_service_restart_both_ways() {
    const TUNNELS: usize = 10;
    let backend = FrameBackend::start().await;
    let sb = Switchboard::start(&one_upstream(
        &servers(backend.addr),
        "[drain]\nspread = \"0s\"\nclose_code = 1012\nclose_linger = \"1s\"",
    ))
    .await;
    let mut clients = Vec::new();
    for i in 0..TUNNELS {
        let mut ws = ws_connect(&sb.ws_url("/chat")).await;
        echo(&mut ws, &format!("hello {i}")).await;
        clients.push(ws);
    }
    sb.shutdown.trigger();
    for ws in &mut clients {
        expect_close(ws, CloseCode::Restart).await;
    }
    for close in backend_closes(&backend, TUNNELS).await {
        assert!(close.masked);
        assert_eq!(close.close_code(), Some(1012));
    }
    run_returns(sb.task).await;
    assert_eq!(closed(&sb.metrics, "shutdown", "1012"), TUNNELS as f64);
}

#[tokio::test]
async fn a_message_being_fragmented_at_shutdown_arrives_whole_before_the_close() {
    const FRAGMENT: usize = 16 * 1024;
    const FRAGMENTS: usize = 64;
    let payload: Arc<Vec<u8>> =
        Arc::new((0..FRAGMENT * FRAGMENTS).map(|i| (i % 251) as u8).collect());
    let half_sent = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (backend_close_tx, mut backend_close) = mpsc::channel(1);
    let (addr, _) = {
        let (payload, half_sent, release) = (payload.clone(), half_sent.clone(), release.clone());
        raw_backend(move |mut stream, head| {
            let (payload, half_sent, release) =
                (payload.clone(), half_sent.clone(), release.clone());
            let backend_close_tx = backend_close_tx.clone();
            async move {
                let reply = switching_protocols(&head);
                stream.write_all(reply.as_bytes()).await.unwrap();
                let fragment = |i: usize| {
                    let opcode = if i == 0 { 0x2 } else { 0x0 };
                    let chunk = &payload[i * FRAGMENT..(i + 1) * FRAGMENT];
                    frame_bytes(i == FRAGMENTS - 1, opcode, chunk, None)
                };
                for i in 0..FRAGMENTS / 2 {
                    stream.write_all(&fragment(i)).await.unwrap();
                }
                half_sent.notify_one();
                tokio::time::timeout(DEADLINE, release.notified())
                    .await
                    .expect("released");
                for i in FRAGMENTS / 2..FRAGMENTS {
                    stream.write_all(&fragment(i)).await.unwrap();
                }
                // Then the closing handshake switchboard started, and EOF.
                let close = tokio::time::timeout(DEADLINE, read_frame(&mut stream))
                    .await
                    .expect("a frame within the deadline");
                let _ = backend_close_tx.send(close).await;
                let _ = stream
                    .write_all(&frame_bytes(true, 0x8, &[0x03, 0xE9], None))
                    .await;
                let _ = stream.shutdown().await;
                let mut rest = Vec::new();
                let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
            }
        })
        .await
    };
    let sb = Switchboard::start(&one_upstream(
        &servers(addr),
        "[drain]\nspread = \"0s\"\nclose_linger = \"2s\"",
    ))
    .await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    let client = tokio::spawn(async move { until_close(&mut ws).await });
    tokio::time::timeout(DEADLINE, half_sent.notified())
        .await
        .expect("the backend sent the first half");

    sb.shutdown.trigger();
    // The polite close has begun while the message is half sent.
    eventually("the tunnel is closing", || async {
        let text = sb.metrics.render();
        (metric(&text, "switchboard_tunnels_closing", &[]) == 1.0).then_some(())
    })
    .await;
    release.notify_one();

    let end = tokio::time::timeout(DEADLINE, client)
        .await
        .expect("client done")
        .expect("client task did not panic");
    assert_eq!(end.before.len(), 1, "one message before the Close");
    match &end.before[0] {
        Message::Binary(data) => {
            assert_eq!(data.len(), 1_048_576);
            assert!(data[..] == payload[..], "the message changed in transit");
        }
        other => panic!("expected the 1 MiB binary message, got {other:?}"),
    }
    assert_eq!(end.close.expect("a Close").code, CloseCode::Away);
    let close = tokio::time::timeout(DEADLINE, backend_close.recv())
        .await
        .unwrap()
        .unwrap()
        .expect("the backend got a frame");
    assert_eq!(close.opcode, 0x8);
    assert!(close.masked);
    assert_eq!(close.close_code(), Some(1001));
    run_returns(sb.task).await;
    assert_eq!(closed(&sb.metrics, "shutdown", "1001"), 1.0);
}

#[tokio::test]
async fn new_connections_are_accepted_during_the_shutdown_delay_then_refused() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(
        &servers(backend.addr),
        "[timeouts]\nshutdown_delay = \"500ms\"\n[drain]\nspread = \"0s\"\nclose_linger = \"1s\"",
    ))
    .await;
    let mut old = ws_connect(&sb.ws_url("/chat")).await;
    echo(&mut old, "before").await;

    sb.shutdown.trigger();
    assert_eq!(http_get(sb.admin, "/readyz", &[]).await.status, 503);
    let mut new = ws_connect(&sb.ws_url("/chat")).await;
    echo(&mut new, "during the delay").await;

    eventually("new connections refused", || refused(sb.addr)).await;
    expect_close(&mut old, CloseCode::Away).await;
    expect_close(&mut new, CloseCode::Away).await;
    run_returns(sb.task).await;
    assert_eq!(closed(&sb.metrics, "shutdown", "1001"), 2.0);
}

#[tokio::test]
async fn a_second_signal_skips_the_spread() {
    const TUNNELS: usize = 10;
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(
        &servers(backend.addr),
        "[drain]\nspread = \"30s\"\nclose_linger = \"1s\"\n[timeouts]\nshutdown_grace = \"60s\"",
    ))
    .await;
    let (done, mut ended) = mpsc::channel(TUNNELS);
    for i in 0..TUNNELS {
        let mut ws = ws_connect(&sb.ws_url("/chat")).await;
        echo(&mut ws, &format!("tunnel {i}")).await;
        let done = done.clone();
        tokio::spawn(async move {
            let end = until_close_patiently(&mut ws).await;
            let _ = done.send(end).await;
        });
    }
    sb.shutdown.trigger();
    // Over 30 s, the first close comes within 3 s and the last not before 27 s.
    let first = tokio::time::timeout(DEADLINE, ended.recv())
        .await
        .expect("the first spread close within the deadline")
        .unwrap();
    assert_eq!(first.expect("a Close").code, CloseCode::Away);
    let so_far = 1 + ended.len();
    assert!(
        so_far < TUNNELS,
        "all {so_far} closed before the second signal"
    );

    sb.shutdown.hurry();
    for _ in 1..TUNNELS {
        let close = tokio::time::timeout(DEADLINE, ended.recv())
            .await
            .expect("after the second signal every client gets its Close within the deadline")
            .unwrap();
        assert_eq!(close.expect("a Close").code, CloseCode::Away);
    }
    run_returns(sb.task).await;
    assert_eq!(closed(&sb.metrics, "shutdown", "1001"), TUNNELS as f64);
}

/// The Close a tunnel gets, however long it takes (for spread closes of up to 30 s); then the
/// closing handshake is finished.
async fn until_close_patiently(ws: &mut Ws) -> Option<CloseFrame> {
    let close = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..1000 {
            match ws.next().await {
                Some(Ok(Message::Close(close))) => return close,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let _ = tokio::time::timeout(DEADLINE, async {
        for _ in 0..1000 {
            if !matches!(ws.next().await, Some(Ok(_))) {
                return;
            }
        }
    })
    .await;
    close
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_with_1001_and_counted() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(
        &servers(backend.addr),
        "[timeouts]\ntunnel_idle = \"300ms\"\n[drain]\nclose_linger = \"1s\"",
    ))
    .await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    echo(&mut ws, "then silence").await;
    let end = expect_close(&mut ws, CloseCode::Away).await;
    assert_eq!(end.close.unwrap().reason.as_str(), "idle timeout");
    backend
        .live
        .wait_for("backend connection closed", |n| n == 0)
        .await;
    wait_closed(&sb, "idle_timeout", "1001", 1.0).await;
    sb.stop().await;
}

#[tokio::test]
async fn a_busy_tunnel_is_closed_at_its_max_lifetime() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(
        &servers(backend.addr),
        "[websocket]\nmax_lifetime = \"500ms\"\nlifetime_jitter = \"0%\"\n[drain]\nclose_linger = \"1s\"",
    ))
    .await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    let busy = tokio::time::timeout(DEADLINE, async {
        for i in 0..100_000u32 {
            if ws.send(Message::text(format!("busy {i}"))).await.is_err() {
                return (i, None);
            }
            match ws.next().await {
                Some(Ok(Message::Text(_))) => continue,
                Some(Ok(Message::Close(close))) => return (i, close),
                other => panic!("expected an echo or a Close, got {other:?}"),
            }
        }
        panic!("no Close after 100000 messages");
    })
    .await;
    let (sent, close) = busy.expect("closed within the deadline");
    assert!(
        sent > 1,
        "the tunnel was busy until its close ({sent} echoes)"
    );
    let close = close.expect("a Close frame");
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "maximum lifetime reached");
    let _ = tokio::time::timeout(DEADLINE, async {
        for _ in 0..1000 {
            if !matches!(ws.next().await, Some(Ok(_))) {
                return;
            }
        }
    })
    .await;
    wait_closed(&sb, "lifetime", "1001", 1.0).await;
    sb.stop().await;
}

#[tokio::test]
async fn an_idle_client_is_pinged_and_its_pongs_stay_off_the_backend() {
    let (backend, sb, mut ws) = through_frame_backend("[websocket]\nping_interval = \"1s\"").await;
    for ping in 0..2 {
        match next_message(&mut ws).await {
            Message::Ping(_) => {}
            other => panic!("ping {ping}: expected a Ping, got {other:?}"),
        }
        // tungstenite queued the Pong; send it now.
        ws.flush().await.unwrap();
    }
    echo(&mut ws, "still open").await;
    let frames = backend
        .wait_until("the text message", |all| {
            let frames = all.first()?;
            frames
                .iter()
                .any(|f| f.opcode == 0x1)
                .then(|| frames.clone())
        })
        .await;
    let pongs: Vec<&WireFrame> = frames.iter().filter(|f| f.opcode == 0xA).collect();
    assert!(pongs.is_empty(), "the backend saw Pongs: {pongs:?}");
    assert_eq!(
        frames.iter().map(|f| f.opcode).collect::<Vec<_>>(),
        vec![0x1],
        "the backend saw only the text message"
    );
    let text = sb.metrics.render();
    assert!(metric(&text, "switchboard_pings_sent_total", &[]) >= 2.0);
    drop(ws);
    sb.stop().await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let backend = FrameBackend::start().await;
    let sb = Switchboard::start(&one_upstream(
        &servers(backend.addr),
        "[websocket]\nping_interval = \"1s\"\n[drain]\nclose_linger = \"1s\"",
    ))
    .await;
    let mut client = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // From here on the client neither reads nor writes, until the backend has been told.

    let closes = backend_closes(&backend, 1).await;
    assert!(closes[0].masked);
    assert_eq!(closes[0].close_code(), Some(1001));
    assert_eq!(closes[0].close_reason(), "ping timeout");

    let mut frames = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        for _ in 0..100 {
            match read_frame(&mut client).await {
                Some(frame) => frames.push(frame),
                None => return,
            }
        }
        panic!("no EOF after 100 frames");
    })
    .await;
    assert!(read.is_ok(), "EOF within the deadline; read {frames:?}");
    assert_eq!(frames.len(), 2, "two Pings, then EOF: {frames:?}");
    for frame in &frames {
        assert_eq!(frame.opcode, 0x9, "{frame:?}");
        assert!(!frame.masked);
    }
    let mut rest = [0u8; 16];
    let eof = tokio::time::timeout(DEADLINE, client.read(&mut rest)).await;
    assert!(matches!(eof, Ok(Ok(0)) | Ok(Err(_))), "{eof:?}");
    wait_closed(&sb, "ping_timeout", "1001", 1.0).await;
    sb.stop().await;
}

#[tokio::test]
async fn an_unsolicited_pong_is_relayed_to_the_backend() {
    let (backend, sb, mut ws) = through_frame_backend("[websocket]\nping_interval = \"1s\"").await;
    // Right after switchboard's Ping, while its own Pong is awaited, and again after it.
    assert!(matches!(next_message(&mut ws).await, Message::Ping(_)));
    ws.send(Message::Pong(Bytes::from_static(b"hello")))
        .await
        .unwrap();
    ws.send(Message::Pong(Bytes::from_static(b"hello again")))
        .await
        .unwrap();
    let pongs = backend
        .wait_until("both Pongs", |all| {
            let pongs: Vec<Vec<u8>> = all
                .first()?
                .iter()
                .filter(|f| f.opcode == 0xA)
                .map(|f| f.payload.clone())
                .collect();
            (pongs.len() >= 2).then_some(pongs)
        })
        .await;
    assert_eq!(pongs, vec![b"hello".to_vec(), b"hello again".to_vec()]);
    echo(&mut ws, "still open").await;
    drop(ws);
    sb.stop().await;
}

/// `max_message_bytes` small enough to test, and a short linger.
const MAX_1024: &str = "[websocket]\nmax_message_bytes = 1024\n[drain]\nclose_linger = \"1s\"";

/// A recording backend, switchboard in front of it with `extra` config, and a client.
async fn through_frame_backend(extra: &str) -> (FrameBackend, Switchboard, Ws) {
    let backend = FrameBackend::start().await;
    let sb = Switchboard::start(&one_upstream(&servers(backend.addr), extra)).await;
    let ws = ws_connect(&sb.ws_url("/chat")).await;
    (backend, sb, ws)
}

/// The sender of the big message gets 1009 with nothing before it; the backend gets 1001.
async fn expect_1009_to_client_and_1001_to_backend(ws: &mut Ws, backend: &FrameBackend) {
    let end = expect_close(ws, CloseCode::Size).await;
    assert!(end.before.is_empty(), "{:?}", end.before);
    let closes = backend_closes(backend, 1).await;
    assert_eq!(closes[0].close_code(), Some(1001));
}

#[tokio::test]
async fn a_message_over_max_message_bytes_gets_1009_and_never_reaches_the_backend() {
    let (backend, sb, mut ws) = through_frame_backend(MAX_1024).await;
    let fits = vec![7u8; 1000];
    ws.send(Message::binary(fits.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::binary(fits));

    ws.send(Message::binary(vec![9u8; 2000])).await.unwrap();
    expect_1009_to_client_and_1001_to_backend(&mut ws, &backend).await;
    let sizes: Vec<usize> = backend.connections()[0]
        .iter()
        .filter(|f| f.opcode < 0x8)
        .map(|f| f.payload.len())
        .collect();
    assert_eq!(sizes, vec![1000], "data frames the backend saw");
    wait_closed(&sb, "message_too_big", "1009", 1.0).await;
    sb.stop().await;
}

#[tokio::test]
async fn a_fragmented_message_crossing_max_message_bytes_gets_1009() {
    let (backend, sb, mut ws) = through_frame_backend(MAX_1024).await;
    let fragment = Bytes::from(vec![5u8; 400]);
    for (opcode, fin) in [
        (OpCode::Data(Data::Binary), false),
        (OpCode::Data(Data::Continue), false),
        (OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(Frame::message(
            fragment.clone(),
            opcode,
            fin,
        )))
        .await
        .unwrap();
    }
    expect_1009_to_client_and_1001_to_backend(&mut ws, &backend).await;
    let frames = backend.connections().remove(0);
    let data: Vec<&WireFrame> = frames.iter().filter(|f| f.opcode < 0x8).collect();
    let bytes: usize = data.iter().map(|f| f.payload.len()).sum();
    assert!(bytes <= 800, "the backend saw {bytes} bytes of the message");
    assert!(
        data.iter().all(|f| !f.fin),
        "the backend saw the message's last fragment: {data:?}"
    );
    wait_closed(&sb, "message_too_big", "1009", 1.0).await;
    sb.stop().await;
}

#[tokio::test]
async fn a_backend_that_is_not_websocket_gets_the_tunnel_closed_as_bad_framing() {
    let (addr, live) = raw_backend(|mut stream, head| async move {
        let reply = switching_protocols(&head);
        stream.write_all(reply.as_bytes()).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\n\r\nhello")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    })
    .await;
    let sb = Switchboard::start(&one_upstream(
        &servers(addr),
        "[drain]\nclose_linger = \"1s\"",
    ))
    .await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    let end = until_close(&mut ws).await;
    assert!(end.before.is_empty(), "{:?}", end.before);
    if let Some(frame) = &end.close {
        assert_eq!(frame.code, CloseCode::Error, "close frame {frame:?}");
    }
    live.wait_for("backend connection closed", |n| n == 0).await;
    eventually("the tunnel counted as bad_framing", || async {
        let text = sb.metrics.render();
        (metric(
            &text,
            "switchboard_tunnels_closed_total",
            &[("reason", "bad_framing")],
        ) == 1.0)
            .then_some(())
    })
    .await;
    sb.stop().await;
}

#[tokio::test]
async fn a_close_from_the_client_is_labelled_client_closed() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&one_upstream(&servers(backend.addr), "")).await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    echo(&mut ws, "bye soon").await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    })))
    .await
    .unwrap();
    let end = expect_close(&mut ws, CloseCode::Normal).await;
    assert!(end.before.is_empty());
    // A client closes its socket once the closing handshake is over.
    drop(ws);
    backend.live.wait_for("backend closed", |n| n == 0).await;
    wait_closed(&sb, "client_closed", "1000", 1.0).await;
    sb.stop().await;
}

#[tokio::test]
async fn a_close_from_the_backend_is_labelled_backend_closed() {
    let (reply_tx, mut reply) = mpsc::channel(1);
    let (addr, live) = raw_backend(move |mut stream, head| {
        let reply_tx = reply_tx.clone();
        async move {
            let answer = switching_protocols(&head);
            stream.write_all(answer.as_bytes()).await.unwrap();
            stream
                .write_all(&frame_bytes(true, 0x8, &[0x03, 0xE8], None))
                .await
                .unwrap();
            // The client's Close reply, relayed; then the server ends TCP.
            let answer = tokio::time::timeout(DEADLINE, read_frame(&mut stream))
                .await
                .ok()
                .flatten();
            let _ = reply_tx.send(answer).await;
            let _ = stream.shutdown().await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
        }
    })
    .await;
    let sb = Switchboard::start(&one_upstream(&servers(addr), "")).await;
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    expect_close(&mut ws, CloseCode::Normal).await;
    // A client closes its socket once the closing handshake is over.
    drop(ws);
    let answer = tokio::time::timeout(DEADLINE, reply.recv())
        .await
        .unwrap()
        .unwrap()
        .expect("the client's Close reached the backend");
    assert_eq!(answer.close_code(), Some(1000));
    assert!(answer.masked);
    live.wait_for("backend closed", |n| n == 0).await;
    wait_closed(&sb, "backend_closed", "1000", 1.0).await;
    sb.stop().await;
}

/// A client that does the handshake, sends `before` (raw bytes, maybe none), then shuts down its
/// sending side, to a backend that does nothing after its 101: only `timeouts.half_closed`
/// (300 ms) can end the tunnel.
async fn half_closed_ends_the_tunnel(before: &[u8]) {
    let release = Arc::new(Notify::new());
    let (addr, live) = {
        let release = release.clone();
        raw_backend(move |mut stream, head| {
            let release = release.clone();
            async move {
                let answer = switching_protocols(&head);
                stream.write_all(answer.as_bytes()).await.unwrap();
                // Then nothing at all (no reads, no writes, no FIN) until the test is done, and
                // for longer than the test waits for the tunnel to end.
                let _ = tokio::time::timeout(2 * DEADLINE, release.notified()).await;
            }
        })
        .await
    };
    let sb = Switchboard::start(&one_upstream(
        &servers(addr),
        "[timeouts]\nhalf_closed = \"300ms\"",
    ))
    .await;
    let mut client = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.write_all(before).await.unwrap();
    client.shutdown().await.unwrap(); // FIN: the client sends no more

    let mut rest = Vec::new();
    let eof = tokio::time::timeout(DEADLINE, client.read_to_end(&mut rest)).await;
    assert!(
        eof.is_ok(),
        "the half-closed tunnel did not end within the deadline (half_closed is 300 ms)"
    );
    wait_closed(&sb, "half_closed_timeout", "none", 1.0).await;
    release.notify_one();
    live.wait_for("backend connection done", |n| n == 0).await;
    sb.stop().await;
}

#[tokio::test]
async fn a_half_closed_tunnel_ends_after_the_half_closed_timeout() {
    half_closed_ends_the_tunnel(b"").await;
}

#[tokio::test]
async fn a_half_closed_tunnel_that_carried_a_message_ends_after_the_half_closed_timeout() {
    half_closed_ends_the_tunnel(&client_frame(0x1, b"last words")).await;
}

/// An HTTP/2 connection with prior knowledge over `tcp`, and a WebSocket opened on one of its
/// streams by extended CONNECT (RFC 8441 §4); the stream's bytes, raw.
async fn h2c_websocket(
    tcp: TcpStream,
    authority: &str,
    path: &str,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    TokioIo<hyper::upgrade::Upgraded>,
) {
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let mut response =
        extended_connect(&mut sender, &format!("http://{authority}{path}"), &[]).await;
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .expect("stream upgraded");
    (sender, TokioIo::new(upgraded))
}

#[tokio::test]
async fn an_h2_websocket_gets_close_1001_on_shutdown() {
    let backend = FrameBackend::start().await;
    let sb = Switchboard::start(&one_upstream(
        &servers(backend.addr),
        "[drain]\nspread = \"0s\"\nclose_linger = \"2s\"",
    ))
    .await;
    let tcp = TcpStream::connect(sb.addr).await.unwrap();
    let (_sender, mut stream) = h2c_websocket(tcp, &sb.addr.to_string(), "/chat").await;
    stream
        .write_all(&client_frame(0x1, b"over h2"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(DEADLINE, read_frame(&mut stream))
        .await
        .unwrap()
        .expect("the echo");
    assert_eq!((echoed.opcode, &echoed.payload[..]), (0x1, &b"over h2"[..]));

    sb.shutdown.trigger();
    let head = read_exact(&mut stream, 2).await;
    assert_eq!(head[0], 0x88, "an unfragmented Close frame");
    assert!(head[1] & 0x80 == 0, "unmasked toward the client");
    let payload = read_exact(&mut stream, usize::from(head[1])).await;
    assert_eq!(&payload[..2], &[0x03, 0xE9], "code 1001");
    assert_eq!(&payload[2..], b"server going away");
    stream
        .write_all(&client_frame(0x8, &[0x03, 0xE9]))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the stream ends within the deadline");
    assert!(rest.is_empty(), "nothing after the Close: {rest:?}");

    let closes = backend_closes(&backend, 1).await;
    assert!(closes[0].masked);
    assert_eq!(closes[0].close_code(), Some(1001));
    run_returns(sb.task).await;
    assert_eq!(closed(&sb.metrics, "shutdown", "1001"), 1.0);
}
