//! Backend discovery through DNS: `dns:NAME:PORT` servers looked up from a real responder
//! (tests/support/dns.rs) on 127.0.0.1, backends on 127.0.0.1-4 with one port as a headless
//! Service has them. Records that appear join, records that vanish drain politely, and a
//! failing or empty answer keeps the last good set.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use support::backends::EchoBackend;
use support::clients::{Ws, http_get, ws_connect};
use support::dns::{DnsResponder, Mode};
use support::{DEADLINE, Switchboard, eventually, metric};

const NAME: &str = "chat.sb.test";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Greeting backends on 127.0.0.1..=n, all on one port (a free port of 127.0.0.1, tried again
/// with another when a higher address has it taken).
async fn backends_on_one_port(names: &[&str]) -> (u16, Vec<EchoBackend>) {
    for _ in 0..20 {
        let first = EchoBackend::start_greeting(names[0]).await;
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr = SocketAddr::from((ip(i as u8 + 1), port));
            match EchoBackend::start_greeting_on(name, addr).await {
                Ok(backend) => all.push(backend),
                Err(_) => break,
            }
        }
        if all.len() == names.len() {
            return (port, all);
        }
    }
    panic!("no port free on 127.0.0.1-{}", names.len());
}

/// A sticky-hash upstream `chat` on `?k=` over `dns:NAME:PORT`, asking `dns` every 200 ms.
fn config(dns: &DnsResponder, port: u16, balance: &str) -> String {
    let key = if balance == "sticky-hash" {
        "hash_key = \"query:k\"\n"
    } else {
        ""
    };
    format!(
        "[dns]\nnameservers = [\"{}\"]\n\
         [drain]\ntimeout = \"100ms\"\nspread = \"0s\"\nclose_linger = \"200ms\"\n\
         [[route]]\nupstream = \"chat\"\n\
         [upstream.chat]\nbalance = \"{balance}\"\n{key}\
         servers = [\"dns:{NAME}:{port}\"]\nresolve_interval = \"200ms\"\n",
        dns.addr
    )
}

/// The backends `/admin/upstreams` lists for `chat` that take connections (not draining).
async fn serving(sb: &Switchboard) -> Vec<String> {
    support::serving_backends(&sb.upstreams().await, "chat")
}

/// Waits until `chat` serves exactly the backends on `lasts` (127.0.0.N:port).
async fn wait_for_set(sb: &Switchboard, port: u16, lasts: &[u8]) {
    let mut want: Vec<String> = lasts.iter().map(|&n| format!("{}:{port}", ip(n))).collect();
    want.sort();
    eventually(&format!("backends {want:?}"), || {
        let want = want.clone();
        async move { (serving(sb).await == want).then_some(()) }
    })
    .await;
}

