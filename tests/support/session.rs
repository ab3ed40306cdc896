//! A socket.io-like backend: long-polling GETs answered with its name, and a WebSocket upgrade
//! on the same port whose first frame is its name, so a test can tell which server it reached
//! by either road. It records every request head and can be stopped (connects then refused).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::clients::server_frame;

/// One server of a socket.io-like cluster.
pub struct SessionBackend {
    pub addr: SocketAddr,
    pub name: String,
    /// Request heads in arrival order, polling and upgrades alike.
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    accept: JoinHandle<()>,
}

impl SessionBackend {
    pub async fn start(name: &str) -> SessionBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (record, label): (_, Arc<str>) = (seen.clone(), name.into());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (record, label) = (record.clone(), label.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (record, label) = (record.clone(), label.clone());
                        async move { Ok::<_, Infallible>(answer(req, &record, &label)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        SessionBackend {
            addr,
            name: name.to_owned(),
            seen,
            accept,
        }
    }

    /// Closes the listening socket and waits until it is gone: later connects are refused.
    pub async fn stop(&mut self) {
        self.accept.abort();
        let _ = tokio::time::timeout(super::DEADLINE, &mut self.accept)
            .await
            .expect("the accept loop ends within the deadline");
    }

    /// The `Cookie` fields of every request this server saw, joined per request.
    pub fn cookies_seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|h| {
                h.get_all(header::COOKIE)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .collect()
    }
}

fn answer(
    mut req: Request<Incoming>,
    record: &Mutex<Vec<HeaderMap>>,
    name: &Arc<str>,
) -> Response<Full<Bytes>> {
    record.lock().unwrap().push(req.headers().clone());
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (upgrade, key) else {
        let mut response = Response::new(Full::new(Bytes::from(name.to_string())));
        response
            .headers_mut()
            .insert(header::SET_COOKIE, "io=session; Path=/".parse().unwrap());
        return response;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let greeting = server_frame(0x1, name.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        if io.write_all(&greeting).await.is_err() {
            return;
        }
        // Hold the tunnel until the client goes away.
        let mut buf = [0u8; 256];
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, "upgrade".parse().unwrap());
    h.insert(header::UPGRADE, "websocket".parse().unwrap());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    response
}

/// What one request through switchboard found: the server that answered and the sticky cookie
/// switchboard set, if it set one.
#[derive(Debug)]
pub struct Visit {
    pub backend: String,
    /// The whole `Set-Cookie` line of the sticky cookie.
    pub set_cookie: Option<String>,
}

impl Visit {
    /// The `NAME=TOKEN` pair of the sticky cookie that was set, to send back as `Cookie`.
    pub fn cookie(&self) -> Option<String> {
        self.set_cookie
            .as_deref()
            .map(|line| line.split(';').next().unwrap().to_owned())
    }
}

/// The sticky cookie's `Set-Cookie` among a response's (the backend sets `io=…` of its own).
fn sticky_line<'a>(lines: impl IntoIterator<Item = &'a str>, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    let mut found = lines.into_iter().filter(|l| l.starts_with(&prefix));
    let first = found.next().map(str::to_owned);
    assert!(found.next().is_none(), "one sticky Set-Cookie at most");
    first
}

/// A long-polling GET (`/socket.io/?EIO=4&transport=polling`) with `cookie` as the Cookie field.
pub async fn poll(addr: SocketAddr, cookie: Option<&str>) -> Visit {
    let mut headers = vec![];
    if let Some(cookie) = cookie {
        headers.push(("cookie", cookie));
    }
    let response =
        super::clients::http_get(addr, "/socket.io/?EIO=4&transport=polling", &headers).await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    let lines = response
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap());
    Visit {
        backend: response.body_text(),
        set_cookie: sticky_line(lines, "sb_route"),
    }
}

/// The WebSocket upgrade of the session (HTTP/1.1, raw bytes), with `cookie`; returns what it
/// found and the open tunnel.
pub async fn upgrade(addr: SocketAddr, cookie: Option<&str>) -> (Visit, tokio::net::TcpStream) {
    let extra = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let request =
        super::clients::handshake_request("/socket.io/?EIO=4&transport=websocket", &extra);
    let mut stream = super::clients::raw_send(addr, request.as_bytes()).await;
    let head = super::clients::read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let set_cookie = sticky_line(
        head.lines().filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie").then(|| v.trim())
        }),
        "sb_route",
    );
    let frame = tokio::time::timeout(super::DEADLINE, super::clients::read_frame(&mut stream))
        .await
        .expect("the backend's first frame within the deadline")
        .expect("a frame");
    let backend = String::from_utf8(frame.payload).unwrap();
    (
        Visit {
            backend,
            set_cookie,
        },
        stream,
    )
}

/// A secret file in `dir` holding `secret`.
pub fn secret_file(dir: &super::tls::TempDir, name: &str, secret: &[u8]) -> std::path::PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, secret).unwrap();
    path
}

/// A config body: every path to upstream `chat` with `sticky_cookie` under `secret`, over
/// `servers`, with `balance` lines (e.g. `balance = "round-robin"`).
pub fn sticky_config(
    secret: &std::path::Path,
    balance: &str,
    servers: &[&SessionBackend],
) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    format!(
        "[[route]]\npath_prefix = \"/\"\nupstream = \"chat\"\n[upstream.chat]\n{balance}\n\
         sticky_cookie = {{ name = \"sb_route\", secret_file = \"{}\", max_age = \"1h\" }}\n\
         servers = [{}]\n",
        secret.display(),
        list.join(", ")
    )
}
