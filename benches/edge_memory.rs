//! Memory and liveness at the edge: what hostile or idle clients cost a real switchboard process,
//! and whether a legitimate client still gets through meanwhile, side by side with a baseline
//! binary.
//!
//! Guards the front end's limits (header deadline, HTTP/2 flow-control windows and stream
//! limits) and the relay's backpressure: each of them is about memory that must stay bounded
//! whatever a client does. Method:
//! - switchboard is the release binary in a process of its own (and the baseline, from
//!   EDGE_BASELINE_BIN, the same way after it), so its RSS (VmRSS from /proc) is its alone; each
//!   binary gets a fresh process and fresh backends per scenario, and only config keys both
//!   know (`check` must accept the file first);
//! - the backends run in this process: an HTTP/1.1 one answering `200 ok` (keep-alive), a
//!   WebSocket echo one (RFC 6455 §5 server frames back for masked client frames), and a pusher
//!   that answers the upgrade and then writes 16 KiB binary frames as fast as it can;
//! - `slowloris`: EDGE_SLOW (500) connections send `GET / HTTP/1.1`, `Host`, then one byte of an
//!   endless header a second, for up to 15 s, against `limits.header_read_timeout = "5s"`. RSS
//!   before them, the peak (sampled every 250 ms), the peak's excess per slow connection; how
//!   many the proxy closed (EOF, reset or any answer) and the median time from each one's
//!   connect; meanwhile a legitimate client makes a GET on a new connection every 50 ms (2 s
//!   bound each): successes, failures, p50 and p99;
//! - `slow_reader`: EDGE_READERS (200) tunnels to the pusher whose clients never read, for 10 s
//!   after they are open. RSS before, 2 s and 10 s after (it must level off: socket buffers are
//!   the kernel's, the relay holds at most one chunk per stalled direction), the excess per
//!   tunnel at 10 s, and the bytes the pushers got rid of by 2 s and by 10 s (growth after 2 s
//!   means something in between keeps absorbing); meanwhile one tunnel to the echo backend does
//!   64 B round trips back to back (2 s bound each): count, failures, p99;
//! - `h2_idle`: EDGE_H2 (1000) prior-knowledge h2c connections (RFC 9113 §3.3), each doing one
//!   GET, then held idle; (RSS after them minus RSS after a warm-up of 50) / EDGE_H2;
//! - `h2_tunnels`: EDGE_H2 (1000) RFC 8441 WebSockets (extended CONNECT, `:protocol =
//!   websocket`), 100 streams on each of EDGE_H2 / 100 h2c connections (the default
//!   `limits.h2_max_streams`), each echoing one masked 64 B frame, then held idle; (RSS after
//!   them minus RSS once the connections are up and each did a GET, which also delivered the
//!   server's SETTINGS_ENABLE_CONNECT_PROTOCOL) / tunnels.
//!
//! All traffic is on 127.0.0.1; the machine is shared, so latencies are noisy and only the two
//! columns of the same run compare well. RSS of a process that frees memory need not shrink
//! (the allocator keeps pages), so peaks and levels mean more than deltas after a drop.
//!
//! Run: `cargo bench --bench edge_memory`. Environment: EDGE_SCENARIOS (slowloris,slow_reader,
//! h2_idle,h2_tunnels), EDGE_SLOW (500), EDGE_READERS (200), EDGE_H2 (1000), EDGE_BASELINE_BIN
//! (another switchboard binary, the "switchboard-before" column).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;

#[path = "support/mod.rs"]
mod support;
use support::{
    KEY, echo_frames, env_or, frame, free_port, median, percentile, proc_stat, read_head,
    wait_listening,
};

/// `header_read_timeout` of every run; the slow clients outlast it three times.
const HEADER_TIMEOUT_S: u64 = 5;
/// How long a slow client keeps trickling its header.
const SLOW_WINDOW: Duration = Duration::from_secs(15);
/// How long the slow readers are held.
const READER_WINDOW: Duration = Duration::from_secs(10);
/// Bound of one legitimate request or round trip, and of one connect or handshake.
const BOUND: Duration = Duration::from_secs(2);
/// Streams per h2c connection in `h2_tunnels`: the default `limits.h2_max_streams`.
const STREAMS_PER_CONNECTION: usize = 100;
/// Payload of one pushed frame.
const PUSH_FRAME: usize = 16 * 1024;
/// Upper bounds of the backends' per-connection loops (the run's end comes long before).
const MAX_REQUESTS: usize = 1_000_000;
const MAX_PUSHED_FRAMES: usize = 1_000_000;