/// A tunnel for key `k` and the name of the backend that greeted it.
async fn connect(sb: &Switchboard, k: usize) -> (Ws, String) {
    let mut ws = ws_connect(&sb.ws_url(&format!("/chat?k={k}"))).await;
    let first = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
    let Some(Ok(Message::Text(name))) = first else {
        panic!("the backend greets first: {first:?}")
    };
    (ws, name.to_string())
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
        Some(Ok(Message::Text(back))) => assert_eq!(back.as_str(), text),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

async fn resolutions(sb: &Switchboard, result: &str) -> f64 {
    metric(
        &sb.scrape().await,
        "switchboard_dns_resolutions_total",
        &[("upstream", "chat"), ("result", result)],
    )
}

/// Waits until `switchboard_dns_resolutions_total{result}` is above `than`.
async fn wait_for_count_above(sb: &Switchboard, result: &str, than: f64) -> f64 {
    eventually(
        &format!("dns_resolutions_total{{result={result}}} > {than}"),
        || async {
            let now = resolutions(sb, result).await;
            (now > than).then_some(now)
        },
    )
    .await
}

#[tokio::test]
async fn a_new_record_joins_and_takes_only_the_keys_that_move_to_it() {
    let (port, _backends) = backends_on_one_port(&["a", "b", "c", "d"]).await;
    let dns = DnsResponder::start(NAME, &[ip(3), ip(1), ip(2)]).await;
    let sb = Switchboard::start(&config(&dns, port, "sticky-hash")).await;
    wait_for_set(&sb, port, &[1, 2, 3]).await;

    const KEYS: usize = 60;
    let mut before = Vec::new();
    let mut tunnels = Vec::new();
    for k in 0..KEYS {
        let (ws, name) = connect(&sb, k).await;
        assert_ne!(name, "d", "d is not in DNS yet");
        before.push(name);
        tunnels.push(ws);
    }

    // The fourth record, in the middle of the answer: order must not matter.
    dns.set_records(&[ip(2), ip(4), ip(1), ip(3)]);
    wait_for_set(&sb, port, &[1, 2, 3, 4]).await;
    let mut moved = 0;
    for (k, was) in before.iter().enumerate() {
        let (ws, name) = connect(&sb, k).await;
        if name != *was {
            assert_eq!(name, "d", "key {k} moved from {was} to {name}");
            moved += 1;
        }
        drop(ws);
    }
    // About a quarter of the keys; (3/4)^60 makes "none" practically impossible.
    assert!(
        (1..KEYS / 2).contains(&moved),
        "{moved} of {KEYS} keys moved"
    );
    // The tunnels opened before never noticed.
    for (k, ws) in tunnels.iter_mut().enumerate() {
        echo(ws, &format!("still here {k}")).await;
    }
    assert!(resolutions(&sb, "ok").await >= 2.0);
    // A discovered backend has the metric series of a static one.
    let text = sb.scrape().await;
    let d = format!("{}:{port}", ip(4));
    assert!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[
                ("upstream", "chat"),
                ("backend", &d),
                ("outcome", "upgraded")
            ]
        ) >= moved as f64
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_backend_that_joins_later_ramps_in_with_slow_start() {
    let (port, _backends) = backends_on_one_port(&["a", "b", "c"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1), ip(2)]).await;
    let body = config(&dns, port, "round-robin")
        .replace("resolve_interval", "slow_start = \"1h\"\nresolve_interval");
    let sb = Switchboard::start(&body).await;
    wait_for_set(&sb, port, &[1, 2]).await;
    // The first answer is the start: a and b share at once.
    let mut first = Vec::new();
    for k in 0..20 {
        first.push(connect(&sb, k).await.1);
    }
    assert_eq!(first.iter().filter(|n| *n == "a").count(), 10, "{first:?}");

    dns.set_records(&[ip(1), ip(2), ip(3)]);
    wait_for_set(&sb, port, &[1, 2, 3]).await;
    let mut names = Vec::new();
    for k in 0..60 {
        names.push(connect(&sb, k).await.1);
    }
    // Without the ramp c would take every third turn (20 of 60); at 10 % of its share, about 2.
    let on_c = names.iter().filter(|n| *n == "c").count();
    assert!(on_c < 12, "c took {on_c} of 60 while ramping");
    sb.stop().await;
}

#[tokio::test]
async fn a_vanished_record_is_drained_with_a_close_frame() {
    let (port, _backends) = backends_on_one_port(&["a", "b", "c"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1), ip(2), ip(3)]).await;
    let sb = Switchboard::start(&config(&dns, port, "round-robin")).await;
    wait_for_set(&sb, port, &[1, 2, 3]).await;

    let mut on_b = Vec::new();
    let mut others = Vec::new();
    for k in 0..9 {
        let (ws, name) = connect(&sb, k).await;
        if name == "b" {
            on_b.push(ws);
        } else {
            others.push(ws);
        }
    }
    assert_eq!(on_b.len(), 3, "round robin over three backends");

    dns.set_records(&[ip(3), ip(1)]);
    wait_for_set(&sb, port, &[1, 3]).await;
    for ws in &mut on_b {
        match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected Close 1001, got {other:?}"),
        }
    }
    for (i, ws) in others.iter_mut().enumerate() {
        echo(ws, &format!("untouched {i}")).await;
    }
    // New tunnels go to the two left.
    for k in 0..4 {
        let (_ws, name) = connect(&sb, k).await;
        assert!(name == "a" || name == "c", "{name}");
    }
    // Counted as the drain of a reload counts it, once the closes are done.
    drop(on_b);
    eventually("drained tunnels counted", || async {
        let text = sb.scrape().await;
        let closed = metric(
            &text,
            "switchboard_tunnels_closed_total",
            &[("reason", "drain"), ("code", "1001")],
        );
        (closed == 3.0).then_some(())
    })
    .await;
    sb.stop().await;
}

