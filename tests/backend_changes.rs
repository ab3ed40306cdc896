//! Backends that come, go, fail and recover, and clients that all reconnect at once: upgrade
//! pacing, active rebalancing, slow start, health checks taking a dead backend out, and the
//! 503 with Retry-After when no backend is left.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use support::backends::{EchoBackend, header_value, switching_protocols, tally};
use support::clients::{Ws, handshake_request, raw_send, read_head, ws_connect};
use support::{DEADLINE, Switchboard, eventually, metric};

/// A client whose backend greets it with its name.
async fn connect(sb: &Switchboard) -> (Ws, String) {
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    let first = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
    let Some(Ok(Message::Text(name))) = first else {
        panic!("the backend greets first: {first:?}")
    };
    (ws, name.to_string())
}

/// Three backends that greet with their names a, b and c.
async fn greeters() -> [EchoBackend; 3] {
    [
        EchoBackend::start_greeting("a").await,
        EchoBackend::start_greeting("b").await,
        EchoBackend::start_greeting("c").await,
    ]
}

/// A least-conn upstream `chat` with `extra` keys over `list`.
fn least_conn_chat(extra: &str, list: &str) -> String {
    format!(
        "[[route]]\nupstream = \"chat\"\n[upstream.chat]\nbalance = \"least-conn\"\n{extra}servers = [{list}]\n"
    )
}

fn servers(backends: &[&EchoBackend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    list.join(", ")
}

/// Answers the upgrade in `head` with 101, then holds the connection until the peer leaves.
async fn hold_upgrade(mut stream: tokio::net::TcpStream, head: &str) {
    let _ = stream.write_all(switching_protocols(head).as_bytes()).await;
    let mut rest = [0u8; 64];
    while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut rest).await, Ok(n) if n > 0) {}
}

/// A WebSocket backend that records when each upgrade arrived and then holds the connection.
async fn timing_backend() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                record.lock().unwrap().push(Instant::now());
                hold_upgrade(stream, &head).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_reconnect_storm_reaches_the_backend_at_the_paced_rate() {
    let (backend, seen) = timing_backend().await;
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"chat\"\n[upstream.chat]\nservers = [\"{backend}\"]\n\
         max_upgrades_per_second = 50\nupgrade_burst = 10\n"
    ))
    .await;
    let started = Instant::now();
    let mut storm = Vec::new();
    for _ in 0..300 {
        let addr = sb.addr;
        storm.push(tokio::spawn(async move {
            let mut stream = raw_send(addr, handshake_request("/chat", "").as_bytes()).await;
            let head = read_head(&mut stream).await;
            (head, stream)
        }));
    }
    let mut upgraded = Vec::new();
    let mut refused = 0;
    for client in storm {
        let (head, stream) = client.await.unwrap();
        if head.starts_with("HTTP/1.1 101") {
            upgraded.push(stream);
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            let retry: u64 = header_value(&head, "retry-after")
                .expect("Retry-After on a paced 503")
                .parse()
                .unwrap();
            assert!((1..=5).contains(&retry), "{retry}");
            refused += 1;
        }
    }
    assert_eq!(upgraded.len() + refused, 300);
    assert!(refused > 0, "a storm of 300 at once must be shed");
    // No window of one second saw more than rate + burst upgrades (plus the 100 ms a refused
    // upgrade may wait for a token: at most 5 more at 50/s).
    let arrivals = seen.lock().unwrap().clone();
    assert_eq!(arrivals.len(), upgraded.len());
    for (i, first) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .filter(|t| t.duration_since(*first) < Duration::from_secs(1))
            .count();
        assert!(
            within <= 65,
            "{within} upgrades within a second of {:?}",
            first.duration_since(started)
        );
    }
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_rejected_total",
            &[("upstream", "chat"), ("reason", "rate_limited")]
        ),
        refused as f64
    );
    drop(upgraded);
    sb.stop().await;
}

#[tokio::test]
async fn a_third_backend_added_by_reload_gets_its_share_by_rebalancing() {
    let [a, b, c] = greeters().await;
    let body = |list: &str| least_conn_chat("rebalance_skew = 1.1\nrebalance_rate = 100\n", list);
    let (sb, file) = Switchboard::start_file(&body(&servers(&[&a, &b]))).await;
    let stop = CancellationToken::new();
    let codes = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..120 {
        let (mut ws, _) = connect(&sb).await;
        let (stop, codes, url) = (stop.clone(), codes.clone(), sb.ws_url("/chat"));
        clients.push(tokio::spawn(async move {
            // Like a real client: on a Close, reconnect (bounded: a few moves at most).
            for _ in 0..5 {
                let next = tokio::select! {
                    next = ws.next() => next,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Some(Ok(Message::Close(frame))) => {
                        codes.lock().unwrap().push(frame.map(|f| u16::from(f.code)));
                        while let Some(Ok(_)) = ws.next().await {}
                        ws = ws_connect(&url).await;
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }));
    }
    let count = |sb: &Switchboard| {
        let sb_admin = sb.admin;
        async move {
            let response = support::clients::http_get(sb_admin, "/admin/upstreams", &[]).await;
            let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            json["upstreams"][0]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["tunnels"].as_u64().unwrap())
                .collect::<Vec<u64>>()
        }
    };
    assert_eq!(count(&sb).await, vec![60, 60]);

    file.write(&body(&servers(&[&a, &b, &c])));
    assert_eq!(sb.admin_post("/admin/reload", &[]).await.status, 200);
    let balanced = eventually("three backends about even", || async {
        let now = count(&sb).await;
        (now.len() == 3
            && now.iter().sum::<u64>() == 120
            && now.iter().all(|&n| (30..=50).contains(&n)))
        .then_some(now)
    })
    .await;
    let codes = codes.lock().unwrap().clone();
    assert!(!codes.is_empty());
    assert!(
        codes.iter().all(|&c| c == Some(1012)),
        "every moved client got 1012: {codes:?}"
    );
    assert_eq!(balanced.iter().sum::<u64>(), 120);
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_tunnels_closed_total",
            &[("reason", "rebalance")]
        ),
        codes.len() as f64
    );
    stop.cancel();
    for client in clients {
        let _ = client.await;
    }
    sb.stop().await;
}

