//! Reading, judging, stripping and setting the cookie, against a real balancer.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::config::{Balance, Server, StickyCookie};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn upstream(max_age: Option<Duration>) -> Upstream {
    Upstream {
        name: "chat".into(),
        balance: Balance::RoundRobin,
        hash_key: None,
        load_factor: None,
        tls: None,
        servers: (0..3)
            .map(|i| Server {
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                name: format!("127.0.0.1:{}", 9000 + i),
                weight: 1,
            })
            .collect(),
        dns: Vec::new(),
        resolve_interval: Duration::from_secs(10),
        slow_start: Duration::ZERO,
        upgrade_pacing: None,
        rebalance_skew: None,
        rebalance_rate: 10.0,
        health_check: None,
        send_proxy_protocol: None,
        sticky_cookie: Some(StickyCookie {
            name: "sb_route".into(),
            secret_file: "route-key".into(),
            key: hmac::Key::new(hmac::HMAC_SHA256, SECRET),
            max_age,
        }),
    }
}

fn setup() -> (Routes, Balancer) {
    let metrics = Metrics::new();
    let u = upstream(Some(Duration::from_secs(3600)));
    (
        Routes::new(&u, &metrics).unwrap(),
        Balancer::new(&u, Duration::from_secs(60), &metrics),
    )
}

fn cookies(fields: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for field in fields {
        headers.append(header::COOKIE, HeaderValue::from_str(field).unwrap());
    }
    headers
}

fn token_for(routes: &Routes, index: usize) -> String {
    token::mint(&routes.key, "chat", &routes.ids[index])
}

#[test]
fn a_valid_cookie_among_others_pins_and_is_stripped() {
    let (routes, balancer) = setup();
    let t = token_for(&routes, 1);
    let mut headers = cookies(&["io=abc", &format!("theme=dark; sb_route={t}; lang=en")]);
    let sticky = routes.read(&balancer, &mut headers);
    assert_eq!(sticky.outcome(), Outcome::Valid);
    assert_eq!(sticky.pin(), Some(1));
    let left: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(left, ["io=abc", "theme=dark; lang=en"]);
}

#[test]
fn a_quoted_token_is_read_and_a_cookie_alone_leaves_no_field() {
    let (routes, balancer) = setup();
    let mut headers = cookies(&[&format!("sb_route=\"{}\"", token_for(&routes, 2))]);
    assert_eq!(routes.read(&balancer, &mut headers).pin(), Some(2));
    assert!(headers.get(header::COOKIE).is_none());
}

#[test]
fn outcomes_missing_invalid_unavailable() {
    let (routes, balancer) = setup();
    let mut headers = cookies(&["sb_routex=1; other=2"]);
    let sticky = routes.read(&balancer, &mut headers);
    assert_eq!((sticky.outcome(), sticky.pin()), (Outcome::Missing, None));
    assert_eq!(headers.get(header::COOKIE).unwrap(), "sb_routex=1; other=2");

    let mut t = token_for(&routes, 0).into_bytes();
    t[20] = if t[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(t).unwrap();
    let mut headers = cookies(&[&format!("sb_route={tampered}")]);
    let sticky = routes.read(&balancer, &mut headers);
    assert_eq!((sticky.outcome(), sticky.pin()), (Outcome::Invalid, None));

    balancer.backends()[0].set_draining(true);
    let mut headers = cookies(&[&format!("sb_route={}", token_for(&routes, 0))]);
    let sticky = routes.read(&balancer, &mut headers);
    assert_eq!(
        (sticky.outcome(), sticky.pin()),
        (Outcome::Unavailable, None)
    );

    let gone = token::mint(
        &routes.key,
        "chat",
        &token::backend_id("chat", "10.9.9.9:1"),
    );
    let mut headers = cookies(&[&format!("sb_route={gone}")]);
    assert_eq!(
        routes.read(&balancer, &mut headers).outcome(),
        Outcome::Unavailable
    );
    let counted: Vec<u64> = routes.outcomes.iter().map(|c| c.get()).collect();
    assert_eq!(counted, [0, 1, 1, 2]);
}

#[test]
fn a_stale_cookie_before_a_valid_one_does_not_hide_it() {
    let (routes, balancer) = setup();
    let mut headers = cookies(&[
        "sb_route=stale",
        &format!("sb_route={}", token_for(&routes, 2)),
    ]);
    assert_eq!(routes.read(&balancer, &mut headers).pin(), Some(2));
}

fn answered(sticky: &Sticky<'_>, index: usize, proto: &'static str) -> Vec<String> {
    let mut response = Response::new(());
    response
        .headers_mut()
        .append(header::SET_COOKIE, HeaderValue::from_static("app=1"));
    let conn = ConnInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 5000)),
        client: SocketAddr::from(([127, 0, 0, 1], 5000)),
        proto,
        protocol: super::super::ClientProtocol::Http1,
        guard: super::super::ConnectionGuard::new(
            crate::listener::limit::ConnectionLimit::uncounted(1)
                .try_take()
                .unwrap(),
            prometheus::IntGauge::new("g", "g").unwrap(),
        ),
    };
    sticky.answer(&mut response, index, &conn);
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn set_cookie_names_the_backend_that_answered_unless_already_named() {
    let (routes, balancer) = setup();
    let mut headers = cookies(&[]);
    let sticky = routes.read(&balancer, &mut headers);
    let set = answered(&sticky, 1, "http");
    assert_eq!(set.len(), 2, "{set:?}");
    assert_eq!(set[0], "app=1");
    assert_eq!(
        set[1],
        format!(
            "sb_route={}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax",
            token_for(&routes, 1)
        )
    );
    assert!(answered(&sticky, 1, "https")[1].ends_with("; SameSite=Lax; Secure"));

    let mut headers = cookies(&[&format!("sb_route={}", token_for(&routes, 1))]);
    let sticky = routes.read(&balancer, &mut headers);
    assert_eq!(answered(&sticky, 1, "http"), ["app=1"]);
    // The pinned backend failed and another answered: the cookie follows.
    assert_eq!(answered(&sticky, 2, "http").len(), 2);
    assert_eq!(answered(&Sticky::none(), 2, "http"), ["app=1"]);
}

#[test]
fn without_max_age_the_cookie_is_a_session_cookie() {
    let metrics = Metrics::new();
    let routes = Routes::new(&upstream(None), &metrics).unwrap();
    let value = routes.set_cookie(0, false).unwrap();
    let text = value.to_str().unwrap();
    assert!(!text.contains("Max-Age"), "{text}");
    assert!(text.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{text}");
}
