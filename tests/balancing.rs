//! Balancing: least-conn with long-lived tunnels, sticky-hash properties, weighted round robin.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use switchboard::balancer::hash::hash_bytes;
use switchboard::balancer::{Balancer, Tried};
use switchboard::config;
use switchboard::metrics::Metrics;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use support::backends::{EchoBackend, HttpBackend, tally};
use support::clients::{Ws, http_get, ws_connect};
use support::{DEADLINE, Switchboard, metric};

/// A balancer built the way switchboard builds it, from config text.
fn balancer_from(upstream_toml: &str) -> Balancer {
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\n{upstream_toml}"
    );
    let config = config::from_toml_str(&text, "test").unwrap();
    Balancer::new(
        &config.upstreams[0],
        Duration::from_secs(10),
        &Metrics::new(),
    )
}

fn servers(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("\"10.0.0.{}:9000\"", i + 1))
        .collect()
}

fn sticky(servers: &[String], extra: &str) -> Balancer {
    balancer_from(&format!(
        "balance = \"sticky-hash\"\nhash_key = \"query:room\"\n{extra}\nservers = [{}]",
        servers.join(", ")
    ))
}

/// The backend name each key goes to (leases released at once: no load effects).
fn assignment(b: &Balancer, keys: usize) -> Vec<String> {
    (0..keys)
        .map(|k| {
            let key = hash_bytes(format!("room-{k}").as_bytes());
            let pick = b.pick(Some(key), &mut Tried::default()).unwrap();
            pick.lease.backend().name.clone()
        })
        .collect()
}

#[test]
fn sticky_hash_agrees_across_independent_instances() {
    let list = servers(5);
    let a = sticky(&list, "");
    // Another replica, with the servers listed in another order.
    let mut reversed = list.clone();
    reversed.reverse();
    let b = sticky(&reversed, "");
    assert_eq!(assignment(&a, 10_000), assignment(&b, 10_000));
}

#[test]
fn sticky_hash_spreads_keys_evenly() {
    let counts = tally(assignment(&sticky(&servers(5), ""), 10_000));
    for (backend, n) in counts {
        assert!(
            (1_700..=2_300).contains(&n),
            "{backend} got {n} of 10000 keys"
        );
    }
}

#[test]
fn removing_a_backend_moves_only_its_keys() {
    let list = servers(5);
    let before = assignment(&sticky(&list, ""), 10_000);
    let removed = list[2].trim_matches('"').to_owned();
    let fewer: Vec<String> = list
        .iter()
        .filter(|s| s.trim_matches('"') != removed)
        .cloned()
        .collect();
    let after = assignment(&sticky(&fewer, ""), 10_000);
    for (old, new) in before.iter().zip(&after) {
        if old != &removed {
            assert_eq!(old, new, "a key not on the removed backend moved");
        }
    }
}

#[test]
fn adding_a_backend_moves_about_one_in_n_plus_one_keys_all_to_it() {
    let list = servers(4);
    let before = assignment(&sticky(&list, ""), 10_000);
    let mut more = list.clone();
    more.push("\"10.0.0.99:9000\"".into());
    let after = assignment(&sticky(&more, ""), 10_000);
    let moved: Vec<&String> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(_, b)| b)
        .collect();
    assert!(moved.iter().all(|b| b.as_str() == "10.0.0.99:9000"));
    // Expected 1/5 = 2000 of 10000.
    assert!(
        (1_700..=2_300).contains(&moved.len()),
        "{} keys moved",
        moved.len()
    );
}

#[test]
fn weights_shift_the_share_of_keys() {
    let b = balancer_from(
        "balance = \"sticky-hash\"\nhash_key = \"ip\"\nservers = [\"10.0.0.1:1\", { addr = \"10.0.0.2:1\", weight = 3 }]",
    );
    let counts = tally(assignment(&b, 20_000));
    let heavy = counts["10.0.0.2:1"];
    assert!(
        (14_400..=15_600).contains(&heavy),
        "weight 3 of 4 got {heavy} of 20000"
    );
}

#[test]
fn load_factor_bounds_every_backend_and_strict_mode_does_not() {
    let hot = hash_bytes(b"the-one-busy-room");
    // Strict: all 300 connections of one key go to one backend.
    let strict = sticky(&servers(3), "");
    let held: Vec<_> = (0..300)
        .map(|_| strict.pick(Some(hot), &mut Tried::default()).unwrap())
        .collect();
    assert_eq!(tally(held.iter().map(|p| p.index)).len(), 1);
    drop(held);

    // Bounded: none holds more than ceil(1.25 × mean) at any point.
    let bounded = sticky(&servers(3), "load_factor = 1.25");
    let mut held = Vec::new();
    for i in 1..=300usize {
        held.push(bounded.pick(Some(hot), &mut Tried::default()).unwrap());
        let max = bounded.backends().iter().map(|b| b.live()).max().unwrap();
        let bound = (1.25 * i as f64 / 3.0).ceil() as usize;
        assert!(
            max <= bound,
            "after {i} picks a backend holds {max} > {bound}"
        );
    }
    // The spill goes to the key's next choices; the first choice is still the fullest.
    let first_choice = strict.pick(Some(hot), &mut Tried::default()).unwrap().index;
    assert_eq!(bounded.backends()[first_choice].live(), 125);
}

