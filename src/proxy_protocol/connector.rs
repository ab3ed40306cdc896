//! PROXY headers on the pooled plain-HTTP client's backend connections.
//!
//! A pooled connection outlives the request that opened it, and its header can name one client
//! only. So, as HAProxy keeps a connection with `send-proxy` private to its client, each client
//! address gets connections of its own: the client is written into the request URI's userinfo
//! ([`pool_tag`]), which hyper-util's pool keys connections by (scheme and authority) and which
//! goes nowhere else (requests are sent in origin form, and `Host` is set by switchboard). The
//! connector reads the client back from the URI and writes the header first on the new
//! connection, before TLS. Idle connections of one client are closed after
//! `timeouts.pool_idle` as any others.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Version, encode};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An [`HttpConnector`] that writes a PROXY header of `version` first (none when `None`).
#[derive(Clone)]
pub struct ProxyHeaderConnector {
    inner: HttpConnector,
    version: Option<Version>,
}

impl ProxyHeaderConnector {
    /// Wraps `inner`.
    pub fn new(inner: HttpConnector, version: Option<Version>) -> Self {
        ProxyHeaderConnector { inner, version }
    }
}

impl tower_service::Service<Uri> for ProxyHeaderConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let version = self.version;
        let client = client_of(&uri);
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let mut io = connecting.await?;
            if let Some(version) = version {
                let stream = io.inner_mut();
                let header = match client {
                    Some(client) => encode::header(version, client, stream.peer_addr()?),
                    None => encode::local(version).to_vec(),
                };
                stream.write_all(&header).await?;
            }
            Ok(io)
        })
    }
}

/// The userinfo that keys a client's own pooled connections: `pp` and the address in hex
/// (IP bytes, then the port), which URI userinfo takes as it is.
pub fn pool_tag(client: SocketAddr) -> String {
    let mut tag = String::from("pp");
    let bytes = match client.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    for b in bytes.iter().chain(&client.port().to_be_bytes()) {
        tag.push_str(&format!("{b:02x}"));
    }
    tag
}

/// The client of a URI made with [`pool_tag`].
fn client_of(uri: &Uri) -> Option<SocketAddr> {
    let authority = uri.authority()?.as_str();
    let (userinfo, _) = authority.rsplit_once('@')?;
    let hex = userinfo.strip_prefix("pp")?;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let (ip, port) = bytes.split_at_checked(bytes.len().checked_sub(2)?)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip = match ip.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_tags_carry_the_client_through_a_uri() {
        for client in ["203.0.113.7:5678", "[2001:db8::1]:443", "10.0.0.1:0"] {
            let client: SocketAddr = client.parse().unwrap();
            let uri: Uri = format!("http://{}@127.0.0.1:9000/x?y", pool_tag(client))
                .parse()
                .unwrap();
            assert_eq!(uri.host(), Some("127.0.0.1"));
            assert_eq!(uri.port_u16(), Some(9000));
            assert_eq!(client_of(&uri), Some(client));
        }
        let plain: Uri = "http://127.0.0.1:9000/".parse().unwrap();
        assert_eq!(client_of(&plain), None);
    }
}
