//! End-to-end load: WebSocket clients through a real switchboard process to echo backends,
//! measured side by side with the same clients talking to the backends directly.
//!
//! Guards the whole data path: handshake, splice, and what an idle tunnel costs. Method:
//! - the backends and the clients run in this process; switchboard is the release binary in a
//!   process of its own, so its CPU time (utime + stime from /proc) and RSS are its alone;
//! - the echo backend answers the HTTP upgrade, then echoes raw bytes, and the clients send
//!   masked frames and read the same bytes back, so almost all per-message work measured is the
//!   proxy's (and the kernel's);
//! - for the echo and handshake scenarios the backend runs on a thread of its own (a
//!   current-thread runtime), and its CPU per message (utime + stime of that thread, as the
//!   proxy's is of its process) is printed beside each proxy's, with the ratio: one read and
//!   one write per echo is the floor a proxy, which relays each message both ways, is read
//!   against;
//! - each scenario runs for a fixed window, first direct, then through switchboard, and the
//!   ratio is printed: on a shared, noisy machine only ratios from the same run mean much;
//! - memory per idle tunnel: RSS after opening N idle tunnels (each used once) minus RSS after a
//!   warm-up of 100, divided by N.
//!
//! - the echo backend answers each masked client frame with the unmasked server frame a real
//!   WebSocket server would send, so switchboard's frame tracker sees valid framing both ways;
//! - shutdown: N idle tunnels, SIGTERM, and the time until every client got its Close frame,
//!   with the peak rate of Closes per 100 ms (what the backends would see as reconnects).
//! - reload (switchboard only; admin listener on): E2E_CLIENTS clients doing 64 B echo for 21 s
//!   (1 s warm-up, 5 s steady, 10 s with one `POST /admin/reload` a second, the config file
//!   alternating between two equivalent contents so every reload applies a new snapshot, 5 s
//!   steady). Each round trip is kept with its completion time, so the same run gives the
//!   throughput of the second after each reload against the median steady second, p99 latency
//!   of the reload window against the steady seconds, and tunnels lost (clients that saw an
//!   error or EOF). CPU per reload: utime + stime of the reload window minus that of the 10
//!   steady seconds, divided by the reloads; and, since that is within the load's noise, the
//!   CPU of 10 back-to-back reloads with no load (ticks, and schedstat nanoseconds).
//! - drain (switchboard only): E2E_IDLE idle tunnels (each used once) split by least-conn over
//!   two echo backends A and B; `POST /admin/upstreams/echo/backends/A/drain` with
//!   `[drain] timeout = "1s"`, spread E2E_SPREAD, `close_linger = "5s"`. Each client whose
//!   tunnel closes answers the Close and reconnects at once (one echo), so it lands on B. Times:
//!   the POST until A has no tunnels (`GET /admin/upstreams` every 100 ms) and until the last
//!   client is back; the peak rate of upgrades reaching B (counted at B's accept, per 100 ms).
//!   Run twice: without pacing, and with `max_upgrades_per_second = 200`, `upgrade_burst = 50`
//!   (refused clients retry after Retry-After, capped at 1 s, at most 60 attempts).
//!
//! - storm: E2E_IDLE tunnels (each used once); then every client drops its tunnel at the same
//!   moment and reconnects at once (retrying straight away, at most 50 tries) until its first
//!   echo; the time until the last is back, the median, retries, and the proxy's CPU per
//!   client back; run direct first, then through each proxy.
//!
//! Run: `cargo bench --bench e2e_load`. Environment: E2E_PROXY_LOG (a directory to keep each
//! proxy's log in; dropped by default), E2E_CLIENTS (50), E2E_SECONDS (5),
//! E2E_IDLE (5000), E2E_SCENARIOS (echo64,echo4k,handshake,idle,storm,shutdown,reload,drain,
//! wss_echo64,wss_handshake,wss_idle), E2E_PROXIES (switchboard,nginx,haproxy),
//! E2E_PROXY_THREADS (tokio workers of switchboard; default: cores), E2E_SPREAD (drain.spread
//! of the shutdown and drain runs, 5s), E2E_BASELINE_BIN (another switchboard binary, run side
//! by side as "switchboard-before").
//! nginx and HAProxy are measured too when installed (`apt-get install nginx-light haproxy`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[path = "support/mod.rs"]
mod support;
use support::{
    KEY, NginxShape, Upgrades, echo_backend, echo_backend_counted, env_or, find, frame, free_port,
    median, nginx_argv, percentile, proc_stat, read_head, wait_listening,
};

/// How clients reach a target: plain TCP (ws://) or TLS (wss://).
#[derive(Clone)]
enum Transport {
    Plain,
    Tls(Arc<rustls::ClientConfig>),
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Connects (with TLS when asked) and completes a WebSocket handshake.
async fn open(addr: SocketAddr, transport: &Transport) -> Option<Box<dyn Io>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let mut stream: Box<dyn Io> = match transport {
        Transport::Plain => Box::new(tcp),
        Transport::Tls(config) => {
            let name = rustls::pki_types::ServerName::try_from("bench.test").ok()?;
            Box::new(
                tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .ok()?,
            )
        }
    };
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    read_head(&mut stream)
        .await
        .filter(|head| head.starts_with(b"HTTP/1.1 101"))?;
    Some(stream)
}

struct EchoResult {
    messages: usize,
    elapsed: Duration,
    p50_us: u64,
    p99_us: u64,
}

