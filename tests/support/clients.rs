//! Clients: a WebSocket client (tokio-tungstenite), a small HTTP client, and raw sockets for
//! exact bytes.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::DEADLINE;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket with a real client; panics unless the handshake succeeds.
pub async fn ws_connect(url: &str) -> Ws {
    let (ws, response) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake within the deadline")
        .unwrap_or_else(|e| panic!("WebSocket handshake to {url} failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// Sends an RFC 8441 extended CONNECT for a WebSocket at `uri` on a new stream of `sender`
/// (with `headers` besides the version), and returns the answer after checking it is 200.
pub async fn extended_connect(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    uri: &str,
    headers: &[(&str, &str)],
) -> http::Response<hyper::body::Incoming> {
    let mut request = Request::builder()
        .method(http::Method::CONNECT)
        .uri(uri)
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(http_body_util::Empty::new()).unwrap();
    sender.ready().await.unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("answer within the deadline")
        .expect("extended CONNECT answered");
    assert_eq!(response.status(), 200);
    response
}

/// A response read whole.
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `path` on `addr` with extra headers, over a fresh HTTP/1.1 connection.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(addr, "GET", path, headers, Bytes::new()).await
}

/// Any request over a fresh HTTP/1.1 connection; the body is sent with a content-length.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> HttpResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(connection);
    let mut builder = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", addr.to_string());
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(body)).unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("response within the deadline")
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("body within the deadline")
        .expect("body")
        .to_bytes();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Reads up to and including the blank line that ends an HTTP head.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("head within the deadline")
            .expect("read");
        if n == 0 {
            break;
        }
        head.push(byte[0]);
        assert!(head.len() < 64 * 1024, "head too long");
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads exactly `n` bytes.
pub async fn read_exact<S: AsyncRead + Unpin>(stream: &mut S, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .expect("bytes within the deadline")
        .expect("read");
    buf
}

/// Reads until EOF; fails if the peer neither closes nor sends within the deadline.
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf))
        .await
        .expect("EOF within the deadline")
        .expect("read");
    buf
}

/// A client handshake for raw-socket tests.
pub fn handshake_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A masked client frame (RFC 6455 §5.2), payload under 126 bytes.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// An unmasked server frame, payload under 126 bytes.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![0x80 | opcode, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

/// Sends raw bytes and returns the connection.
pub async fn raw_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// One WebSocket frame as it was on the wire (RFC 6455 §5.2), its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    pub fin: bool,
    /// The RSV bits, as the top bits of the first byte (0x70 mask).
    pub rsv: u8,
    pub opcode: u8,
    /// The MASK bit was set (a client's frame).
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl WireFrame {
    /// A Close frame's status code, if it is a Close with one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// A Close frame's reason text (empty without one).
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }
}

/// Longest frame [`read_frame`] accepts; a longer one reads as the end of the stream.
const MAX_WIRE_FRAME: u64 = 64 * 1024 * 1024;

/// Reads one whole frame. `None` at EOF, on a read error, or for a frame over 64 MiB. No
/// deadline of its own: wrap it in a timeout where the peer may stay silent.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<WireFrame> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut bytes = [0u8; 2];
            stream.read_exact(&mut bytes).await.ok()?;
            u64::from(u16::from_be_bytes(bytes))
        }
        127 => {
            let mut bytes = [0u8; 8];
            stream.read_exact(&mut bytes).await.ok()?;
            u64::from_be_bytes(bytes)
        }
        short => u64::from(short),
    };
    if len > MAX_WIRE_FRAME {
        return None;
    }
    let masked = head[1] & 0x80 != 0;
    let mut key = [0u8; 4];
    if masked {
        stream.read_exact(&mut key).await.ok()?;
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.ok()?;
    if masked {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    Some(WireFrame {
        fin: head[0] & 0x80 != 0,
        rsv: head[0] & 0x70,
        opcode: head[0] & 0x0f,
        masked,
        payload,
    })
}

/// A frame of any length: `fin` and `opcode` as given, masked with `mask` when given (a client
/// frame), unmasked otherwise (a server frame).
pub fn frame_bytes(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = mask.unwrap_or([0; 4]);
    if mask.is_some() {
        frame.extend_from_slice(&key);
    }
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Sends Close on `ws`, waits (within [`DEADLINE`]) for the closing handshake and drops the
/// stream, so the tunnel ends now instead of at a half-close timeout.
pub async fn close_and_drop<S>(mut ws: WebSocketStream<S>)
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    ws.close(None).await.unwrap();
    let closing = async { while let Some(Ok(_)) = ws.next().await {} };
    tokio::time::timeout(DEADLINE, closing)
        .await
        .expect("closing handshake");
}

/// Reads until the Close frame, which must carry `code`; then lets tungstenite answer it and
/// reads to the end of the stream (each step within [`DEADLINE`]).
pub async fn expect_close<S>(
    ws: &mut S,
    code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode,
) where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("stream ended without a Close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a Close frame within the deadline");
    assert_eq!(end.map(|f| f.code), Some(code));
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
}
