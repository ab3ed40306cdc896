//! The two WebSocket handshakes (RFC 6455 §4): client → switchboard → backend.
//!
//! Each upgrade gets its own, unpooled backend connection driven `with_upgrades()`: a pooled
//! connection cannot be handed over to a tunnel, and without `with_upgrades` hyper drops the
//! socket after the 101. The client's `Sec-WebSocket-*` headers go through unchanged and the
//! backend's answer decides everything: a 101 becomes the client's 101 (with the backend's
//! `Sec-WebSocket-Accept`, `-Protocol`, `-Extensions` and any cookies), anything else is passed
//! to the client as is. Bytes either side sent right behind its handshake (a pipelined first
//! frame, a server that speaks first) are kept by hyper in the upgraded stream's read buffer and
//! reach the tunnel first.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{RequestBody, ResponseBody};
use super::http::error_chain;
use super::{ConnInfo, Proxy, headers, tunnel};
use crate::balancer::{Balancer, Pick, Tried, key::key_hash};
use crate::error::ProxyError;

/// Performs the backend handshake for an upgrade request and answers the client. On 101 a
/// tracked tunnel task is spawned that splices the two streams once hyper has handed them over.
pub async fn upgrade(
    proxy: &Arc<Proxy>,
    upstream: usize,
    mut req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let started = Instant::now();
    let balancer = &proxy.balancers[upstream];
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _empty_body) = req.into_parts();
    let key = balancer
        .key_spec()
        .and_then(|spec| key_hash(spec, &parts, conn.peer.ip()));

    let upgrade_value = parts
        .headers
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    let host = super::router::request_authority(&parts).map(str::to_owned);
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        conn.proto,
        host.as_deref(),
    );
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, upgrade_value);

    let (stream, pick) = connect(proxy, balancer, key).await?;
    let backend = pick.lease.backend().clone();
    let record = |outcome: &str| {
        proxy
            .metrics
            .upgrades_total
            .with_label_values(&[balancer.name.as_str(), backend.name.as_str(), outcome])
            .inc();
    };

    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = Request::new(RequestBody::Empty);
    *request.uri_mut() = path
        .parse()
        .expect("a path and query taken from a valid URI");
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers;

    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, RequestBody>(TokioIo::new(stream)).await?;
        tokio::spawn(connection.with_upgrades());
        sender.send_request(request).await
    };
    let response = match tokio::time::timeout(proxy.timeouts.handshake, exchange).await {
        Err(_elapsed) => {
            record("timeout");
            return Err(ProxyError::Timeout {
                backend: backend.name.clone(),
                timeout: proxy.timeouts.handshake,
            });
        }
        Ok(Err(e)) => {
            record("bad_response");
            return Err(ProxyError::Backend {
                backend: backend.name.clone(),
                source: Box::new(e),
            });
        }
        Ok(Ok(response)) => response,
    };
    balancer
        .metrics
        .upgrade_duration
        .observe(started.elapsed().as_secs_f64());

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        record("rejected");
        tracing::info!(upstream = %balancer.name, backend = %backend.name, client = %conn.peer,
            status = response.status().as_u16(), "websocket handshake rejected by backend");
        let (mut head, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut head.headers);
        return Ok(Response::from_parts(
            head,
            ResponseBody::Backend {
                body,
                _lease: Some(pick.lease),
            },
        ));
    }

    let accepted_websocket = response
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !accepted_websocket {
        record("bad_response");
        return Err(ProxyError::BadUpgrade {
            backend: backend.name.clone(),
        });
    }

    let mut response = response;
    let backend_upgrade = hyper::upgrade::on(&mut response);
    let (mut head, _empty) = response.into_parts();
    let backend_upgrade_value = head
        .headers
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    headers::remove_hop_by_hop(&mut head.headers);
    head.headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    head.headers.insert(header::UPGRADE, backend_upgrade_value);

    let backend_io = match tokio::time::timeout(proxy.timeouts.handshake, backend_upgrade).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            record("bad_response");
            return Err(ProxyError::Backend {
                backend: backend.name.clone(),
                source: Box::new(e),
            });
        }
        Err(_) => {
            record("timeout");
            return Err(ProxyError::Timeout {
                backend: backend.name.clone(),
                timeout: proxy.timeouts.handshake,
            });
        }
    };
    record("upgraded");
    tracing::info!(upstream = %balancer.name, backend = %backend.name, client = %conn.peer,
        handshake_ms = started.elapsed().as_millis() as u64, "websocket upgraded");

    let tunnel = tunnel::Tunnel {
        proxy: proxy.clone(),
        upstream,
        lease: pick.lease,
        conn: conn.clone(),
    };
    proxy.tunnels.spawn(async move {
        match client_upgrade.await {
            Ok(client_io) => {
                tunnel
                    .run(TokioIo::new(client_io), TokioIo::new(backend_io))
                    .await
            }
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "client went away before the upgrade")
            }
        }
    });

    let mut reply = Response::new(ResponseBody::empty());
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *reply.headers_mut() = head.headers;
    Ok(reply)
}

/// Connects to the key's backend, or to the next ones while connects fail and attempts remain.
async fn connect(
    proxy: &Proxy,
    balancer: &Balancer,
    key: Option<u64>,
) -> Result<(TcpStream, Pick), ProxyError> {
    let mut tried = Tried::default();
    loop {
        let pick = balancer
            .pick(key, &mut tried)
            .ok_or_else(|| ProxyError::NoBackend {
                upstream: balancer.name.clone(),
            })?;
        let backend = pick.lease.backend().clone();
        let attempt =
            tokio::time::timeout(proxy.timeouts.connect, TcpStream::connect(backend.addr)).await;
        let error = match attempt {
            Ok(Ok(stream)) => {
                balancer.report_success(pick.index);
                // Small WebSocket frames must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok((stream, pick));
            }
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        };
        balancer.report_failure(pick.index);
        proxy
            .metrics
            .upgrades_total
            .with_label_values(&[
                balancer.name.as_str(),
                backend.name.as_str(),
                "connect_error",
            ])
            .inc();
        tracing::warn!(upstream = %balancer.name, backend = %backend.name, error = %error, "backend connect failed");
        if !balancer.may_retry(&tried) {
            return Err(ProxyError::Connect {
                backend: backend.name.clone(),
                source: error,
            });
        }
    }
}