/// `clients` connections, each sending one message and waiting for its echo, for `window`.
async fn echo_load(
    addr: SocketAddr,
    transport: &Transport,
    clients: usize,
    payload: usize,
    window: Duration,
) -> EchoResult {
    let message = std::sync::Arc::new(frame(payload));
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let message = message.clone();
        let transport = transport.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let Some(mut stream) = open(addr, &transport).await else {
                return samples;
            };
            // The echo comes back as a server frame: the same, without the 4-byte mask.
            let mut back = vec![0u8; message.len() - 4];
            while Instant::now() < deadline {
                let t0 = Instant::now();
                if stream.write_all(&message).await.is_err()
                    || stream.read_exact(&mut back).await.is_err()
                {
                    break;
                }
                samples.push(t0.elapsed().as_micros() as u32);
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    EchoResult {
        messages: all.len(),
        elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// Handshakes per second: `clients` workers opening and closing WebSockets for `window`.
async fn handshake_load(
    addr: SocketAddr,
    transport: &Transport,
    clients: usize,
    window: Duration,
) -> f64 {
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let transport = transport.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                match open(addr, &transport).await {
                    Some(_) => n += 1,
                    None => break,
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// A proxy process under test: switchboard, or nginx/HAProxy when installed, each in front of
/// the same echo backend.
struct Proxy {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

/// Where a proxy's stdout goes: `E2E_PROXY_LOG` (a directory) keeps it as `NAME-PORT.log` there,
/// to see why a scenario's clients failed; by default it is dropped.
fn proxy_log(dir: &std::path::Path) -> Stdio {
    let Some(keep) = std::env::var_os("E2E_PROXY_LOG") else {
        return Stdio::null();
    };
    let name = dir.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let path = std::path::Path::new(&keep).join(name).with_extension("log");
    std::fs::File::create(path).map_or_else(|_| Stdio::null(), Stdio::from)
}

/// switchboard's config: `listen`, `extra`, limits, TLS, one route to upstream `echo` (least-conn
/// over `backends`, then `upstream_extra`).
fn switchboard_toml(
    addr: SocketAddr,
    backends: &[SocketAddr],
    tls: Option<&TlsFiles>,
    extra: &str,
    upstream_extra: &str,
) -> String {
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "listen = \"{addr}\"\n{extra}\n[limits]\nmax_connections = 19000\n{}[[route]]\nupstream = \"echo\"\n[upstream.echo]\nbalance = \"least-conn\"\nservers = [{}]\n{upstream_extra}",
        tls.map_or(String::new(), |t| format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            t.cert.display(),
            t.key.display()
        )),
        servers.join(", ")
    )
}

impl Proxy {
    /// Starts `name` in front of `backend`; with `tls`, its listener terminates TLS.
    async fn start(
        name: &'static str,
        backend: SocketAddr,
        tls: Option<&TlsFiles>,
    ) -> Option<Proxy> {
        Self::start_with(name, backend, tls, "").await
    }

    /// Like [`Proxy::start`]; `extra` is TOML added to switchboard's config.
    async fn start_with(
        name: &'static str,
        backend: SocketAddr,
        tls: Option<&TlsFiles>,
        extra: &str,
    ) -> Option<Proxy> {
        Self::start_full(name, &[backend], tls, extra, "").await
    }

    /// Like [`Proxy::start_with`], with every backend in `backends` (nginx and HAProxy use the
    /// first) and `upstream_extra`, TOML added to switchboard's `[upstream.echo]`.
    async fn start_full(
        name: &'static str,
        backends: &[SocketAddr],
        tls: Option<&TlsFiles>,
        extra: &str,
        upstream_extra: &str,
    ) -> Option<Proxy> {
        let backend = *backends.first()?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
        let dir = std::env::temp_dir().join(format!(
            "switchboard-e2e-{}-{name}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("logs")).ok()?;
        let mut command = match name {
            "switchboard" | "switchboard-before" => {
                let config = dir.join("bench.toml");
                std::fs::write(
                    &config,
                    switchboard_toml(addr, backends, tls, extra, upstream_extra),
                )
                .ok()?;
                let binary = match name {
                    "switchboard-before" => std::env::var("E2E_BASELINE_BIN").ok()?.into(),
                    _ => std::path::PathBuf::from(env!("CARGO_BIN_EXE_switchboard")),
                };
                let mut c = Command::new(binary);
                c.arg("--config").arg(&config).env("RUST_LOG", "warn");
                if let Ok(n) = std::env::var("E2E_PROXY_THREADS") {
                    c.env("TOKIO_WORKER_THREADS", n);
                }
                c
            }
            "nginx" => {
                let argv = nginx_argv(
                    &dir,
                    addr,
                    backend,
                    NginxShape::Workers(2),
                    tls.map(|t| (t.cert.as_path(), t.key.as_path())),
                )?;
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            "haproxy" => {
                let config = dir.join("haproxy.cfg");
                std::fs::write(
                    &config,
                    format!(
                        "global\n  maxconn 9000\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\
                         frontend fe\n  bind {addr}{ssl}\n  default_backend be\nbackend be\n  server s1 {backend}\n",
                        ssl = tls.map_or(String::new(), |t| format!(" ssl crt {}", t.combined.display()))
                    ),
                )
                .ok()?;
                let mut c = Command::new(find("haproxy")?);
                c.arg("-db").arg("-f").arg(&config);
                c
            }
            _ => return None,
        };
        let child = command
            .stdout(proxy_log(&dir))
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let ready = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            if ready.elapsed() > Duration::from_secs(10) {
                println!("{name} did not start; skipped");
                return None;
            }
            tokio::task::yield_now().await;
        }
        Some(Proxy {
            name,
            child,
            addr,
            dir,
        })
    }

    /// Rewrites switchboard's config file (whole, then renamed over the old one), for a reload.
    fn rewrite_config(
        &self,
        backends: &[SocketAddr],
        extra: &str,
        upstream_extra: &str,
    ) -> std::io::Result<()> {
        let next = self.dir.join("bench.toml.next");
        std::fs::write(
            &next,
            switchboard_toml(self.addr, backends, None, extra, upstream_extra),
        )?;
        std::fs::rename(next, self.dir.join("bench.toml"))
    }

    /// CPU seconds of the process's live threads, from `/proc/PID/task/*/schedstat`
    /// (nanoseconds on a CPU: finer than the 10 ms ticks of [`Proxy::stat`], but the time of a
    /// thread that has exited is not counted).
    fn cpu_fine(&self) -> f64 {
        support::schedstat_seconds(self.child.id())
    }

    /// The process and its direct children (nginx's workers), by PID.
    fn pids(&self) -> Vec<u32> {
        let root = self.child.id();
        let mut pids = vec![root];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
                if ppid == Some(root) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// CPU seconds and RSS (KiB) of the process and its children.
    fn stat(&self) -> (f64, u64) {
        self.pids()
            .into_iter()
            .map(proc_stat)
            .fold((0.0, 0), |(cpu, rss), (c, r)| (cpu + c, rss + r))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // nginx's workers would outlive a killed master: end them too, by PID.
        let workers: Vec<String> = self.pids().iter().skip(1).map(|p| p.to_string()).collect();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !workers.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&workers).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn idle_memory(
    name: &'static str,
    backend: SocketAddr,
    idle: usize,
    tls: Option<&TlsFiles>,
    transport: &Transport,
) -> Option<f64> {
    let proxy = Proxy::start(name, backend, tls).await?;
    let mut held = Vec::with_capacity(idle + 100);
    let ping = frame(64);
    let mut back = vec![0u8; ping.len() - 4];
    let mut base = 0;
    for i in 0..idle + 100 {
        let mut stream = open(proxy.addr, transport).await?;
        stream.write_all(&ping).await.ok()?;
        stream.read_exact(&mut back).await.ok()?;
        held.push(stream);
        if i == 99 {
            base = proxy.stat().1;
        }
    }
    let (_, rss) = proxy.stat();
    Some(rss.saturating_sub(base) as f64 / idle as f64)
}

/// What a reconnect storm cost: every client dropped at once and came straight back.
struct StormResult {
    /// The drop to the last client's first echo on its new tunnel.
    all_back: Duration,
    /// The median client's time back.
    median_back: Duration,
    /// Clients that were not back after [`STORM_ATTEMPTS`] tries.
    failed: usize,
    /// Connection attempts that failed before one succeeded (refused, reset, timed out).
    retries: usize,
    /// The proxy's CPU time over the storm per client back (0 for a direct run).
    cpu_us_per_client: f64,
}

/// Tries a storm client makes before it gives up.
const STORM_ATTEMPTS: usize = 50;

/// `n` tunnels (each used once), then every client drops its tunnel at the same moment and
/// reconnects at once, retrying a failed attempt straight away (at most [`STORM_ATTEMPTS`],
/// each bounded by 10 s), until its first echo comes back: what a chat service sees after a
/// deploy or a network blip. `proxy` is measured for CPU; `None` runs straight to `addr`.
async fn reconnect_storm(
    addr: SocketAddr,
    proxy: Option<&Proxy>,
    n: usize,
    transport: &Transport,
) -> Option<StormResult> {
    let ping = Arc::new(frame(64));
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = open(addr, transport).await?;
        let mut back = vec![0u8; ping.len() - 4];
        stream.write_all(&ping).await.ok()?;
        stream.read_exact(&mut back).await.ok()?;
        streams.push(stream);
    }
    let go = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut clients = Vec::with_capacity(n);
    for stream in streams {
        let (go, ping, transport) = (go.clone(), ping.clone(), transport.clone());
        clients.push(tokio::spawn(async move {
            go.wait().await;
            let dropped = Instant::now();
            drop(stream);
            let mut back = vec![0u8; ping.len() - 4];
            for attempt in 0..STORM_ATTEMPTS {
                let echoed = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut stream = open(addr, &transport).await?;
                    stream.write_all(&ping).await.ok()?;
                    stream.read_exact(&mut back).await.ok()?;
                    Some(stream)
                })
                .await;
                if let Ok(Some(stream)) = echoed {
                    return Some((dropped.elapsed(), attempt, stream));
                }
            }
            None
        }));
    }
    let cpu0 = proxy.map_or(0.0, |p| p.stat().0);
    go.wait().await;
    let mut times = Vec::with_capacity(n);
    let (mut failed, mut retries) = (0, 0);
    let mut held = Vec::with_capacity(n);
    for client in clients {
        match client.await.ok().flatten() {
            Some((at, attempts, stream)) => {
                times.push(at);
                retries += attempts;
                held.push(stream);
            }
            None => failed += 1,
        }
    }
    let cpu1 = proxy.map_or(0.0, |p| p.stat().0);
    times.sort_unstable();
    Some(StormResult {
        all_back: times.last().copied().unwrap_or_default(),
        median_back: times.get(times.len() / 2).copied().unwrap_or_default(),
        failed,
        retries,
        cpu_us_per_client: (cpu1 - cpu0) * 1e6 / times.len().max(1) as f64,
    })
}

/// What clients saw when switchboard got SIGTERM in front of their idle tunnels.
struct ShutdownResult {
    /// SIGTERM to the last Close (or EOF) seen by a client.
    all_closed: Duration,
    /// Most Closes that reached clients in any 100 ms, per second.
    peak_per_s: f64,
    /// Clients that got a Close frame (the rest saw the connection drop).
    with_close: usize,
    /// How long the process took to exit.
    exited: Duration,
}

/// `n` idle tunnels, then SIGTERM: each client waits for a Close frame (answering it, as a
/// browser does) or the end of the stream, and the times are collected.
async fn shutdown_closes(
    name: &'static str,
    backend: SocketAddr,
    n: usize,
    extra: &str,
) -> Option<ShutdownResult> {
    let mut proxy = Proxy::start_with(name, backend, None, extra).await?;
    let ping = frame(64);
    let mut back = vec![0u8; ping.len() - 4];
    let (started_tx, started) = tokio::sync::watch::channel(None::<Instant>);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = open(proxy.addr, &Transport::Plain).await?;
        stream.write_all(&ping).await.ok()?;
        stream.read_exact(&mut back).await.ok()?;
        let mut started = started.clone();
        clients.push(tokio::spawn(async move {
            let mut first = [0u8; 1];
            let got_close = matches!(stream.read(&mut first).await, Ok(1) if first[0] == 0x88);
            if got_close {
                // Close 1000, masked, as the closing handshake's answer.
                let _ = stream
                    .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                    .await;
            }
            let at = Instant::now();
            let mut rest = [0u8; 256];
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            let sigterm = (*started.wait_for(Option::is_some).await.ok()?)?;
            Some((at.saturating_duration_since(sigterm), got_close))
        }));
    }
    let sigterm = Instant::now();
    let _ = started_tx.send(Some(sigterm));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(proxy.child.id().to_string())
        .status();
    let mut times = Vec::with_capacity(n);
    let mut with_close = 0;
    for client in clients {
        if let Ok(Some((at, close))) = client.await {
            times.push(at);
            with_close += usize::from(close);
        }
    }
    let exit_deadline = Instant::now() + Duration::from_secs(60);
    while proxy.child.try_wait().ok()?.is_none() && Instant::now() < exit_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exited = sigterm.elapsed();
    let mut buckets = std::collections::HashMap::new();
    for t in &times {
        *buckets.entry(t.as_millis() / 100).or_insert(0usize) += 1;
    }
    Some(ShutdownResult {
        all_closed: times.iter().copied().max().unwrap_or_default(),
        peak_per_s: buckets.values().copied().max().unwrap_or(0) as f64 * 10.0,
        with_close,
        exited,
    })
}

/// One HTTP/1.1 request without a body to switchboard's admin listener: `(status, body)`.
async fn admin_call(admin: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()?
}

/// Live tunnels of `backend` in upstream `echo`, from `GET /admin/upstreams`.
async fn backend_tunnels(admin: SocketAddr, backend: SocketAddr) -> Option<u64> {
    let (200, body) = admin_call(admin, "GET", "/admin/upstreams").await? else {
        return None;
    };
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let name = backend.to_string();
    json["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == "echo")?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["addr"] == name.as_str())?["tunnels"]
        .as_u64()
}

/// Reloads per reload run, one a second.
const RELOADS: usize = 10;

/// What echo clients saw while switchboard reloaded its config once a second, and what the
/// reloads cost it.
struct ReloadResult {
    /// Reloads answered 200.
    ok: usize,
    /// `POST /admin/reload` round trips, median and largest, ms.
    post_ms: (f64, f64),
    /// Median steady second, messages.
    steady_per_s: f64,
    /// Messages in the second after each reload over the median steady second: least, median.
    dip: (f64, f64),
    /// The same for the first 100 ms after each reload against the median steady 100 ms.
    dip_100ms: f64,
    /// The noise floor: the least steady second and the least steady 100 ms, over their medians.
    steady_least: (f64, f64),
    /// p99 and largest round trip, µs: in the reload window, in the steady seconds.
    reload_us: (u32, u32),
    steady_us: (u32, u32),
    /// Clients that got an error or EOF before the end, and clients that did not connect.
    lost: usize,
    not_opened: usize,
    /// CPU seconds of switchboard: the 10 s with reloads, the 10 steady seconds.
    cpu_reload_s: f64,
    cpu_steady_s: f64,
    /// CPU ms per reload with no load: from utime + stime, from schedstat.
    idle_ms: (f64, f64),
}

/// `clients` 64 B echo clients through switchboard for 21 s: 1 s warm-up, 5 s steady, 10 s
/// with a reload every second, 5 s steady; then 10 reloads back to back with no load.
async fn reload_under_load(backend: SocketAddr, clients: usize) -> Option<ReloadResult> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().ok()?;
    // Equivalent contents: only a timeout no request of the bench waits for differs.
    let configs = ["60s", "61s"].map(|request| {
        format!("[admin]\nlisten = \"{admin}\"\n[timeouts]\nrequest = \"{request}\"")
    });
    let proxy = Proxy::start_full("switchboard", &[backend], None, &configs[0], "").await?;
    wait_listening(admin).await?;
    let warm = Duration::from_secs(1);
    let half = Duration::from_secs(5);
    let window = Duration::from_secs(RELOADS as u64);
    let total = warm + half + window + half;
    let message = Arc::new(frame(64));
    let start = Instant::now();
    let end = start + total;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (message, addr) = (message.clone(), proxy.addr);
        tasks.push(tokio::spawn(async move {
            // (completed at, µs since start; round trip, µs)
            let mut samples: Vec<(u32, u32)> = Vec::new();
            let Some(mut stream) = open(addr, &Transport::Plain).await else {
                return (samples, None);
            };
            let mut back = vec![0u8; message.len() - 4];
            while Instant::now() < end {
                let t0 = Instant::now();
                if stream.write_all(&message).await.is_err()
                    || stream.read_exact(&mut back).await.is_err()
                {
                    return (samples, Some(true));
                }
                let done = Instant::now();
                samples.push((
                    (done - start).as_micros() as u32,
                    (done - t0).as_micros() as u32,
                ));
            }
            (samples, Some(false))
        }));
    }
    let at = |offset: Duration| tokio::time::sleep_until((start + offset).into());
    at(warm).await;
    let cpu0 = proxy.stat().0;
    at(warm + half).await;
    let cpu1 = proxy.stat().0;
    let mut reloaded_at = Vec::with_capacity(RELOADS);
    let mut post_ms = Vec::with_capacity(RELOADS);
    let mut ok = 0;
    for i in 0..RELOADS {
        at(warm + half + Duration::from_secs(i as u64)).await;
        proxy
            .rewrite_config(&[backend], &configs[(i + 1) % 2], "")
            .ok()?;
        let sent = Instant::now();
        let reply = admin_call(admin, "POST", "/admin/reload").await;
        post_ms.push(sent.elapsed().as_secs_f64() * 1e3);
        reloaded_at.push(sent - start);
        ok += usize::from(matches!(reply, Some((200, _))));
    }
    at(warm + half + window).await;
    let cpu2 = proxy.stat().0;
    at(total).await;
    let cpu3 = proxy.stat().0;

    let (mut done, mut steady_lat, mut reload_lat) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut not_opened) = (0, 0);
    let window_us = ((warm + half).as_micros() as u32)..((warm + half + window).as_micros() as u32);
    for task in tasks {
        let (samples, outcome) = task.await.unwrap_or_default();
        match outcome {
            None => not_opened += 1,
            Some(cut) => lost += usize::from(cut),
        }
        for (at_us, rtt_us) in samples {
            if at_us < warm.as_micros() as u32 {
                continue;
            }
            done.push(at_us);
            if window_us.contains(&at_us) {
                reload_lat.push(rtt_us);
            } else {
                steady_lat.push(rtt_us);
            }
        }
    }
    done.sort_unstable();
    steady_lat.sort_unstable();
    reload_lat.sort_unstable();
    let count = |from: Duration, len: Duration| {
        let (a, b) = (from.as_micros() as u32, (from + len).as_micros() as u32);
        (done.partition_point(|&t| t < b) - done.partition_point(|&t| t < a)) as f64
    };
    let steady_starts = |step: Duration| {
        let per_half = (half.as_micros() / step.as_micros()) as u32;
        (0..per_half)
            .map(move |k| warm + step * k)
            .chain((0..per_half).map(move |k| warm + half + window + step * k))
    };
    let second = Duration::from_secs(1);
    let tenth = Duration::from_millis(100);
    let mut steady_seconds: Vec<f64> = steady_starts(second).map(|s| count(s, second)).collect();
    let mut steady_tenths: Vec<f64> = steady_starts(tenth).map(|s| count(s, tenth)).collect();
    let steady_s = median(&mut steady_seconds);
    let steady_100 = median(&mut steady_tenths);
    // `median` sorted them: the first is the least.
    let steady_least = (
        steady_seconds.first().copied().unwrap_or(0.0) / steady_s.max(1.0),
        steady_tenths.first().copied().unwrap_or(0.0) / steady_100.max(1.0),
    );
    let mut dips: Vec<f64> = reloaded_at
        .iter()
        .map(|&r| count(r, second) / steady_s.max(1.0))
        .collect();
    let dip_100ms = reloaded_at
        .iter()
        .map(|&r| count(r, tenth) / steady_100.max(1.0))
        .fold(f64::INFINITY, f64::min);
    let least = dips.iter().copied().fold(f64::INFINITY, f64::min);
    let mut post_sorted = post_ms.clone();
    let post = (
        median(&mut post_sorted),
        post_ms.iter().copied().fold(0.0, f64::max),
    );

    // No load: 10 reloads back to back, once the clients are gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ticks0, fine0) = (proxy.stat().0, proxy.cpu_fine());
    for i in 0..RELOADS {
        proxy.rewrite_config(&[backend], &configs[i % 2], "").ok()?;
        if !matches!(
            admin_call(admin, "POST", "/admin/reload").await,
            Some((200, _))
        ) {
            println!("reload switchboard : a reload with no load failed");
        }
    }
    let (ticks1, fine1) = (proxy.stat().0, proxy.cpu_fine());
    Some(ReloadResult {
        ok,
        post_ms: post,
        steady_per_s: steady_s,
        dip: (least, median(&mut dips)),
        dip_100ms,
        steady_least,
        reload_us: (
            percentile(&reload_lat, 0.99),
            reload_lat.last().copied().unwrap_or(0),
        ),
        steady_us: (
            percentile(&steady_lat, 0.99),
            steady_lat.last().copied().unwrap_or(0),
        ),
        lost,
        not_opened,
        cpu_reload_s: cpu2 - cpu1,
        cpu_steady_s: (cpu1 - cpu0) + (cpu3 - cpu2),
        idle_ms: (
            (ticks1 - ticks0) * 1e3 / RELOADS as f64,
            (fine1 - fine0) * 1e3 / RELOADS as f64,
        ),
    })
}

/// What an upgrade request got.
enum Upgrade {
    Open(TcpStream),
    /// 503, with its Retry-After in seconds.
    Refused(Option<u64>),
    Failed,
}

/// Connects and asks for a WebSocket upgrade (plain TCP), reading the status and Retry-After.
async fn upgrade(addr: SocketAddr) -> Upgrade {
    let attempt = async {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            return Upgrade::Failed;
        };
        let _ = tcp.set_nodelay(true);
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        if tcp.write_all(request.as_bytes()).await.is_err() {
            return Upgrade::Failed;
        }
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tcp.read(&mut byte).await {
                Ok(1) if head.len() <= 8192 => head.push(byte[0]),
                _ => return Upgrade::Failed,
            }
        }
        let head = String::from_utf8_lossy(&head);
        if head.starts_with("HTTP/1.1 101") {
            Upgrade::Open(tcp)
        } else if head.starts_with("HTTP/1.1 503") {
            Upgrade::Refused(head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("retry-after")
                    .then(|| value.trim().parse().ok())?
            }))
        } else {
            Upgrade::Failed
        }
    };
    tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .unwrap_or(Upgrade::Failed)
}

