//! Real backends on 127.0.0.1:0: a WebSocket echo server, an HTTP server that records what it
//! received, and addresses that refuse or never answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};

/// Counts a backend's open connections; tests wait on it instead of sleeping.
#[derive(Clone)]
pub struct LiveCount(Arc<watch::Sender<usize>>);

impl LiveCount {
    fn new() -> Self {
        LiveCount(Arc::new(watch::channel(0).0))
    }
    fn enter(&self) -> LiveGuard {
        self.0.send_modify(|n| *n += 1);
        LiveGuard(self.clone())
    }
    /// Open connections now.
    pub fn get(&self) -> usize {
        *self.0.borrow()
    }
    /// Waits until the count satisfies `f`.
    pub async fn wait_for(&self, what: &str, f: impl Fn(usize) -> bool) {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(super::DEADLINE, rx.wait_for(|n| f(*n)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what} (now {})", self.get()))
            .expect("sender lives");
    }
}

struct LiveGuard(LiveCount);
impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n -= 1);
    }
}

/// A WebSocket echo backend (tokio-tungstenite). With `greet`, it sends its name as the first
/// message right after the handshake ("server speaks first").
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub live: LiveCount,
    /// Request headers of each handshake, in order.
    pub handshakes: Arc<Mutex<Vec<HeaderMap>>>,
}

impl EchoBackend {
    pub async fn start(name: &str) -> EchoBackend {
        Self::start_with(name, false).await
    }

    pub async fn start_greeting(name: &str) -> EchoBackend {
        Self::start_with(name, true).await
    }

    /// Starts on a given address (one that a test reserved and released).
    pub async fn start_on(name: &str, addr: SocketAddr) -> EchoBackend {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(name, false, listener)
    }

    /// Like [`EchoBackend::start_greeting`], on a given address (e.g. 127.0.0.2:PORT, for a
    /// backend found through DNS, where every backend has the same port).
    pub async fn start_greeting_on(name: &str, addr: SocketAddr) -> std::io::Result<EchoBackend> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(name, true, listener))
    }

    async fn start_with(name: &str, greet: bool) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, greet, listener)
    }

    fn serve(name: &str, greet: bool, listener: TcpListener) -> EchoBackend {
        let addr = listener.local_addr().unwrap();
        let live = LiveCount::new();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let backend = EchoBackend {
            addr,
            name: name.to_owned(),
            live: live.clone(),
            handshakes: handshakes.clone(),
        };
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let guard = live.enter();
                let handshakes = handshakes.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    echo_connection(stream, handshakes, greet.then_some(name)).await;
                });
            }
        });
        backend
    }
}

async fn echo_connection(
    stream: TcpStream,
    handshakes: Arc<Mutex<Vec<HeaderMap>>>,
    greeting: Option<String>,
) {
    // The callback's error type is tungstenite's, fixed by its API.
    #[allow(clippy::result_large_err)]
    let record = |req: &WsRequest, mut resp: WsResponse| {
        handshakes.lock().unwrap().push(req.headers().clone());
        if let Some(protocols) = req.headers().get("sec-websocket-protocol") {
            let first = protocols
                .to_str()
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .trim()
                .to_owned();
            resp.headers_mut()
                .insert("sec-websocket-protocol", first.parse().unwrap());
        }
        resp.headers_mut()
            .insert("set-cookie", "backend=seen; Path=/".parse().unwrap());
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    if let Some(name) = greeting
        && ws.send(Message::text(name)).await.is_err()
    {
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            // tungstenite answers pings and echoes the close frame itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => break,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
    // Drain until the close handshake completes.
    while let Some(Ok(_)) = ws.next().await {}
}

/// What an HTTP backend saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// An HTTP backend that records each request and answers `200` with its name, or with the
/// status in the request's `x-answer-status` header; POST bodies are echoed back.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl HttpBackend {
    pub async fn start(name: &str) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let backend = HttpBackend {
            addr,
            name: name.to_owned(),
            requests: requests.clone(),
        };
        let name: Arc<str> = name.into();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let requests = requests.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let requests = requests.clone();
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(answer(req, requests, name).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        backend
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<Incoming>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    name: Arc<str>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len: body.len(),
    });
    let status = parts
        .headers
        .get("x-answer-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let reply = if parts.method == http::Method::POST {
        body
    } else {
        Bytes::from(name.to_string())
    };
    let mut response = Response::new(Full::new(reply));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", name.parse().unwrap());
    response.headers_mut().insert(
        "connection",
        "keep-alive, x-backend-private".parse().unwrap(),
    );
    response
        .headers_mut()
        .insert("x-backend-private", "hop".parse().unwrap());
    response
}

/// An address where nothing listens: connects are refused at once. The port stays bound (by a
/// socket that never listens, kept for the rest of the test process), so a test running
/// beside this one cannot be given it and start answering there.
pub async fn refusing_addr() -> SocketAddr {
    static HELD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// A backend that accepts connections and never answers; it keeps them open.
pub struct SilentBackend {
    pub addr: SocketAddr,
    pub live: LiveCount,
}

impl SilentBackend {
    pub async fn start() -> SilentBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let live = LiveCount::new();
        let count = live.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                held.push((stream, count.enter()));
            }
        });
        SilentBackend { addr, live }
    }
}

