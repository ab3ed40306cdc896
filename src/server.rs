//! One client connection: hyper's HTTP/1.1 server with upgrades, limits and graceful shutdown.
//!
//! hyper answers malformed requests itself: garbage gets 400 and oversized heads 431, and the
//! connection is closed. A head must arrive within `limits.header_read_timeout`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::config::Limits;
use crate::proxy::{self, ConnInfo, Proxy};

/// Serves HTTP/1.1 on `stream` until the client closes, the connection upgrades, or shutdown.
pub async fn serve_connection(
    proxy: Arc<Proxy>,
    limits: Arc<Limits>,
    stream: TcpStream,
    conn: ConnInfo,
) {
    let peer: SocketAddr = conn.peer;
    let conn = Arc::new(conn);
    let drain = proxy.shutdown.drain_token().clone();
    let force = proxy.shutdown.force_token().clone();
    let service = {
        let proxy = proxy.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(proxy::handle(proxy, req, conn).await) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let span = tracing::debug_span!("conn", %peer);
    async move {
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
    }
    .instrument(span)
    .await
}
