//! Scale-out, proven on one machine: three switchboard replicas (the built binary), each in its
//! own network namespace behind an nftables `numgen random` DNAT as kube-proxy builds a Service,
//! backends discovered through a DNS server the test runs, sticky-hash on `?k=`. Independent
//! replicas agree on every key; a fourth backend takes only the keys that move to it; a removed
//! one has its tunnels closed politely and paced; a rolling restart of the replicas and a
//! listener hand-over cut nothing. Without namespaces it runs the same on 127.0.x.y addresses.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use support::replicas::{Cluster, Entry, close, echo, open};
use support::{DEADLINE, eventually, metric};

const REPLICAS: usize = 3;
/// a, b, c announced at first; d joins later.
const BACKENDS: usize = 4;
/// How often a steady client sends a message.
const ECHO_EVERY: Duration = Duration::from_millis(50);
/// The most connections one steady client opens (its first and its reconnections).
const MAX_CONNECTIONS: usize = 40;

#[test]
fn replicas_agree_on_keys_and_roll_without_cutting_a_tunnel() {
    // Namespaces first: the hosts' sockets belong to the namespace of the thread that makes
    // them, so the runtime must be built on this thread after it moved.
    let (lab, how) = Cluster::hosts(REPLICAS, BACKENDS);
    println!("scale-out on {how}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(scale_out(lab));
}

async fn scale_out(lab: Option<support::netns::Lab>) {
    let mut cluster = Cluster::start(lab, REPLICAS, BACKENDS, 3).await;
    for i in 0..REPLICAS {
        cluster.start_replica(i).await;
    }
    cluster.wait_for_backends(&[0, 1, 2]).await;

    // 300 clients, 100 keys: each key on one backend, whichever replica it went through.
    let mut standing = Vec::new();
    for n in 0..300 {
        let key = n % 100;
        let (ws, name) = open(cluster.entry.pick(), key).await.unwrap();
        standing.push((key, name, ws));
    }
    let mut owners: HashMap<usize, BTreeSet<String>> = HashMap::new();
    for (key, name, _) in &standing {
        owners.entry(*key).or_default().insert(name.clone());
    }
    let split: Vec<_> = owners.iter().filter(|(_, names)| names.len() > 1).collect();
    assert!(split.is_empty(), "keys on more than one backend: {split:?}");
    for i in 0..REPLICAS {
        let accepted = metric(
            &cluster.scrape(i).await,
            "switchboard_connections_accepted_total",
            &[],
        );
        assert!(
            accepted > 0.0,
            "replica {i} got no client: the spreader does not spread"
        );
    }

    // A fourth backend in DNS: the keys that move all go to it, about a quarter of them.
    let before = owners_of(&cluster.entry, 1000).await;
    cluster.announce(&[0, 1, 2, 3]);
    cluster.wait_for_backends(&[0, 1, 2, 3]).await;
    let after = owners_of(&cluster.entry, 1000).await;
    let moved: Vec<usize> = (0..1000).filter(|&k| before[k] != after[k]).collect();
    let between_old: Vec<_> = moved.iter().filter(|&&k| after[k] != "d").collect();
    assert!(
        between_old.is_empty(),
        "keys moved between old backends: {between_old:?}"
    );
    println!("a fourth backend took {} of 1000 keys", moved.len());
    assert!(
        (210..=290).contains(&moved.len()),
        "{} of 1000 keys moved",
        moved.len()
    );
    for (n, (key, name, ws)) in standing.iter_mut().enumerate() {
        echo(ws, &format!("untouched {n}"))
            .await
            .unwrap_or_else(|e| panic!("key {key} on {name}: {e}"));
    }

    // b leaves DNS: its tunnels get a Close frame, paced over drain.spread; the rest stay.
    cluster.announce(&[0, 2, 3]);
    let (on_b, others): (Vec<_>, Vec<_>) =
        standing.into_iter().partition(|(_, name, _)| name == "b");
    assert!(!on_b.is_empty());
    let closes =
        futures_util::future::join_all(on_b.into_iter().map(|(key, _, mut ws)| async move {
            let code = close_code(&mut ws).await;
            (key, code, Instant::now())
        }))
        .await;
    for (key, code, _) in &closes {
        assert!(
            matches!(code, Some(1001) | Some(1012)),
            "key {key}'s tunnel on b ended with {code:?}"
        );
    }
    let first = closes.iter().map(|c| c.2).min().unwrap();
    let last = closes.iter().map(|c| c.2).max().unwrap();
    println!(
        "{} tunnels on b closed over {:?}",
        closes.len(),
        last - first
    );
    assert!(
        last - first >= Duration::from_millis(250),
        "{} closes within {:?}: not spread over drain.spread (1s)",
        closes.len(),
        last - first
    );
    for (n, (key, name, mut ws)) in others.into_iter().enumerate() {
        echo(&mut ws, &format!("still here {n}"))
            .await
            .unwrap_or_else(|e| panic!("key {key} on {name}: {e}"));
        close(ws).await;
    }
    cluster.wait_for_backends(&[0, 2, 3]).await;

    // Steady clients echoing through a rolling restart of the replicas.
    let stats = Arc::new(Mutex::new(Steady::new(60)));
    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..60)
        .map(|key| {
            tokio::spawn(steady_client(
                cluster.entry.clone(),
                key,
                stats.clone(),
                stop.clone(),
            ))
        })
        .collect();
    wait_until_all_echo(&stats, "the steady clients echo").await;
    let all: Vec<usize> = (0..REPLICAS).collect();
    for i in 0..REPLICAS {
        let others: Vec<usize> = all.iter().copied().filter(|&r| r != i).collect();
        cluster.spread_over(&others);
        cluster.replicas[i].take().unwrap().terminate().await;
        cluster.start_replica(i).await;
        cluster.wait_for_backends(&[0, 2, 3]).await;
        cluster.spread_over(&all);
        println!("replica {i} restarted");
    }
    wait_until_all_echo(&stats, "every client echoes after the rolling restart").await;
    let closed_in_restart = stats.lock().unwrap().polite.len();
    assert!(
        closed_in_restart > 0,
        "no tunnel was on a restarted replica"
    );

    // Replica 0 hands its listeners to a new process under a stream of new connections.
    let stream_stop = CancellationToken::new();
    let stream = tokio::spawn(new_connections(cluster.entry.clone(), stream_stop.clone()));
    let mut old = cluster.replicas[0].take().unwrap();
    let new = cluster.launch(0, true).await;
    let status = old.exit().await;
    assert_eq!(status.code(), Some(0), "the old replica 0:\n{}", old.log());
    eventually("the new replica 0 accepts connections", || async {
        let text = cluster.scrape(0).await;
        (metric(&text, "switchboard_connections_accepted_total", &[]) >= 20.0).then_some(())
    })
    .await;
    cluster.replicas[0] = Some(new);
    stream_stop.cancel();
    let (opened, failures) = stream.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} new connections failed during the hand-over: {:?}",
        failures.len(),
        opened + failures.len(),
        &failures[..failures.len().min(5)]
    );
    println!("hand-over: {opened} new connections, none refused");
    wait_until_all_echo(&stats, "every client echoes after the hand-over").await;

    stop.cancel();
    for client in clients {
        client.await.unwrap();
    }
    for i in 0..REPLICAS {
        cluster.replicas[i].take().unwrap().terminate().await;
    }
    let stats = stats.lock().unwrap();
    assert!(
        stats.abrupt.is_empty(),
        "tunnels ended without a Close frame: {:?}",
        stats.abrupt
    );
    assert!(
        stats.failures.is_empty(),
        "reconnections failed: {:?}",
        stats.failures
    );
    assert!(
        stats.split.is_empty(),
        "keys on more than one backend: {:?}",
        stats.split
    );
    let codes: BTreeSet<_> = stats.polite.iter().collect();
    assert!(
        codes.iter().all(|c| matches!(c, Some(1001) | Some(1012))),
        "close codes {codes:?}"
    );
    println!(
        "{} polite closes during the restarts and the hand-over, {} connections in all",
        stats.polite.len(),
        stats.connections.iter().sum::<usize>()
    );
}