/// Most upgrade attempts one client makes to get a tunnel.
const MAX_ATTEMPTS: usize = 60;

/// A tunnel to `addr`, trying again after a 503 (its Retry-After, capped at 1 s) or a failure
/// (100 ms), up to [`MAX_ATTEMPTS`] times or until `cancel`: the stream, 503s seen, attempts.
async fn upgrade_retrying(
    addr: SocketAddr,
    cancel: &CancellationToken,
) -> (Option<TcpStream>, usize, usize) {
    let mut refused = 0;
    for attempt in 1..=MAX_ATTEMPTS {
        let pause = match upgrade(addr).await {
            Upgrade::Open(stream) => return (Some(stream), refused, attempt),
            Upgrade::Refused(after) => {
                refused += 1;
                Duration::from_secs(after.unwrap_or(1)).min(Duration::from_secs(1))
            }
            Upgrade::Failed => Duration::from_millis(100),
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => return (None, refused, attempt),
        }
    }
    (None, refused, MAX_ATTEMPTS)
}

/// A masked Close 1000: the client's answer in the closing handshake.
const CLOSE_1000: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];

/// One client whose tunnel was closed under it.
struct Moved {
    got_close: bool,
    /// When its new tunnel carried its first echo.
    back_at: Option<Instant>,
    refused: usize,
    attempts: usize,
}

