//! Upgrading switchboard without dropping clients: the built binary hands its listening sockets
//! to a new process (`--take-over`) under a steady stream of new connections, with none refused;
//! a take-over that fails leaves the running process serving.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use support::backends::{EchoBackend, HttpBackend};
use support::clients::{expect_close, http_get, ws_connect};
use support::dns::{DnsResponder, Mode};
use support::process::{Process, config, get, ready};
use support::tls::TempDir;
use support::{DEADLINE, eventually, metric, two_free_addrs};

/// The most connections the load client opens, and for how long at most.
const LOAD_ATTEMPTS: usize = 50_000;
const LOAD_TIME: Duration = Duration::from_secs(60);

/// What the load clients saw: GET answers by backend name, upgrades, and every failure.
#[derive(Default)]
struct Tally {
    answers: Vec<String>,
    upgrades: Vec<String>,
    failures: Vec<String>,
}

impl Tally {
    fn count(&self, name: &str) -> usize {
        self.answers.iter().filter(|a| *a == name).count()
    }
}

/// New connections one after another, as fast as they are answered, until `stop` (bounded in
/// count and time): plain GETs from one client, WebSocket upgrades from another.
fn load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Tally>>, tokio::task::JoinHandle<()>) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let worker = |upgrade: bool| {
        let (seen, stop) = (tally.clone(), stop.clone());
        async move {
            let start = Instant::now();
            for _ in 0..LOAD_ATTEMPTS {
                if stop.load(Ordering::Relaxed) || start.elapsed() > LOAD_TIME {
                    break;
                }
                let answer = if upgrade {
                    upgrade_once(addr).await
                } else {
                    get(addr).await
                };
                let mut tally = seen.lock().unwrap();
                match answer {
                    Ok(name) if upgrade => tally.upgrades.push(name),
                    Ok(name) => tally.answers.push(name),
                    Err(e) => tally.failures.push(e),
                }
            }
        }
    };
    let (plain, upgrades) = (worker(false), worker(true));
    let task = tokio::spawn(async move {
        tokio::join!(plain, upgrades);
    });
    (tally, task)
}

/// One fresh connection, one WebSocket upgrade, one echo.
async fn upgrade_once(addr: SocketAddr) -> Result<String, String> {
    let exchange = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        // The old process may close a tunnel it has just opened (Close 1001): that is not a
        // refused connection, so only the upgrade counts.
        let _ = ws.close(None).await;
        Ok("upgraded".to_owned())
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err("no upgrade within the deadline".into()))
}

/// The process being taken over: serving `web` = `a` and `/ws` = `echo` on fresh addresses,
/// with a hand-over socket in `dir`, and ready.
struct Old {
    process: Process,
    listen: SocketAddr,
    admin: SocketAddr,
    socket: std::path::PathBuf,
    config: String,
}

async fn start_old(dir: &TempDir, a: SocketAddr, echo: SocketAddr) -> Old {
    let socket = dir.path("handover.sock");
    let (listen, admin) = two_free_addrs();
    let config = config(listen, admin, &socket, a, echo);
    let process = Process::start(dir, "old", &config, None);
    ready(admin, &process).await;
    Old {
        process,
        listen,
        admin,
        socket,
        config,
    }
}

