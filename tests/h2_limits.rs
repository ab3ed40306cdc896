//! HTTP/2 connections held within bounds: a preface and SETTINGS deadline, an idle timeout
//! that counts tunnels as open streams, and flow-control windows that let one connection's
//! other streams go on while several of its tunnels have stalled backends.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use support::backends::{EchoBackend, HttpBackend, raw_backend, switching_protocols};
use support::clients::{extended_connect, raw_send, read_to_end};
use support::{DEADLINE, Switchboard};

type Sender = http2::SendRequest<Empty<Bytes>>;

/// An h2c connection to `sb`, and the task driving it (it ends when the connection does).
async fn h2c(sb: &Switchboard) -> (Sender, JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(sb.addr).await.unwrap();
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

/// The raw stream of a new RFC 8441 tunnel on `sender`.
async fn tunnel(sender: &mut Sender, sb: &Switchboard, path: &str) -> hyper::upgrade::Upgraded {
    let mut response = extended_connect(sender, &format!("http://{}{path}", sb.addr), &[]).await;
    hyper::upgrade::on(&mut response)
        .await
        .expect("tunnel stream")
}

async fn websocket(
    sender: &mut Sender,
    sb: &Switchboard,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let io = tunnel(sender, sb, "/ws").await;
    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Client, None).await
}

async fn echo_once(ws: &mut WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("echo within the deadline")
        .expect("a message")
        .expect("no error");
    assert_eq!(reply, Message::text(text));
}

fn config(server: std::net::SocketAddr, limits: &str) -> String {
    support::one_upstream(&format!("\"{server}\""), &format!("[limits]\n{limits}"))
}

#[tokio::test]
async fn a_client_that_stops_inside_the_preface_or_before_settings_is_closed_at_the_deadline() {
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&config(web.addr, "header_read_timeout = \"300ms\"")).await;
    for opening in [
        &b"PRI * HTTP/2.0\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let mut stream = raw_send(sb.addr, opening).await;
        tokio::time::timeout(DEADLINE, read_to_end(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("closed after {:?}", String::from_utf8_lossy(opening)));
    }
    sb.stop().await;
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_but_one_holding_a_tunnel_is_not() {
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(echo.addr, "h2_idle_timeout = \"500ms\"")).await;
    // A holds a tunnel, opened before B's last stream ends: were the tunnel not counted, A's
    // idle time would run out first.
    let (mut a, a_task) = h2c(&sb).await;
    let mut ws = websocket(&mut a, &sb).await;
    echo_once(&mut ws, "before").await;
    let (mut b, b_task) = h2c(&sb).await;
    let request = http::Request::builder()
        .uri(format!("http://{}/plain", sb.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    b.ready().await.unwrap();
    // The echo backend refuses a plain GET; any answer ends the stream.
    let response = b.send_request(request).await.unwrap();
    drop(response);
    tokio::time::timeout(DEADLINE, b_task)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert!(!a_task.is_finished(), "the connection with a tunnel stays");
    echo_once(&mut ws, "after").await;
    support::clients::close_and_drop(ws).await;
    sb.stop().await;
}

/// Writes to `io` until a 16 KiB write makes no progress for a while (the stream's flow-control
/// window is full), then reports how much it wrote; panics past `bound` bytes.
async fn write_until_stalled(
    mut io: WriteHalf<TokioIo<hyper::upgrade::Upgraded>>,
    bound: usize,
) -> (usize, WriteHalf<TokioIo<hyper::upgrade::Upgraded>>) {
    // Masked binary frame header for 16 KiB - 8 of payload, then the payload: valid framing.
    let mut chunk = vec![0x82u8, 0xFE, 0x3F, 0xF8, 1, 2, 3, 4];
    chunk.resize(16 * 1024, 0);
    let mut written = 0;
    while written < bound {
        // A write that cannot finish in 500 ms has met back-pressure. Were that a misjudged
        // slow write, the test would only check less, never fail wrongly.
        match tokio::time::timeout(Duration::from_millis(500), io.write_all(&chunk)).await {
            Ok(result) => result.expect("write"),
            Err(_) => return (written, io),
        }
        written += chunk.len();
    }
    panic!("{bound} bytes went into a tunnel whose backend never reads");
}

#[tokio::test]
async fn eight_tunnels_with_stalled_backends_leave_a_ninth_stream_working() {
    let (stalled, _live) = raw_backend(|mut stream, head| async move {
        let _ = stream
            .write_all(switching_protocols(&head).as_bytes())
            .await;
        // Never reads again: the tunnel's client-to-backend direction backs up.
        std::future::pending::<()>().await;
    })
    .await;
    let echo = EchoBackend::start("echo").await;
    let body = support::special_and_echo("/stalled", stalled, echo.addr);
    let sb = Switchboard::start(&body).await;
    let (mut sender, _task) = h2c(&sb).await;
    // The proxy's send buffer toward the backend and the backend's receive buffer, at their
    // kernel maximums, plus slack: past that, the tunnel did not push back.
    let (wmem, rmem) = support::tcp_buffer_max();
    let bound = wmem + rmem + (4 << 20);
    let mut writers = Vec::new();
    for _ in 0..8 {
        let io = tunnel(&mut sender, &sb, "/stalled").await;
        let (_read, write) = tokio::io::split(TokioIo::new(io));
        writers.push(tokio::spawn(write_until_stalled(write, bound)));
    }
    let mut held = Vec::new();
    for writer in writers {
        let (written, io) = tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("each stalled tunnel stops taking data")
            .unwrap();
        assert!(written > 0, "the tunnel took data before it stalled");
        held.push(io);
    }
    // Eight streams hold their full windows; the connection's window still has room.
    let mut ws = websocket(&mut sender, &sb).await;
    for n in 0..3 {
        echo_once(&mut ws, &format!("still moving {n}")).await;
    }
    sb.stop().await;
}

/// A hand-written HTTP/2 client, for what a library client never does: open more streams than
/// allowed, or leave pings unanswered.
mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;

    /// One frame: type, flags, stream id, payload.
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A GET of `/` with `:authority: a`, whole (END_STREAM | END_HEADERS), in HPACK without
    /// dynamic table: indexed :method GET, :scheme http, :path /, literal :authority.
    pub fn get(stream: u32) -> Vec<u8> {
        frame(HEADERS, 0x5, stream, &[0x82, 0x86, 0x84, 0x01, 0x01, b'a'])
    }

    /// Preface and empty SETTINGS; then waits for the server's SETTINGS and acknowledges it,
    /// so the server's limits are in force.
    pub async fn connect(addr: std::net::SocketAddr) -> TcpStream {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        opening.extend(frame(SETTINGS, 0, 0, &[]));
        tcp.write_all(&opening).await.unwrap();
        for _ in 0..10 {
            let f = read(&mut tcp).await.expect("server SETTINGS");
            if f.kind == SETTINGS && f.flags & 0x1 == 0 {
                tcp.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
                return tcp;
            }
        }
        panic!("no SETTINGS from the server");
    }

    /// The next frame, or `None` at EOF or error.
    pub async fn read(tcp: &mut TcpStream) -> Option<Frame> {
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7FFF_FFFF,
            payload,
        })
    }
}

