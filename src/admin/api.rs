//! `/admin/*`: the state of every upstream and backend, reload, drain and undrain.
//!
//! - `GET /admin/upstreams` → `{"upstreams":[{"name":…,"backends":[{"addr":…,"state":"up"|"down"|"draining"|"unknown","healthy":…,"tunnels":…,"in_flight":…,"weight":…}]}]}`
//! - `POST /admin/reload` → 200 `{"result":"ok"}` or 400 `{"result":"error","error":"…"}`
//! - `POST /admin/upstreams/{name}/backends/{addr}/drain` (and `/undrain`) → 200, 404 if unknown
//!
//! With `admin.token_file`, every endpoint here needs `Authorization: Bearer <token>`; without
//! it, POSTs are accepted only from loopback peers.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::reply;
use crate::balancer::Backend;
use crate::proxy::Proxy;
use crate::proxy::body::ResponseBody;
use crate::reload::Reloader;

/// Answers one `/admin/*` request.
pub async fn respond(
    proxy: &Arc<Proxy>,
    reloader: &Reloader,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let token = proxy.snapshot().config.admin_token.clone();
    match &token {
        Some(token) if !bearer_matches(&req, token) => {
            let mut response = json(
                StatusCode::UNAUTHORIZED,
                error_json(
                    "this endpoint needs `Authorization: Bearer <token>` (admin.token_file)",
                ),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        None if req.method() == Method::POST && !peer.ip().is_loopback() => {
            return json(
                StatusCode::FORBIDDEN,
                error_json(
                    "POST /admin/* is accepted from loopback only unless admin.token_file is set",
                ),
            );
        }
        _ => {}
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["admin", "upstreams"]) => json(StatusCode::OK, upstreams_json(proxy)),
        (&Method::POST, ["admin", "reload"]) => match reloader.reload().await {
            Ok(()) => json(StatusCode::OK, "{\"result\":\"ok\"}".to_owned()),
            Err(e) => json(
                StatusCode::BAD_REQUEST,
                format!("{{\"result\":\"error\",\"error\":{}}}", quote(&e)),
            ),
        },
        (
            &Method::POST,
            [
                "admin",
                "upstreams",
                name,
                "backends",
                addr,
                action @ ("drain" | "undrain"),
            ],
        ) => {
            let (name, addr) = (decode(name), decode(addr));
            let Some(backend) = proxy.backends.find(&name, &addr) else {
                return json(
                    StatusCode::NOT_FOUND,
                    error_json(&format!("no backend {addr} in upstream {name}")),
                );
            };
            let changed = if *action == "drain" {
                crate::drain::start(proxy, &name, backend.clone(), false)
            } else {
                crate::drain::stop(&name, &backend)
            };
            json(
                StatusCode::OK,
                format!(
                    "{{\"result\":\"ok\",\"changed\":{changed},\"backend\":{}}}",
                    backend_json(&backend)
                ),
            )
        }
        (_, ["admin", ..]) => json(
            StatusCode::NOT_FOUND,
            error_json(
                "unknown admin endpoint; see GET /admin/upstreams, POST /admin/reload, POST /admin/upstreams/{name}/backends/{addr}/drain|undrain",
            ),
        ),
        _ => json(StatusCode::NOT_FOUND, error_json("not found")),
    }
}

/// Sets `switchboard_tunnels_draining` from the backends' live tunnel counts (at each scrape).
pub fn publish_draining(proxy: &Proxy) {
    let snap = proxy.snapshot();
    let leaving = proxy.leaving();
    for balancer in &snap.balancers {
        let draining: i64 = balancer
            .backends()
            .iter()
            .chain(
                leaving
                    .iter()
                    .filter(|(u, _)| *u == balancer.name)
                    .map(|(_, b)| b),
            )
            .filter(|b| b.is_draining())
            .map(|b| b.tunnels())
            .sum();
        proxy
            .metrics
            .tunnels_draining
            .with_label_values(&[balancer.name.as_str()])
            .set(draining);
    }
}

fn upstreams_json(proxy: &Proxy) -> String {
    let snap = proxy.snapshot();
    let leaving = proxy.leaving();
    let mut out = String::from("{\"upstreams\":[");
    for (i, balancer) in snap.balancers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"name\":{},\"backends\":[", quote(&balancer.name));
        let removed = leaving
            .iter()
            .filter(|(u, _)| *u == balancer.name)
            .map(|(_, b)| b);
        for (j, backend) in balancer.backends().iter().chain(removed).enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&backend_json(backend));
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

fn backend_json(backend: &Backend) -> String {
    let tunnels = backend.tunnels().max(0) as usize;
    format!(
        "{{\"addr\":{},\"state\":\"{}\",\"healthy\":{},\"tunnels\":{tunnels},\"in_flight\":{},\"weight\":{}}}",
        quote(&backend.name),
        backend.state().as_str(),
        backend.is_healthy(),
        backend.live().saturating_sub(tunnels),
        backend.weight(),
    )
}

fn bearer_matches(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-decodes a path segment (`127.0.0.1%3A9001` and `127.0.0.1:9001` both work).
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: &u8| (*b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error_json(message: &str) -> String {
    format!("{{\"result\":\"error\",\"error\":{}}}", quote(message))
}

/// A JSON string literal.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    reply(status, "application/json", body)
}
