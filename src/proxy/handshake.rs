//! The HTTP/1.1 half of a WebSocket handshake towards the backend, done by hand.
//!
//! An upgrade needs one request out and one response head back, on a connection that then
//! becomes a tunnel. Writing the request and parsing the answer with `httparse` here costs one
//! write and usually one read; going through hyper's client connection instead costs a spawned
//! task, channels and a boxed upgraded stream per handshake, which showed up as the largest
//! share of switchboard's CPU per handshake in `e2e_load`. Any answer other than 101 is handed
//! to hyper after all (see [`Prefixed`]), so bodies, chunked encoding and interim responses are
//! still parsed by a proper HTTP implementation and streamed to the client.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::body::RequestBody;
use super::connect::BackendStream;

/// Largest response head accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a backend's response head.
const MAX_HEADERS: usize = 100;

/// The backend's answer to the handshake, on a connection of type `S` (a [`BackendStream`] in
/// switchboard; any stream in tests).
pub enum Answer<S = BackendStream> {
    /// 101: the connection is now the backend half of the tunnel.
    Switched {
        /// The 101's headers.
        headers: HeaderMap,
        /// The connection, replaying first any bytes that came right behind the 101.
        stream: Prefixed<S>,
    },
    /// Anything else, parsed by hyper, with the body still to be streamed.
    Other(Response<Incoming>),
}

/// Why the backend's answer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Writing or reading failed, or the backend closed before answering.
    #[error("backend connection failed during the handshake")]
    Io(#[from] io::Error),
    /// The response head is not HTTP.
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    /// The response head is too large.
    #[error("response head over {MAX_HEAD} bytes")]
    TooLarge,
    /// hyper could not read a non-101 answer.
    #[error("reading the backend's answer failed")]
    Hyper(#[from] hyper::Error),
}

/// Sends `GET path` with `headers` on `stream` and reads the answer, however the backend's
/// bytes are split into reads. Generic so that tests can feed it a scripted stream; switchboard
/// passes a [`BackendStream`].
pub async fn exchange<S>(
    mut stream: S,
    path: &str,
    headers: &HeaderMap,
) -> Result<Answer<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await?;
    stream.flush().await?;

    let mut buf = BytesMut::with_capacity(1024);
    let mut need_read = true;
    let (code, parsed, head_len) = loop {
        if need_read && stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed before answering",
            )
            .into());
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        match response.parse(&buf)? {
            httparse::Status::Complete(len) => {
                let code = response.code.unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    // 100 Continue, 103 Early Hints…: informational, the real answer follows
                    // (RFC 9110 §15.2). Dropped; a 101 behind it still opens the tunnel.
                    buf.advance(len);
                    need_read = buf.is_empty();
                    continue;
                }
                let mut map = HeaderMap::with_capacity(response.headers.len());
                if code == 101 {
                    for h in response.headers.iter() {
                        if let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(h.name.as_bytes()),
                            HeaderValue::from_bytes(h.value),
                        ) {
                            map.append(name, value);
                        }
                    }
                }
                break (code, map, len);
            }
            httparse::Status::Partial if buf.len() >= MAX_HEAD => {
                return Err(HandshakeError::TooLarge);
            }
            httparse::Status::Partial => {}
        }
        need_read = true;
    };

    if code == 101 {
        buf.advance(head_len);
        return Ok(Answer::Switched {
            headers: parsed,
            stream: Prefixed::new(buf.freeze(), stream),
        });
    }
    // Not an upgrade: let hyper parse the whole answer, from the bytes already read on.
    let replay = Prefixed::replaying(buf.freeze(), stream);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, RequestBody>(TokioIo::new(replay)).await?;
    tokio::spawn(connection);
    let mut request = Request::new(RequestBody::Empty);
    *request.method_mut() = Method::GET;
    *request.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    Ok(Answer::Other(sender.send_request(request).await?))
}

/// A stream that yields `prefix` before its own bytes: what the peer sent right behind a head
/// that was already parsed. In replay mode, writes are swallowed: the request they would carry
/// was already sent, and hyper only needs to read the answer to it.
pub struct Prefixed<S> {
    prefix: Option<Bytes>,
    inner: S,
    swallow_writes: bool,
    /// Replay mode: nothing is readable before hyper has "sent" its request, or hyper would
    /// take the answer for an unsolicited message.
    request_sent: bool,
    reader: Option<std::task::Waker>,
}

impl<S> Prefixed<S> {
    /// `prefix` first, then `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
            swallow_writes: false,
            request_sent: false,
            reader: None,
        }
    }

    fn replaying(prefix: Bytes, inner: S) -> Self {
        Prefixed {
            swallow_writes: true,
            ..Self::new(prefix, inner)
        }
    }
}

impl Prefixed<BackendStream> {
    /// The bare TCP socket, when nothing is left to replay and the backend is not TLS: what a
    /// tunnel holds best (no wrapper per idle tunnel).
    pub fn into_tcp(self) -> Result<tokio::net::TcpStream, Self> {
        match self {
            Prefixed {
                prefix: None,
                inner: BackendStream::Plain(tcp),
                swallow_writes: false,
                ..
            } => Ok(tcp),
            other => Err(other),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.swallow_writes && !this.request_sent {
            this.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(prefix) = &mut this.prefix {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.swallow_writes {
            this.request_sent = true;
            if let Some(reader) = this.reader.take() {
                reader.wake();
            }
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.swallow_writes {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefix_comes_first_then_the_stream() {
        let (mut near, far) = tokio::io::duplex(64);
        near.write_all(b" world").await.unwrap();
        drop(near);
        let mut stream = Prefixed::new(Bytes::from_static(b"hello"), far);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