#[tokio::test]
async fn a_record_back_before_its_drain_timeout_keeps_its_tunnels() {
    let (port, _backends) = backends_on_one_port(&["a", "b"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1), ip(2)]).await;
    // Long enough that the record is back well before the drain would close anything.
    let body = config(&dns, port, "round-robin").replace("timeout = \"100ms\"", "timeout = \"1h\"");
    let sb = Switchboard::start(&body).await;
    wait_for_set(&sb, port, &[1, 2]).await;
    let mut held = Vec::new();
    for k in 0..2 {
        held.push(connect(&sb, k).await);
    }
    let b = format!("{}:{port}", ip(2));
    let entries = |upstreams: serde_json::Value| -> Vec<serde_json::Value> {
        upstreams["upstreams"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["addr"] == b.as_str())
            .cloned()
            .collect()
    };

    dns.set_records(&[ip(1)]);
    wait_for_set(&sb, port, &[1]).await;
    assert_eq!(entries(sb.upstreams().await)[0]["state"], "draining");
    dns.set_records(&[ip(1), ip(2)]);
    wait_for_set(&sb, port, &[1, 2]).await;
    // One backend b, the same one: it still counts its tunnel, and is not draining.
    let now = entries(sb.upstreams().await);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0]["tunnels"], 1, "{now:?}");
    assert_ne!(now[0]["state"], "draining");
    for (ws, _) in &mut held {
        echo(ws, "still here").await;
    }
    sb.stop().await;
}

#[tokio::test]
async fn a_failing_or_empty_answer_keeps_the_last_good_set() {
    let (port, _backends) = backends_on_one_port(&["a", "b"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1), ip(2)]).await;
    let sb = Switchboard::start(&config(&dns, port, "round-robin")).await;
    wait_for_set(&sb, port, &[1, 2]).await;
    let (mut held, _) = connect(&sb, 0).await;

    dns.set_mode(Mode::ServFail);
    let errors = wait_for_count_above(&sb, "error", 0.0).await;
    wait_for_count_above(&sb, "error", errors).await;
    assert_eq!(serving(&sb).await.len(), 2, "SERVFAIL keeps the set");

    dns.set_mode(Mode::NxDomain);
    let empty = wait_for_count_above(&sb, "empty", 0.0).await;
    wait_for_count_above(&sb, "empty", empty).await;
    dns.set_mode(Mode::Records);
    dns.set_records(&[]);
    let empty = resolutions(&sb, "empty").await;
    wait_for_count_above(&sb, "empty", empty).await;
    assert_eq!(serving(&sb).await.len(), 2, "an empty answer keeps the set");

    // Traffic still reaches both, and the held tunnel never noticed.
    let mut seen = Vec::new();
    for k in 0..4 {
        seen.push(connect(&sb, k).await.1);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["a", "b"]);
    echo(&mut held, "still here").await;

    // Answers again: a record gone for real now leaves.
    let ok = resolutions(&sb, "ok").await;
    dns.set_records(&[ip(1)]);
    wait_for_set(&sb, port, &[1]).await;
    assert!(resolutions(&sb, "ok").await > ok);
    sb.stop().await;
}

#[tokio::test]
async fn an_upstream_whose_first_lookup_fails_starts_empty_and_fills_in() {
    let (port, _backends) = backends_on_one_port(&["a"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1)]).await;
    dns.set_mode(Mode::ServFail);
    let sb = Switchboard::start(&config(&dns, port, "least-conn")).await;
    wait_for_count_above(&sb, "error", 0.0).await;
    assert!(serving(&sb).await.is_empty());
    let response = http_get(sb.addr, "/chat", &[]).await;
    assert_eq!(response.status, 503, "{}", response.body_text());

    dns.set_mode(Mode::Records);
    wait_for_set(&sb, port, &[1]).await;
    let (mut ws, name) = connect(&sb, 0).await;
    assert_eq!(name, "a");
    echo(&mut ws, "found").await;
    sb.stop().await;
}

