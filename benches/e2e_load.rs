//! End-to-end load: WebSocket clients through a real switchboard process to echo backends,
//! measured side by side with the same clients talking to the backends directly.
//!
//! Guards the whole data path: handshake, splice, and what an idle tunnel costs. Method:
//! - the backends and the clients run in this process; switchboard is the release binary in a
//!   process of its own, so its CPU time (utime + stime from /proc) and RSS are its alone;
//! - the echo backend answers the HTTP upgrade, then echoes raw bytes, and the clients send
//!   masked frames and read the same bytes back, so almost all per-message work measured is the
//!   proxy's (and the kernel's);
//! - each scenario runs for a fixed window, first direct, then through switchboard, and the
//!   ratio is printed: on a shared, noisy machine only ratios from the same run mean much;
//! - memory per idle tunnel: RSS after opening N idle tunnels (each used once) minus RSS after a
//!   warm-up of 100, divided by N.
//!
//! - the echo backend answers each masked client frame with the unmasked server frame a real
//!   WebSocket server would send, so switchboard's frame tracker sees valid framing both ways;
//! - shutdown: N idle tunnels, SIGTERM, and the time until every client got its Close frame,
//!   with the peak rate of Closes per 100 ms (what the backends would see as reconnects).
//!
//! Run: `cargo bench --bench e2e_load`. Environment: E2E_CLIENTS (50), E2E_SECONDS (5),
//! E2E_IDLE (5000), E2E_SCENARIOS (echo64,echo4k,handshake,idle,shutdown,wss_echo64,
//! wss_handshake,wss_idle), E2E_PROXIES (switchboard,nginx,haproxy), E2E_PROXY_THREADS (tokio
//! workers of switchboard; default: cores), E2E_SPREAD (drain.spread of the shutdown run, 5s),
//! E2E_BASELINE_BIN (another switchboard binary, run side by side as "switchboard-before").
//! nginx and HAProxy are measured too when installed (`apt-get install nginx-light haproxy`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Echo backend: answers the upgrade, then echoes bytes.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
                );
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                echo_frames(stream).await;
            });
        }
    });
    addr
}

/// Echoes each masked client frame back as the unmasked server frame a WebSocket server would
/// send (RFC 6455 §5.1), parsing only headers; every complete frame of a read is answered in one
/// write. Unmasking is skipped (the payload goes back as it came): nothing reads it.
async fn echo_frames(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        match stream.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        let mut at = 0;
        out.clear();
        while let Some((header, len)) = client_frame_at(&buf[at..have]) {
            let payload = &buf[at + header..at + header + len];
            out.push(buf[at]);
            if len < 126 {
                out.push(len as u8);
            } else {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            out.extend_from_slice(payload);
            at += header + len;
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// `(header length, payload length)` of a whole masked frame (7- or 16-bit length) at the
/// start of `data`, or `None` while it is incomplete.
fn client_frame_at(data: &[u8]) -> Option<(usize, usize)> {
    let (&b1, rest) = data.get(1..)?.split_first()?;
    let (len, header) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize,
            8,
        ),
        short => (short as usize, 6),
    };
    (data.len() >= header + len).then_some((header, len))
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<()> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 || head.len() > 8192 {
            return None;
        }
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 101")
        .then_some(())
        .or_else(|| head.starts_with(b"GET").then_some(()))
}

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
    read_head(&mut stream).await?;
    Some(stream)
}

