//! The access log: one line per plain request, written when its response has been sent (so it
//! has the bytes and the whole duration), and the request id that ties a line to the backend's
//! own logs. WebSocket lines are written by the upgrade and the tunnel, under the same target.
//!
//! Lines go through the process's non-blocking log writer: never sampled, dropped only when the
//! writer falls behind, and then counted (`switchboard_log_lines_dropped_total`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use super::body::ClientBodyState;
use crate::balancer::Backend;

/// The tracing target of access lines: `RUST_LOG=access=off` (or `[log] access = "off"`) turns
/// them off apart from the rest.
pub const TARGET: &str = "access";

/// Whether access lines would be written at all: `[log] access` on is not enough when the
/// subscriber filters the target out (`RUST_LOG=warn`), and then the request path skips the
/// work (one cached callsite check).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// The header a request id travels in, both ways of the backend hop.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest client-sent request id kept; a longer one is replaced (log lines stay bounded).
const MAX_REQUEST_ID: usize = 128;

/// The request's id: the client's `X-Request-Id` when it is a sane token (a proxy in front
/// already made one), else a new random one. Either way it is what the backend gets, exactly
/// once.
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    let theirs = headers.get(REQUEST_ID).filter(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(u8::is_ascii_graphic)
    });
    let id = match theirs {
        Some(v) => v.clone(),
        None => {
            let text = format!("{:032x}", rand::random::<u128>());
            HeaderValue::from_maybe_shared(Bytes::from(text)).expect("hex is a valid header")
        }
    };
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// What the attempts of one request went through: how many backends were tried and why each
/// failed, in words an operator reads ("connection refused by 127.0.0.1:9002"), not an HTTP
/// library's error chain.
#[derive(Default)]
pub struct Trace {
    /// Backends tried, resends included.
    pub attempts: u32,
    /// One phrase per failed attempt.
    pub failures: Vec<String>,
    /// The backend of the last attempt.
    pub backend: Option<Arc<Backend>>,
    /// How reading the client's body went, for its byte count.
    pub body: Option<Arc<ClientBodyState>>,
    /// An upgrade's request id, for its WebSocket lines; `None` when the access log is off.
    pub request_id: Option<HeaderValue>,
}

impl Trace {
    /// Notes one more attempt, on `backend`.
    pub fn attempt(&mut self, backend: &Arc<Backend>) {
        self.attempts += 1;
        self.backend = Some(backend.clone());
    }

    /// The last backend's name, `-` when none was tried.
    pub fn backend_name(&self) -> &str {
        self.backend.as_ref().map_or("none", |b| b.name.as_str())
    }

    /// Notes why the last attempt failed.
    pub fn failed(&mut self, words: String) {
        self.failures.push(words);
    }

    /// Every failure, in order, for the error line.
    pub fn tried(&self) -> String {
        self.failures.join("; ")
    }
}

/// A failed connect in words: refused, timed out, TLS, or the socket error as the OS says it.
pub fn connect_failure(addr: SocketAddr, error: &std::io::Error, timeout: Duration) -> String {
    let text = error.to_string();
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("connection refused by {addr}"),
        std::io::ErrorKind::TimedOut => format!("connect to {addr} timed out after {timeout:?}"),
        _ if text.contains("certificate") || text.contains("tls") || text.contains("TLS") => {
            format!("TLS handshake with {addr} failed: {text}")
        }
        _ => format!("connect to {addr} failed: {text}"),
    }
}

/// One plain request's access line, written when this is dropped: with the response body once
/// it has been sent (or the client went away), at once for answers made here.
pub struct AccessRecord {
    started: Instant,
    client: SocketAddr,
    method: Method,
    host: Box<str>,
    path: Box<str>,
    upstream: Box<str>,
    backend: Option<Box<str>>,
    attempts: u32,
    request_id: HeaderValue,
    status: u16,
    body_in: Option<Arc<ClientBodyState>>,
    /// Response body bytes sent so far.
    pub bytes_out: u64,
    /// Whether the response body ended normally.
    pub complete: bool,
}

/// The request side of an access line, taken before the request is consumed.
pub struct RequestFacts {
    /// When the request arrived.
    pub started: Instant,
    /// The client's address.
    pub client: SocketAddr,
    /// The method.
    pub method: Method,
    /// The host routed on.
    pub host: Box<str>,
    /// The path, with the query only when `log.access_query` says so.
    pub path: Box<str>,
    /// The request id.
    pub request_id: HeaderValue,
}

impl RequestFacts {
    /// The facts of a request with this head.
    pub fn new(
        parts: &http::request::Parts,
        client: SocketAddr,
        with_query: bool,
        request_id: HeaderValue,
    ) -> Self {
        let path = match parts.uri.path_and_query() {
            Some(pq) if with_query => pq.as_str(),
            _ => parts.uri.path(),
        };
        RequestFacts {
            started: Instant::now(),
            client,
            method: parts.method.clone(),
            host: super::router::request_host(parts).unwrap_or("-").into(),
            path: path.into(),
            request_id,
        }
    }

    /// The record of this request's outcome.
    pub fn record(self, upstream: &str, trace: &mut Trace, status: u16) -> AccessRecord {
        AccessRecord {
            started: self.started,
            client: self.client,
            method: self.method,
            host: self.host,
            path: self.path,
            upstream: upstream.into(),
            backend: trace.backend.as_ref().map(|b| b.name.as_str().into()),
            attempts: trace.attempts,
            request_id: self.request_id,
            status,
            body_in: trace.body.take(),
            bytes_out: 0,
            complete: true,
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let bytes_in = self.body_in.as_ref().map_or(0, |state| state.bytes());
        tracing::info!(
            target: TARGET,
            client = %self.client,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = self.status,
            bytes_in,
            bytes_out = self.bytes_out,
            duration_us = self.started.elapsed().as_micros() as u64,
            upstream = %self.upstream,
            backend = self.backend.as_deref().unwrap_or("-"),
            attempts = self.attempts,
            request_id = self.request_id.to_str().unwrap_or("-"),
            complete = self.complete,
            "request"
        );
    }
}