/// What a backend does with each connection.
#[derive(Clone, Copy)]
enum Kind {
    /// HTTP/1.1 `200 ok` to every request, keep-alive.
    Http,
    /// Accepts the WebSocket upgrade, then echoes frames.
    Echo,
    /// Accepts the WebSocket upgrade, then writes server frames until the write fails.
    Push,
}

/// The three backends of one run, stopped (every task of theirs) when dropped.
struct Backends {
    web: SocketAddr,
    echo: SocketAddr,
    push: SocketAddr,
    /// Bytes the pushers have written, and pusher connections whose write failed.
    pushed: Arc<AtomicU64>,
    cut: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Backends {
    async fn start() -> Option<Backends> {
        let stop = CancellationToken::new();
        let (pushed, cut) = (Arc::default(), Arc::default());
        let start = |kind| backend(kind, stop.clone(), Arc::clone(&pushed), Arc::clone(&cut));
        Some(Backends {
            web: start(Kind::Http).await?,
            echo: start(Kind::Echo).await?,
            push: start(Kind::Push).await?,
            pushed,
            cut,
            stop,
        })
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds a backend of `kind` on a loopback port and serves it until `stop`.
async fn backend(
    kind: Kind,
    stop: CancellationToken,
    pushed: Arc<AtomicU64>,
    cut: Arc<AtomicUsize>,
) -> Option<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await.ok()?;
    let addr = listener.local_addr().ok()?;
    tokio::spawn(async move {
        // Ends with the run: `stop` is cancelled when its `Backends` is dropped.
        while !stop.is_cancelled() {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut stream, _)) = accepted else {
                sleep(Duration::from_millis(10)).await; // EMFILE: let descriptors free up
                continue;
            };
            let (stop, pushed, cut) = (stop.clone(), pushed.clone(), cut.clone());
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let serve = async {
                    match kind {
                        Kind::Http => answer_requests(stream).await,
                        Kind::Echo if accept_upgrade(&mut stream).await.is_some() => {
                            echo_frames(stream).await
                        }
                        Kind::Push if accept_upgrade(&mut stream).await.is_some() => {
                            push_frames(stream, &pushed, &cut).await
                        }
                        Kind::Echo | Kind::Push => {}
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = serve => {}
                }
            });
        }
    });
    Some(addr)
}

/// `200 ok` to each request head (none of them has a body) until the connection ends.
async fn answer_requests(mut stream: TcpStream) {
    for _ in 0..MAX_REQUESTS {
        if read_head(&mut stream).await.is_none()
            || stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Reads an upgrade request and answers 101 with the `Sec-WebSocket-Accept` of its key
/// (RFC 6455 §4.2.2): over HTTP/2 switchboard makes its own key and checks the answer.
async fn accept_upgrade(stream: &mut TcpStream) -> Option<()> {
    let head = read_head(stream).await?;
    let key = std::str::from_utf8(&head).ok()?.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })?;
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(reply.as_bytes()).await.ok()
}

