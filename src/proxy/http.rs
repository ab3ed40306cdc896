//! Plain requests: forwarded over pooled keep-alive backend connections, bodies streamed.
//!
//! A request that failed to connect is retried on the next backend only when resending it is
//! safe: an idempotent method (RFC 9110 §9.2.2) and no body, since the body was consumed by the
//! first attempt. Anything else gets 502 after its one attempt.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, Uri, Version, header};
use hyper::body::{Body, Incoming};
use hyper_rustls::{DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::{RequestBody, ResponseBody};
use super::headers;
use super::{ConnInfo, Snapshot};
use crate::balancer::key::key_hash;
use crate::config::{Timeouts, Upstream};
use crate::error::ProxyError;

/// The pooled backend client of one upstream: plain HTTP, or HTTPS when the upstream has
/// `tls = { … }` (then the certificate must carry the configured server name).
pub type BackendClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Builds the pooled client for `upstream`.
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
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Forwards one plain request to `upstream` and returns the backend's response head; the body
/// streams afterwards.
pub async fn forward(
    snap: &Snapshot,
    upstream: usize,
    req: Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Response<ResponseBody>, ProxyError> {
    let balancer = &snap.balancers[upstream];
    let (mut parts, body) = req.into_parts();
    let key = balancer
        .key_spec()
        .and_then(|spec| key_hash(spec, &parts, conn.peer.ip()));
    let host = super::router::request_authority(&parts).map(str::to_owned);
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::join_cookies(&mut parts.headers);
    headers::add_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
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
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let client_body_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut body = Some(RequestBody::Client {
        body,
        failed: client_body_failed.clone(),
    });
    let mut attempts = balancer.attempts(key);

    loop {
        let pick = snap.next_pick(upstream, &mut attempts)?;
        let backend = pick.lease.backend().clone();
        let uri: Uri = format!("{scheme}://{}{}", backend.addr, path)
            .parse()
            .map_err(|e| ProxyError::Backend {
                backend: backend.name.clone(),
                source: Box::new(e),
            })?;
        let mut request = Request::new(body.take().unwrap_or(RequestBody::Empty));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = if retryable {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };

        let sent = tokio::time::timeout(
            snap.timeouts.request,
            snap.clients[upstream].request(request),
        )
        .await;
        match sent {
            Err(_elapsed) => {
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
                snap.count_connect_error(upstream, &backend, &std::io::Error::new(kind, chain));
                tracing::warn!(upstream = %balancer.name, backend = %backend.name, error = %error_chain(&e), "backend connect failed");
                if retryable && may_retry {
                    continue;
                }
                return Err(ProxyError::Connect {
                    backend: backend.name.clone(),
                    source: std::io::Error::other(error_chain(&e)),
                });
            }
            Ok(Err(e)) if client_body_failed.load(std::sync::atomic::Ordering::Relaxed) => {
                // The client's body broke (an invalid chunk, a client gone mid-body): its fault.
                return Err(ProxyError::ClientBody {
                    source: Box::new(e),
                });
            }
            Ok(Err(e)) => {
                return Err(ProxyError::Backend {
                    backend: backend.name.clone(),
                    source: Box::new(e),
                });
            }
            Ok(Ok(response)) => {
                attempts.succeeded(&pick);
                return Ok(super::relay(response, pick.lease));
            }
        }
    }
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
