//! Graceful shutdown: stop accepting, finish in-flight requests, close every tunnel with a Close
//! frame, cut what is left at the end of the grace period; the binary exits 0 on SIGTERM.

mod support;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use support::backends::{EchoBackend, raw_backend};
use support::clients::{expect_close, http_get, raw_send, read_head, ws_connect};
use support::{DEADLINE, Switchboard, eventually, metric};

fn config(servers: &str, grace: &str) -> String {
    format!(
        "[drain]\nspread = \"500ms\"\n[timeouts]\nshutdown_grace = \"{grace}\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [{servers}]\n"
    )
}

async fn refused(addr: std::net::SocketAddr) -> Option<()> {
    TcpStream::connect(addr).await.is_err().then_some(())
}

#[tokio::test]
async fn tunnels_get_close_1001_and_the_run_ends_when_they_are_closed() {
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(&format!("\"{}\"", echo.addr), "60s")).await;
    let mut ws = ws_connect(&sb.ws_url("/")).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::text("before")
    );

    sb.shutdown.trigger();
    eventually("new connections refused", || refused(sb.addr)).await;
    assert_eq!(http_get(sb.admin, "/readyz", &[]).await.status, 503);
    expect_close(&mut ws, CloseCode::Away).await;
    echo.live.wait_for("backend side closed", |n| n == 0).await;

    // The closing handshake is over long before the 60 s grace period.
    tokio::time::timeout(DEADLINE, sb.task)
        .await
        .expect("run returns once the tunnel is gone")
        .unwrap()
        .expect("run ended cleanly");
    let text = sb.metrics.render();
    assert_eq!(
        metric(
            &text,
            "switchboard_tunnels_closed_total",
            &[("reason", "shutdown"), ("code", "1001")]
        ),
        1.0
    );
    assert_eq!(metric(&text, "switchboard_tunnels_cut_total", &[]), 0.0);
}

#[tokio::test]
async fn a_client_that_ignores_the_close_is_cut_when_the_grace_period_ends() {
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start(
        &config(&format!("\"{}\"", echo.addr), "300ms")
            .replace("[drain]\n", "[drain]\nclose_linger = \"30s\"\n"),
    )
    .await;
    // A client that completes the handshake and then never reads nor answers.
    let mut client = raw_send(
        sb.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(read_head(&mut client).await.starts_with("HTTP/1.1 101"));
    eventually("tunnel live", || async {
        (metric(&sb.scrape().await, "switchboard_tunnels_active", &[]) == 1.0).then_some(())
    })
    .await;

    sb.shutdown.trigger();
    tokio::time::timeout(DEADLINE, sb.task)
        .await
        .unwrap()
        .unwrap()
        .expect("run ended cleanly");
    let text = sb.metrics.render();
    assert_eq!(
        metric(
            &text,
            "switchboard_tunnels_cut_total",
            &[("reason", "shutdown")]
        ),
        1.0
    );
    echo.live.wait_for("backend side closed", |n| n == 0).await;
    drop(client);
}

#[tokio::test]
async fn in_flight_request_finishes_during_the_drain() {
    let release = Arc::new(Notify::new());
    let arrived = Arc::new(Notify::new());
    let (addr, _) = {
        let (release, arrived) = (release.clone(), arrived.clone());
        raw_backend(move |mut stream, _head| {
            let (release, arrived) = (release.clone(), arrived.clone());
            async move {
                arrived.notify_one();
                release.notified().await;
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
                    .await
                    .unwrap();
            }
        })
        .await
    };
    let sb = Switchboard::start(&config(&format!("\"{addr}\""), "60s")).await;
    let mut client = raw_send(sb.addr, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::time::timeout(DEADLINE, arrived.notified())
        .await
        .expect("request reached the backend");

    sb.shutdown.trigger();
    eventually("new connections refused", || refused(sb.addr)).await;
    release.notify_one();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(support::clients::read_exact(&mut client, 4).await, b"late");
    // After the response the drained connection is closed and the run ends.
    drop(client);
    tokio::time::timeout(DEADLINE, sb.task)
        .await
        .unwrap()
        .unwrap()
        .expect("run ended cleanly");
}

#[tokio::test]
async fn binary_exits_0_on_sigterm() {
    let echo = EchoBackend::start("echo").await;
    // The binary binds its own port: reserve one and release it just before.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("switchboard-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\n{}",
            config(&format!("\"{}\"", echo.addr), "5s")
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("binary listening", || async {
        match TcpStream::connect(addr).await {
            Ok(_) => Some(()),
            Err(_) => None,
        }
    })
    .await;
    let mut ws = ws_connect(&format!("ws://{addr}/")).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert!(
        tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .is_some()
    );

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    expect_close(&mut ws, CloseCode::Away).await;
    drop(ws);
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}
