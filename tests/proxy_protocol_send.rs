//! `send_proxy_protocol`: backends that require a PROXY header get one first on every new
//! connection, naming the client — on WebSocket tunnels' own connections and on the pooled
//! plain-HTTP ones (kept per client) — and health checks send the form that names no client.
//! The backend here reads the header by hand, without switchboard's parser.

mod support;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use support::clients::http_get;
use support::{Switchboard, eventually};

/// What a connection's header said: `src>dst`, or `local` (v2 LOCAL, v1 UNKNOWN).
async fn read_proxy_header(version: &str, stream: &mut TcpStream) -> String {
    if version == "v1" {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            assert!(line.len() < 107, "a v1 header has at most 107 bytes");
            line.push(stream.read_u8().await.expect("header byte"));
        }
        let text = String::from_utf8(line).unwrap();
        let fields: Vec<&str> = text.trim_end().split(' ').collect();
        return match fields[..] {
            ["PROXY", "UNKNOWN"] => "local".to_owned(),
            ["PROXY", "TCP4", src, dst, sport, dport] => format!("{src}:{sport}>{dst}:{dport}"),
            _ => panic!("not a v1 header: {text:?}"),
        };
    }
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await.expect("v2 header");
    assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    let mut block = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
    stream.read_exact(&mut block).await.expect("v2 block");
    match (fixed[12], fixed[13]) {
        (0x20, _) => "local".to_owned(),
        (0x21, 0x11) => {
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            format!("{}:{}>{}:{}", ip(0), port(8), ip(4), port(10))
        }
        other => panic!("unexpected v2 command/family {other:?}"),
    }
}

/// A backend that requires a PROXY header of `version`: it records each connection's, and
/// answers with it (a plain request's body; an upgrade's `x-proxy-source`).
async fn header_backend(version: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let header = read_proxy_header(version, &mut stream).await;
                record.lock().unwrap().push(header.clone());
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let header = header.clone();
                    async move {
                        let mut response =
                            http::Response::new(Full::new(Bytes::from(header.clone())));
                        if let Some(key) = req.headers().get("sec-websocket-key") {
                            let accept =
                                tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                                    key.as_bytes(),
                                );
                            *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                            let h = response.headers_mut();
                            h.insert("connection", "upgrade".parse().unwrap());
                            h.insert("upgrade", "websocket".parse().unwrap());
                            h.insert("sec-websocket-accept", accept.parse().unwrap());
                            h.insert("x-proxy-source", header.parse().unwrap());
                            *response.body_mut() = Full::new(Bytes::new());
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, seen)
}

/// GETs `/` twice on one kept-alive connection; both bodies.
async fn two_gets(addr: SocketAddr) -> (SocketAddr, Vec<String>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let request = http::Request::get("/")
            .header("host", "app.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    (me, bodies)
}

#[tokio::test]
async fn backends_learn_the_client_from_a_header_v1_and_v2() {
    for version in ["v1", "v2"] {
        let (backend, seen) = header_backend(version).await;
        let sb = Switchboard::start(&format!(
            "[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"{backend}\"]\n\
             send_proxy_protocol = \"{version}\"\n\
             [upstream.app.health_check]\nkind = \"http\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nrise = 1\n"
        ))
        .await;
        // Pooled plain requests: each client's connections carry its own address, so the second
        // client never gets the first one's pooled connection.
        for _ in 0..2 {
            let (me, bodies) = two_gets(sb.addr).await;
            let want = format!("{me}>{backend}");
            assert_eq!(bodies, [want.clone(), want], "{version}");
        }
        // A one-shot client too (fresh connection each time).
        let answer = http_get(sb.addr, "/", &[]).await;
        assert!(
            answer.body_text().starts_with("127.0.0.1:"),
            "{version}: {}",
            answer.body_text()
        );

        // A WebSocket tunnel's own backend connection.
        let stream = TcpStream::connect(sb.addr).await.unwrap();
        let me = stream.local_addr().unwrap();
        let (ws, response) =
            tokio_tungstenite::client_async(format!("ws://{}/ws", sb.addr), stream)
                .await
                .expect("upgrade");
        assert_eq!(
            response.headers()["x-proxy-source"],
            format!("{me}>{backend}").as_str(),
            "{version}"
        );
        drop(ws);

        // Health checks name no client.
        eventually("a health check with a header that names no client", || {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|h| h == "local")
                    .then_some(())
            }
        })
        .await;
        sb.stop().await;
    }
}