/// The backend each of keys `0..n` reaches, over one short connection each.
async fn owners_of(entry: &Entry, n: usize) -> Vec<String> {
    let mut owners = Vec::with_capacity(n);
    for k in 0..n {
        let (ws, name) = open(entry.pick(), k).await.unwrap();
        close(ws).await;
        owners.push(name);
    }
    owners
}

/// Reads until the tunnel ends: the code of its Close frame, or None if it ended without one.
async fn close_code(ws: &mut support::replicas::Tunnel) -> Option<u16> {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    };
    let code = tokio::time::timeout(DEADLINE, read).await.ok().flatten();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    code
}

/// What the steady clients saw.
struct Steady {
    /// The backend each key reached first, and every key seen on a second one.
    owner: HashMap<usize, String>,
    split: Vec<String>,
    /// Close codes of tunnels the proxies ended politely.
    polite: Vec<Option<u16>>,
    /// Tunnels that ended without a Close frame, and connections that could not be made.
    abrupt: Vec<String>,
    failures: Vec<String>,
    /// Per client: connections made, echoes on the current one.
    connections: Vec<usize>,
    echoes: Vec<usize>,
}

impl Steady {
    fn new(clients: usize) -> Steady {
        Steady {
            owner: HashMap::new(),
            split: Vec::new(),
            polite: Vec::new(),
            abrupt: Vec::new(),
            failures: Vec::new(),
            connections: vec![0; clients],
            echoes: vec![0; clients],
        }
    }
}