/// A drain of backend A under idle tunnels, as the clients and the backends saw it.
struct DrainResult {
    /// Tunnels on A and on B before the drain (admin API), and how long opening them all took.
    on_a: u64,
    on_b: u64,
    opened_in: Duration,
    /// The drain POST until A had no tunnels.
    empty_after: Option<Duration>,
    /// Clients whose tunnel ended; with a Close frame; back on a new tunnel; given up.
    closed: usize,
    with_close: usize,
    back: usize,
    gave_up: usize,
    /// The drain POST until the last client was back.
    last_back: Option<Duration>,
    /// Upgrades reaching B after the POST: in all, the most in any 100 ms (per second), and the
    /// most in any 1 s (ten 100 ms buckets in a row).
    at_b: usize,
    peak_b_per_s: f64,
    peak_b_1s: usize,
    /// Upgrades reaching A after the POST (a draining backend should get none).
    at_a: usize,
    /// 503s the reconnecting clients got, and the most attempts one client needed.
    refused: usize,
    max_attempts: usize,
}

/// `n` idle tunnels over echo backends A and B, then A drained: every client closed reconnects
/// at once (to B) and says one echo. `upstream_extra` is the upstream's pacing, if any.
async fn drain_reconnects(n: usize, spread: &str, upstream_extra: &str) -> Option<DrainResult> {
    let (a, upgrades_a) = echo_backend_counted().await;
    let (b, upgrades_b) = echo_backend_counted().await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().ok()?;
    let extra = format!(
        "[admin]\nlisten = \"{admin}\"\n[drain]\ntimeout = \"1s\"\nspread = \"{spread}\"\nclose_linger = \"5s\""
    );
    let proxy = Proxy::start_full("switchboard", &[a, b], None, &extra, upstream_extra).await?;
    wait_listening(admin).await?;
    let cancel = CancellationToken::new();
    let settled = Arc::new(AtomicUsize::new(0));
    let ping = Arc::new(frame(64));
    let mut back = vec![0u8; ping.len() - 4];
    let opening = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (Some(mut stream), _, _) = upgrade_retrying(proxy.addr, &cancel).await else {
            println!("drain: could not open idle tunnel {}", clients.len());
            return None;
        };
        stream.write_all(&ping).await.ok()?;
        stream.read_exact(&mut back).await.ok()?;
        let (cancel, settled, ping, addr) =
            (cancel.clone(), settled.clone(), ping.clone(), proxy.addr);
        clients.push(tokio::spawn(async move {
            let mut first = [0u8; 1];
            let read = tokio::select! {
                read = stream.read(&mut first) => read,
                _ = cancel.cancelled() => return None,
            };
            let got_close = matches!(read, Ok(1) if first[0] == 0x88);
            if got_close {
                let _ = stream.write_all(&CLOSE_1000).await;
            }
            // Reconnect once the old connection has ended (bounded), as a browser does.
            let mut rest = [0u8; 256];
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            })
            .await;
            drop(stream);
            let (fresh, refused, attempts) = upgrade_retrying(addr, &cancel).await;
            let mut held = None;
            let mut back_at = None;
            if let Some(mut fresh) = fresh {
                let mut echo = vec![0u8; ping.len() - 4];
                if fresh.write_all(&ping).await.is_ok() && fresh.read_exact(&mut echo).await.is_ok()
                {
                    back_at = Some(Instant::now());
                    held = Some(fresh);
                }
            }
            settled.fetch_add(1, Ordering::Relaxed);
            cancel.cancelled().await;
            drop(held);
            Some(Moved {
                got_close,
                back_at,
                refused,
                attempts,
            })
        }));
    }
    let opened_in = opening.elapsed();
    let (on_a, on_b) = (
        backend_tunnels(admin, a).await?,
        backend_tunnels(admin, b).await?,
    );

    let posted = Instant::now();
    let drain = format!("/admin/upstreams/echo/backends/{a}/drain");
    if !matches!(admin_call(admin, "POST", &drain).await, Some((200, _))) {
        println!("drain: POST {drain} failed");
        return None;
    }
    // A's tunnel count every 100 ms, for at most 120 s.
    let mut empty_after = None;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    while posted.elapsed() < Duration::from_secs(120) {
        poll.tick().await;
        if backend_tunnels(admin, a).await == Some(0) {
            empty_after = Some(posted.elapsed());
            break;
        }
    }
    // Every client of A back (or given up), for at most 120 s more.
    let settle_deadline = Instant::now() + Duration::from_secs(120);
    while settled.load(Ordering::Relaxed) < on_a as usize && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    let mut moved = Vec::new();
    for client in clients {
        if let Ok(Some(m)) = client.await {
            moved.push(m);
        }
    }
    let after_post = |upgrades: &Upgrades| -> Vec<Duration> {
        upgrades
            .lock()
            .expect("upgrades")
            .iter()
            .filter(|&&t| t >= posted)
            .map(|&t| t - posted)
            .collect()
    };
    let at_b = after_post(&upgrades_b);
    let mut buckets = std::collections::HashMap::new();
    for t in &at_b {
        *buckets.entry(t.as_millis() / 100).or_insert(0usize) += 1;
    }
    Some(DrainResult {
        on_a,
        on_b,
        opened_in,
        empty_after,
        closed: moved.len(),
        with_close: moved.iter().filter(|m| m.got_close).count(),
        back: moved.iter().filter(|m| m.back_at.is_some()).count(),
        gave_up: moved.iter().filter(|m| m.back_at.is_none()).count(),
        last_back: moved
            .iter()
            .filter_map(|m| m.back_at)
            .max()
            .map(|t| t - posted),
        at_b: at_b.len(),
        peak_b_per_s: buckets.values().copied().max().unwrap_or(0) as f64 * 10.0,
        peak_b_1s: buckets
            .keys()
            .map(|&k| (k..k + 10).filter_map(|j| buckets.get(&j)).sum::<usize>())
            .max()
            .unwrap_or(0),
        at_a: after_post(&upgrades_a).len(),
        refused: moved.iter().map(|m| m.refused).sum(),
        max_attempts: moved.iter().map(|m| m.attempts).max().unwrap_or(0),
    })
}

