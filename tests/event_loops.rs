//! `[runtime] mode = "per-core"`: several event loops accept on the same listeners; counts that
//! balancing needs stay global, and a shutdown reaches the tunnels of every loop.

mod support;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use support::backends::EchoBackend;
use support::clients::{expect_close, http_get, ws_connect};
use support::{DEADLINE, metric};
use switchboard::metrics::Metrics;
use switchboard::workers::Workers;
use switchboard::{Listeners, Shutdown};

const TUNNELS: usize = 30;
const LOOPS: usize = 3;

#[tokio::test]
async fn three_event_loops_share_the_listener_least_conn_counts_and_the_shutdown() {
    let (a, b) = (EchoBackend::start("a").await, EchoBackend::start("b").await);
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[drain]\nspread = \"0s\"\n[[route]]\nupstream = \"app\"\n\
         [upstream.app]\nbalance = \"least-conn\"\nservers = [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    );
    let config = switchboard::config::from_toml_str(&text, "test.toml").unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
    let workers = Workers::with_extra_loops(LOOPS - 1).unwrap();
    assert_eq!(workers.len(), LOOPS);
    let shutdown = Shutdown::new();
    let task = tokio::spawn(switchboard::run_on_loops(
        config,
        Listeners {
            plain: Some(proxy),
            tls: None,
            admin: Some(admin),
        },
        shutdown.clone(),
        Metrics::new(),
        workers.handles(),
    ));

    let mut tunnels = Vec::with_capacity(TUNNELS);
    for i in 0..TUNNELS {
        let mut ws = ws_connect(&format!("ws://{addr}/")).await;
        let message = Message::text(format!("hello {i}"));
        ws.send(message.clone()).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
        assert_eq!(echoed.unwrap().unwrap(), message);
        tunnels.push(ws);
    }
    // Opened one after another: least-conn alternates only if every loop sees the same counts.
    a.live
        .wait_for("half the tunnels on a", |n| n == TUNNELS / 2)
        .await;
    b.live
        .wait_for("half the tunnels on b", |n| n == TUNNELS / 2)
        .await;

    let scraped = http_get(admin_addr, "/metrics", &[]).await.body_text();
    let name = "switchboard_connections_accepted_total";
    assert_eq!(metric(&scraped, name, &[]), TUNNELS as f64, "{scraped}");
    for index in 0..LOOPS {
        let label = index.to_string();
        assert!(
            scraped.contains(&format!("{name}{{event_loop=\"{label}\"}}")),
            "no accept counter for loop {index}:\n{scraped}"
        );
    }

    shutdown.trigger();
    for ws in &mut tunnels {
        expect_close(ws, CloseCode::Away).await;
    }
    drop(tunnels);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("run returns once every loop's tunnels are closed")
        .unwrap()
        .expect("run ended cleanly");
    drop(workers);
}
