//! Helpers shared by the end-to-end benches (`e2e_load`, `edge_memory`, `upgrade_cost`,
//! `handshake`), included by each with `#[path = "support/mod.rs"] mod support;`: WebSocket
//! framing as a client and as an echo server (RFC 6455 §5), one whole upgrade cycle as a client,
//! reading a message head, loopback ports, nginx as a WebSocket proxy, and a process's (or one
//! thread's) CPU time and RSS from /proc.

// Each bench uses part of these.
#![allow(dead_code)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The `Sec-WebSocket-Key` of RFC 6455's example handshake (§1.3), sent by every client.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The environment variable `name` as a number, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises this process's descriptor limit to the hard limit: clients and backends of a run
/// share it.
pub fn raise_fd_limit() {
    let _ = rlimit::Resource::NOFILE
        .get()
        .and_then(|(_, hard)| rlimit::Resource::NOFILE.set(hard, hard));
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Option<u16> {
    Some(
        std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

/// Waits (up to 10 s) until something accepts on `addr`.
pub async fn wait_listening(addr: SocketAddr) -> Option<()> {
    let ready = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        if ready.elapsed() > Duration::from_secs(10) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(())
}

/// Reads one HTTP/1.1 message head (through its blank line, at most 8 KiB) a byte at a time,
/// so nothing behind it (a pipelined frame) is consumed. `None` on EOF, error or a longer head.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 || head.len() > 8192 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// The `Sec-WebSocket-Accept` for [`KEY`] (RFC 6455 §1.3).
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The upgrade request every plain-ws client of the benches sends (RFC 6455 §4.1), byte for byte.
pub const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A masked Close frame with status 1000 (RFC 6455 §5.5.1). The mask key is zero, so the
/// echo backend, which sends payloads back as they came, answers with a valid Close 1000.
pub const CLOSE_1000: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];

/// One whole plain-ws upgrade cycle through `addr`, as a reconnecting client does it: connect,
/// the upgrade handshake ([`UPGRADE_REQUEST`], a `101` back), one 64 B message and its echo, a
/// Close frame and the Close back, then a half-close and the peer's EOF, so that the proxy has
/// torn the tunnel down (both sockets) before this returns.
pub async fn upgrade_cycle(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(UPGRADE_REQUEST).await?;
    // Nothing follows the 101 until this client sends a frame, so a plain read of the head
    // cannot take more than the head.
    let mut head = [0u8; 1024];
    let mut have = 0;
    while !head[..have].ends_with(b"\r\n\r\n") {
        match stream.read(&mut head[have..]).await? {
            0 => return Err(Error::new(ErrorKind::UnexpectedEof, "EOF before the 101")),
            n => have += n,
        }
        if have == head.len() {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "response head over 1 KiB",
            ));
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "no 101 Switching Protocols",
        ));
    }
    let message = frame(64);
    stream.write_all(&message).await?;
    // The echo is the server frame: the same bytes without the 4-byte mask.
    let mut back = [0u8; 66];
    stream.read_exact(&mut back).await?;
    stream.write_all(&CLOSE_1000).await?;
    let mut close = [0u8; 4];
    stream.read_exact(&mut close).await?;
    if close != [0x88, 0x02, 0x03, 0xe8] {
        return Err(Error::new(ErrorKind::InvalidData, "no Close 1000 back"));
    }
    stream.shutdown().await?;
    let mut rest = [0u8; 64];
    while stream.read(&mut rest).await? != 0 {}
    Ok(())
}

/// Echo backend: answers the upgrade, then echoes bytes.
pub async fn echo_backend() -> SocketAddr {
    echo_backend_noting(None).await
}

/// An [`echo_backend`] on a thread of its own (a current-thread runtime), and that thread's
/// ID: [`thread_cpu_seconds`] of the TID is then the backend's CPU time alone, the floor a
/// proxy's CPU per message is read against (each echo costs the backend one read and one
/// write; a proxy relays each message both ways).
pub fn echo_backend_on_own_thread() -> (SocketAddr, u32) {
    let (started, wait) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("echo-backend".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("backend runtime");
            runtime.block_on(async move {
                // `/proc/thread-self` links to `PID/task/TID` of the thread that reads it.
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|link| link.file_name()?.to_str()?.parse::<u32>().ok())
                    .expect("/proc/thread-self names this thread");
                let _ = started.send((echo_backend().await, tid));
                std::future::pending::<()>().await
            })
        })
        .expect("backend thread");
    wait.recv().expect("the backend thread started")
}

