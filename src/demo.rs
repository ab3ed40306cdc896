//! `switchboard demo`: three chat backends in this process, switchboard in front of them, and a
//! chat page.
//!
//! Each backend keeps its rooms in its own memory and shares nothing with the others, like many
//! real chat and game servers. switchboard balances with `sticky-hash` on `query:room`, so
//! everyone who joins one room lands on the same backend and can talk: the demo shows why sticky
//! hashing matters. (With `least-conn`, two people in one room would often sit on different
//! backends and never see each other's messages.)
//!
//! The page also has a panel of the three backends with a Drain / Undrain button each. The
//! browser never talks to switchboard's admin listener (another origin, and CORS on an admin API
//! would let any web page drain backends): it calls `/demo/backends` on its own origin, and the
//! chat backend that answers makes the admin call on loopback itself. Draining a room's backend
//! closes its tunnels with 1001 after `[drain] timeout`; the page reconnects after a short random
//! delay, and because sticky-hash moves every key of a drained backend to the same next choice,
//! the room's members meet again there.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::metrics::Metrics;
use crate::proxy::body::ResponseBody;
use crate::{Listeners, Shutdown};

const PAGE: &str = include_str!("demo_page.html");
const BACKENDS: usize = 3;
/// The demo's upstream, as named in its config (and in the admin API's paths).
const UPSTREAM: &str = "chat";
/// Bound on one call to the admin listener (it is on loopback and answers at once).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the backends and switchboard, prints the URL, and runs until Ctrl-C.
pub async fn run(listen: SocketAddr) -> io::Result<()> {
    // The backends' sockets first (the config names their addresses), then switchboard's
    // listeners (the backends need the admin address), then the backends themselves.
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for n in 1..=BACKENDS {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        servers.push(format!("\"{}\"", listener.local_addr()?));
        backends.push((listener, format!("backend-{n}")));
    }
    let toml = format!(
        r#"
listen = "{listen}"
[admin]
listen = "127.0.0.1:0"
[timeouts]
shutdown_grace = "2s"
# Short, so that a click on Drain shows its effect within seconds.
[drain]
timeout = "1s"
spread = "2s"
[[route]]
path_prefix = "/"
upstream = "{UPSTREAM}"
[upstream.{UPSTREAM}]
balance = "sticky-hash"
hash_key = "query:room"
servers = [{}]
"#,
        servers.join(", ")
    );
    let config = crate::config::from_toml_str(&toml, "demo")
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let listeners = Listeners::bind(&config)?;
    let admin = listeners
        .admin
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    for (listener, name) in backends {
        tokio::spawn(chat_backend(listener, name, admin));
    }
    // Before the banner: whoever reads it may send SIGTERM at once.
    let shutdown = Shutdown::new();
    crate::shutdown::watch_signals(shutdown.clone());
    // The bound address, so `--listen 127.0.0.1:0` prints the port the system chose.
    let page = match &listeners.plain {
        Some(plain) => plain.local_addr()?,
        None => listen,
    };
    let mut banner = format!(
        "switchboard demo: open http://{page}/ in a browser (two tabs, same room, to chat)\n  backends: {}\n",
        servers.join(", ")
    );
    if let Some(admin) = admin {
        banner.push_str(&format!(
            "  metrics:  http://{admin}/metrics\n  admin:    http://{admin}/admin/upstreams\n"
        ));
    }
    banner.push_str("  Ctrl-C stops it.\n");
    // A closed stdout (`switchboard demo | head -1`) is no reason to stop the demo.
    let _ = crate::cli::print(|out| out.write_all(banner.as_bytes()));
    crate::run(config, listeners, shutdown, Metrics::new())
        .await
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Rooms of one backend: name → broadcast channel of JSON lines.
type Rooms = Mutex<HashMap<String, broadcast::Sender<String>>>;

/// One chat backend's state.
struct Chat {
    /// Shown to clients (`backend-2`).
    name: String,
    /// Its own address, as the config and the admin API name it.
    addr: String,
    /// switchboard's admin listener, for `/demo/backends`.
    admin: Option<SocketAddr>,
    rooms: Rooms,
}

/// A chat server: `/` serves the page, `/chat?room=R&name=N` is the WebSocket, and
/// `/demo/backends` (GET), `/demo/backends/{addr}/drain` and `/undrain` (POST) relay to the admin
/// API at `admin` on the browser's behalf (503 without it).
pub async fn chat_backend(listener: TcpListener, name: String, admin: Option<SocketAddr>) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let chat = Arc::new(Chat {
        name,
        addr,
        admin,
        rooms: Rooms::default(),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let chat = chat.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let chat = chat.clone();
                async move { Ok::<_, Infallible>(chat_request(req, chat).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn chat_request(req: Request<Incoming>, chat: Arc<Chat>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    if path == "/chat" {
        return chat_upgrade(req, chat);
    }
    if let Some(rest) = path.strip_prefix("/demo/backends") {
        return backends_api(&req, rest, &chat).await;
    }
    reply(StatusCode::OK, "text/html; charset=utf-8", PAGE)
}

fn chat_upgrade(mut req: Request<Incoming>, chat: Arc<Chat>) -> Response<ResponseBody> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "a WebSocket handshake is expected here\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let query = req.uri().query().unwrap_or("").to_owned();
    let param = |k: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_owned())
            .filter(|v| !v.is_empty())
    };
    let room = param("room").unwrap_or_else(|| "lobby".into());
    let user = param("name").unwrap_or_else(|| "anonymous".into());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            chat_session(ws, &chat, room, user).await;
        }
    });
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// `/demo/backends…`: `rest` is the path after that prefix.
async fn backends_api(req: &Request<Incoming>, rest: &str, chat: &Chat) -> Response<ResponseBody> {
    let Some(admin) = chat.admin else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            error_json("this demo runs without an admin listener"),
        );
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, [""]) => relay(admin, Method::GET, "/admin/upstreams").await,
        (&Method::POST, ["", addr, action @ ("drain" | "undrain")]) => {
            if cross_site(req) {
                return json(
                    StatusCode::FORBIDDEN,
                    error_json("cross-site requests may not drain backends"),
                );
            }
            if addr.is_empty()
                || !addr
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b".:[]".contains(&b))
            {
                return json(
                    StatusCode::BAD_REQUEST,
                    error_json("expected a backend address such as 127.0.0.1:9001"),
                );
            }
            if *action == "drain" {
                // Draining the last backend that takes connections (up, or unknown: not tried
                // yet) would leave nothing to serve this page, and so no button to undrain it
                // with.
                match admin_call(admin, Method::GET, "/admin/upstreams").await {
                    Ok((_, body)) => {
                        let body = String::from_utf8_lossy(&body);
                        let states = backend_states(&body);
                        if states.iter().any(|(a, _)| a == addr)
                            && !states
                                .iter()
                                .any(|(a, s)| a != addr && matches!(*s, "up" | "unknown"))
                        {
                            return json(
                                StatusCode::CONFLICT,
                                error_json("the last backend that is up stays up"),
                            );
                        }
                    }
                    Err(e) => return admin_unreachable(&e),
                }
            }
            let path = format!("/admin/upstreams/{UPSTREAM}/backends/{addr}/{action}");
            relay(admin, Method::POST, &path).await
        }
        (_, ["", _, "drain" | "undrain"]) | (_, [""]) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            error_json("GET /demo/backends; POST /demo/backends/{addr}/drain or /undrain"),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            error_json("GET /demo/backends; POST /demo/backends/{addr}/drain or /undrain"),
        ),
    }
}

