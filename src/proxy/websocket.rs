//! The two WebSocket handshakes: client → switchboard → backend.
//!
//! Clients come in two ways. Over HTTP/1.1 (RFC 6455 §4) a GET with `Upgrade: websocket`: the
//! client's `Sec-WebSocket-*` headers go to the backend unchanged and the backend's 101 (with
//! its `Sec-WebSocket-Accept`, `-Protocol`, `-Extensions` and any cookies) goes back. Over
//! HTTP/2 (RFC 8441) an extended CONNECT with `:protocol = websocket` on one stream of a shared
//! connection: switchboard makes an HTTP/1.1 handshake of its own to the backend (its own
//! `Sec-WebSocket-Key`, the `Sec-WebSocket-Accept` checked) and answers the stream 200.
//!
//! Each handshake gets its own, unpooled backend connection (a pooled one cannot be handed over
//! to a tunnel); the backend half of the exchange is done by hand in [`handshake`]. A backend
//! answer other than 101 goes to the client as is. Bytes either side sent right behind its
//! handshake (a pipelined first frame, a server that speaks first) are kept, by hyper on the
//! client side and by [`handshake::Prefixed`] on the backend side, and reach the tunnel first.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::body::ResponseBody;
use super::handshake::{self, Answer};
use super::http::error_chain;
use super::sticky_cookie::Sticky;
use super::{ClientProtocol, ConnInfo, Proxy, Snapshot, connect, headers, tunnel};
use crate::balancer::key::key_hash;
use crate::error::ProxyError;