/// A masked binary client frame (RFC 6455 §5.2) with `len` payload bytes.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x82];
    if len < 126 {
        f.push(0x80 | len as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let mask = [1u8, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend((0..len).map(|i| (i as u8) ^ mask[i % 4]));
    f
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

/// Finds an executable on PATH or in /usr/sbin.
fn find(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
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
                    format!(
                        "listen = \"{addr}\"\n{extra}\n[limits]\nmax_connections = 19000\n{}[[route]]\nupstream = \"echo\"\n[upstream.echo]\nbalance = \"least-conn\"\nservers = [\"{backend}\"]\n",
                        tls.map_or(String::new(), |t| format!(
                            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                            t.cert.display(),
                            t.key.display()
                        ))
                    ),
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
                let config = dir.join("nginx.conf");
                std::fs::write(
                    &config,
                    format!(
                        "daemon off;\nworker_processes 2;\nworker_rlimit_nofile 20000;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\
                         events {{ worker_connections 19000; }}\n\
                         http {{\n  access_log off;\n  upstream echo {{ server {backend}; keepalive 64; }}\n\
                           map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
                           server {{\n    listen {addr} reuseport{ssl};\n{certs}    location / {{\n      proxy_pass http://echo;\n      proxy_http_version 1.1;\n\
                                  proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n",
                        dir = dir.display(),
                        ssl = if tls.is_some() { " ssl" } else { "" },
                        certs = tls.map_or(String::new(), |t| format!(
                            "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n",
                            t.cert.display(),
                            t.key.display()
                        )),
                    ),
                )
                .ok()?;
                let mut c = Command::new(find("nginx")?);
                c.arg("-p").arg(&dir).arg("-c").arg(&config);
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
            .stdout(Stdio::null())
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
        let pids = self.pids();
        let mut cpu = 0.0;
        let mut rss = 0;
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the ")" that ends the command name: utime is field 12, stime field 13.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
                .sum();
            cpu += ticks as f64 / 100.0; // USER_HZ is 100 on Linux
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            rss += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        (cpu, rss)
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
    let _ = rlimit::Resource::NOFILE
        .get()
        .and_then(|(_, hard)| rlimit::Resource::NOFILE.set(hard, hard));
    let clients = env_or("E2E_CLIENTS", 50);
    let window = Duration::from_secs(env_or("E2E_SECONDS", 5) as u64);
    let idle = env_or("E2E_IDLE", 5000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        println!(
            "e2e_load: {clients} clients, {}s windows, {idle} idle tunnels. Clients and the echo backend run in this process; \
             each proxy in its own. ws:// ratios are to a direct run (no proxy) done just before; wss:// ratios to nginx.",
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
            "echo64,echo4k,handshake,idle,shutdown,wss_echo64,wss_handshake,wss_idle".into()
        });
        let wanted = |s: &str| scenarios.split(',').any(|x| x == s);
        let plain = Transport::Plain;
        let rate = |r: &EchoResult| r.messages as f64 / r.elapsed.as_secs_f64();

        if ["echo64", "echo4k", "handshake"].iter().any(|s| wanted(s)) {
            let mut proxies = Vec::new();
            for &name in &names {
                match Proxy::start(name, backend, None).await {
                    Some(p) => proxies.push(p),
                    None => println!("{name}: not installed or did not start; skipped"),
                }
            }
            for payload in [64usize, 4096] {
                if !wanted(if payload == 64 { "echo64" } else { "echo4k" }) {
                    continue;
                }
                for proxy in &proxies {
                    let direct = echo_load(backend, &plain, clients, payload, window).await;
                    let (cpu0, _) = proxy.stat();
                    let via = echo_load(proxy.addr, &plain, clients, payload, window).await;
                    let (cpu1, _) = proxy.stat();
                    let cpu_us = (cpu1 - cpu0) * 1e6 / via.messages.max(1) as f64;
                    println!(
                        "echo {payload:>4} B {:<11}: {:>7.0} msg/s ({:.2}x direct {:>7.0}), p50 {:>4} us (direct {:>4}), p99 {:>5} us (direct {:>4}), proxy CPU {:>5.1} us/msg",
                        proxy.name, rate(&via), rate(&via) / rate(&direct), rate(&direct), via.p50_us, direct.p50_us, via.p99_us, direct.p99_us, cpu_us
                    );
                }
            }
            for proxy in proxies.iter().filter(|_| wanted("handshake")) {
                let direct = handshake_load(backend, &plain, clients.min(20), window).await;
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