/// A certificate for "bench.test" from a CA made for the run, in the three forms the proxies
/// read, and a client that trusts the CA and never resumes (every handshake is a full one).
struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    combined: std::path::PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl TlsFiles {
    fn generate() -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["bench.test".to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("leaf");
        let dir =
            std::env::temp_dir().join(format!("switchboard-e2e-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let files = TlsFiles {
            cert: dir.join("bench.pem"),
            key: dir.join("bench.key"),
            combined: dir.join("bench-combined.pem"),
            client: {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der().clone()).expect("CA");
                let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
                config.resumption = rustls::client::Resumption::disabled();
                Arc::new(config)
            },
        };
        std::fs::write(&files.cert, leaf.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        std::fs::write(
            &files.combined,
            format!("{}{}", leaf.pem(), key.serialize_pem()),
        )
        .expect("write");
        files
    }
}

fn main() {
    support::raise_fd_limit();
    let clients = env_or("E2E_CLIENTS", 50);
    let window = Duration::from_secs(env_or("E2E_SECONDS", 5) as u64);
    let idle = env_or("E2E_IDLE", 5000);
    // The echo and handshake scenarios' backend: its thread's CPU is the floor they print.
    let (threaded_backend, echo_thread) = support::echo_backend_on_own_thread();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        println!(
            "e2e_load: {clients} clients, {}s windows, {idle} idle tunnels. Clients and the echo backend run in this process; \
             each proxy in its own. ws:// ratios are to a direct run (no proxy) done just before; wss:// ratios to nginx. \
             The echo and handshake scenarios' backend runs on a thread of its own: its CPU (utime + stime of that thread) per message is printed beside the proxy's.",
            window.as_secs()
        );
        let backend = echo_backend().await;
        let only = std::env::var("E2E_PROXIES").unwrap_or_else(|_| "switchboard,nginx,haproxy".into());
        let only = if std::env::var_os("E2E_BASELINE_BIN").is_some() {
            format!("{only},switchboard-before")
        } else {
            only
        };
        let names: Vec<&'static str> = ["switchboard", "switchboard-before", "nginx", "haproxy"]
            .into_iter()
            .filter(|n| only.split(',').any(|o| o == *n))
            .collect();
        let scenarios = std::env::var("E2E_SCENARIOS").unwrap_or_else(|_| {
            "echo64,echo4k,handshake,idle,storm,shutdown,reload,drain,wss_echo64,wss_handshake,wss_idle"
                .into()
        });
        let wanted = |s: &str| scenarios.split(',').any(|x| x == s);
        let plain = Transport::Plain;
        let rate = |r: &EchoResult| r.messages as f64 / r.elapsed.as_secs_f64();

        if ["echo64", "echo4k", "handshake"].iter().any(|s| wanted(s)) {
            let mut proxies = Vec::new();
            for &name in &names {
                match Proxy::start(name, threaded_backend, None).await {
                    Some(p) => proxies.push(p),
                    None => println!("{name}: not installed or did not start; skipped"),
                }
            }
            for payload in [64usize, 4096] {
                if !wanted(if payload == 64 { "echo64" } else { "echo4k" }) {
                    continue;
                }
                for proxy in &proxies {
                    let direct = echo_load(threaded_backend, &plain, clients, payload, window).await;
                    let ((cpu0, _), backend0) = (proxy.stat(), support::thread_cpu_seconds(echo_thread));
                    let via = echo_load(proxy.addr, &plain, clients, payload, window).await;
                    let ((cpu1, _), backend1) = (proxy.stat(), support::thread_cpu_seconds(echo_thread));
                    let per_message = |seconds: f64| seconds * 1e6 / via.messages.max(1) as f64;
                    let (cpu_us, backend_us) = (per_message(cpu1 - cpu0), per_message(backend1 - backend0));
                    println!(
                        "echo {payload:>4} B {:<11}: {:>7.0} msg/s ({:.2}x direct {:>7.0}), p50 {:>4} us (direct {:>4}), p99 {:>5} us (direct {:>4}), proxy CPU {:>5.1} us/msg, backend CPU {:>5.1} us/msg (proxy/backend {:.2}x)",
                        proxy.name, rate(&via), rate(&via) / rate(&direct), rate(&direct), via.p50_us, direct.p50_us, via.p99_us, direct.p99_us, cpu_us, backend_us, cpu_us / backend_us
                    );
                }
            }
            for proxy in proxies.iter().filter(|_| wanted("handshake")) {
                let direct = handshake_load(threaded_backend, &plain, clients.min(20), window).await;
                let (cpu0, _) = proxy.stat();
                let started = Instant::now();
                let via = handshake_load(proxy.addr, &plain, clients.min(20), window).await;
                let (cpu1, _) = proxy.stat();
                let cpu_us = (cpu1 - cpu0) * 1e6 / (via * started.elapsed().as_secs_f64()).max(1.0);
                println!(
                    "handshakes {:<11}: {via:>7.0}/s ({:.2}x direct {direct:>7.0}), proxy CPU {cpu_us:>5.1} us/handshake",
                    proxy.name,
                    via / direct
                );
            }
        }
        for &name in names.iter().filter(|_| wanted("idle")) {
            match idle_memory(name, backend, idle, None, &plain).await {
                Some(kib) => println!("idle {name:<11}: {kib:.2} KiB RSS per idle tunnel ({idle} tunnels, each used once)"),
                None => println!("idle {name:<11}: skipped"),
            }
        }

        // A reconnect storm: every idle tunnel dropped at once, every client straight back.
        if wanted("storm") {
            let show = |who: &str, r: &StormResult| {
                println!(
                    "storm {who:<11}: {idle} clients dropped at once: all back after {:.2}s (median {:.3}s), {} retries, {} not back, proxy CPU {:.1} us per client back",
                    r.all_back.as_secs_f64(), r.median_back.as_secs_f64(), r.retries, r.failed, r.cpu_us_per_client
                )
            };
            match reconnect_storm(backend, None, idle, &plain).await {
                Some(r) => show("direct", &r),
                None => println!("storm direct: skipped (could not open the tunnels)"),
            }
            for &name in &names {
                let Some(proxy) = Proxy::start(name, backend, None).await else {
                    println!("storm {name:<11}: not installed or did not start; skipped");
                    continue;
                };
                match reconnect_storm(proxy.addr, Some(&proxy), idle, &plain).await {
                    Some(r) => show(name, &r),
                    None => println!("storm {name:<11}: skipped (could not open the tunnels)"),
                }
            }
        }

        // SIGTERM in front of idle tunnels: how fast and how evenly clients are told.
        let spread = std::env::var("E2E_SPREAD").unwrap_or_else(|_| "5s".into());
        for &name in names
            .iter()
            .filter(|n| n.starts_with("switchboard") && wanted("shutdown"))
        {
            // The earlier binary knows no [drain]: its tunnels are cut when the grace ends.
            let extra = match name {
                "switchboard" => format!("[drain]\nspread = \"{spread}\"\n[timeouts]\nshutdown_grace = \"30s\""),
                _ => format!("[timeouts]\nshutdown_grace = \"{spread}\""),
            };
            match shutdown_closes(name, backend, idle, &extra).await {
                Some(r) => println!(
                    "shutdown {name:<11}: {idle} idle tunnels, spread {spread}: {} got a Close frame, last after {:.2}s, peak {:.0} closes/s, process exited after {:.2}s",
                    r.with_close, r.all_closed.as_secs_f64(), r.peak_per_s, r.exited.as_secs_f64()
                ),
                None => println!("shutdown {name:<11}: skipped"),
            }
        }

        // Hot reload under echo load: the dip, the latency, lost tunnels, CPU per reload.
        if names.contains(&"switchboard") && wanted("reload") {
            match reload_under_load(backend, clients).await {
                Some(r) => {
                    println!(
                        "reload switchboard : {}/{RELOADS} reloads ok (POST /admin/reload answered in median {:.1} ms, max {:.1} ms) under {clients} clients x 64 B echo; \
                         run of 21 s: 1 s warm-up, 5 s steady, 10 s with a reload each second (config alternating), 5 s steady",
                        r.ok, r.post_ms.0, r.post_ms.1
                    );
                    println!(
                        "reload switchboard : throughput in the second after a reload {:.3}x (least) / {:.3}x (median) the median steady second ({:.0} msg/s); \
                         first 100 ms after a reload {:.3}x (least) the median steady 100 ms \
                         (noise floor: least steady second {:.3}x, least steady 100 ms {:.3}x); p99 {} us with reloads vs {} us steady (max {} vs {} us); \
                         tunnels lost {} of {clients} ({} did not open)",
                        r.dip.0, r.dip.1, r.steady_per_s, r.dip_100ms, r.steady_least.0, r.steady_least.1, r.reload_us.0, r.steady_us.0, r.reload_us.1, r.steady_us.1, r.lost, r.not_opened
                    );
                    println!(
                        "reload switchboard : CPU per reload {:.2} ms under load (utime+stime of the 10 s with reloads {:.2} s, minus the 10 steady seconds {:.2} s, / {RELOADS}; \
                         within the load's noise), {:.2} ms with no load ({RELOADS} back-to-back reloads: schedstat of live threads; utime+stime ticks say {:.1} ms)",
                        (r.cpu_reload_s - r.cpu_steady_s) * 1e3 / RELOADS as f64,
                        r.cpu_reload_s, r.cpu_steady_s, r.idle_ms.1, r.idle_ms.0
                    );
                }
                None => println!("reload switchboard : skipped"),
            }
        }

        // Backend drain under idle tunnels: reconnects move to the other backend, with and
        // without upgrade pacing.
        if names.contains(&"switchboard") && wanted("drain") {
            for (label, pacing) in [
                ("no pacing", ""),
                ("pacing 200/s burst 50", "max_upgrades_per_second = 200\nupgrade_burst = 50\n"),
            ] {
                let secs = |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
                match drain_reconnects(idle, &spread, pacing).await {
                    Some(r) => println!(
                        "drain switchboard {label}: {idle} idle tunnels (A {}, B {}; opened in {:.1}s), drain A (timeout 1s, spread {spread}): \
                         A empty after {} (GET /admin/upstreams every 100 ms); {} clients closed ({} with a Close frame), {} back on B, last {} after the POST, {} gave up; \
                         B saw {} upgrades, peak {:.0}/s per 100 ms and {} in any 1 s (counted at B's accept), A saw {}; 503s {}, most attempts by one client {}",
                        r.on_a, r.on_b, r.opened_in.as_secs_f64(), secs(r.empty_after), r.closed, r.with_close, r.back, secs(r.last_back), r.gave_up,
                        r.at_b, r.peak_b_per_s, r.peak_b_1s, r.at_a, r.refused, r.max_attempts
                    ),
                    None => println!("drain switchboard {label}: skipped"),
                }
            }
        }

        // wss:// (TLS terminated by the proxy; full handshakes, no resumption).
        let tls = TlsFiles::generate();
        let secure = Transport::Tls(tls.client.clone());
        if wanted("wss_echo64") || wanted("wss_handshake") {
            let mut proxies = Vec::new();
            for &name in &names {
                match Proxy::start(name, backend, Some(&tls)).await {
                    Some(p) => proxies.push(p),
                    None => println!("{name} (tls): not installed or did not start; skipped"),
                }
            }
            let mut echo_rates = Vec::new();
            for proxy in proxies.iter().filter(|_| wanted("wss_echo64")) {
                let (cpu0, _) = proxy.stat();
                let via = echo_load(proxy.addr, &secure, clients, 64, window).await;
                let (cpu1, _) = proxy.stat();
                let cpu_us = (cpu1 - cpu0) * 1e6 / via.messages.max(1) as f64;
                echo_rates.push((proxy.name, rate(&via)));
                println!(
                    "wss echo 64 B {:<11}: {:>7.0} msg/s, p50 {:>4} us, p99 {:>5} us, proxy CPU {:>5.1} us/msg",
                    proxy.name, rate(&via), via.p50_us, via.p99_us, cpu_us
                );
            }
            let mut handshake_rates = Vec::new();
            for proxy in proxies.iter().filter(|_| wanted("wss_handshake")) {
                let (cpu0, _) = proxy.stat();
                let started = Instant::now();
                let via = handshake_load(proxy.addr, &secure, clients.min(20), window).await;
                let (cpu1, _) = proxy.stat();
                let cpu_us = (cpu1 - cpu0) * 1e6 / (via * started.elapsed().as_secs_f64()).max(1.0);
                handshake_rates.push((proxy.name, via));
                println!(
                    "wss handshakes (TLS + upgrade) {:<11}: {via:>6.0}/s, proxy CPU {cpu_us:>6.1} us/handshake",
                    proxy.name
                );
            }
            let ratio = |rates: &[(&str, f64)]| {
                let of = |n: &str| rates.iter().find(|(name, _)| *name == n).map(|(_, r)| *r);
                match (of("switchboard"), of("nginx")) {
                    (Some(sb), Some(nginx)) => format!("{:.2}x", sb / nginx),
                    _ => "n/a".to_owned(),
                }
            };
            println!(
                "wss switchboard / nginx: echo {}, handshakes {}",
                ratio(&echo_rates),
                ratio(&handshake_rates)
            );
        }
        for &name in names.iter().filter(|_| wanted("wss_idle")) {
            match idle_memory(name, backend, idle, Some(&tls), &secure).await {
                Some(kib) => println!("wss idle {name:<11}: {kib:.2} KiB RSS per idle TLS tunnel ({idle} tunnels, each used once)"),
                None => println!("wss idle {name:<11}: skipped"),
            }
        }
        let _ = std::fs::remove_dir_all(tls.cert.parent().expect("cert dir"));
    });
}
