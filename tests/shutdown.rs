//! Graceful shutdown: stop accepting, finish in-flight requests, keep tunnels for the grace
//! period, then close them; the binary exits 0 on SIGTERM.

mod support;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use support::backends::{EchoBackend, raw_backend};
use support::clients::{http_get, raw_send, read_head, ws_connect};
use support::{DEADLINE, Switchboard, eventually};

fn config(servers: &str, grace: &str) -> String {
    format!(
        "[timeouts]\nshutdown_grace = \"{grace}\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [{servers}]\n"
    )
}

async fn refused(addr: std::net::SocketAddr) -> Option<()> {
    TcpStream::connect(addr).await.is_err().then_some(())
}

#[tokio::test]
async fn live_tunnel_survives_the_drain_and_ends_the_run_when_it_closes() {
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(&format!("\"{}\"", echo.addr), "60s")).await;
    let mut ws = ws_connect(&sb.ws_url("/")).await;

    sb.shutdown.trigger();
    eventually("new connections refused", || refused(sb.addr)).await;
    assert_eq!(http_get(sb.admin, "/readyz", &[]).await.status, 503);

    // The tunnel still works while draining.
    ws.send(Message::text("still talking")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("still talking"));
    assert!(!sb.task.is_finished());

    // Closing the last tunnel ends the run long before the 60 s grace period.
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(DEADLINE, sb.task)
        .await
        .expect("run returns once the tunnel is gone")
        .unwrap()
        .expect("run ended cleanly");
}

#[tokio::test]
async fn tunnels_are_closed_when_the_grace_period_ends() {
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(&format!("\"{}\"", echo.addr), "200ms")).await;
    let mut ws = ws_connect(&sb.ws_url("/")).await;
    sb.shutdown.trigger();
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("closed within the deadline");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    echo.live.wait_for("backend side closed", |n| n == 0).await;
    tokio::time::timeout(DEADLINE, sb.task)
        .await
        .unwrap()
        .unwrap()
        .expect("run ended cleanly");
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
    ws.close(None).await.unwrap();
    drop(ws);
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}