#[test]
fn plain_requests_and_upgrades_with_the_same_key_pick_the_same_backend() {
    // Key extraction is shared; the pick depends only on the key (without a bound).
    let b = sticky(&servers(7), "");
    for room in ["a", "b", "lobby", "42"] {
        let key = hash_bytes(room.as_bytes());
        let first = b.pick(Some(key), &mut Tried::default()).unwrap().index;
        for _ in 0..5 {
            assert_eq!(
                b.pick(Some(key), &mut Tried::default()).unwrap().index,
                first
            );
        }
    }
}

async fn greeting(ws: &mut Ws) -> String {
    match tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Text(name) => name.to_string(),
        other => panic!("expected the backend's name, got {other:?}"),
    }
}

#[tokio::test]
async fn sticky_rooms_meet_on_one_backend_and_missing_keys_fall_back() {
    let backends = [
        EchoBackend::start_greeting("b1").await,
        EchoBackend::start_greeting("b2").await,
        EchoBackend::start_greeting("b3").await,
    ];
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"chat\"\n[upstream.chat]\nbalance = \"sticky-hash\"\nhash_key = \"query:room\"\nservers = [{}]",
        list.join(", ")
    ))
    .await;
    let mut per_room: HashMap<String, Vec<String>> = HashMap::new();
    let mut held = Vec::new();
    for room in 0..12 {
        for _ in 0..3 {
            let mut ws = ws_connect(&sb.ws_url(&format!("/chat?room=r{room}&user=x"))).await;
            per_room
                .entry(format!("r{room}"))
                .or_default()
                .push(greeting(&mut ws).await);
            held.push(ws);
        }
    }
    for (room, names) in &per_room {
        assert!(
            names.iter().all(|n| n == &names[0]),
            "{room} was split: {names:?}"
        );
    }
    let used = tally(per_room.values().map(|v| v[0].clone()));
    assert!(
        used.len() >= 2,
        "12 rooms all hashed to one of 3 backends: {used:?}"
    );

    let mut no_key = ws_connect(&sb.ws_url("/chat")).await;
    greeting(&mut no_key).await;
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_balancer_fallback_total",
            &[("upstream", "chat")]
        ),
        1.0
    );
    drop((held, no_key));
    sb.stop().await;
}

#[tokio::test]
async fn least_conn_fills_the_emptier_backends_with_long_lived_tunnels() {
    // Phase 1: only backend A is up (B and C refuse), so it takes 10 long-lived tunnels.
    let a = EchoBackend::start("a").await;
    let reserve_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reserve_c = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr_b, addr_c) = (
        reserve_b.local_addr().unwrap(),
        reserve_c.local_addr().unwrap(),
    );
    drop((reserve_b, reserve_c));
    let sb = Switchboard::start(&format!(
        "[timeouts]\nbackend_retry = \"1ms\"\n[[route]]\nupstream = \"chat\"\n[upstream.chat]\nbalance = \"least-conn\"\nservers = [\"{}\", \"{addr_b}\", \"{addr_c}\"]",
        a.addr
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(ws_connect(&sb.ws_url("/chat")).await);
    }
    assert_eq!(a.live.get(), 10);

    // Phase 2: B and C come up on their addresses; 30 new tunnels must fill them first.
    let b = EchoBackend::start_on("b", addr_b).await;
    let c = EchoBackend::start_on("c", addr_c).await;
    for _ in 0..30 {
        held.push(ws_connect(&sb.ws_url("/chat")).await);
    }
    let (na, nb, nc) = (a.live.get(), b.live.get(), c.live.get());
    assert_eq!(na + nb + nc, 40);
    assert!(
        na <= 14,
        "A already held 10 and still got {} of the 30 new tunnels",
        na - 10
    );
    assert!(nb >= 13 && nc >= 13, "B {nb}, C {nc}");
    assert!(
        na.max(nb).max(nc) - na.min(nb).min(nc) <= 1,
        "A {na}, B {nb}, C {nc}"
    );

    let text = sb.scrape().await;
    assert_eq!(
        metric(&text, "switchboard_tunnels_active", &[("upstream", "chat")]),
        40.0
    );
    drop(held);
    a.live.wait_for("tunnels to A closed", |n| n == 0).await;
    sb.stop().await;
}

#[tokio::test]
async fn weighted_round_robin_shares_requests_by_weight() {
    let (x, y) = (HttpBackend::start("x").await, HttpBackend::start("y").await);
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"web\"\n[upstream.web]\nbalance = \"round-robin\"\nservers = [\"{}\", {{ addr = \"{}\", weight = 3 }}]",
        x.addr, y.addr
    ))
    .await;
    let mut names = Vec::new();
    for _ in 0..40 {
        names.push(http_get(sb.addr, "/", &[]).await.body_text());
    }
    let counts = tally(names.iter().cloned());
    assert_eq!((counts["x"], counts["y"]), (10, 30));
    // Smooth: never more than three y in a row.
    let longest_y = names
        .chunk_by(|a, b| a == b)
        .filter(|run| run[0] == "y")
        .map(|r| r.len())
        .max();
    assert!(longest_y <= Some(3), "{names:?}");
    sb.stop().await;
}
