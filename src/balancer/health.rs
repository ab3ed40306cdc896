//! Active health checks: one task per backend probes it and records the verdict on the
//! [`Backend`], which every strategy then honours (a `Down` backend is never picked).
//!
//! A probe is one fresh connection, bounded as a whole by `check.timeout`: a TCP connect (and the
//! upstream's TLS handshake), then for `http` a `GET` and its status line, for `websocket` a real
//! upgrade (101 with the right `Sec-WebSocket-Accept`) closed with Close 1000, which finds a
//! backend whose HTTP side answers while its WebSocket side is broken. Requests are written and
//! heads parsed (`httparse`) by hand: a probe needs a status line and one header.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;

use super::{Backend, Health};
use crate::config::{HealthCheck, HealthCheckKind};
use crate::metrics::Metrics;
use crate::proxy::connect::UpstreamTls;
use crate::proxy::tunnel::frames::{self, opcode};

/// Largest response head a probe reads.
const MAX_HEAD: usize = 16 * 1024;

/// Most bytes read after a 101 while waiting for the backend's Close (a greeting is skipped).
const MAX_AFTER_UPGRADE: usize = 64 * 1024;

/// Probes `backend` every `check.interval` (first probe after a random delay in [0, interval) so
/// backends are not probed in lockstep) until `stop` is cancelled; `rise` consecutive passes mark it
/// `Health::Up`, `fall` consecutive failures `Health::Down` (via `backend.set_health`), each probe
/// bounded by `check.timeout`; counts `metrics.health_checks_total{upstream,backend,result}` with
/// result "ok" | "failed" | "timeout"; logs state changes at info/warn.
pub async fn run(
    backend: Arc<Backend>,
    upstream: Arc<str>,
    check: HealthCheck,
    tls: Option<UpstreamTls>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let count = |result: &str| {
        metrics
            .health_checks_total
            .with_label_values(&[&*upstream, backend.name.as_str(), result])
    };
    let (ok, failed, timed_out) = (count("ok"), count("failed"), count("timeout"));
    let first = check.interval.mul_f64(rand::random::<f64>());
    let mut ticks = tokio::time::interval_at(Instant::now() + first, check.interval);
    // The timeout is shorter than the interval (validated), so probes never overlap; a late tick
    // (a busy runtime) moves the schedule rather than firing probes back to back.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut streak = Streak::default();
    // One probe per turn until `stop`; each turn is bounded by the interval plus the timeout.
    loop {
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            outcome = async {
                ticks.tick().await;
                tokio::time::timeout(check.timeout, probe(&backend, &check, tls.as_ref()))
                    .await
                    .unwrap_or(Err(ProbeError::TimedOut))
            } => outcome,
        };
        match &outcome {
            Ok(()) => ok.inc(),
            Err(ProbeError::TimedOut) => timed_out.inc(),
            Err(ProbeError::Failed(_)) => failed.inc(),
        }
        if let Err(error) = &outcome {
            tracing::debug!(upstream = %upstream, backend = %backend.name, %error, "health check failed");
        }
        let Some(health) = streak.record(outcome.is_ok(), backend.health(), &check) else {
            continue;
        };
        backend.set_health(health);
        match &outcome {
            Ok(()) => tracing::info!(
                upstream = %upstream, backend = %backend.name, passes = check.rise,
                "backend up: health checks pass"
            ),
            Err(error) => tracing::warn!(
                upstream = %upstream, backend = %backend.name, failures = check.fall, %error,
                "backend down: health checks fail"
            ),
        }
    }
}

/// Consecutive passes and failures; a verdict once a streak reaches `rise` or `fall`.
#[derive(Default)]
struct Streak {
    passes: u32,
    failures: u32,
}

impl Streak {
    /// Records one probe; returns the new health when it changes from `now`.
    fn record(&mut self, passed: bool, now: Health, check: &HealthCheck) -> Option<Health> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            (self.passes >= check.rise && now != Health::Up).then_some(Health::Up)
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= check.fall && now != Health::Down).then_some(Health::Down)
        }
    }
}

/// Why a probe did not pass.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// The backend answered wrongly or not at all: a short reason for the log.
    #[error("{0}")]
    Failed(Cow<'static, str>),
    /// No answer within the timeout.
    #[error("timed out")]
    TimedOut,
}

impl ProbeError {
    fn failed(reason: impl Into<Cow<'static, str>>) -> Self {
        ProbeError::Failed(reason.into())
    }

    fn io(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::failed("connection refused"),
            io::ErrorKind::ConnectionReset => Self::failed("connection reset"),
            io::ErrorKind::UnexpectedEof => Self::failed("connection closed"),
            io::ErrorKind::TimedOut => ProbeError::TimedOut,
            _ => Self::failed(e.to_string()),
        }
    }
}