/// A browser request from another site (its `Origin` is not this host). Such a page could send a
/// simple POST here without any CORS permission; requests without `Origin` (curl) are not
/// browsers' cross-site requests.
fn cross_site(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return false;
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    !matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// `(addr, state)` of each backend in the admin API's `/admin/upstreams` answer (its fixed
/// shape; the crate has no JSON parser).
fn backend_states(json: &str) -> Vec<(&str, &str)> {
    json.split("{\"addr\":\"")
        .skip(1)
        .filter_map(|object| {
            let (addr, rest) = object.split_once('"')?;
            let state = rest.split_once("\"state\":\"")?.1.split_once('"')?.0;
            Some((addr, state))
        })
        .collect()
}

/// Makes the admin call and answers with the admin listener's status and JSON.
async fn relay(admin: SocketAddr, method: Method, path: &str) -> Response<ResponseBody> {
    match admin_call(admin, method, path).await {
        Ok((status, body)) => json(status, body),
        Err(e) => admin_unreachable(&e),
    }
}

fn admin_unreachable(error: &str) -> Response<ResponseBody> {
    json(
        StatusCode::BAD_GATEWAY,
        error_json(&format!("admin listener: {error}")),
    )
}

/// One HTTP/1.1 request to the admin listener on a fresh connection: its status and body.
async fn admin_call(
    admin: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), String> {
    let call = async {
        let stream = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(ADMIN_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_owned()))
}

fn error_json(message: &str) -> String {
    format!(
        "{{\"result\":\"error\",\"error\":{}}}",
        crate::admin::api::quote(message)
    )
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    reply(status, "application/json", body)
}

/// A response with a body of `content_type`.
fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

async fn chat_session<S>(ws: WebSocketStream<S>, chat: &Chat, room: String, user: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let sender = {
        let mut rooms = chat
            .rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        rooms
            .entry(room.clone())
            .or_insert_with(|| broadcast::channel(256).0)
            .clone()
    };
    let mut inbox = sender.subscribe();
    let (mut out, mut incoming) = ws.split();
    let backend = &chat.name;
    let welcome = format!(
        r#"{{"type":"welcome","backend":{},"addr":{},"room":{},"members":{}}}"#,
        crate::admin::api::quote(backend),
        crate::admin::api::quote(&chat.addr),
        crate::admin::api::quote(&room),
        sender.receiver_count()
    );
    if out.send(Message::text(welcome)).await.is_err() {
        return;
    }
    let _ = sender.send(format!(
        r#"{{"type":"join","from":{},"backend":{}}}"#,
        crate::admin::api::quote(&user),
        crate::admin::api::quote(backend)
    ));
    loop {
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let _ = sender.send(format!(
                        r#"{{"type":"message","from":{},"text":{},"backend":{}}}"#,
                        crate::admin::api::quote(&user),
                        crate::admin::api::quote(text.as_str()),
                        crate::admin::api::quote(backend)
                    ));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            line = inbox.recv() => match line {
                Ok(line) => {
                    if out.send(Message::text(line)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    // Answers a peer's Close (or sends one), so that the closing handshake ends now rather than
    // when switchboard's linger runs out.
    let _ = out.close().await;
    let _ = sender.send(format!(
        r#"{{"type":"leave","from":{}}}"#,
        crate::admin::api::quote(&user)
    ));
}
