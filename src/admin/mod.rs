//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (the process is up),
//! `/readyz` (503 until the first lookup of every `dns:` server of the starting config is over,
//! so a new replica gets no traffic before it knows its backends, and 503 once draining, so a
//! load balancer in front stops sending new clients), and the
//! `/admin/*` API ([`api`]). It calls into process state; it never reaches into the proxy's
//! internals.
//!
//! `HEAD` on the three probes answers as `GET` would, without the body (RFC 9110 §9.3.2):
//! load balancers and uptime checkers probe with `HEAD`.

pub mod api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::Proxy;
use crate::proxy::body::ResponseBody;
use crate::reload::Reloader;

/// Admin connections served at once (a scraper and an operator need a handful); more wait
/// briefly, then are closed, as at the client connection limit (`listener::limit`).
const ADMIN_CONNECTIONS: usize = 64;
/// Time an admin client has to send a request head.
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin endpoints until the force token is cancelled (they stay up while
/// draining), or until a hand-over gave the admin listener to a new process. The same accept loop as the proxy's: it survives its own errors and backs off when
/// descriptors run out, never spins.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, reloader: Arc<Reloader>) {
    let stop = proxy.shutdown.admin_stop_token().clone();
    let slots = crate::listener::limit::ConnectionLimit::uncounted(ADMIN_CONNECTIONS);
    let metrics = proxy.metrics.clone();
    crate::listener::accept_loop(
        listener,
        slots,
        metrics,
        None,
        stop,
        tokio_util::task::TaskTracker::new(),
        move |stream, peer, slot| {
            let (proxy, reloader) = (proxy.clone(), reloader.clone());
            async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let (proxy, reloader) = (proxy.clone(), reloader.clone());
                    async move { Ok::<_, Infallible>(respond(&proxy, &reloader, peer, req).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        },
    )
    .await;
}

async fn respond(
    proxy: &Arc<Proxy>,
    reloader: &Reloader,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    if req.uri().path().starts_with("/admin/") {
        return api::respond(proxy, reloader, peer, req).await;
    }
    let head = req.method() == Method::HEAD;
    let method = if head { &Method::GET } else { req.method() };
    let (status, content_type, body) = match (method, req.uri().path()) {
        (&Method::GET, "/metrics") => {
            api::publish_draining(proxy);
            (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                proxy.metrics.render(),
            )
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if proxy.shutdown.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        (&Method::GET, "/readyz") => match proxy.warming.waiting() {
            waiting if waiting.is_empty() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            waiting => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!(
                    "waiting for the first DNS lookup of {}\n",
                    waiting.join(", ")
                ),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz, /readyz or /admin/upstreams\n".to_owned(),
        ),
    };
    if head {
        return reply_head(status, content_type, body.len());
    }
    reply(status, content_type, body)
}

/// The answer to `HEAD`: the `GET` answer's status and headers, with the length its body has,
/// and no body.
fn reply_head(
    status: StatusCode,
    content_type: &'static str,
    length: usize,
) -> Response<ResponseBody> {
    let mut response = reply(status, content_type, String::new());
    *response.body_mut() = ResponseBody::empty();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    response
}

/// A response with a body of `content_type`.
fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