#[tokio::test]
async fn the_answers_ttl_is_a_floor_on_the_interval() {
    let (port, _backends) = backends_on_one_port(&["a"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1)]).await;
    // resolve_interval is 200 ms; records valid for 1 s are not asked for again before then.
    dns.set_ttl(1);
    let sb = Switchboard::start(&config(&dns, port, "least-conn")).await;
    let asked = eventually("three lookups", || async {
        let asked = dns.a_queries();
        (asked.len() >= 3).then_some(asked)
    })
    .await;
    for pair in asked.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(900),
            "asked again after {gap:?}"
        );
    }
    // And an answer without TTL goes back to the interval.
    dns.set_ttl(0);
    let from = dns.a_queries().len();
    let asked = eventually("lookups at the interval", || async {
        let asked = dns.a_queries();
        (asked.len() >= from + 4).then_some(asked)
    })
    .await;
    let last = asked[from + 3].duration_since(asked[from + 2]);
    assert!(last < Duration::from_millis(900), "{last:?}");
    sb.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_what_dns_found_and_a_static_list_replaces_it() {
    let (port, _backends) = backends_on_one_port(&["a", "b"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1), ip(2)]).await;
    let body = config(&dns, port, "round-robin");
    let (sb, file) = Switchboard::start_file(&body).await;
    wait_for_set(&sb, port, &[1, 2]).await;
    let mut held = Vec::new();
    for k in 0..2 {
        held.push(connect(&sb, k).await);
    }

    // The same file again: nothing joins, nothing drains, and the resolver goes on.
    let response = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(serving(&sb).await.len(), 2);
    let ok = resolutions(&sb, "ok").await;
    wait_for_count_above(&sb, "ok", ok).await;
    for (ws, _) in &mut held {
        echo(ws, "after reload").await;
    }

    // A static list instead: the discovered backend not in it is drained.
    file.write(&body.replace(
        &format!("servers = [\"dns:{NAME}:{port}\"]\nresolve_interval = \"200ms\"\n"),
        &format!("servers = [\"{}:{port}\"]\n", ip(1)),
    ));
    let response = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    wait_for_set(&sb, port, &[1]).await;
    for (ws, name) in &mut held {
        if name == "b" {
            match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
                Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
                other => panic!("expected Close 1001, got {other:?}"),
            }
        } else {
            echo(ws, "static now").await;
        }
    }
    sb.stop().await;
}

/// `/readyz`: its status and body.
async fn readyz(sb: &Switchboard) -> (u16, String) {
    let response = http_get(sb.admin, "/readyz", &[]).await;
    (response.status, response.body_text())
}

/// Waits until `/readyz` answers 200.
async fn wait_until_ready(sb: &Switchboard) {
    eventually("/readyz 200", || async {
        (readyz(sb).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn readyz_waits_for_a_first_lookup_that_fails_until_it_is_over() {
    let (port, _backends) = backends_on_one_port(&["a"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1)]).await;
    dns.set_mode(Mode::Silent);
    let sb = Switchboard::start(&config(&dns, port, "least-conn")).await;
    eventually("the first query", || async {
        (dns.queries() > 0).then_some(())
    })
    .await;
    let (status, body) = readyz(&sb).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("chat (dns:{NAME}:{port})")),
        "names what it waits for: {body}"
    );
    // A DNS outage does not keep it unready for ever: once the first attempt timed out (and
    // was counted), it is ready, with the upstream empty until a lookup works.
    wait_until_ready(&sb).await;
    assert!(resolutions(&sb, "error").await >= 1.0);
    assert!(serving(&sb).await.is_empty());
    sb.stop().await;
}

#[tokio::test]
async fn readyz_turns_200_once_the_first_answer_is_in_force() {
    let (port, _backends) = backends_on_one_port(&["a"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1)]).await;
    dns.set_mode(Mode::Silent);
    let sb = Switchboard::start(&config(&dns, port, "least-conn")).await;
    eventually("the first query", || async {
        (dns.queries() > 0).then_some(())
    })
    .await;
    assert_eq!(readyz(&sb).await.0, 503);
    // The resolver asks again within its first lookup (a second attempt), and gets an answer.
    dns.set_mode(Mode::Records);
    wait_until_ready(&sb).await;
    assert_eq!(resolutions(&sb, "error").await, 0.0, "one lookup, answered");
    // Ready means routable: the answer's backend is already in the snapshot.
    assert_eq!(serving(&sb).await, [format!("{}:{port}", ip(1))]);
    let (mut ws, name) = connect(&sb, 0).await;
    assert_eq!(name, "a");
    echo(&mut ws, "ready").await;
    sb.stop().await;
}

