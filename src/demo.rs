//! `switchboard demo`: three chat backends in this process, switchboard in front of them, and a
//! chat page.
//!
//! Each backend keeps its rooms in its own memory and shares nothing with the others, like many
//! real chat and game servers. switchboard balances with `sticky-hash` on `query:room`, so
//! everyone who joins one room lands on the same backend and can talk: the demo shows why sticky
//! hashing matters. (With `least-conn`, two people in one room would often sit on different
//! backends and never see each other's messages.)

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
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

/// Starts the backends and switchboard, prints the URL, and runs until Ctrl-C.
pub async fn run(listen: SocketAddr) -> io::Result<()> {
    let mut servers = Vec::new();
    for n in 1..=BACKENDS {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(chat_backend(listener, format!("backend-{n}")));
        servers.push(format!("\"{addr}\""));
    }
    let toml = format!(
        r#"
listen = "{listen}"
[admin]
listen = "127.0.0.1:0"
[timeouts]
shutdown_grace = "2s"
[[route]]
path_prefix = "/"
upstream = "chat"
[upstream.chat]
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
    println!("switchboard demo: open http://{listen}/ in a browser (two tabs, same room, to chat)");
    println!("  backends: {}", servers.join(", "));
    if let Some(admin) = admin {
        println!("  metrics:  http://{admin}/metrics");
    }
    println!("  Ctrl-C stops it.");
    let shutdown = Shutdown::new();
    crate::shutdown::watch_signals(shutdown.clone());
    crate::run(config, listeners, shutdown, Metrics::new())
        .await
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Rooms of one backend: name → broadcast channel of JSON lines.
type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<String>>>>;

/// A chat server: `/` serves the page, `/chat?room=R&name=N` is the WebSocket.
pub async fn chat_backend(listener: TcpListener, name: String) {
    let rooms: Rooms = Arc::default();
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let rooms = rooms.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let rooms = rooms.clone();
                let name = name.clone();
                async move { Ok::<_, Infallible>(chat_request(req, rooms, name)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn chat_request(
    mut req: Request<Incoming>,
    rooms: Rooms,
    name: Arc<str>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    if req.uri().path() != "/chat" {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        *response.body_mut() = ResponseBody::text(PAGE);
        return response;
    }
    let Some(key) = req.headers().get("sec-websocket-key") else {
        *response.status_mut() = StatusCode::BAD_REQUEST;
        *response.body_mut() = ResponseBody::text("a WebSocket handshake is expected here\n");
        return response;
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
            chat_session(ws, rooms, name, room, user).await;
        }
    });
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

async fn chat_session<S>(
    ws: WebSocketStream<S>,
    rooms: Rooms,
    backend: Arc<str>,
    room: String,
    user: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let sender = {
        let mut rooms = rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        rooms
            .entry(room.clone())
            .or_insert_with(|| broadcast::channel(256).0)
            .clone()
    };
    let mut inbox = sender.subscribe();
    let (mut out, mut incoming) = ws.split();
    let welcome = format!(
        r#"{{"type":"welcome","backend":{},"room":{},"members":{}}}"#,
        json_string(&backend),
        json_string(&room),
        sender.receiver_count()
    );
    if out.send(Message::text(welcome)).await.is_err() {
        return;
    }
    let _ = sender.send(format!(
        r#"{{"type":"join","from":{},"backend":{}}}"#,
        json_string(&user),
        json_string(&backend)
    ));
    loop {
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let _ = sender.send(format!(
                        r#"{{"type":"message","from":{},"text":{},"backend":{}}}"#,
                        json_string(&user),
                        json_string(text.as_str()),
                        json_string(&backend)
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
    let _ = sender.send(format!(
        r#"{{"type":"leave","from":{}}}"#,
        json_string(&user)
    ));
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
