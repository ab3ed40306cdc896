//! Plain requests: forwarded over pooled keep-alive backend connections, bodies streamed.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, Uri, Version, header};
use hyper::body::{Body, Incoming};
use hyper_rustls::{DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::access::{Trace, connect_failure};
use super::body::{
    ClientBody, ClientBodyOutcome, ClientBodyState, HeldBody, RequestBody, ResponseBody,
};
use super::headers;
use super::sticky_cookie::Sticky;
use super::{ConnInfo, Snapshot};
use crate::balancer::key::key_hash;
use crate::config::{Timeouts, Upstream};
use crate::error::ProxyError;
use crate::proxy_protocol::connector::ProxyHeaderConnector;

/// The backend clients of one upstream: plain HTTP, or HTTPS when the upstream has
/// `tls = { … }` (then the certificate must carry the configured server name).
#[derive(Clone)]
pub struct BackendClient {
    /// Keep-alive connections, idle ones closed after `timeouts.pool_idle`.
    pooled: Client<HttpsConnector<ProxyHeaderConnector>, RequestBody>,
    /// A new connection per request, for the one resend after a pooled connection turned out
    /// closed: the pool could hand out another stale one.
    fresh: Client<HttpsConnector<ProxyHeaderConnector>, RequestBody>,
}

/// Builds the clients for `upstream`.
pub fn backend_client(
    upstream: &Upstream,
    timeouts: &Timeouts,
    no_tls: Arc<rustls::ClientConfig>,
) -> BackendClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts.connect));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let http = ProxyHeaderConnector::new(http, upstream.send_proxy_protocol);
    let connector = match &upstream.tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                .expect("validated server name");
            HttpsConnector::new(
                http,
                tls.client.clone(),
                true,
                Arc::new(FixedServerNameResolver::new(name)),
            )
        }
        None => HttpsConnector::new(
            http,
            no_tls,
            false,
            Arc::new(DefaultServerNameResolver::default()),
        ),
    };
    BackendClient {
        pooled: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(timeouts.pool_idle)
            .pool_timer(TokioTimer::new())
            .build(connector.clone()),
        fresh: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector),
    }
}

