//! One client connection: a PROXY protocol header (with `proxy_protocol` on), TLS (if the
//! listener has it), then hyper's HTTP/1.1 or HTTP/2 server, with limits and graceful shutdown.
//!
//! The HTTP version is chosen per connection: by ALPN on TLS listeners, and on plain listeners
//! by the HTTP/2 connection preface ("prior knowledge" h2c, RFC 9113 §3.3). HTTP/2 connections
//! accept extended CONNECT (RFC 8441) so browsers can open WebSockets over them. hyper answers
//! malformed HTTP/1.1 itself: garbage gets 400 and oversized heads 431, and the connection is
//! closed. A head must arrive within `limits.header_read_timeout`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::config::Limits;
use crate::proxy::handshake::Prefixed;
use crate::proxy::streams::{CountedBody, OpenStreams, StreamGuard};
use crate::proxy::{self, ClientProtocol, ConnInfo, ConnectionGuard, Proxy};
use crate::proxy_protocol::receive::Receive;
use crate::tls::server::TlsTerminator;

/// Flow-control window of one HTTP/2 stream (one tunnel or request).
const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// Flow-control window of a whole HTTP/2 connection: 64 streams' worth.
const H2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one accepted connection until the client closes, it upgrades, or shutdown. With
/// `receive` (`proxy_protocol` on) the connection must start with a PROXY header, before TLS.
pub async fn serve_connection(
    proxy: Arc<Proxy>,
    limits: Limits,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
    tls: Option<Arc<TlsTerminator>>,
    receive: Option<Receive>,
) {
    let span = tracing::debug_span!("conn", %peer, client = tracing::field::Empty);
    // Only the common case, plain HTTP/1.1, lives in the connection task's own state: the TLS,
    // replayed-bytes and HTTP/2 states are boxed. The task future is moved several times on its
    // way into the runtime, and each move copies all of it (kilobytes when every kind of
    // connection state shares one future).
    async move {
        let mut stream = stream;
        // The client address, chosen once for the connection. (Boxed: the common case, no
        // header, keeps the task small.)
        let client = match receive {
            None => peer,
            Some(receive) => {
                let timeout = limits.header_read_timeout;
                let read = receive.client(&mut stream, peer, timeout, &proxy.metrics);
                let Some((client, _)) = Box::pin(read).await else {
                    return;
                };
                tracing::Span::current().record("client", tracing::field::display(client));
                client
            }
        };
        let conn = |proto, protocol| ConnInfo {
            peer,
            client,
            proto,
            protocol,
            guard,
        };
        match tls {
            Some(tls) => Box::pin(serve_tls(proxy, limits, stream, conn, tls)).await,
            None => {
                let Some((protocol, taken)) =
                    sniff_protocol(&mut stream, limits.header_read_timeout).await
                else {
                    return;
                };
                let conn = conn("http", protocol);
                if taken.is_empty() {
                    serve_http(proxy, limits, stream, conn).await;
                } else {
                    let replay = Prefixed::new(taken.into(), stream);
                    Box::pin(serve_http(proxy, limits, replay, conn)).await;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// The TLS handshake, then HTTP/1.1 or HTTP/2 as ALPN chose.
async fn serve_tls(
    proxy: Arc<Proxy>,
    limits: Limits,
    stream: TcpStream,
    conn: impl FnOnce(&'static str, ClientProtocol) -> ConnInfo,
    tls: Arc<TlsTerminator>,
) {
    let Some(accepted) = tls.accept(stream).await else {
        return;
    };
    let protocol = if accepted.h2 {
        ClientProtocol::H2
    } else {
        ClientProtocol::Http1
    };
    serve_http(proxy, limits, accepted.stream, conn("https", protocol)).await;
}

/// HTTP/2 if the client starts with the h2 preface, else HTTP/1.1, and the bytes that had to be
/// read to tell (usually none: the first bytes are peeked). `None`: the client closed or sent
/// nothing in time. A client that sends one byte and stops is waited for by a real read with
/// the deadline, never by polling.
async fn sniff_protocol(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Option<(ClientProtocol, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = [0u8; 3];
    let n = tokio::time::timeout_at(deadline, stream.peek(&mut first))
        .await
        .ok()?
        .ok()?;
    if n == 0 {
        return None;
    }
    if !H2_PREFACE.starts_with(&first[..n]) {
        return Some((ClientProtocol::Http1, Vec::new()));
    }
    if n == first.len() {
        // "PRI" is no HTTP/1.1 method: the preface was designed to be told apart this way.
        return Some((ClientProtocol::H2, Vec::new()));
    }
    // Fewer than three bytes so far, all matching the preface: read them (a read waits for
    // more data; a peek would return at once and spin) and hand them back to be replayed.
    let mut taken = Vec::with_capacity(first.len());
    while taken.len() < first.len() {
        let mut byte = [0u8; 3];
        let want = first.len() - taken.len();
        let got = tokio::time::timeout_at(deadline, stream.read(&mut byte[..want]))
            .await
            .ok()?
            .ok()?;
        if got == 0 {
            return None;
        }
        taken.extend_from_slice(&byte[..got]);
        if !H2_PREFACE.starts_with(&taken) {
            return Some((ClientProtocol::Http1, taken));
        }
    }
    Some((ClientProtocol::H2, taken))
}

/// Runs a hyper connection; on drain asks it to finish (HTTP/1.1: after the current request;
/// HTTP/2: GOAWAY, while open streams and their tunnels continue), and on force drops it. A
/// macro because hyper's two connection types share `graceful_shutdown` only by name.
macro_rules! drive {
    ($proxy:expr, $connection:expr) => {{
        let drain = $proxy.shutdown.stop_token().clone();
        let force = $proxy.shutdown.force_token().clone();
        let connection = $connection;
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = drain.cancelled() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => result,
                    _ = force.cancelled() => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %proxy::http::error_chain(&e), "connection ended with an error");
        }
    }};
}

/// Runs an HTTP/2 connection like [`drive!`], and also closes it (GOAWAY) once it has had no
/// open stream for a while: `first` until its first stream (the preface and SETTINGS deadline),
/// `idle` after each last stream ends.
macro_rules! drive_h2 {
    ($proxy:expr, $connection:expr, $streams:expr, $first:expr, $idle:expr) => {{
        let drain = $proxy.shutdown.stop_token().clone();
        let force = $proxy.shutdown.force_token().clone();
        let streams: &OpenStreams = $streams;
        let connection = $connection;
        tokio::pin!(connection);
        let mut limit: Duration = $first;
        let mut rounds = 0u64;
        let result = loop {
            rounds += 1;
            let changed = streams.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let idle = streams.none();
            let idle_timer = async {
                if idle {
                    tokio::time::sleep(limit).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = changed => limit = $idle,
                _ = idle_timer => {
                    tracing::debug!(idle_ms = limit.as_millis() as u64, first = rounds == 1,
                        "HTTP/2 connection without streams; closing");
                    connection.as_mut().graceful_shutdown();
                    // GOAWAY with no stream open: hyper closes once it is written.
                    let closing = tokio::time::timeout(limit, connection.as_mut());
                    break closing.await.unwrap_or(Ok(()));
                }
                _ = drain.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = connection.as_mut() => break result,
                        _ = force.cancelled() => break Ok(()),
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %proxy::http::error_chain(&e), "connection ended with an error");
        }
    }};
}

async fn serve_http<I>(proxy: Arc<Proxy>, limits: Limits, io: I, conn: ConnInfo)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = conn.protocol;
    let conn = Arc::new(conn);
    let io = TokioIo::new(io);
    match protocol {
        ClientProtocol::Http1 => {
            let service = {
                let proxy = proxy.clone();
                service_fn(move |req| {
                    let proxy = proxy.clone();
                    let conn = conn.clone();
                    async move { Ok::<_, Infallible>(proxy::handle(proxy, req, conn, None).await) }
                })
            };
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(limits.max_header_bytes)
                .keep_alive(true)
                .serve_connection(io, service)
                .with_upgrades();
            drive!(proxy, connection);
        }
        ClientProtocol::H2 => Box::pin(serve_h2(proxy, limits, io, conn)).await,
    }
}

/// An HTTP/2 connection: extended CONNECT on, bounded windows and streams, closed when idle.
async fn serve_h2<I>(proxy: Arc<Proxy>, limits: Limits, io: TokioIo<I>, conn: Arc<ConnInfo>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(OpenStreams::default());
    let service = {
        let proxy = proxy.clone();
        let streams = streams.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let conn = conn.clone();
            let stream = StreamGuard::new(&streams);
            async move {
                let response = proxy::handle(proxy, req, conn, Some(stream.clone())).await;
                Ok::<_, Infallible>(response.map(|body| CountedBody::new(body, stream)))
            }
        })
    };
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        // Flow control bounds what one stream (one tunnel) can buffer here; a stream
        // window well under the connection's means a few stalled tunnels cannot use up
        // the connection window and freeze the others.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_concurrent_streams(limits.h2_max_streams)
        .keep_alive_interval(Some(limits.h2_keepalive))
        .keep_alive_timeout(limits.h2_keepalive)
        .max_header_list_size(limits.max_header_bytes as u32)
        .serve_connection(io, service);
    drive_h2!(
        proxy,
        connection,
        &streams,
        limits.header_read_timeout,
        limits.h2_idle_timeout
    );
}
