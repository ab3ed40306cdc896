//! Guards the per-request header work and routing: upgrade detection, hop-by-hop removal plus
//! forwarding headers on a browser-like WebSocket handshake, and a route lookup in a table of
//! 50 routes.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::config::{HostPattern, Route};
use switchboard::proxy::headers;
use switchboard::proxy::router::Router;

fn handshake_parts() -> http::request::Parts {
    http::Request::get("/chat?room=lobby")
        .header("host", "chat.example.com")
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36",
        )
        .header("origin", "https://chat.example.com")
        .header("cookie", "session=abc123; theme=dark")
        .body(())
        .expect("valid request")
        .into_parts()
        .0
}

fn header_work(c: &mut Criterion) {
    let parts = handshake_parts();
    c.bench_function("is_websocket_upgrade", |b| {
        b.iter(|| black_box(headers::is_websocket_upgrade(black_box(&parts))))
    });
    c.bench_function("hop_by_hop_and_forwarded", |b| {
        b.iter_batched(
            || parts.headers.clone(),
            |mut h| {
                headers::remove_hop_by_hop(&mut h);
                headers::add_forwarded(
                    &mut h,
                    [203, 0, 113, 7].into(),
                    "http",
                    Some("chat.example.com"),
                );
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn routing(c: &mut Criterion) {
    let mut routes = Vec::new();
    for i in 0..25 {
        routes.push(Route {
            host: Some(HostPattern::Exact(format!("app{i}.example.com"))),
            path_prefix: format!("/api/v{i}"),
            upstream: i,
        });
        routes.push(Route {
            host: Some(HostPattern::Wildcard(format!(".tenant{i}.example.com"))),
            path_prefix: "/".into(),
            upstream: i,
        });
    }
    let router = Router::new(&routes);
    c.bench_function("route_50", |b| {
        b.iter(|| black_box(router.route(Some("x.tenant17.example.com"), black_box("/ws/chat"))))
    });
}

criterion_group!(benches, header_work, routing);
criterion_main!(benches);