/// Forwards one plain request to `upstream` and returns the backend's response head; the body
/// streams afterwards.
///
/// Resending rules: a connect that failed sent nothing, so the request (body and all, since the
/// body is read only once a connection asks for it) goes to the next backend whatever its
/// method. A pooled connection found closed before any response byte came gets one resend on a
/// new connection, for idempotent methods (RFC 9110 §9.2.2) whose body was not read. Nothing
/// else is resent.
pub async fn forward(
    snap: &Snapshot,
    upstream: usize,
    req: Request<Incoming>,
    conn: &ConnInfo,
    client: std::net::SocketAddr,
    trace: &mut Trace,
) -> Result<Response<ResponseBody>, ProxyError> {
    let balancer = &snap.balancers[upstream];
    let (mut parts, body) = req.into_parts();
    let key = balancer
        .key_spec()
        .and_then(|spec| key_hash(spec, &parts, client.ip()));
    let host = super::router::request_authority(&parts).map(str::to_owned);
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::join_cookies(&mut parts.headers);
    let sticky = Sticky::read(snap, upstream, &mut parts.headers);
    // The hop that spoke to switchboard is appended, as ever (behind a trusted HTTP proxy that
    // is the proxy; the client it named is already in the chain).
    headers::add_forwarded(
        &mut parts.headers,
        conn.client.ip(),
        conn.proto,
        host.as_deref(),
    );
    // HTTP/2 (and absolute-form) requests carry the host in the URI; the backend needs `Host`.
    if !parts.headers.contains_key(header::HOST)
        && let Some(value) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok())
    {
        parts.headers.insert(header::HOST, value);
    }
    let scheme = if snap.upstream_tls[upstream].is_some() {
        "https"
    } else {
        "http"
    };
    // A PROXY header names one client: its connections are pooled apart (see `connector`).
    let pool_tag = match snap.config.upstreams[upstream].send_proxy_protocol {
        Some(_) => format!("{}@", crate::proxy_protocol::connector::pool_tag(client)),
        None => String::new(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let idempotent = is_idempotent(&parts.method);
    let body_state = Arc::new(ClientBodyState::default());
    trace.body = Some(body_state.clone());
    let held: Option<HeldBody> = (!body.is_end_stream()).then(|| {
        Arc::new(std::sync::Mutex::new(Some(ClientBody::new(
            body,
            snap.timeouts.request_body_idle,
            body_state.clone(),
        ))))
    });
    let mut attempts = balancer.attempts(key).pinned(sticky.pin());
    let mut resent_on_fresh = false;

    let mut pick = snap.next_pick(upstream, &mut attempts)?;
    loop {
        let backend = pick.lease.backend().clone();
        trace.attempt(&backend);
        let uri: Uri = format!("{scheme}://{pool_tag}{}{}", backend.addr, path)
            .parse()
            .map_err(|_| ProxyError::BadRequest {
                reason: "the request target cannot be forwarded",
            })?;
        let mut request = Request::new(match &held {
            Some(held) => RequestBody::Held(held.clone()),
            None => RequestBody::Empty,
        });
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = parts.headers.clone();

        let client = if resent_on_fresh {
            &snap.clients[upstream].fresh
        } else {
            &snap.clients[upstream].pooled
        };
        let sent = tokio::time::timeout(snap.timeouts.request, client.request(request)).await;
        // Whether the body is still unread: then nothing of it reached any backend.
        let body_unread = held
            .as_ref()
            .is_none_or(|h| h.lock().unwrap_or_else(|e| e.into_inner()).is_some());
        match sent {
            Err(_elapsed) => {
                trace.failed(format!(
                    "{} did not answer within {:?}",
                    backend.addr, snap.timeouts.request
                ));
                return Err(ProxyError::Timeout {
                    backend: backend.name.clone(),
                    timeout: snap.timeouts.request,
                });
            }
            Ok(Err(e)) if e.is_connect() => {
                let may_retry = attempts.failed(&pick);
                let chain = error_chain(&e);
                let kind = if chain.contains("refused") {
                    std::io::ErrorKind::ConnectionRefused
                } else if chain.contains("timed out") {
                    std::io::ErrorKind::TimedOut
                } else {
                    std::io::ErrorKind::Other
                };
                let error = std::io::Error::new(kind, innermost(&e));
                snap.count_connect_error(upstream, &backend, &error);
                let words = connect_failure(backend.addr, &error, snap.timeouts.connect);
                tracing::warn!(upstream = %balancer.name, backend = %backend.name, error = %words, "backend connect failed");
                trace.failed(words);
                if may_retry && body_unread {
                    pick = snap.next_pick(upstream, &mut attempts)?;
                    balancer.metrics.http_retries_total.inc();
                    continue;
                }
                return Err(ProxyError::Connect {
                    backend: backend.name.clone(),
                    source: std::io::Error::other(error_chain(&e)),
                });
            }
            Ok(Err(e)) if body_state.outcome() != ClientBodyOutcome::Fine => {
                // The client's body broke (an invalid chunk, a client gone or stalled
                // mid-body): its fault.
                return Err(match body_state.outcome() {
                    ClientBodyOutcome::Stalled => ProxyError::ClientBodyStalled {
                        idle: snap.timeouts.request_body_idle,
                    },
                    _ => ProxyError::ClientBody {
                        source: Box::new(e),
                    },
                });
            }
            Ok(Err(e)) if !resent_on_fresh && idempotent && body_unread && closed_early(&e) => {
                tracing::debug!(upstream = %balancer.name, backend = %backend.name, error = %error_chain(&e), "pooled connection closed before the response; resending once");
                trace.failed(format!(
                    "{} closed a kept-alive connection before answering (resent once)",
                    backend.addr
                ));
                balancer.metrics.http_retries_total.inc();
                resent_on_fresh = true;
            }
            Ok(Err(e)) => {
                trace.failed(if closed_early(&e) {
                    format!("{} closed the connection before answering", backend.addr)
                } else {
                    format!("{} broke the exchange: {}", backend.addr, innermost(&e))
                });
                return Err(ProxyError::Backend {
                    backend: backend.name.clone(),
                    source: Box::new(e),
                });
            }
            Ok(Ok(response)) => {
                attempts.succeeded(&pick);
                let mut response =
                    super::relay(response, pick.lease, snap.timeouts.request_body_idle);
                sticky.answer(&mut response, pick.index, conn);
                return Ok(response);
            }
        }
    }
}

/// Whether a backend exchange failed because the connection was closed (or reset) before a
/// response came: what a keep-alive close racing a new request looks like.
fn closed_early(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && hyper.is_incomplete_message()
        {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            )
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The deepest cause of an error: the OS's or the parser's own words, without the library's
/// layers of context.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    for _ in 0..16 {
        match deepest.source() {
            Some(cause) => deepest = cause,
            None => break,
        }
    }
    deepest.to_string()
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// An error and its sources on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
