//! HTTP/2 clients: ordinary requests to HTTP/1.1 backends, and WebSockets by extended CONNECT
//! (RFC 8441), many on one connection, each balanced and counted on its own.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use support::backends::{EchoBackend, HttpBackend};
use support::clients::extended_connect;
use support::tls::{TempDir, TestCa, tls_connect};
use support::{DEADLINE, Switchboard, eventually, metric};

type Sender = http2::SendRequest<Empty<Bytes>>;

/// An HTTP/2 connection over any stream (TLS with ALPN h2, or plain with prior knowledge).
async fn h2_connect<S>(io: S) -> Sender
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    sender
}

/// Opens a WebSocket on a new stream of `sender` (RFC 8441 §4).
async fn h2_websocket(
    sender: &mut Sender,
    authority: &str,
    path: &str,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let mut response = extended_connect(
        sender,
        &format!("https://{authority}{path}"),
        &[("sec-websocket-protocol", "chat")],
    )
    .await;
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    assert!(!response.headers().contains_key("sec-websocket-accept"));
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .expect("stream upgraded");
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

async fn echo_once<S>(ws: &mut WebSocketStream<S>, text: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text(text));
}

fn tls_config(ca: &TestCa, dir: &TempDir, servers: &str) -> String {
    let (cert, key) = ca.write_leaf(dir, "site", &["chat.test"]);
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [{servers}]\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn websockets_over_one_h2_connection_and_a_reset_harms_no_other() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("h2ws");
    let (a, b) = (EchoBackend::start("a").await, EchoBackend::start("b").await);
    let sb = Switchboard::start_tls(&tls_config(
        &ca,
        &dir,
        &format!("\"{}\", \"{}\"", a.addr, b.addr),
    ))
    .await;
    let tls = tls_connect(sb.addr, "chat.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = h2_connect(tls).await;

    let mut sockets = Vec::new();
    for i in 0..4 {
        let mut ws = h2_websocket(&mut sender, "chat.test", &format!("/ws?n={i}")).await;
        echo_once(&mut ws, &format!("stream {i}")).await;
        sockets.push(ws);
    }
    // Balanced per stream: least-conn spreads the four streams over both backends.
    assert_eq!((a.live.get(), b.live.get()), (2, 2));
    // The backend got an HTTP/1.1 handshake with switchboard's own key.
    let seen = a.handshakes.lock().unwrap()[0].clone();
    assert_eq!(seen["sec-websocket-version"], "13");
    assert_eq!(seen["host"], "chat.test");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert!(seen.contains_key("sec-websocket-key"));

    let text = sb.scrape().await;
    assert_eq!(
        metric(&text, "switchboard_tunnels_active", &[("protocol", "h2")]),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[("outcome", "upgraded"), ("protocol", "h2")]
        ),
        4.0
    );

    // Drop one stream without a close handshake: its stream is reset; the others live on.
    let reset = sockets.remove(1);
    drop(reset);
    eventually("the reset tunnel is gone", || async {
        let text = sb.scrape().await;
        (metric(&text, "switchboard_tunnels_active", &[("protocol", "h2")]) == 3.0).then_some(())
    })
    .await;
    for (i, ws) in sockets.iter_mut().enumerate() {
        echo_once(ws, &format!("still here {i}")).await;
    }
    // And new streams can still be opened on the same connection.
    let mut late = h2_websocket(&mut sender, "chat.test", "/ws?late").await;
    echo_once(&mut late, "late").await;
    drop((sockets, late, sender));
    sb.stop().await;
}

#[tokio::test]
async fn ordinary_requests_over_h2_reach_http1_backends() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("h2get");
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start_tls(&tls_config(&ca, &dir, &format!("\"{}\"", web.addr))).await;
    let tls = tls_connect(
        sb.addr,
        "chat.test",
        ca.client_config(&[b"h2", b"http/1.1"]),
    )
    .await;
    let mut sender = h2_connect(tls).await;
    for i in 0..3 {
        let request = Request::get(format!("https://chat.test/page/{i}?q=1"))
            .body(Empty::new())
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"web");
    }
    let seen = web.recorded();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].uri, "/page/2?q=1");
    assert_eq!(seen[0].headers["host"], "chat.test");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    let text = sb.scrape().await;
    assert!(metric(&text, "switchboard_tls_alpn_total", &[("protocol", "h2")]) >= 1.0);
    drop(sender);
    sb.stop().await;
}

#[tokio::test]
async fn h2c_with_prior_knowledge_on_a_plain_listener() {
    let echo = EchoBackend::start("echo").await;
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&format!(
        "[[route]]\npath_prefix = \"/ws\"\nupstream = \"ws\"\n[[route]]\nupstream = \"web\"\n\
         [upstream.ws]\nservers = [\"{}\"]\n[upstream.web]\nservers = [\"{}\"]\n",
        echo.addr, web.addr
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(sb.addr).await.unwrap();
    let mut sender = h2_connect(tcp).await;
    let response = sender
        .send_request(
            Request::get(format!("http://{}/index", sb.addr))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut ws = h2_websocket(&mut sender, &sb.addr.to_string(), "/ws").await;
    echo_once(&mut ws, "h2c").await;
    let seen = echo.handshakes.lock().unwrap()[0].clone();
    assert_eq!(seen["x-forwarded-proto"], "http");
    drop((ws, sender));
    sb.stop().await;
}
