//! Shared by the PROXY protocol tests: a switchboard whose top-level keys the test writes (the
//! harness's `start` puts its own `[admin]` table first), and clients that write a PROXY header
//! by hand before speaking HTTP or WebSocket on the same connection.
#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use switchboard::metrics::Metrics;
use switchboard::{Listeners, Shutdown};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::DEADLINE;

/// The `trusted_proxies` line that trusts every test peer (all on 127.0.0.0/8).
pub const TRUST_LOOPBACK: &str = "trusted_proxies = [\"127.0.0.0/8\"]";

/// One route to upstream `app` over `servers`, with `extra` keys in the upstream's table.
pub fn upstream(servers: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[route]]\nupstream = \"app\"\n[upstream.app]\n{extra}\nservers = [{}]\n",
        list.join(", ")
    )
}

/// The `X-Forwarded-For` each request recorded by `backend` carried, in order.
pub fn forwarded_for(backend: &crate::support::backends::HttpBackend) -> Vec<String> {
    backend
        .recorded()
        .iter()
        .map(|r| r.headers["x-forwarded-for"].to_str().unwrap().to_owned())
        .collect()
}

/// A running switchboard and its admin listener.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<Result<(), switchboard::RunError>>,
}

impl Running {
    /// Starts with `top` (top-level keys) and `body` (tables); `tls` makes `listen` TLS.
    pub async fn start(top: &str, body: &str, tls: bool) -> Running {
        let text =
            format!("listen = \"127.0.0.1:0\"\n{top}\n[admin]\nlisten = \"127.0.0.1:0\"\n{body}");
        let config = switchboard::config::from_toml_str(&text, "test.toml")
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let (plain, tls) = if tls {
            (None, Some(listener))
        } else {
            (Some(listener), None)
        };
        let shutdown = Shutdown::new();
        let task = tokio::spawn(switchboard::run(
            config,
            Listeners {
                plain,
                tls,
                admin: Some(admin),
            },
            shutdown.clone(),
            Metrics::new(),
        ));
        Running {
            addr,
            admin: admin_addr,
            shutdown,
            task,
        }
    }

    /// `/metrics`.
    pub async fn scrape(&self) -> String {
        crate::support::clients::http_get(self.admin, "/metrics", &[])
            .await
            .body_text()
    }

    /// `switchboard_proxy_protocol_errors_total{reason}`.
    pub async fn errors(&self, reason: &str) -> f64 {
        crate::support::metric(
            &self.scrape().await,
            "switchboard_proxy_protocol_errors_total",
            &[("reason", reason)],
        )
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("stops");
    }
}

/// A v1 header for `client` (to 10.0.0.1:80).
pub fn v1(client: SocketAddr) -> Vec<u8> {
    let proto = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if client.is_ipv4() {
        "10.0.0.1"
    } else {
        "2001:db8::1"
    };
    format!(
        "PROXY {proto} {} {dst} {} 80\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A v2 header for an IPv4 `client`, with a TLV after the addresses.
pub fn v2(client: SocketAddr) -> Vec<u8> {
    let std::net::IpAddr::V4(ip) = client.ip() else {
        panic!("IPv4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    let mut block = ip.octets().to_vec();
    block.extend_from_slice(&[10, 0, 0, 1]);
    block.extend_from_slice(&client.port().to_be_bytes());
    block.extend_from_slice(&80u16.to_be_bytes());
    // PP2_TYPE_ALPN "h2": skipped by the receiver.
    block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(&block);
    h
}

/// A TCP connection to `addr` that has already sent `preface`.
pub async fn connect_with(addr: SocketAddr, preface: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(preface).await.expect("write the header");
    stream
}

/// GETs `path` (keep-alive: `count` times) over `io`; the status and body of each.
pub async fn get_over<S>(io: S, path: &str, count: usize) -> Vec<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("http handshake");
    tokio::spawn(connection);
    let mut answers = Vec::new();
    for _ in 0..count {
        let request = http::Request::get(path)
            .header("host", "app.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
            .await
            .expect("response within the deadline")
            .expect("response");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    answers
}

/// Whether switchboard closed `stream` without answering (EOF or reset, nothing read).
pub async fn closed_unanswered(mut stream: TcpStream) -> bool {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut buf),
    )
    .await
    .expect("closed within the deadline");
    match read {
        Ok(_) => buf.is_empty(),
        // A reset: switchboard closed with the request unread.
        Err(_) => true,
    }
}
