//! The plain HTTP path when backends and clients misbehave in ordinary ways: bodies that stall
//! either way, a pooled connection the backend closed under a request, a refused connect under
//! a POST, and request targets that cannot be forwarded.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use support::backends::{HttpBackend, LiveCount, raw_backend, refusing_addr};
use support::clients::{http_get, http_request, raw_send, read_head, read_to_end};
use support::{DEADLINE, Switchboard, one_upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads and drops what the peer sends until it closes (at most 10 000 reads).
async fn read_until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    for _ in 0..10_000 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The single backend's `in_flight` count in `/admin/upstreams`.
async fn in_flight(sb: &Switchboard) -> u64 {
    sb.upstreams().await["upstreams"][0]["backends"][0]["in_flight"]
        .as_u64()
        .expect("in_flight")
}

async fn wait_released(sb: &Switchboard, backend_live: &LiveCount) {
    backend_live
        .wait_for("the backend connection to be closed", |n| n == 0)
        .await;
    support::eventually("the lease given back", || async {
        (in_flight(sb).await == 0).then_some(())
    })
    .await;
}

fn least_conn(server: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{extra}\n[[route]]\nupstream = \"app\"\n[upstream.app]\nbalance = \"least-conn\"\nservers = [\"{server}\"]\n"
    )
}

#[tokio::test]
async fn a_response_body_that_stalls_is_ended_and_everything_is_released() {
    let (addr, live) = raw_backend(|mut stream, _head| async move {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
        let _ = stream.write_all(head).await;
        read_until_closed(&mut stream).await;
    })
    .await;
    let sb = Switchboard::start(&least_conn(
        addr,
        "[timeouts]\nrequest_body_idle = \"300ms\"",
    ))
    .await;
    let mut client = raw_send(sb.addr, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let received = tokio::time::timeout(DEADLINE, read_to_end(&mut client))
        .await
        .expect("the client's connection is closed mid-body");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("0123456789"),
        "only the 10 bytes sent: {text}"
    );
    wait_released(&sb, &live).await;
    sb.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stalls_gets_408_and_everything_is_released() {
    let (addr, live) = raw_backend(|mut stream, _head| async move {
        read_until_closed(&mut stream).await;
    })
    .await;
    let sb = Switchboard::start(&least_conn(
        addr,
        "[timeouts]\nrequest_body_idle = \"300ms\"",
    ))
    .await;
    let mut client = raw_send(
        sb.addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    wait_released(&sb, &live).await;
    let text = sb.scrape().await;
    assert_eq!(
        support::metric(
            &text,
            "switchboard_http_requests_total",
            &[("upstream", "app"), ("code", "408")]
        ),
        1.0
    );
    sb.stop().await;
}

/// A backend whose first connection answers one request with keep-alive, then reads the next
/// request and closes without a byte of answer (a keep-alive close racing the request). Later
/// connections answer "fresh". Returns the address and the count of connections accepted.
async fn closes_under_the_second_request() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (addr, _live) = raw_backend(move |mut stream, _head| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
                    .await;
                let _second = read_head(&mut stream).await;
            } else {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfresh",
                    )
                    .await;
            }
        }
    })
    .await;
    (addr, accepted)
}

#[tokio::test]
async fn a_pooled_connection_closed_under_a_get_is_resent_once_on_a_new_one() {
    let (addr, accepted) = closes_under_the_second_request().await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{addr}\""), "")).await;
    let first = http_get(sb.addr, "/one", &[]).await;
    assert_eq!((first.status, first.body_text().as_str()), (200, "one"));
    let second = http_get(sb.addr, "/two", &[]).await;
    assert_eq!(
        (second.status, second.body_text().as_str()),
        (200, "fresh"),
        "resent on a new connection"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    sb.stop().await;
}

#[tokio::test]
async fn a_post_written_to_a_connection_that_closed_is_never_resent() {
    let (addr, accepted) = closes_under_the_second_request().await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{addr}\""), "")).await;
    let first = http_get(sb.addr, "/one", &[]).await;
    assert_eq!(first.status, 200);
    let post = http_request(sb.addr, "POST", "/pay", &[], Bytes::from_static(b"once")).await;
    assert_eq!(post.status, 502, "{}", post.body_text());
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no second connection");
    sb.stop().await;
}

#[tokio::test]
async fn a_refused_connect_sends_a_post_and_its_body_to_the_next_backend() {
    let refusing = refusing_addr().await;
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{refusing}\", \"{}\"", web.addr),
        "",
    ))
    .await;
    // Round-robin starts with the first server, the refusing one.
    let response = http_request(
        sb.addr,
        "POST",
        "/orders",
        &[],
        Bytes::from_static(b"order-1"),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(
        response.body_text(),
        "order-1",
        "the body reached the backend whole"
    );
    let text = sb.scrape().await;
    assert_eq!(
        support::metric(
            &text,
            "switchboard_backend_connect_errors_total",
            &[("reason", "refused")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        support::metric(
            &text,
            "switchboard_http_retries_total",
            &[("upstream", "app")]
        ),
        1.0
    );
    let backend = web.addr.to_string();
    assert_eq!(
        support::metric(
            &text,
            "switchboard_http_requests_total",
            &[("code", "200"), ("backend", backend.as_str())]
        ),
        1.0
    );
    assert_eq!(web.recorded().len(), 1);
    sb.stop().await;
}

#[tokio::test]
async fn request_targets_that_are_not_paths_get_400_and_reach_no_backend() {
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&one_upstream(&format!("\"{}\"", web.addr), "")).await;
    let mut stream = raw_send(sb.addr, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let fine = http_get(sb.addr, "/", &[]).await;
    assert_eq!(fine.status, 200);
    assert_eq!(web.recorded().len(), 1, "only the ordinary request arrived");
    sb.stop().await;
}