/// One probe on a fresh connection (the caller bounds it with the timeout).
async fn probe(
    backend: &Backend,
    check: &HealthCheck,
    tls: Option<&UpstreamTls>,
) -> Result<(), ProbeError> {
    let mut tcp = TcpStream::connect(backend.addr)
        .await
        .map_err(ProbeError::io)?;
    let _ = tcp.set_nodelay(true);
    if let Some(version) = check.proxy_header {
        // A probe speaks for no client: the header that says so (v2 LOCAL, v1 UNKNOWN).
        let header = crate::proxy_protocol::encode::local(version);
        tcp.write_all(header).await.map_err(ProbeError::io)?;
    }
    let host = match &check.host {
        Some(host) => Cow::Borrowed(host.as_str()),
        None => Cow::Owned(backend.addr.to_string()),
    };
    match tls {
        None => probe_on(tcp, check, &host).await,
        Some((connector, name)) => {
            let stream = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| ProbeError::failed(format!("TLS handshake: {e}")))?;
            probe_on(stream, check, &host).await
        }
    }
}

/// The part of a probe after the connection is up.
async fn probe_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    check: &HealthCheck,
    host: &str,
) -> Result<(), ProbeError> {
    match check.kind {
        HealthCheckKind::Tcp => {
            // A polite end (close_notify on TLS); the connect is what was checked.
            let _ = stream.shutdown().await;
            Ok(())
        }
        HealthCheckKind::Http => http(&mut stream, check, host).await,
        HealthCheckKind::WebSocket => websocket(&mut stream, &check.path, host).await,
    }
}

/// `GET path`: passes on `expect_status`, or any 2xx.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    check: &HealthCheck,
    host: &str,
) -> Result<(), ProbeError> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: switchboard-health\r\n\r\n",
        check.path
    );
    send(stream, request.as_bytes()).await?;
    let head = read_head(stream).await?;
    let passed = match check.expect_status {
        Some(status) => head.status == status,
        None => (200..300).contains(&head.status),
    };
    if passed {
        Ok(())
    } else {
        Err(ProbeError::failed(format!("status {}", head.status)))
    }
}

/// A WebSocket upgrade of `path`, checked like a client would, then Close 1000 and the
/// backend's Close (or EOF) in reply.
async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
    host: &str,
) -> Result<(), ProbeError> {
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nUser-Agent: switchboard-health\r\n\r\n"
    );
    send(stream, request.as_bytes()).await?;
    let head = read_head(stream).await?;
    if head.status != 101 {
        return Err(ProbeError::failed(format!(
            "no 101 (status {})",
            head.status
        )));
    }
    if head.accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err(ProbeError::failed("bad Sec-WebSocket-Accept"));
    }
    let close = frames::close_frame(1000, "health check", Some(rand::random()));
    send(stream, &close).await?;
    await_close(stream, head.rest).await
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), ProbeError> {
    stream.write_all(bytes).await.map_err(ProbeError::io)?;
    stream.flush().await.map_err(ProbeError::io)
}

/// What a probe needs of a response head.
struct Head {
    status: u16,
    /// `Sec-WebSocket-Accept`, if sent.
    accept: Option<Vec<u8>>,
    /// Bytes read past the head (after a 101: the first frames).
    rest: Vec<u8>,
}

/// Reads until the response head is complete, at most [`MAX_HEAD`] bytes.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Head, ProbeError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let size = chunk.len();
    // Bounded: every turn adds at least one byte, and MAX_HEAD ends it.
    loop {
        let room = MAX_HEAD - buf.len();
        if room == 0 {
            return Err(ProbeError::failed("response head over 16 KiB"));
        }
        let n = stream
            .read(&mut chunk[..room.min(size)])
            .await
            .map_err(ProbeError::io)?;
        if n == 0 {
            return Err(ProbeError::failed("connection closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                let accept = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .map(|h| h.value.trim_ascii().to_vec());
                return Ok(Head {
                    status: response.code.unwrap_or(0),
                    accept,
                    rest: buf[len..].to_vec(),
                });
            }
            Err(e) => return Err(ProbeError::failed(format!("bad response head: {e}"))),
        }
    }
}

/// Reads the backend's frames until its Close, skipping any it sent first (a greeting); EOF
/// counts as the close.
async fn await_close<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> Result<(), ProbeError> {
    let mut read = buf.len();
    let mut skip = 0usize;
    let mut chunk = [0u8; 4096];
    // Bounded: every turn consumes a whole frame (at least 2 bytes) or reads at least one byte,
    // and at most MAX_AFTER_UPGRADE bytes are read.
    loop {
        let take = skip.min(buf.len());
        buf.drain(..take);
        skip -= take;
        if skip == 0 {
            match frames::parse_head(&buf) {
                Ok(Some(head)) if head.opcode == opcode::CLOSE => return Ok(()),
                Ok(Some(head)) => {
                    skip = usize::try_from(head.total_len()).unwrap_or(usize::MAX);
                    continue;
                }
                Ok(None) => {}
                Err(v) => {
                    return Err(ProbeError::failed(format!(
                        "bad frame after the 101: {}",
                        v.as_str()
                    )));
                }
            }
        }
        if read >= MAX_AFTER_UPGRADE {
            return Err(ProbeError::failed("no Close reply in the first 64 KiB"));
        }
        let n = stream.read(&mut chunk).await.map_err(ProbeError::io)?;
        if n == 0 {
            return Ok(());
        }
        read += n;
        buf.extend_from_slice(&chunk[..n]);
    }
}