/// A backend speaking raw bytes: for each connection it reads the request head, then runs
/// `script` on the socket. For handshakes that a library would not produce (101 and a first
/// frame in one segment, EOF right after the 101, …).
pub async fn raw_backend<F, Fut>(script: F) -> (SocketAddr, LiveCount)
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let live = LiveCount::new();
    let count = live.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let guard = count.enter();
            let script = script.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let head = super::clients::read_head(&mut stream).await;
                script(stream, head).await;
            });
        }
    });
    (addr, live)
}

/// A backend's 101 answer to the handshake in `head` (RFC 6455 §4.2.2), as raw text.
pub fn switching_protocols(head: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(head)
    )
}

/// The value of `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(head: &str) -> String {
    let key = header_value(head, "sec-websocket-key").expect("handshake has a key");
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// A header's value from a raw head, case-insensitive.
pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Distinct values, counted; handy for distribution checks.
pub fn tally<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut map = HashMap::new();
    for item in items {
        *map.entry(item).or_insert(0) += 1;
    }
    map
}

/// Most frames a [`FrameBackend`] connection reads before it gives up on the connection.
const MAX_FRAMES_PER_CONNECTION: usize = 1_000_000;

/// How long a [`FrameBackend`] connection waits for its next frame before it gives up.
const FRAME_BACKEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A WebSocket backend written by hand, frame by frame, that records every frame it receives
/// exactly as it came (MASK bit, FIN, opcode, unmasked payload), per connection in accept order.
/// It echoes each complete data message as one frame (fragments are reassembled first), answers
/// Ping with Pong and Close with a Close carrying the same code, and after a Close closes its
/// sending side (the server closes TCP first, RFC 6455 §7.1.1) and reads until EOF. A frame is
/// recorded only after the backend's answer to it is written, so a test that sees a frame
/// recorded knows the answer is already on its way.
pub struct FrameBackend {
    pub addr: SocketAddr,
    pub live: LiveCount,
    received: Arc<watch::Sender<Vec<Vec<super::clients::WireFrame>>>>,
}

impl FrameBackend {
    pub async fn start() -> FrameBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let live = LiveCount::new();
        let received = Arc::new(watch::channel(Vec::new()).0);
        let backend = FrameBackend {
            addr,
            live: live.clone(),
            received: received.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let guard = live.enter();
                let mut index = 0;
                received.send_modify(|all| {
                    index = all.len();
                    all.push(Vec::new());
                });
                let received = received.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    let head = super::clients::read_head(&mut stream).await;
                    let reply = switching_protocols(&head);
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    frame_connection(stream, |frame| {
                        received.send_modify(|all| all[index].push(frame));
                    })
                    .await;
                });
            }
        });
        backend
    }

    /// Every connection's frames so far, in accept order.
    pub fn connections(&self) -> Vec<Vec<super::clients::WireFrame>> {
        self.received.borrow().clone()
    }

    /// Waits until `check` finds what it looks for in the frames received so far.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        check: impl Fn(&[Vec<super::clients::WireFrame>]) -> Option<T>,
    ) -> T {
        let mut rx = self.received.subscribe();
        let mut found = None;
        let waited = tokio::time::timeout(
            super::DEADLINE,
            rx.wait_for(|all| {
                found = check(all);
                found.is_some()
            }),
        )
        .await;
        match waited {
            Ok(Ok(_)) => found.expect("found"),
            _ => panic!(
                "timed out waiting for the backend to see {what}; it saw {:?}",
                summarize(&self.connections())
            ),
        }
    }
}

/// Opcode, FIN, MASK and length of each frame: for failure messages.
fn summarize(connections: &[Vec<super::clients::WireFrame>]) -> Vec<Vec<String>> {
    connections
        .iter()
        .map(|frames| {
            frames
                .iter()
                .map(|f| {
                    format!(
                        "op={:#x} fin={} masked={} len={}",
                        f.opcode,
                        f.fin,
                        f.masked,
                        f.payload.len()
                    )
                })
                .collect()
        })
        .collect()
}

async fn frame_connection(mut stream: TcpStream, record: impl Fn(super::clients::WireFrame)) {
    use super::clients::{frame_bytes, read_frame};
    // The first opcode and the bytes so far of a fragmented message.
    let mut message: Option<(u8, Vec<u8>)> = None;
    let mut shut = false;
    for _ in 0..MAX_FRAMES_PER_CONNECTION {
        let Ok(Some(frame)) =
            tokio::time::timeout(FRAME_BACKEND_PATIENCE, read_frame(&mut stream)).await
        else {
            break;
        };
        let reply = match frame.opcode {
            0x1 | 0x2 if frame.fin => Some(frame_bytes(true, frame.opcode, &frame.payload, None)),
            0x1 | 0x2 => {
                message = Some((frame.opcode, frame.payload.clone()));
                None
            }
            0x0 => {
                if let Some((_, data)) = message.as_mut() {
                    data.extend_from_slice(&frame.payload);
                }
                message
                    .take_if(|_| frame.fin)
                    .map(|(opcode, data)| frame_bytes(true, opcode, &data, None))
            }
            0x9 => Some(frame_bytes(true, 0xA, &frame.payload, None)),
            0x8 => {
                let code = &frame.payload[..frame.payload.len().min(2)];
                Some(frame_bytes(true, 0x8, code, None))
            }
            _ => None,
        };
        let is_close = frame.opcode == 0x8;
        if let Some(bytes) = reply
            && !shut
            && stream.write_all(&bytes).await.is_err()
        {
            shut = true;
        }
        record(frame);
        if is_close && !shut {
            let _ = stream.shutdown().await;
            shut = true;
        }
    }
}