/// When each upgrade request reached a backend.
pub type Upgrades = Arc<std::sync::Mutex<Vec<Instant>>>;

/// An [`echo_backend`] that notes the arrival of every upgrade request.
pub async fn echo_backend_counted() -> (SocketAddr, Upgrades) {
    let upgrades = Upgrades::default();
    (echo_backend_noting(Some(upgrades.clone())).await, upgrades)
}

async fn echo_backend_noting(upgrades: Option<Upgrades>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let upgrades = upgrades.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                if !read_head(&mut stream)
                    .await
                    .is_some_and(|head| head.starts_with(b"GET"))
                {
                    return;
                }
                if let Some(upgrades) = upgrades {
                    upgrades.lock().expect("upgrades").push(Instant::now());
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

/// A masked binary client frame (RFC 6455 §5.2) with `len` payload bytes.
pub fn frame(len: usize) -> Vec<u8> {
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

/// Echoes each masked client frame back as the unmasked server frame a WebSocket server would
/// send (RFC 6455 §5.1), parsing only headers; every complete frame of a read is answered in one
/// write. Unmasking is skipped (the payload goes back as it came): nothing reads it.
pub async fn echo_frames(mut stream: TcpStream) {
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

/// Finds an executable on PATH or in /usr/sbin.
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// How nginx runs: a master with worker processes (how it is deployed), or one process alone
/// (`master_process off`), whose instructions and syscalls a tool wrapping it sees whole.
#[derive(Clone, Copy)]
pub enum NginxShape {
    /// `worker_processes N` under a master.
    Workers(usize),
    /// One process, no master.
    Single,
}

/// Writes `dir/nginx.conf` (nginx as a WebSocket proxy on `addr` in front of `backend`: the
/// `Upgrade`/`Connection` headers forwarded, access log off; with `tls`, `(cert, key)`, the
/// listener terminates TLS) and returns nginx's command line, program first. `None` when nginx
/// is not installed or the file cannot be written. `dir/logs` must exist.
pub fn nginx_argv(
    dir: &Path,
    addr: SocketAddr,
    backend: SocketAddr,
    shape: NginxShape,
    tls: Option<(&Path, &Path)>,
) -> Option<Vec<OsString>> {
    let program = find("nginx")?;
    let processes = match shape {
        NginxShape::Workers(n) => format!("worker_processes {n};"),
        NginxShape::Single => "master_process off;\nworker_processes 1;".to_owned(),
    };
    let config = dir.join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "daemon off;\n{processes}\nworker_rlimit_nofile 20000;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\
             events {{ worker_connections 19000; }}\n\
             http {{\n  access_log off;\n  upstream echo {{ server {backend}; keepalive 64; }}\n\
               map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
               server {{\n    listen {addr} reuseport{ssl};\n{certs}    location / {{\n      proxy_pass http://echo;\n      proxy_http_version 1.1;\n\
                      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n",
            dir = dir.display(),
            ssl = if tls.is_some() { " ssl" } else { "" },
            certs = tls.map_or(String::new(), |(cert, key)| format!(
                "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n",
                cert.display(),
                key.display()
            )),
        ),
    )
    .ok()?;
    Some(vec![
        program.into(),
        "-p".into(),
        dir.into(),
        "-c".into(),
        config.into(),
    ])
}

/// The value at share `p` of sorted `values` (0 when empty).
pub fn percentile(values: &[u32], p: f64) -> u32 {
    values
        .get(((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// The median of `values` (0.0 when empty).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// CPU seconds (utime + stime) and RSS (KiB) of process `pid`; zeros once it is gone.
pub fn proc_stat(pid: u32) -> (f64, u64) {
    let cpu = stat_cpu_seconds(&format!("/proc/{pid}/stat"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, rss)
}

/// CPU seconds (utime + stime) of thread `tid` of this process alone, from
/// `/proc/self/task/TID/stat` (`/proc/TID/stat` would give the whole process's).
pub fn thread_cpu_seconds(tid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
}

/// utime + stime of a `stat` file in /proc, in seconds.
fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // After the ")" that ends the command name: utime is field 12, stime field 13.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}

/// CPU seconds of `pid`'s live threads, from `/proc/PID/task/*/schedstat` (nanoseconds).
pub fn schedstat_seconds(pid: u32) -> f64 {
    let ns: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|task| {
                    std::fs::read_to_string(task.path().join("schedstat"))
                        .ok()?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        })
        .unwrap_or(0);
    ns as f64 / 1e9
}