/// True for an RFC 8441 WebSocket: HTTP/2 CONNECT with `:protocol = websocket`.
pub fn is_extended_connect(parts: &http::request::Parts) -> bool {
    parts.method == Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Performs the backend handshake for a WebSocket request and answers the client. On success a
/// tracked tunnel task is spawned that splices the two streams once hyper hands them over.
/// `client` is the request's client address ([`super::client_address`]).
// One more than clippy's seven: the client address is per request, not per connection.
#[allow(clippy::too_many_arguments)]
pub async fn upgrade(
    proxy: &Arc<Proxy>,
    snap: &Snapshot,
    upstream: usize,
    mut req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
    client: std::net::SocketAddr,
    h2_stream: Option<super::streams::StreamGuard>,
    trace: &mut super::access::Trace,
) -> Result<Response<ResponseBody>, ProxyError> {
    let started = Instant::now();
    let balancer = &snap.balancers[upstream];
    let protocol = conn.protocol;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _empty_body) = req.into_parts();
    // Origin rules and per-address limits, before any backend is picked.
    let admitted = super::admission::admit(proxy, snap, upstream, &parts, client.ip())?;
    let slot = proxy
        .tunnel_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ProxyError::TooManyTunnels)?;
    let key = balancer
        .key_spec()
        .and_then(|spec| key_hash(spec, &parts, client.ip()));

    let authority = super::router::request_authority(&parts).map(str::to_owned);
    let upgrade_value = match protocol {
        ClientProtocol::Http1 => parts.headers.get(header::UPGRADE).cloned(),
        ClientProtocol::H2 => None,
    }
    .unwrap_or(HeaderValue::from_static("websocket"));
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::join_cookies(&mut parts.headers);
    let sticky = Sticky::read(snap, upstream, &mut parts.headers);
    // The hop that spoke to switchboard is appended, as ever (behind a trusted HTTP proxy that
    // is the proxy; the client it named is already in the chain).
    headers::add_forwarded(
        &mut parts.headers,
        conn.client.ip(),
        conn.proto,
        authority.as_deref(),
    );
    let h = &mut parts.headers;
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade_value);
    // An HTTP/2 client has no key of its own for the backend: switchboard makes one and checks
    // the answer, as RFC 8441 §5 leaves the HTTP/1.1 hop to the proxy.
    let own_key = match protocol {
        ClientProtocol::Http1 => None,
        ClientProtocol::H2 => {
            let own = generate_key();
            h.insert(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_str(&own).expect("base64 is a valid header"),
            );
            if !h.contains_key(header::SEC_WEBSOCKET_VERSION) {
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            Some(own)
        }
    };
    if !h.contains_key(header::HOST)
        && let Some(value) = authority
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
    {
        h.insert(header::HOST, value);
    }

    let (stream, pick) =
        connect::connect(snap, upstream, key, sticky.pin(), protocol, client, trace).await?;
    let backend = pick.lease.backend().clone();
    let index = pick.index;
    let record = |outcome: &str| snap.count_upgrade(&backend, outcome, protocol);

    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let timeout = snap.timeouts.handshake;
    let exchange = handshake::exchange(stream, path, &parts.headers);
    let answer = match tokio::time::timeout(timeout, exchange).await {
        Err(_elapsed) => {
            record("timeout");
            trace.failed(format!(
                "{} did not answer the handshake within {timeout:?}",
                backend.addr
            ));
            return Err(ProxyError::Timeout {
                backend: backend.name.clone(),
                timeout,
            });
        }
        Ok(Err(e)) => {
            record("bad_response");
            trace.failed(format!("{} broke the handshake: {e}", backend.addr));
            return Err(ProxyError::Backend {
                backend: backend.name.clone(),
                source: Box::new(e),
            });
        }
        Ok(Ok(answer)) => answer,
    };

    let (backend_headers, backend_io) = match answer {
        Answer::Other(response) => {
            record("rejected");
            if response.status().is_server_error() {
                // Passive health: a backend failing upgrades is skipped like one refusing
                // connects, for `timeouts.backend_retry`.
                balancer.report_failure(pick.index);
            }
            tracing::info!(upstream = %balancer.name, backend = %backend.name, client = %client,
                status = response.status().as_u16(), "websocket handshake rejected by backend");
            if protocol == ClientProtocol::H2 && response.status().is_success() {
                // Over HTTP/2 a 2xx answer to extended CONNECT *is* the acceptance (RFC 8441
                // §5): a backend's 2xx that is no 101 must not open a tunnel in the client.
                return Err(ProxyError::BadUpgrade {
                    backend: backend.name.clone(),
                });
            }
            let mut response = super::relay(response, pick.lease, snap.timeouts.request_body_idle);
            sticky.answer(&mut response, index, conn);
            return Ok(response);
        }
        Answer::Switched { headers, stream } => (headers, stream),
    };
    if !accepts(&backend_headers, own_key.as_deref()) {
        record("bad_response");
        trace.failed(format!(
            "{} answered 101 without a WebSocket upgrade",
            backend.addr
        ));
        return Err(ProxyError::BadUpgrade {
            backend: backend.name.clone(),
        });
    }
    let extensions = tunnel::frames::Extensions::from_header(
        backend_headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let client_headers = answer_headers(backend_headers, protocol);
    record("upgraded");
    let access_id = trace.request_id.take().map(|id| {
        let id: Box<str> = id.to_str().unwrap_or("-").into();
        let path = if snap.config.access_log.query {
            path
        } else {
            parts.uri.path()
        };
        tracing::info!(target: super::access::TARGET, client = %client, method = %parts.method,
            host = authority.as_deref().unwrap_or("-"), path, status = match protocol {
                ClientProtocol::Http1 => 101,
                ClientProtocol::H2 => 200,
            }, upstream = %balancer.name, backend = %backend.name, attempts = trace.attempts,
            request_id = &*id, protocol = protocol.as_str(),
            handshake_us = started.elapsed().as_micros() as u64, "websocket upgraded");
        id
    });

    let tunnel = tunnel::Tunnel {
        shared: snap.tunnel_shared[upstream].clone(),
        lease: pick.lease,
        admitted,
        _slot: slot,
        conn: conn.clone(),
        client,
        _stream: h2_stream,
        access_id,
        extensions,
    };
    // Two kinds of task, each sized for its own tunnel: a plain HTTP/1.1 connection's socket
    // is unwrapped, anything else (TLS, HTTP/2 streams) runs on hyper's `Upgraded`. Each task
    // is `then`, not an `async` block: `then` keeps the state of waiting for the upgrade and
    // the running tunnel in one union, where an `async` block would keep the tunnel's parts
    // (moved out, dead) beside the running tunnel for its whole life (272 B of the plain
    // task's 1 168; e2e_load's idle RSS went 2.63 → 2.46 KiB per tunnel).
    let went_away = |e: hyper::Error| {
        tracing::debug!(error = %error_chain(&e), "client went away before the upgrade");
        std::future::ready(())
    };
    if protocol == ClientProtocol::Http1 && conn.proto == "http" {
        proxy
            .tunnels
            .spawn(client_upgrade.then(move |upgraded| match upgraded {
                Ok(client_io) => Either::Left(run_unwrapped(tunnel, client_io, backend_io)),
                Err(e) => Either::Right(went_away(e)),
            }));
    } else {
        proxy
            .tunnels
            .spawn(client_upgrade.then(move |upgraded| match upgraded {
                Ok(client_io) => Either::Left(tunnel.run(TokioIo::new(client_io), backend_io)),
                Err(e) => Either::Right(went_away(e)),
            }));
    }

    let mut reply = Response::new(ResponseBody::empty());
    *reply.status_mut() = match protocol {
        ClientProtocol::Http1 => StatusCode::SWITCHING_PROTOCOLS,
        ClientProtocol::H2 => StatusCode::OK,
    };
    *reply.headers_mut() = client_headers;
    sticky.answer(&mut reply, index, conn);
    Ok(reply)
}

/// Runs `tunnel` on the client's own socket when hyper's upgrade wraps a plain TCP connection:
/// the tunnel then holds the socket itself, not a boxed trait object behind a replay buffer,
/// and each read and write is a direct call (bytes hyper read ahead are replayed first). (TLS
/// connections run on `Upgraded`: unwrapping them measured no better, their state is on the
/// heap either way.)
///
/// Not an `async fn`, whose state would keep a dead copy of its arguments next to the running
/// tunnel: only the bare TCP tunnel (both sides plain sockets) lives in the task itself; the
/// rarer kinds (bytes read ahead, a TLS backend, a socket of another type) are boxed, so the
/// task is not sized for them.
fn run_unwrapped(
    tunnel: tunnel::Tunnel,
    client: hyper::upgrade::Upgraded,
    backend: handshake::Prefixed<connect::BackendStream>,
) -> Either<impl Future<Output = ()>, Pin<Box<dyn Future<Output = ()> + Send>>> {
    let client = match client.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) if parts.read_buf.is_empty() => {
            // The empty read-ahead still holds hyper's whole read buffer (8 KiB): drop it now,
            // not at the end of the tunnel's life.
            let hyper::upgrade::Parts { io, read_buf, .. } = parts;
            drop(read_buf);
            return match backend.into_tcp() {
                Ok(backend) => Either::Left(tunnel.run(io.into_inner(), backend)),
                Err(backend) => Either::Right(Box::pin(tunnel.run(io.into_inner(), backend))),
            };
        }
        Ok(parts) => {
            let io = handshake::Prefixed::new(parts.read_buf, parts.io.into_inner());
            return Either::Right(Box::pin(tunnel.run(io, backend)));
        }
        Err(client) => client,
    };
    Either::Right(Box::pin(tunnel.run(TokioIo::new(client), backend)))
}

/// Whether the backend's 101 completes a WebSocket handshake: `Upgrade: websocket`, and when
/// switchboard made the key, the matching `Sec-WebSocket-Accept` (RFC 6455 §4.2.2).
fn accepts(headers: &HeaderMap, own_key: Option<&str>) -> bool {
    let upgrade_ok = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let accept_ok = match own_key {
        None => true,
        Some(key) => headers
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes()),
    };
    upgrade_ok && accept_ok
}

/// The headers of the client's answer, from the backend's 101: end-to-end headers as they came;
/// for HTTP/1.1 `Connection`/`Upgrade` put back, for HTTP/2 the hop-only `Sec-WebSocket-Accept`
/// dropped (the stream's 200 is the acceptance).
fn answer_headers(mut backend: HeaderMap, protocol: ClientProtocol) -> HeaderMap {
    let upgrade = backend
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    headers::remove_hop_by_hop(&mut backend);
    match protocol {
        ClientProtocol::Http1 => {
            backend.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            backend.insert(header::UPGRADE, upgrade);
        }
        ClientProtocol::H2 => {
            backend.remove(header::SEC_WEBSOCKET_ACCEPT);
        }
    }
    backend
}