/// Waits until every steady client has echoed on the connection it has now.
async fn wait_until_all_echo(stats: &Mutex<Steady>, what: &str) {
    // Those that were closed must have come back: reset by their reconnection.
    eventually(what, || async {
        let stats = stats.lock().unwrap();
        stats.echoes.iter().all(|&n| n > 0).then_some(())
    })
    .await;
}

/// One client for key `key`: echoes every [`ECHO_EVERY`]; when the proxy closes its tunnel it
/// reconnects through `entry`, until `stop`.
async fn steady_client(
    entry: Entry,
    key: usize,
    stats: Arc<Mutex<Steady>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(ECHO_EVERY);
    for _ in 0..MAX_CONNECTIONS {
        if stop.is_cancelled() {
            return;
        }
        let (mut ws, name) = match open(entry.pick(), key).await {
            Ok(opened) => opened,
            Err(e) => {
                stats
                    .lock()
                    .unwrap()
                    .failures
                    .push(format!("key {key}: {e}"));
                continue;
            }
        };
        {
            let mut stats = stats.lock().unwrap();
            stats.connections[key] += 1;
            stats.echoes[key] = 0;
            let first = stats
                .owner
                .entry(key)
                .or_insert_with(|| name.clone())
                .clone();
            if first != name {
                stats.split.push(format!("key {key}: {first} and {name}"));
            }
        }
        let mut sent = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    close(ws).await;
                    return;
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(_))) => stats.lock().unwrap().echoes[key] += 1,
                    Some(Ok(Message::Close(frame))) => {
                        stats.lock().unwrap().polite.push(frame.map(|f| u16::from(f.code)));
                        let _ = tokio::time::timeout(DEADLINE, async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => {
                        stats.lock().unwrap().abrupt.push(format!("key {key} on {name}: {other:?}"));
                        break;
                    }
                },
                _ = tick.tick() => {
                    sent += 1;
                    // A failed send shows on the next read, which says how the tunnel ended.
                    let _ = ws.send(Message::text(format!("{key}-{sent}"))).await;
                }
            }
        }
    }
}

/// New connections one after another (each: upgrade, greeting, polite close) until `stop`,
/// bounded in count and time: how many were made and every failure.
async fn new_connections(entry: Entry, stop: CancellationToken) -> (usize, Vec<String>) {
    let started = Instant::now();
    let (mut opened, mut failures) = (0, Vec::new());
    for n in 0..20_000 {
        if stop.is_cancelled() || started.elapsed() > 3 * DEADLINE {
            break;
        }
        match upgrade(entry.pick(), n % 1000).await {
            Ok(()) => opened += 1,
            Err(e) => failures.push(e),
        }
    }
    (opened, failures)
}

/// One fresh connection and its WebSocket upgrade, then a polite close. Only the connect and
/// the upgrade count: the old process may close a tunnel it has just opened (Close 1001), which
/// is not a refused connection.
async fn upgrade(addr: std::net::SocketAddr, k: usize) -> Result<(), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/chat?k={k}"), stream)
            .await
            .map_err(|e| format!("upgrade via {addr}: {e}"))?;
        close(ws).await;
        Ok(())
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no upgrade via {addr} within the deadline")))
}
