//! A tiny authoritative DNS responder for tests, on 127.0.0.1 UDP (and TCP) port 0: it answers
//! A queries for one name from a record set the test changes while it runs, and can be told to
//! answer SERVFAIL or NXDOMAIN, or not to answer. Hand-rolled (RFC 1035 §4.1: header, question, answers with a
//! compression pointer to the question's name) because that is all a lookup needs; a full
//! server crate would bring a second DNS implementation into the tests for nothing.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// How the responder answers the name it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The records (NOERROR; no records: NOERROR with an empty answer).
    Records,
    /// SERVFAIL: the lookup fails.
    ServFail,
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// No answer at all (the query is counted, then dropped): a nameserver that is down or
    /// slow, so a lookup waits for the resolver's timeout.
    Silent,
}

struct State {
    name: String,
    records: Vec<Ipv4Addr>,
    mode: Mode,
    ttl: u32,
    queries: usize,
    asked_a: Vec<std::time::Instant>,
}

/// A running responder; it stops when dropped.
pub struct DnsResponder {
    /// Where it listens (UDP and TCP on the same port).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: tokio_util::sync::CancellationToken,
}

impl DnsResponder {
    /// Serves `name` (without the final dot) with `records`, TTL 0 (no caching in the way).
    pub async fn start(name: &str, records: &[Ipv4Addr]) -> DnsResponder {
        Self::start_on(name, records, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`DnsResponder::start`], on `bind` (e.g. an address in a test's network namespace).
    pub async fn start_on(name: &str, records: &[Ipv4Addr], bind: SocketAddr) -> DnsResponder {
        let udp = UdpSocket::bind(bind).await.unwrap();
        let addr = udp.local_addr().unwrap();
        // TCP on the same port, for a resolver that retries a truncated answer over it.
        let tcp = TcpListener::bind(addr).await.ok();
        let state = Arc::new(Mutex::new(State {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            records: records.to_vec(),
            mode: Mode::Records,
            ttl: 0,
            queries: 0,
            asked_a: Vec::new(),
        }));
        let stop = tokio_util::sync::CancellationToken::new();
        let (udp_state, udp_stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, peer) = tokio::select! {
                    got = udp.recv_from(&mut buf) => match got { Ok(x) => x, Err(_) => continue },
                    _ = udp_stop.cancelled() => return,
                };
                if let Some(reply) = answer(&udp_state, &buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        if let Some(tcp) = tcp {
            let (tcp_state, tcp_stop) = (state.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = tokio::select! {
                        got = tcp.accept() => match got { Ok(x) => x, Err(_) => continue },
                        _ = tcp_stop.cancelled() => return,
                    };
                    let state = tcp_state.clone();
                    tokio::spawn(async move {
                        let mut len = [0u8; 2];
                        while stream.read_exact(&mut len).await.is_ok() {
                            let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                            if stream.read_exact(&mut query).await.is_err() {
                                return;
                            }
                            let Some(reply) = answer(&state, &query) else {
                                return;
                            };
                            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&reply);
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        DnsResponder { addr, state, stop }
    }

    /// Replaces the record set.
    pub fn set_records(&self, records: &[Ipv4Addr]) {
        self.state.lock().unwrap().records = records.to_vec();
    }

    /// Changes how it answers.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Sets the TTL of the records it gives.
    pub fn set_ttl(&self, ttl: u32) {
        self.state.lock().unwrap().ttl = ttl;
    }

    /// Queries answered so far (any type).
    pub fn queries(&self) -> usize {
        self.state.lock().unwrap().queries
    }

    /// When each A query for the name came.
    pub fn a_queries(&self) -> Vec<std::time::Instant> {
        self.state.lock().unwrap().asked_a.clone()
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The reply to one query, or `None` for bytes that are not a query (and for every query while
/// [`Mode::Silent`]).
fn answer(state: &Mutex<State>, query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    query.get(..question_end)?;
    let mut state = state.lock().unwrap();
    state.queries += 1;
    let ours = labels.join(".") == state.name;
    if ours && qtype == 1 {
        state.asked_a.push(std::time::Instant::now());
    }
    let (rcode, records) = match state.mode {
        Mode::Silent => return None,
        Mode::ServFail => (2u8, Vec::new()),
        Mode::NxDomain => (3, Vec::new()),
        Mode::Records if !ours => (3, Vec::new()),
        // AAAA and other types: NOERROR with no answer (the name exists, with A records only).
        Mode::Records if qtype != 1 => (0, Vec::new()),
        Mode::Records => (0, state.records.clone()),
    };
    let mut reply = Vec::with_capacity(question_end + records.len() * 16);
    reply.extend_from_slice(&query[..2]); // id
    reply.push(0x84 | (query[2] & 0x01)); // QR, AA, RD copied
    reply.push(0x80 | rcode); // RA, rcode
    reply.extend_from_slice(&[0, 1]); // one question
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    reply.extend_from_slice(&query[12..question_end]);
    for ip in records {
        reply.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        reply.extend_from_slice(&[0, 1, 0, 1]); // A, IN
        reply.extend_from_slice(&state.ttl.to_be_bytes());
        reply.extend_from_slice(&[0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}