#[tokio::test]
async fn a_stream_over_h2_max_streams_is_refused_and_the_others_go_on() {
    let silent = support::backends::SilentBackend::start().await;
    let sb = Switchboard::start(&config(silent.addr, "h2_max_streams = 2")).await;
    let mut tcp = raw::connect(sb.addr).await;
    // Two requests held open by a backend that never answers, then a third.
    let mut requests = raw::get(1);
    requests.extend(raw::get(3));
    tcp.write_all(&requests).await.unwrap();
    silent
        .live
        .wait_for("two requests at the backend", |n| n == 2)
        .await;
    tcp.write_all(&raw::get(5)).await.unwrap();
    let refused = tokio::time::timeout(DEADLINE, async {
        for _ in 0..100 {
            let f = raw::read(&mut tcp).await.expect("connection stays up");
            if f.kind == raw::RST_STREAM {
                return (
                    f.stream,
                    u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
                );
            }
        }
        panic!("no RST_STREAM in 100 frames");
    })
    .await
    .expect("RST_STREAM within the deadline");
    assert_eq!(refused, (5, 0x7), "stream 5 refused with REFUSED_STREAM");
    assert_eq!(
        silent.live.get(),
        2,
        "the refused stream reached no backend"
    );
    drop(tcp);
    sb.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_keepalive_pings_unanswered_is_disconnected() {
    let silent = support::backends::SilentBackend::start().await;
    let sb = Switchboard::start(&config(silent.addr, "h2_keepalive = \"300ms\"")).await;
    let mut tcp = raw::connect(sb.addr).await;
    // An open stream, so the connection is not closed as idle instead.
    tcp.write_all(&raw::get(1)).await.unwrap();
    let pinged = tokio::time::timeout(DEADLINE, async {
        let mut pinged = false;
        for _ in 0..100 {
            match raw::read(&mut tcp).await {
                Some(f) if f.kind == raw::PING && f.flags & 0x1 == 0 => pinged = true,
                Some(_) => {}
                None => return pinged,
            }
        }
        panic!("the connection outlived 100 frames");
    })
    .await
    .expect("disconnected within the deadline");
    assert!(pinged, "a PING came before the disconnect");
    sb.stop().await;
}