/// Unmasked binary server frames of [`PUSH_FRAME`] bytes, back to back, until a write fails.
async fn push_frames(mut stream: TcpStream, pushed: &AtomicU64, cut: &AtomicUsize) {
    let mut frame = vec![0x82, 126];
    frame.extend_from_slice(&(PUSH_FRAME as u16).to_be_bytes());
    frame.resize(4 + PUSH_FRAME, 0);
    for _ in 0..MAX_PUSHED_FRAMES {
        if stream.write_all(&frame).await.is_err() {
            cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pushed.fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
}

/// A switchboard process in front of one run's [`Backends`], killed (by its PID) when dropped.
struct Switchboard {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Switchboard {
    /// Writes the config, has `binary check` accept it, starts `binary` and waits for its
    /// listener. `None` (with the reason printed) if any step fails.
    async fn start(binary: &Path, backends: &Backends) -> Option<Switchboard> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
        let dir =
            std::env::temp_dir().join(format!("switchboard-edge-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let config = dir.join("edge.toml");
        // Only keys the baseline knows too.
        let toml = format!(
            "listen = \"{addr}\"\n[limits]\nheader_read_timeout = \"{HEADER_TIMEOUT_S}s\"\n\
             [[route]]\nupstream = \"web\"\n[[route]]\npath_prefix = \"/ws\"\nupstream = \"echo\"\n\
             [[route]]\npath_prefix = \"/push\"\nupstream = \"push\"\n\
             [upstream.web]\nservers = [\"{}\"]\n[upstream.echo]\nservers = [\"{}\"]\n\
             [upstream.push]\nservers = [\"{}\"]\n",
            backends.web, backends.echo, backends.push
        );
        std::fs::write(&config, toml).ok()?;
        let check = Command::new(binary)
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .ok()?;
        if !check.status.success() {
            println!(
                "{} check refused the config: {}",
                binary.display(),
                String::from_utf8_lossy(&check.stderr).trim()
            );
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let sb = Switchboard { child, addr, dir };
        wait_listening(addr).await?;
        Some(sb)
    }

    /// Resident memory, KiB.
    fn rss(&self) -> u64 {
        proc_stat(self.child.id()).1
    }
}

impl Drop for Switchboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One scenario's results for one binary: `(metric, value)` in display order.
type Rows = Vec<(String, String)>;

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn per(delta_kib: i64, n: usize) -> String {
    format!("{:.2}", delta_kib as f64 / n.max(1) as f64)
}

/// RSS once a just-finished burst has been handled.
async fn settled_rss(sb: &Switchboard) -> u64 {
    sleep(Duration::from_millis(300)).await;
    sb.rss()
}

/// What a legitimate client saw: completed exchanges, failed ones, latencies (µs).
#[derive(Default)]
struct Probe {
    ok: usize,
    failed: usize,
    lat_us: Vec<u32>,
}

impl Probe {
    fn note(&mut self, t0: Instant, ok: bool) {
        if ok {
            self.ok += 1;
            self.lat_us.push(t0.elapsed().as_micros() as u32);
        } else {
            self.failed += 1;
        }
    }

    fn rows(mut self, what: &str, rows: &mut Rows) {
        self.lat_us.sort_unstable();
        let ms = |p| format!("{:.2}", percentile(&self.lat_us, p) as f64 / 1000.0);
        rows.push((format!("legit {what} ok"), self.ok.to_string()));
        rows.push((format!("legit {what} failed"), self.failed.to_string()));
        rows.push((format!("legit {what} p50 (ms)"), ms(0.50)));
        rows.push((format!("legit {what} p99 (ms)"), ms(0.99)));
    }
}

/// A GET on a new connection every 50 ms until `until`.
async fn http_probe(addr: SocketAddr, until: Instant) -> Probe {
    let mut probe = Probe::default();
    while Instant::now() < until {
        let t0 = Instant::now();
        let got = timeout(BOUND, async {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.ok()?;
            (answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"ok")).then_some(())
        })
        .await;
        probe.note(t0, matches!(got, Ok(Some(()))));
        sleep(Duration::from_millis(50)).await;
    }
    probe
}

/// A WebSocket over HTTP/1.1 to `path` (RFC 6455 §4.1), within [`BOUND`].
async fn upgrade(addr: SocketAddr, path: &str) -> Option<TcpStream> {
    timeout(BOUND, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        read_head(&mut stream)
            .await
            .filter(|head| head.starts_with(b"HTTP/1.1 101"))?;
        Some(stream)
    })
    .await
    .ok()?
}

/// 64 B echo round trips back to back on one tunnel until `until`, reopening it after a
/// failure.
async fn ws_probe(addr: SocketAddr, until: Instant) -> Probe {
    let mut probe = Probe::default();
    let message = frame(64);
    let mut back = vec![0u8; message.len() - 4];
    let mut tunnel: Option<TcpStream> = None;
    while Instant::now() < until {
        let t0 = Instant::now();
        let stream = match tunnel.as_mut() {
            Some(stream) => stream,
            None => match upgrade(addr, "/ws").await {
                Some(stream) => tunnel.insert(stream),
                None => {
                    probe.note(t0, false);
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ok = timeout(BOUND, async {
            stream.write_all(&message).await.ok()?;
            stream.read_exact(&mut back).await.ok()
        })
        .await
        .is_ok_and(|r| r.is_some());
        probe.note(t0, ok);
        if !ok {
            tunnel = None;
        }
    }
    probe
}

/// One slow client: the request line and `Host`, then a byte of `X-a: bbb…` a second.
/// `None`: it did not connect; `Some(None)`: still open after [`SLOW_WINDOW`];
/// `Some(Some(t))`: the proxy ended it (EOF, reset or any answer) `t` after the connect.
async fn slow_client(addr: SocketAddr) -> Option<Option<Duration>> {
    let mut stream = timeout(BOUND, TcpStream::connect(addr)).await.ok()?.ok()?;
    let opened = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .ok()?;
    let header = [b"X-a: ".as_slice(), &[b'b'; 64]].concat();
    let mut answer = [0u8; 512];
    for &byte in header.iter().take(SLOW_WINDOW.as_secs() as usize) {
        tokio::select! {
            _ = stream.read(&mut answer) => return Some(Some(opened.elapsed())),
            _ = sleep(Duration::from_secs(1)) => {}
        }
        if stream.write_all(&[byte]).await.is_err() {
            return Some(Some(opened.elapsed()));
        }
    }
    Some(None)
}

async fn slowloris(sb: &Switchboard, _: &Backends) -> Option<Rows> {
    let n = env_or("EDGE_SLOW", 500);
    let before = settled_rss(sb).await;
    let start = Instant::now();
    let end = start + SLOW_WINDOW + Duration::from_secs(1);
    let probe = tokio::spawn(http_probe(sb.addr, end));
    let slow: Vec<_> = (0..n).map(|_| tokio::spawn(slow_client(sb.addr))).collect();
    let mut peak = before;
    while Instant::now() < end {
        peak = peak.max(sb.rss());
        sleep(Duration::from_millis(250)).await;
    }
    let (mut connected, mut open) = (0, 0);
    let mut closed_at = Vec::new();
    for client in slow {
        match client.await.ok().flatten() {
            Some(Some(at)) => closed_at.push(at.as_secs_f64()),
            Some(None) => open += 1,
            None => continue,
        }
        connected += 1;
    }
    let median_s = median(&mut closed_at); // sorts
    let last_s = closed_at.last().copied().unwrap_or(0.0);
    let mut rows = vec![
        ("RSS before (MiB)".into(), mib(before)),
        ("RSS peak (MiB)".into(), mib(peak)),
        (
            "RSS per slow connection (KiB)".into(),
            per(peak as i64 - before as i64, n),
        ),
        ("slow connections made".into(), format!("{connected}/{n}")),
        ("closed by the proxy".into(), closed_at.len().to_string()),
        ("still open at 15 s".into(), open.to_string()),
        ("closed after, median (s)".into(), format!("{median_s:.1}")),
        ("closed after, last (s)".into(), format!("{last_s:.1}")),
    ];
    probe.await.ok()?.rows("GET", &mut rows);
    Some(rows)
}

async fn slow_reader(sb: &Switchboard, backends: &Backends) -> Option<Rows> {
    let n = env_or("EDGE_READERS", 200);
    let before = settled_rss(sb).await;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.extend(upgrade(sb.addr, "/push").await);
    }
    let opened = Instant::now();
    let probe = tokio::spawn(ws_probe(sb.addr, opened + READER_WINDOW));
    sleep_until((opened + Duration::from_secs(2)).into()).await;
    let (at_2s, pushed_2s) = (sb.rss(), backends.pushed.load(Ordering::Relaxed));
    sleep_until((opened + READER_WINDOW).into()).await;
    let (at_10s, pushed_10s) = (sb.rss(), backends.pushed.load(Ordering::Relaxed));
    let cut = backends.cut.load(Ordering::Relaxed);
    let per_tunnel_mib =
        |bytes: u64| format!("{:.2}", bytes as f64 / held.len().max(1) as f64 / 1048576.0);
    let mut rows = vec![
        ("tunnels opened".into(), format!("{}/{n}", held.len())),
        ("RSS before (MiB)".into(), mib(before)),
        ("RSS 2 s after (MiB)".into(), mib(at_2s)),
        ("RSS 10 s after (MiB)".into(), mib(at_10s)),
        (
            "RSS per tunnel at 10 s (KiB)".into(),
            per(at_10s as i64 - before as i64, held.len()),
        ),
        (
            "RSS growth 2 s -> 10 s (KiB)".into(),
            (at_10s as i64 - at_2s as i64).to_string(),
        ),
        (
            "pushed per tunnel by 2 s (MiB)".into(),
            per_tunnel_mib(pushed_2s),
        ),
        (
            "pushed per tunnel by 10 s (MiB)".into(),
            per_tunnel_mib(pushed_10s),
        ),
        ("pusher connections cut".into(), cut.to_string()),
    ];
    probe.await.ok()?.rows("round trips", &mut rows);
    Some(rows)
}

/// One h2c connection: its request handle and the task driving it, aborted when dropped.
struct H2 {
    send: SendRequest<Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// An h2c connection with prior knowledge (RFC 9113 §3.3) that has done one GET, within
/// [`BOUND`].
async fn h2_connect(addr: SocketAddr) -> Option<H2> {
    timeout(BOUND, async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        tcp.set_nodelay(true).ok()?;
        let (send, connection) = h2::client::handshake(tcp).await.ok()?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let h2 = H2 { send, driver };
        let request = http::Request::get(format!("http://{addr}/"))
            .body(())
            .ok()?;
        let (response, _) = h2
            .send
            .clone()
            .ready()
            .await
            .ok()?
            .send_request(request, true)
            .ok()?;
        let response = response.await.ok()?;
        if response.status() != 200 {
            return None;
        }
        let mut body = response.into_body();
        for _ in 0..64 {
            match body.data().await {
                Some(chunk) => {
                    let _ = body.flow_control().release_capacity(chunk.ok()?.len());
                }
                None => return Some(h2),
            }
        }
        None
    })
    .await
    .ok()?
}

/// One RFC 8441 WebSocket on `h2` that has echoed one masked 64 B frame, within [`BOUND`].
async fn h2_tunnel(h2: &H2, addr: SocketAddr) -> Option<(h2::SendStream<Bytes>, h2::RecvStream)> {
    timeout(BOUND, async {
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{addr}/ws"))
            .extension(h2::ext::Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13")
            .body(())
            .ok()?;
        let (response, mut tx) = h2
            .send
            .clone()
            .ready()
            .await
            .ok()?
            .send_request(request, false)
            .ok()?;
        let response = response.await.ok()?;
        if response.status() != 200 {
            return None;
        }
        let mut rx = response.into_body();
        let message = frame(64);
        let mut want = message.len() - 4;
        tx.send_data(Bytes::from(message), false).ok()?;
        for _ in 0..64 {
            if want == 0 {
                return Some((tx, rx));
            }
            let chunk = rx.data().await?.ok()?;
            want = want.saturating_sub(chunk.len());
            let _ = rx.flow_control().release_capacity(chunk.len());
        }
        None
    })
    .await
    .ok()?
}

async fn h2_idle(sb: &Switchboard, _: &Backends) -> Option<Rows> {
    let n = env_or("EDGE_H2", 1000);
    let warm = 50;
    let mut held = Vec::with_capacity(warm + n);
    let mut base = 0;
    for i in 0..warm + n {
        held.extend(h2_connect(sb.addr).await);
        if i + 1 == warm {
            base = settled_rss(sb).await;
        }
    }
    let after = settled_rss(sb).await;
    Some(vec![
        (
            "connections (GET ok)".into(),
            format!("{}/{}", held.len(), warm + n),
        ),
        ("RSS after warm-up of 50 (MiB)".into(), mib(base)),
        ("RSS after all (MiB)".into(), mib(after)),
        (
            "RSS per idle h2 connection (KiB)".into(),
            per(after as i64 - base as i64, n),
        ),
    ])
}

async fn h2_tunnels(sb: &Switchboard, _: &Backends) -> Option<Rows> {
    let n = env_or("EDGE_H2", 1000);
    let mut connections = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_CONNECTION) {
        connections.extend(h2_connect(sb.addr).await);
    }
    let extended = connections
        .iter()
        .filter(|c| c.send.is_extended_connect_protocol_enabled())
        .count();
    let base = settled_rss(sb).await;
    let addr = sb.addr;
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, h2)| {
            let streams = STREAMS_PER_CONNECTION.min(n - i * STREAMS_PER_CONNECTION);
            tokio::spawn(async move {
                let mut tunnels = Vec::with_capacity(streams);
                for _ in 0..streams {
                    tunnels.extend(h2_tunnel(&h2, addr).await);
                }
                (h2, tunnels)
            })
        })
        .collect();
    let mut held = Vec::new();
    for task in tasks {
        held.push(task.await.ok()?);
    }
    let tunnels: usize = held.iter().map(|(_, t)| t.len()).sum();
    let after = settled_rss(sb).await;
    Some(vec![
        (
            "h2c connections (extended CONNECT on)".into(),
            format!(
                "{}/{} ({extended})",
                held.len(),
                n.div_ceil(STREAMS_PER_CONNECTION)
            ),
        ),
        ("tunnels (echoed once)".into(), format!("{tunnels}/{n}")),
        ("RSS with connections only (MiB)".into(), mib(base)),
        ("RSS with tunnels (MiB)".into(), mib(after)),
        (
            "RSS per idle h2 tunnel (KiB)".into(),
            per(after as i64 - base as i64, tunnels),
        ),
    ])
}

/// Prints one scenario's table: a row per metric, a column per binary.
fn print_table(title: &str, names: &[&str], results: &[Option<Rows>]) {
    println!("\n{title}");
    let Some(metrics) = results.iter().flatten().next() else {
        println!("  every run skipped");
        return;
    };
    let width = metrics.iter().map(|(m, _)| m.len()).max().unwrap_or(6);
    let header: String = names.iter().map(|n| format!(" | {n:>18}")).collect();
    println!("| {:<width$}{header} |", "metric");
    println!(
        "|{}{}|",
        "-".repeat(width + 2),
        "|-------------------:".repeat(names.len())
    );
    for (metric, _) in metrics {
        let cells: String = results
            .iter()
            .map(|rows| {
                let value = rows
                    .as_ref()
                    .and_then(|rows| rows.iter().find(|(m, _)| m == metric))
                    .map_or("skipped", |(_, v)| v.as_str());
                format!(" | {value:>18}")
            })
            .collect();
        println!("| {metric:<width$}{cells} |");
    }
}

/// Runs `scenario` against a fresh process of each binary, with fresh backends, and prints
/// the table.
async fn compare<F>(binaries: &[(&str, PathBuf)], title: String, scenario: F)
where
    F: AsyncFn(&Switchboard, &Backends) -> Option<Rows>,
{
    let mut results = Vec::with_capacity(binaries.len());
    for (_, binary) in binaries {
        let Some(backends) = Backends::start().await else {
            results.push(None);
            continue;
        };
        let rows = match Switchboard::start(binary, &backends).await {
            Some(sb) => scenario(&sb, &backends).await,
            None => None,
        };
        results.push(rows);
    }
    let names: Vec<&str> = binaries.iter().map(|(n, _)| *n).collect();
    print_table(&title, &names, &results);
}

fn main() {
    support::raise_fd_limit();
    let mut binaries = vec![(
        "switchboard",
        PathBuf::from(env!("CARGO_BIN_EXE_switchboard")),
    )];
    match std::env::var_os("EDGE_BASELINE_BIN") {
        Some(path) => binaries.push(("switchboard-before", path.into())),
        None => println!("EDGE_BASELINE_BIN not set: no baseline column"),
    }
    let scenarios = std::env::var("EDGE_SCENARIOS")
        .unwrap_or_else(|_| "slowloris,slow_reader,h2_idle,h2_tunnels".into());
    let wanted = |s: &str| scenarios.split(',').any(|x| x.trim() == s);
    let (slow, readers, h2) = (
        env_or("EDGE_SLOW", 500),
        env_or("EDGE_READERS", 200),
        env_or("EDGE_H2", 1000),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "edge_memory: switchboard in its own process (RSS from /proc), clients and backends in this one; \
         a fresh process and backends per binary and scenario; header_read_timeout = \"{HEADER_TIMEOUT_S}s\"."
    );
    runtime.block_on(async {
        if wanted("slowloris") {
            let title = format!(
                "slowloris: {slow} connections, request line + Host, then 1 header byte/s for up to {} s; \
                 a legitimate GET on a new connection every 50 ms meanwhile",
                SLOW_WINDOW.as_secs()
            );
            compare(&binaries, title, slowloris).await;
        }
        if wanted("slow_reader") {
            let title = format!(
                "slow_reader: {readers} WebSocket tunnels whose backend pushes {} KiB frames flat out to a client \
                 that never reads, held {} s; one legitimate tunnel doing 64 B echo round trips meanwhile",
                PUSH_FRAME / 1024,
                READER_WINDOW.as_secs()
            );
            compare(&binaries, title, slow_reader).await;
        }
        if wanted("h2_idle") {
            let title =
                format!("h2_idle: 50 + {h2} h2c connections (prior knowledge), one GET each, then idle");
            compare(&binaries, title, h2_idle).await;
        }
        if wanted("h2_tunnels") {
            let title = format!(
                "h2_tunnels: {h2} RFC 8441 WebSockets, {STREAMS_PER_CONNECTION} streams per h2c connection, \
                 one 64 B echo each, then idle"
            );
            compare(&binaries, title, h2_tunnels).await;
        }
    });
}
