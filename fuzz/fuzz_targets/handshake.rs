//! The backend half of the WebSocket handshake (`proxy::handshake::exchange`) against a backend
//! that answers with the fuzz input.
//!
//! `exchange` reads and parses the answer from a `BackendStream`, which is a real TCP (or TLS)
//! stream: there is no pure parsing function to call. So each input gets a loopback TCP
//! connection in a current-thread runtime; the "backend" end reads the request, writes the
//! answer in pieces (sizes from the first byte, so heads come split across reads), closes its
//! write side and drains. With bit 0x80 of the first byte it sends 64 KiB more of one header
//! value behind the answer, to reach the head-size limit.
//!
//! Checked against one `httparse` parse of everything the backend sent (which is how the result
//! must come out whatever the read sizes), interim 1xx heads other than 101 skipped: a 101 gives
//! `Switched` with exactly the head's valid headers, and the stream then yields exactly the
//! bytes behind the head; another complete head gives `Other` (hyper parsing the same bytes,
//! with the same status) or a hyper error; a malformed head gives that parse error; an incomplete one gives `TooLarge`
//! from 64 KiB on and an early-EOF I/O error below. The request the backend got is exactly the
//! `GET` with the headers given. Nothing may hang (10 s) or panic.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use switchboard::proxy::connect::BackendStream;
use switchboard::proxy::handshake::{Answer, HandshakeError, exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const PATH: &str = "/chat?room=fuzz";

struct World {
    runtime: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
    headers: HeaderMap,
    request: Vec<u8>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("host", "chat.example.com"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut request = format!("GET {PATH} HTTP/1.1\r\n").into_bytes();
        for (k, v) in &headers {
            request.extend_from_slice(format!("{k}: {}\r\n", v.to_str().unwrap()).as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        World {
            runtime,
            listener,
            addr,
            headers,
            request,
        }
    })
}

/// What one parse of everything the backend sent says.
enum Expect {
    Switched { headers: HeaderMap, head_len: usize },
    Other { code: u16 },
    Parse(httparse::Error),
    TooLarge,
    Eof,
}

fn expect(sent: &[u8]) -> Expect {
    // Interim 1xx heads other than 101 are dropped (RFC 9110 §15.2); the answer is the next.
    let mut at = 0;
    loop {
        let rest = &sent[at..];
        if rest.is_empty() {
            return Expect::Eof;
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        match response.parse(rest) {
            Ok(httparse::Status::Complete(head_len)) => {
                let code = response.code.expect("a complete head has a code");
                if (100..200).contains(&code) && code != 101 {
                    at += head_len;
                    continue;
                }
                if code != 101 {
                    return Expect::Other { code };
                }
                let mut headers = HeaderMap::new();
                for h in response.headers.iter() {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(h.name.as_bytes()),
                        HeaderValue::from_bytes(h.value),
                    ) {
                        headers.append(name, value);
                    }
                }
                return Expect::Switched {
                    headers,
                    head_len: at + head_len,
                };
            }
            Ok(httparse::Status::Partial) if rest.len() >= MAX_HEAD => return Expect::TooLarge,
            Ok(httparse::Status::Partial) => return Expect::Eof,
            Err(e) => return Expect::Parse(e),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, answer)) = data.split_first() else {
        return;
    };
    let mut sent = answer.to_vec();
    if shape & 0x80 != 0 {
        sent.extend_from_slice(b"x-pad: ");
        sent.resize(sent.len() + MAX_HEAD, b'a');
    }
    let (answer_len, sent_len) = (answer.len(), sent.len());
    // Piece sizes 1..=8 bytes, or 64 and up: small pieces split the head across reads.
    let piece = match shape & 0x0f {
        n @ 0..=7 => usize::from(n) + 1,
        n => 64 << (n - 8),
    };
    let w = world();
    let expected = expect(&sent);
    w.runtime.block_on(async {
        let run = async {
            let (client, accepted) = tokio::join!(TcpStream::connect(w.addr), w.listener.accept());
            let client = client.expect("connect");
            let (mut backend, _) = accepted.expect("accept");
            let request_len = w.request.len();
            let to_send = sent.clone();
            let backend_task = tokio::spawn(async move {
                let mut request = vec![0; request_len];
                backend.read_exact(&mut request).await.expect("request");
                // The answer in pieces, the padding behind it at once (64 Ki one-byte writes
                // would make the input slow, not more interesting).
                let pieces = to_send[..answer_len].chunks(piece);
                for chunk in pieces.chain([&to_send[answer_len..sent_len]]) {
                    if backend.write_all(chunk).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = backend.shutdown().await;
                // Drain, so that closing does not reset what the client has not read yet.
                let mut rest = Vec::new();
                let _ = backend.read_to_end(&mut rest).await;
                request.extend_from_slice(&rest);
                request
            });

            let result = exchange(BackendStream::Plain(client), PATH, &w.headers).await;
            match (result, &expected) {
                (
                    Ok(Answer::Switched {
                        headers,
                        mut stream,
                    }),
                    Expect::Switched {
                        headers: want,
                        head_len,
                    },
                ) => {
                    assert_eq!(&headers, want, "101 headers");
                    let mut behind = Vec::new();
                    stream
                        .read_to_end(&mut behind)
                        .await
                        .expect("read behind the 101");
                    assert!(
                        behind == sent[*head_len..],
                        "bytes behind the 101 not replayed as sent"
                    );
                }
                (Ok(Answer::Other(response)), Expect::Other { code }) => {
                    assert_eq!(response.status().as_u16(), *code, "status");
                    let _ = response.into_body().collect().await;
                }
                (Err(HandshakeError::Hyper(_)), Expect::Other { .. }) => {}
                (Err(HandshakeError::Parse(e)), Expect::Parse(want)) => assert_eq!(&e, want),
                (Err(HandshakeError::TooLarge), Expect::TooLarge) => {}
                (Err(HandshakeError::Io(e)), Expect::Eof) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
                }
                (got, _) => panic!(
                    "exchange gave {}, expected {}",
                    show(&got),
                    describe(&expected)
                ),
            }
            let request = backend_task.await.expect("backend task");
            assert!(
                request == w.request,
                "request sent: {:?}",
                String::from_utf8_lossy(&request)
            );
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("exchange hung");
    });
});

fn show(got: &Result<Answer, HandshakeError>) -> String {
    match got {
        Ok(Answer::Switched { headers, .. }) => format!("Switched({headers:?})"),
        Ok(Answer::Other(r)) => format!("Other({})", r.status()),
        Err(e) => format!("Err({e:?})"),
    }
}

fn describe(e: &Expect) -> String {
    match e {
        Expect::Switched { headers, head_len } => format!("Switched({headers:?}, {head_len})"),
        Expect::Other { code } => format!("Other({code})"),
        Expect::Parse(e) => format!("Parse({e:?})"),
        Expect::TooLarge => "TooLarge".into(),
        Expect::Eof => "Eof".into(),
    }
}
