//! `limits.max_connections` end to end: the limit on `/metrics`, a connection that arrives at
//! the limit and gets the next free slot, connections closed unserved when none comes free
//! (counted), and the time spent at the limit.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard::listener::limit::WAIT_AT_LIMIT;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use support::backends::EchoBackend;
use support::clients::{Ws, handshake_request, raw_send, read_head, ws_connect};
use support::{DEADLINE, Switchboard, eventually, metric, one_upstream};

/// One slot, taken by a tunnel in the tests.
async fn one_slot(echo: &EchoBackend) -> Switchboard {
    Switchboard::start(&one_upstream(
        &format!("\"{}\"", echo.addr),
        "[limits]\nmax_connections = 1",
    ))
    .await
}

/// Reads until switchboard ends the connection (EOF, or a reset: it closed with our request
/// unread); returns what it sent before, and how long it took from `since`.
async fn closed(mut stream: TcpStream, since: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // Bounded: each turn reads at least one byte, or ends.
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection was neither served nor closed"),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, since.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Closes a tunnel and waits for the server's end of it.
async fn close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
}

async fn echoes(ws: &mut Ws) {
    ws.send(Message::text("hi")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
    assert!(matches!(echoed, Some(Ok(Message::Text(t))) if t.as_str() == "hi"));
}

#[tokio::test]
async fn at_the_limit_a_connection_waits_then_new_ones_are_closed_until_a_slot_frees() {
    let echo = EchoBackend::start("echo").await;
    let sb = one_slot(&echo).await;
    let text = sb.scrape().await;
    assert_eq!(metric(&text, "switchboard_connections_limit", &[]), 1.0);
    assert_eq!(
        metric(&text, "switchboard_connections_at_limit_seconds_total", &[]),
        0.0
    );

    let mut holder = ws_connect(&sb.ws_url("/")).await;
    echoes(&mut holder).await;

    // The first one at the limit waits for a slot, then is closed unserved.
    let started = Instant::now();
    let waiter = raw_send(sb.addr, handshake_request("/", "").as_bytes()).await;
    let (answer, waited) = closed(waiter, started).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(waited >= WAIT_AT_LIMIT, "closed after {waited:?}");
    // While every slot stays taken, the next one is closed at once.
    let started = Instant::now();
    let next = raw_send(sb.addr, handshake_request("/", "").as_bytes()).await;
    let (answer, waited) = closed(next, started).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(waited < WAIT_AT_LIMIT, "closed after {waited:?}");

    let text = sb.scrape().await;
    let m = |name: &str| metric(&text, name, &[]);
    assert_eq!(m("switchboard_connections_rejected_total"), 2.0);
    assert_eq!(
        m("switchboard_connections_total"),
        1.0,
        "rejected ones are not"
    );
    assert_eq!(m("switchboard_connections_active"), 1.0);
    // The slot has been taken since before the first one waited its second (ms clock).
    let at_limit = m("switchboard_connections_at_limit_seconds_total");
    assert!(at_limit >= WAIT_AT_LIMIT.as_secs_f64() - 0.01, "{at_limit}");
    // The holder still works.
    echoes(&mut holder).await;

    // A slot comes free: the next connection is served, and the clock stops when it ends.
    // The clock stops when the slot is given back (the in-process handle shows it; the
    // active gauge goes down a moment before).
    let clock = sb.metrics.connections_at_limit_seconds_total.clone();
    close(holder).await;
    eventually("the holder's slot is free", || async {
        (!clock.is_running()).then_some(())
    })
    .await;
    let mut again = ws_connect(&sb.ws_url("/")).await;
    echoes(&mut again).await;
    close(again).await;
    eventually("the last slot is free", || async {
        (!clock.is_running()).then_some(())
    })
    .await;
    let text = sb.scrape().await;
    assert_eq!(metric(&text, "switchboard_connections_active", &[]), 0.0);
    let stopped = metric(&text, "switchboard_connections_at_limit_seconds_total", &[]);
    assert!(stopped >= at_limit);
    let later = metric(
        &sb.scrape().await,
        "switchboard_connections_at_limit_seconds_total",
        &[],
    );
    assert_eq!(later, stopped, "no time counted with a slot free");
    assert_eq!(
        metric(&text, "switchboard_connections_rejected_total", &[]),
        2.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_connection_that_arrives_at_the_limit_gets_the_next_free_slot() {
    let echo = EchoBackend::start("echo").await;
    let sb = one_slot(&echo).await;
    let holder = ws_connect(&sb.ws_url("/")).await;
    // Connected (the kernel's backlog) and its handshake sent while the slot is taken.
    let mut waiter = raw_send(sb.addr, handshake_request("/", "").as_bytes()).await;
    close(holder).await;
    let head = read_head(&mut waiter).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let text = sb.scrape().await;
    assert_eq!(
        metric(&text, "switchboard_connections_rejected_total", &[]),
        0.0
    );
    assert_eq!(metric(&text, "switchboard_connections_total", &[]), 2.0);
    drop(waiter);
    sb.stop().await;
}
