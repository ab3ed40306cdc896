//! Active health checks: `switchboard::balancer::health::run` against real backends on
//! 127.0.0.1:0, with short intervals; every wait is a bounded poll of the backend's health.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use rustls::pki_types::ServerName;
use switchboard::balancer::health;
use switchboard::balancer::{Backend, Balancer, Health};
use switchboard::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use support::backends::{
    EchoBackend, HttpBackend, SilentBackend, header_value, raw_backend, refusing_addr,
    switching_protocols,
};
use support::tls::{TestCa, server_config};
use support::{DEADLINE, eventually, metric};

/// One backend and the health-check task probing it.
struct Checked {
    backend: Arc<Backend>,
    metrics: Metrics,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Checked {
    /// Starts `health::run` on `addr` with `interval = "100ms"`, `timeout = "50ms"` and the
    /// `[upstream.app.health_check]` keys in `keys` (at least `kind`).
    fn start(addr: SocketAddr, keys: &str) -> Checked {
        Self::start_tls(addr, keys, None)
    }

    fn start_tls(
        addr: SocketAddr,
        keys: &str,
        tls: Option<switchboard::proxy::connect::UpstreamTls>,
    ) -> Checked {
        let text = format!(
            "listen = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\n\
             servers = [\"{addr}\"]\n[upstream.app.health_check]\ninterval = \"100ms\"\n\
             timeout = \"50ms\"\n{keys}\n"
        );
        let config = switchboard::config::from_toml_str(&text, "test.toml")
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        let upstream = &config.upstreams[0];
        let metrics = Metrics::new();
        let balancer = Balancer::new(upstream, Duration::from_secs(10), &metrics);
        let backend = balancer.backends()[0].clone();
        let check = upstream.health_check.clone().expect("a health check");
        let stop = CancellationToken::new();
        let task = tokio::spawn(health::run(
            backend.clone(),
            "app".into(),
            check,
            tls,
            metrics.clone(),
            stop.clone(),
        ));
        Checked {
            backend,
            metrics,
            stop,
            task,
        }
    }

    /// Waits (bounded) until the backend's health is `health`.
    async fn wait_for(&self, health: Health) {
        let what = format!("{} to be {health:?}", self.backend.name);
        eventually(&what, || async {
            (self.backend.health() == health).then_some(())
        })
        .await;
    }

    /// `switchboard_health_checks_total` for this backend and `result`.
    fn count(&self, result: &str) -> f64 {
        let labels = [
            ("upstream", "app"),
            ("backend", self.backend.name.as_str()),
            ("result", result),
        ];
        metric(
            &self.metrics.render(),
            "switchboard_health_checks_total",
            &labels,
        )
    }

    /// Cancels the task and checks that it ends.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the health check stops when cancelled")
            .expect("the health check did not panic");
    }
}

/// A raw HTTP backend answering each request with the status `status` holds now.
async fn status_backend(status: Arc<AtomicU16>) -> SocketAddr {
    let (addr, _live) = raw_backend(move |mut stream, _head| {
        let status = status.load(Ordering::Relaxed);
        async move {
            let answer =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    })
    .await;
    addr
}

#[tokio::test]
async fn tcp_check_goes_up_on_a_listener_and_down_on_a_refused_port() {
    let listening = SilentBackend::start().await;
    let up = Checked::start(listening.addr, "kind = \"tcp\"\nrise = 2");
    assert_eq!(
        up.backend.health(),
        Health::Unknown,
        "no verdict before `rise` passes"
    );
    up.wait_for(Health::Up).await;
    assert!(up.count("ok") >= 2.0);

    // From Unknown straight to Down after `fall` failures.
    let down = Checked::start(refusing_addr().await, "kind = \"tcp\"\nfall = 2");
    down.wait_for(Health::Down).await;
    assert!(down.count("failed") >= 2.0);
    assert_eq!(down.count("ok"), 0.0);
    up.stop().await;
    down.stop().await;
}

#[tokio::test]
async fn http_check_follows_the_status() {
    let backend = HttpBackend::start("web").await;
    let ok = Checked::start(backend.addr, "kind = \"http\"\npath = \"/healthz\"");
    ok.wait_for(Health::Up).await;
    let seen = backend.recorded();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("GET", "/healthz")
    );
    let host = seen[0].headers.get("host").unwrap().to_str().unwrap();
    assert_eq!(
        host,
        backend.addr.to_string(),
        "default Host: the server address"
    );
    assert_eq!(seen[0].headers["user-agent"], "switchboard-health");

    // The one status that passes; a 200 is then a failure.
    let picky = Checked::start(
        backend.addr,
        "kind = \"http\"\nexpect_status = 204\nhost = \"chat.internal\"",
    );
    picky.wait_for(Health::Down).await;
    assert!(picky.count("failed") >= 3.0 && picky.count("ok") == 0.0);
    assert!(
        backend
            .recorded()
            .iter()
            .any(|r| r.headers["host"] == "chat.internal")
    );

    // 500 takes the backend down; back to 200 brings it up again after `rise` passes.
    let status = Arc::new(AtomicU16::new(500));
    let flapping = Checked::start(status_backend(status.clone()).await, "kind = \"http\"");
    flapping.wait_for(Health::Down).await;
    status.store(200, Ordering::Relaxed);
    flapping.wait_for(Health::Up).await;
    for checked in [ok, picky, flapping] {
        checked.stop().await;
    }
}