#[tokio::test]
async fn only_the_starting_configs_lookups_gate_readiness() {
    let (port, _backends) = backends_on_one_port(&["a"]).await;
    let dns = DnsResponder::start(NAME, &[ip(1)]).await;
    dns.set_mode(Mode::Silent);
    let body = config(&dns, port, "least-conn");
    let (sb, file) = Switchboard::start_file(&body).await;
    assert_eq!(readyz(&sb).await.0, 503);

    // A reload that drops the dns: server: nothing is left to wait for.
    let dns_line = format!("servers = [\"dns:{NAME}:{port}\"]\nresolve_interval = \"200ms\"\n");
    file.write(&body.replace(&dns_line, &format!("servers = [\"{}:{port}\"]\n", ip(1))));
    let response = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(readyz(&sb).await, (200, "ready\n".to_owned()));

    // A reload that brings a dns: server (still unanswered) does not make it unready again.
    file.write(&body);
    let response = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    let queries = dns.queries();
    eventually("a lookup by the new config", || async {
        (dns.queries() > queries).then_some(())
    })
    .await;
    assert_eq!(readyz(&sb).await.0, 200);
    sb.stop().await;
}

#[test]
fn dns_config_mistakes_name_the_key_and_line() {
    let cases = [
        (
            "[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [\"dns:chat.internal\"]\n",
            "upstream.a.servers",
            4,
            "no port",
        ),
        (
            "[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [\"dns:chat..internal:80\"]\n",
            "upstream.a.servers",
            4,
            "not a DNS name",
        ),
        (
            "[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [\"127.0.0.1:80\"]\nresolve_interval = \"5s\"\n",
            "upstream.a.resolve_interval",
            5,
            "only applies",
        ),
        (
            "[dns]\nnameservers = [\"dns.local:53\"]\n[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [\"dns:chat:80\"]\n",
            "dns.nameservers",
            2,
            "not an IP:PORT",
        ),
        (
            "[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [\"dns:chat:80\", \"dns:CHAT:80\"]\n",
            "upstream.a.servers",
            4,
            "listed twice",
        ),
    ];
    for (body, key, line, words) in cases {
        let text = format!("listen = \"127.0.0.1:0\"\n{body}");
        let error = switchboard::config::from_toml_str(&text, "t.toml")
            .expect_err(body)
            .to_string();
        assert!(error.contains(key), "{error}");
        assert!(error.contains(&format!("t.toml:{}", line + 1)), "{error}");
        assert!(error.contains(words), "{error}");
    }
    let ok = "listen = \"127.0.0.1:0\"\n[dns]\nnameservers = [\"127.0.0.1:5353\"]\n[[route]]\n\
              upstream = \"a\"\n[upstream.a]\nservers = [\"dns:chat.default.svc.cluster.local:9000\", \"127.0.0.1:9001\"]\n\
              resolve_interval = \"5s\"\n";
    let config = switchboard::config::from_toml_str(ok, "t.toml").unwrap();
    assert_eq!(config.upstreams[0].dns[0].port, 9000);
    assert_eq!(config.upstreams[0].servers.len(), 1);
    assert_eq!(config.upstreams[0].resolve_interval, Duration::from_secs(5));
}
