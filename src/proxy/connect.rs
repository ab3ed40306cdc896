//! Opening a dedicated backend connection for a WebSocket handshake: TCP, then TLS when the
//! upstream has `tls = { … }`, moving on to the next backend while connects fail.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{ClientProtocol, Snapshot};
use crate::balancer::pacing::Admit;
use crate::balancer::{Balancer, Pick};

/// How long an upgrade may wait for a token of its backend's bucket before it gets 503.
const MAX_PACING_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
use crate::error::ProxyError;

/// A backend connection, plain or TLS. An enum rather than a boxed trait object: the tunnel
/// polls it for every chunk.
pub enum BackendStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the rustls state is large and only TLS upstreams pay for it).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects to the key's backend (or first to `pin`, a sticky cookie's), or to the next ones
/// while connects (or backend TLS handshakes) fail and attempts remain; with the upstream's
/// `send_proxy_protocol`, a PROXY header naming `client` goes first. Each failure is counted
/// and logged with its cause.
pub async fn connect(
    snap: &Snapshot,
    upstream: usize,
    key: Option<u64>,
    pin: Option<usize>,
    protocol: ClientProtocol,
    client: std::net::SocketAddr,
    trace: &mut super::access::Trace,
) -> Result<(BackendStream, Pick), ProxyError> {
    let proxy_header = snap.config.upstreams[upstream].send_proxy_protocol;
    let balancer: &Balancer = &snap.balancers[upstream];
    let tls = snap.upstream_tls[upstream].as_ref();
    let mut attempts = balancer.attempts(key).pinned(pin);
    loop {
        let pick = snap.next_pick(upstream, &mut attempts)?;
        let backend = pick.lease.backend().clone();
        trace.attempt(&backend);
        match backend.pacing.admit(MAX_PACING_WAIT) {
            Admit::Now => {}
            Admit::After(wait) => tokio::time::sleep(wait).await,
            Admit::Refused => {
                return Err(ProxyError::RateLimited {
                    upstream: balancer.name.clone(),
                    backend: backend.name.clone(),
                });
            }
        }
        let attempt = tokio::time::timeout(snap.timeouts.connect, async {
            let mut stream = TcpStream::connect(backend.addr).await?;
            // Small WebSocket frames must not wait for Nagle.
            stream.set_nodelay(true)?;
            if let Some(version) = proxy_header {
                // First on the connection, before TLS: the client this tunnel is for.
                let header = crate::proxy_protocol::encode::header(version, client, backend.addr);
                tokio::io::AsyncWriteExt::write_all(&mut stream, &header).await?;
            }
            match tls {
                None => Ok(BackendStream::Plain(stream)),
                Some((connector, name)) => connector
                    .connect(name.clone(), stream)
                    .await
                    .map(|s| BackendStream::Tls(Box::new(s))),
            }
        })
        .await;
        let error = match attempt {
            Ok(Ok(stream)) => {
                attempts.succeeded(&pick);
                return Ok((stream, pick));
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        let retry = attempts.failed(&pick);
        snap.count_connect_error(upstream, &backend, &error);
        let words = super::access::connect_failure(backend.addr, &error, snap.timeouts.connect);
        tracing::warn!(upstream = %balancer.name, backend = %backend.name, error = %words, "backend connect failed");
        trace.failed(words);
        if !retry {
            // The handshake's outcome, counted once (each attempt is counted above).
            snap.count_upgrade(&backend, "connect_error", protocol);
            return Err(ProxyError::Connect {
                backend: backend.name.clone(),
                source: error,
            });
        }
    }
}

/// The connector and server name of a TLS upstream.
pub type UpstreamTls = (TlsConnector, ServerName<'static>);