#[tokio::test]
async fn websocket_check_goes_up_on_a_websocket_backend() {
    let echo = EchoBackend::start("echo").await;
    let plain = Checked::start(echo.addr, "kind = \"websocket\"\npath = \"/ws\"");
    // A backend that speaks first: its message is skipped on the way to its Close.
    let greeting = EchoBackend::start_greeting("greeter").await;
    let greeted = Checked::start(greeting.addr, "kind = \"websocket\"");
    plain.wait_for(Health::Up).await;
    greeted.wait_for(Health::Up).await;
    plain.stop().await;
    greeted.stop().await;
    // Every probe ended with the closing handshake: no connection is left open.
    echo.live
        .wait_for("probe connections closed", |n| n == 0)
        .await;
    greeting
        .live
        .wait_for("probe connections closed", |n| n == 0)
        .await;
    let handshakes = echo.handshakes.lock().unwrap().clone();
    assert_eq!(handshakes[0]["sec-websocket-version"], "13");
}

#[tokio::test]
async fn websocket_check_catches_a_backend_whose_http_side_still_answers() {
    // 200 to plain requests, 500 to upgrades: an http check cannot tell.
    let (addr, _live) = raw_backend(|mut stream, head| async move {
        let upgrade = header_value(&head, "upgrade").is_some_and(|v| v == "websocket");
        let status = if upgrade {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(answer.as_bytes()).await;
    })
    .await;
    let websocket = Checked::start(addr, "kind = \"websocket\"");
    let http = Checked::start(addr, "kind = \"http\"");
    websocket.wait_for(Health::Down).await;
    http.wait_for(Health::Up).await;
    assert!(websocket.count("failed") >= 3.0 && websocket.count("ok") == 0.0);
    assert_eq!(http.backend.health(), Health::Up);
    websocket.stop().await;
    http.stop().await;
}

#[tokio::test]
async fn websocket_check_needs_the_right_accept_and_a_close_reply() {
    // 101 with a wrong Sec-WebSocket-Accept: failed.
    let (wrong_accept, _live) = raw_backend(|mut stream, _head| async move {
        let answer = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.read_to_end(&mut Vec::new()).await;
    })
    .await;
    // A right 101, then silence: the probe's Close gets no reply, so it times out.
    let (no_close, _live) = raw_backend(|mut stream, head| async move {
        let _ = stream
            .write_all(switching_protocols(&head).as_bytes())
            .await;
        let _ = stream.read_to_end(&mut Vec::new()).await;
    })
    .await;
    let bad = Checked::start(wrong_accept, "kind = \"websocket\"");
    let silent = Checked::start(no_close, "kind = \"websocket\"");
    bad.wait_for(Health::Down).await;
    silent.wait_for(Health::Down).await;
    assert!(bad.count("failed") >= 3.0);
    assert!(silent.count("timeout") >= 3.0 && silent.count("failed") == 0.0);
    bad.stop().await;
    silent.stop().await;
}

#[tokio::test]
async fn a_backend_that_never_answers_times_out() {
    let silent = SilentBackend::start().await;
    let checked = Checked::start(silent.addr, "kind = \"http\"\nfall = 2");
    checked.wait_for(Health::Down).await;
    assert!(checked.count("timeout") >= 2.0);
    assert_eq!(checked.count("failed"), 0.0);
    checked.stop().await;
}

#[tokio::test]
async fn http_check_over_tls() {
    let ca = TestCa::new("backend CA");
    let acceptor = TlsAcceptor::from(server_config(&ca.leaf(&["backend.test"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = tls.read(&mut [0u8; 1024]).await;
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let name = ServerName::try_from("backend.test").unwrap();
    let trusted = (TlsConnector::from(ca.client_config(&[])), name.clone());
    let up = Checked::start_tls(addr, "kind = \"http\"", Some(trusted));
    // A client that does not trust the backend's CA fails the handshake.
    let stranger = TestCa::new("another CA");
    let untrusted = (TlsConnector::from(stranger.client_config(&[])), name);
    let down = Checked::start_tls(addr, "kind = \"tcp\"", Some(untrusted));
    up.wait_for(Health::Up).await;
    down.wait_for(Health::Down).await;
    assert!(down.count("failed") >= 3.0);
    up.stop().await;
    down.stop().await;
}