#[tokio::test]
async fn a_backend_that_joins_ramps_in_slowly() {
    let [a, b, c] = greeters().await;
    let body = |list: &str| least_conn_chat("slow_start = \"30s\"\n", list);
    let (sb, file) = Switchboard::start_file(&body(&servers(&[&a, &b]))).await;
    file.write(&body(&servers(&[&a, &b, &c])));
    assert_eq!(sb.admin_post("/admin/reload", &[]).await.status, 200);
    // Right after joining, c's share is about 10 % of a full backend's: of 42 tunnels opened
    // now, an even split would give it 14; a 10 % share about 2.
    let mut held = Vec::new();
    for _ in 0..42 {
        held.push(connect(&sb).await);
    }
    let names = tally(held.iter().map(|(_, n)| n.clone()));
    let on_c = names.get("c").copied().unwrap_or(0);
    assert!((1..=5).contains(&on_c), "c got {on_c} of 42: {names:?}");
    drop(held);
    sb.stop().await;
}

#[tokio::test]
async fn with_every_backend_drained_upgrades_get_503_with_retry_after() {
    let a = EchoBackend::start("a").await;
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"chat\"\n[upstream.chat]\nservers = [\"{}\"]\n",
        a.addr
    ))
    .await;
    let path = format!("/admin/upstreams/chat/backends/{}/drain", a.addr);
    assert_eq!(sb.admin_post(&path, &[]).await.status, 200);
    let mut stream = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let retry: u64 = header_value(&head, "retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry));
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_rejected_total",
            &[("reason", "no_backend")]
        ),
        1.0
    );
    sb.stop().await;
}

/// A WebSocket echo backend on `addr` that can be stopped (its port then refuses) and started
/// again on the same port.
struct Killable {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Killable {
    async fn start(addr: SocketAddr) -> Killable {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                held.push(tokio::spawn(async move {
                    let head = read_head(&mut stream).await;
                    hold_upgrade(stream, &head).await;
                }));
            }
        });
        Killable { addr, task }
    }

    fn kill(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

#[tokio::test]
async fn a_dead_backend_leaves_rotation_and_comes_back_when_it_recovers() {
    let steady = EchoBackend::start_greeting("steady").await;
    let flaky = Killable::start("127.0.0.1:0".parse().unwrap()).await;
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"chat\"\n[upstream.chat]\nbalance = \"round-robin\"\n\
         servers = [\"{}\", \"{}\"]\n[upstream.chat.health_check]\nkind = \"tcp\"\n\
         interval = \"100ms\"\ntimeout = \"50ms\"\nrise = 2\nfall = 2\n",
        steady.addr, flaky.addr
    ))
    .await;
    let state = |text: &str, addr: SocketAddr, state: &str| {
        metric(
            text,
            "switchboard_backend_state",
            &[("backend", &addr.to_string()), ("state", state)],
        )
    };
    // Round robin alternates: within two upgrades one lands on the steady backend (only it
    // greets).
    let mut on_steady = None;
    for _ in 0..2 {
        let mut ws = ws_connect(&sb.ws_url("/chat")).await;
        if let Ok(Some(Ok(Message::Text(name)))) =
            tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        {
            assert_eq!(name.as_str(), "steady");
            on_steady = Some(ws);
            break;
        }
    }
    let mut on_steady = on_steady.expect("one of two upgrades reached the steady backend");
    let addr = flaky.kill();
    eventually("dead backend marked down", || async {
        (state(&sb.scrape().await, addr, "down") == 1.0).then_some(())
    })
    .await;
    // Every new upgrade succeeds (none is tried on the dead backend), the old tunnel lives on.
    for _ in 0..10 {
        let (_, name) = connect(&sb).await;
        assert_eq!(name, "steady");
    }
    on_steady.send(Message::text("still here")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, on_steady.next())
        .await
        .unwrap();
    assert!(matches!(echoed, Some(Ok(Message::Text(t))) if t.as_str() == "still here"));
    let _flaky = Killable::start(addr).await;
    eventually("recovered backend back up", || async {
        (state(&sb.scrape().await, addr, "up") == 1.0).then_some(())
    })
    .await;
    let text = sb.scrape().await;
    assert!(
        metric(
            &text,
            "switchboard_health_checks_total",
            &[("result", "failed")]
        ) >= 2.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_backend_that_fails_upgrades_with_5xx_is_skipped_like_a_refusing_one() {
    let good = EchoBackend::start_greeting("good").await;
    let (bad, _) = support::backends::raw_backend(|mut stream, _head| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            .await;
    })
    .await;
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"chat\"\n[upstream.chat]\nbalance = \"round-robin\"\n\
         servers = [\"{bad}\", \"{}\"]\n",
        good.addr
    ))
    .await;
    // Round robin starts with the bad one: its 503 goes to the client, and marks it down.
    let mut stream = raw_send(sb.addr, handshake_request("/chat", "").as_bytes()).await;
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 503"));
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_backend_state",
            &[("backend", &bad.to_string()), ("state", "down")]
        ),
        1.0
    );
    for _ in 0..4 {
        let (_, name) = connect(&sb).await;
        assert_eq!(name, "good");
    }
    sb.stop().await;
}