#[tokio::test]
async fn a_new_process_takes_the_listeners_over_and_not_one_connection_is_refused() {
    let (a, b, echo) = (
        HttpBackend::start("a").await,
        HttpBackend::start("b").await,
        EchoBackend::start("echo").await,
    );
    let dir = TempDir::new("handover");
    let Old {
        process: old,
        listen,
        admin,
        socket,
        ..
    } = start_old(&dir, a.addr, echo.addr).await;
    let mut tunnels = Vec::new();
    for i in 0..3 {
        let mut ws = ws_connect(&format!("ws://{listen}/ws")).await;
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
        tunnels.push(ws);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tally, client) = load(listen, stop.clone());
    eventually("the old process answers the load", || async {
        (tally.lock().unwrap().count("a") >= 50).then_some(())
    })
    .await;

    let mut old = old;
    let new = Process::start(
        &dir,
        "new",
        &config(listen, admin, &socket, b.addr, echo.addr),
        Some(&socket),
    );
    for ws in &mut tunnels {
        expect_close(ws, CloseCode::Away).await;
    }
    let status = old.exit().await;
    assert_eq!(status.code(), Some(0), "old process:\n{}", old.log());
    // Connections after the old process is gone are the new one's.
    let at_exit = tally.lock().unwrap().answers.len();
    eventually("the new process answers the load", || async {
        (tally.lock().unwrap().answers.len() >= at_exit + 200).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    {
        let tally = tally.lock().unwrap();
        assert!(
            tally.failures.is_empty(),
            "{} of {} connection attempts failed: {:?}\nold:\n{}\nnew:\n{}",
            tally.failures.len(),
            tally.answers.len() + tally.upgrades.len() + tally.failures.len(),
            &tally.failures[..tally.failures.len().min(5)],
            old.log(),
            new.log()
        );
        assert!(tally.answers[at_exit..].iter().all(|name| name == "b"));
        assert!(tally.count("b") >= 200);
        assert!(!tally.upgrades.is_empty());
        println!(
            "{} GETs ({} answered by the old process, {} by the new) and {} upgrades, none failed",
            tally.answers.len(),
            tally.count("a"),
            tally.count("b"),
            tally.upgrades.len()
        );
    }
    assert!(
        old.log().contains("handed the listeners over"),
        "{}",
        old.log()
    );

    // The admin listener went over too, and the new process serves the hand-over socket.
    ready(admin, &new).await;
    let scrape = http_get(admin, "/metrics", &[]).await.body_text();
    for listener in ["http", "admin"] {
        assert_eq!(
            metric(
                &scrape,
                "switchboard_listeners_inherited",
                &[("listener", listener), ("source", "handover")]
            ),
            1.0
        );
    }
    let newer = Process::start(
        &dir,
        "newer",
        &config(listen, admin, &socket, a.addr, echo.addr),
        Some(&socket),
    );
    let mut new = new;
    let status = new.exit().await;
    assert_eq!(status.code(), Some(0), "{}", new.log());
    ready(admin, &newer).await;
    assert_eq!(get(listen).await, Ok("a".to_owned()), "{}", newer.log());
    newer.terminate().await;
}

#[tokio::test]
async fn a_failed_take_over_leaves_the_running_process_serving() {
    let (a, b, echo) = (
        HttpBackend::start("a").await,
        HttpBackend::start("b").await,
        EchoBackend::start("echo").await,
    );
    let dir = TempDir::new("handover-fail");
    let Old {
        process: old,
        listen,
        admin,
        socket,
        ..
    } = start_old(&dir, a.addr, echo.addr).await;

    // Nothing at the path.
    let mut lost = Process::start(
        &dir,
        "lost",
        &config(listen, admin, &socket, b.addr, echo.addr),
        Some(&dir.path("nowhere.sock")),
    );
    assert_eq!(lost.exit().await.code(), Some(1));
    assert!(
        lost.log().contains("cannot reach a running switchboard"),
        "{}",
        lost.log()
    );
    // An invalid config: it never connects.
    let mut invalid = Process::start(&dir, "invalid", "listen = \"nowhere\"\n", Some(&socket));
    assert_eq!(invalid.exit().await.code(), Some(1));
    // Sockets received, then a listener it cannot bind: no `ready`.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = config(
        taken.local_addr().unwrap(),
        admin,
        &socket,
        b.addr,
        echo.addr,
    );
    let mut failing = Process::start(&dir, "failing", &moved, Some(&socket));
    assert_eq!(failing.exit().await.code(), Some(1));
    assert!(
        failing.log().contains("cannot listen on"),
        "{}",
        failing.log()
    );

    let scrape = eventually("the failed take-over is counted", || async {
        let scrape = http_get(admin, "/metrics", &[]).await.body_text();
        (metric(
            &scrape,
            "switchboard_handovers_total",
            &[("result", "failed")],
        ) == 1.0)
            .then_some(scrape)
    })
    .await;
    assert_eq!(
        metric(&scrape, "switchboard_handovers_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(http_get(admin, "/readyz", &[]).await.status, 200);
    assert_eq!(get(listen).await, Ok("a".to_owned()));
    assert!(old.log().contains("take-over failed"), "{}", old.log());
    old.terminate().await;
}

#[tokio::test]
async fn a_take_over_accepts_only_once_its_first_dns_lookups_are_in() {
    let (a, b, echo) = (
        HttpBackend::start("a").await,
        HttpBackend::start("b").await,
        EchoBackend::start("echo").await,
    );
    let dns = DnsResponder::start("web.sb.test", &[std::net::Ipv4Addr::LOCALHOST]).await;
    dns.set_mode(Mode::Silent);
    let dir = TempDir::new("handover-dns");
    let Old {
        process: mut old,
        listen,
        socket,
        config: old_config,
        ..
    } = start_old(&dir, a.addr, echo.addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (tally, client) = load(listen, stop.clone());

    // The new process's web upstream is `b` through DNS, whose first answer is late: a query
    // times out after 5 s (resolve_interval) and is asked again.
    let new_config = format!(
        "{}[dns]\nnameservers = [\"{}\"]\n",
        old_config.replace(
            &format!("[upstream.web]\nservers = [\"{}\"]\n", a.addr),
            &format!(
                "[upstream.web]\nservers = [\"dns:web.sb.test:{}\"]\nresolve_interval = \"5s\"\n",
                b.addr.port()
            ),
        ),
        dns.addr
    );
    let new = Process::start(&dir, "new", &new_config, Some(&socket));
    eventually("the new process asks DNS", || async {
        (dns.queries() > 0).then_some(())
    })
    .await;
    // While it waits, the old process goes on answering every connection.
    let asked = tally.lock().unwrap().answers.len();
    eventually(
        "the old process answers while the new one waits",
        || async { (tally.lock().unwrap().answers.len() >= asked + 100).then_some(()) },
    )
    .await;
    assert!(
        !old.log().contains("handed the listeners over"),
        "handed over before the first lookup was in:\n{}",
        old.log()
    );
    dns.set_mode(Mode::Records);
    let status = old.exit().await;
    assert_eq!(status.code(), Some(0), "old process:\n{}", old.log());
    let at_exit = tally.lock().unwrap().answers.len();
    eventually("the new process answers the load", || async {
        (tally.lock().unwrap().answers.len() >= at_exit + 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    {
        let tally = tally.lock().unwrap();
        assert!(
            tally.failures.is_empty(),
            "{} connections failed (a 503 from an upstream that knew no backend yet?): {:?}\nnew:\n{}",
            tally.failures.len(),
            &tally.failures[..tally.failures.len().min(5)],
            new.log()
        );
        assert!(tally.answers[at_exit..].iter().all(|name| name == "b"));
        assert!(tally.count("a") >= 100);
    }
    new.terminate().await;
}

#[test]
fn handover_socket_mistakes_name_the_key_and_the_line() {
    let dir = TempDir::new("handover-config");
    let with = |path: &str| {
        format!(
            "listen = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:2\"\nhandover_socket = \"{path}\"\n\
             [[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:3\"]\n"
        )
    };
    let missing_dir = dir.path("nowhere/handover.sock");
    let long = format!("{}/{}", dir.0.display(), "s".repeat(120));
    for (path, says) in [
        (missing_dir.to_str().unwrap(), "does not exist"),
        (long.as_str(), "at most 107"),
        ("", "empty"),
    ] {
        let error = switchboard::config::from_toml_str(&with(path), "h.toml")
            .expect_err("rejected")
            .to_string();
        assert!(
            error.contains("h.toml:4")
                && error.contains("admin.handover_socket")
                && error.contains(says),
            "{error}"
        );
    }
    let fine = dir.path("handover.sock");
    let config =
        switchboard::config::from_toml_str(&with(fine.to_str().unwrap()), "h.toml").unwrap();
    assert_eq!(config.handover_socket.as_deref(), Some(fine.as_path()));
}

#[tokio::test]
async fn a_stale_handover_socket_file_is_replaced_and_removed_at_exit() {
    let (a, echo) = (
        HttpBackend::start("a").await,
        EchoBackend::start("echo").await,
    );
    let dir = TempDir::new("handover-stale");
    let socket = dir.path("handover.sock");
    // Left behind by a process that is gone: the file is there, nobody answers on it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let (listen, admin) = two_free_addrs();
    let process = Process::start(
        &dir,
        "a",
        &config(listen, admin, &socket, a.addr, echo.addr),
        None,
    );
    ready(admin, &process).await;
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "{}",
        process.log()
    );
    process.terminate().await;
    assert!(
        !socket.exists(),
        "the socket file is removed at a shutdown without hand-over"
    );
}
