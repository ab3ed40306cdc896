//! N switchboard replicas behind an L4 spreader, with backends found through a DNS responder:
//! in network namespaces ([`super::netns::Lab`]) where the machine allows it, else on 127.0.x.y
//! addresses with the spreading done by the client. The scale-out test drives both the same way.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::DEADLINE;
use super::backends::EchoBackend;
use super::clients::http_get;
use super::dns::DnsResponder;
use super::netns::{self, Lab};
use super::process::{Process, ready};
use super::tls::TempDir;

/// The name the backends are found under.
pub const NAME: &str = "chat.sb.test";

/// A WebSocket through a replica.
pub type Tunnel = WebSocketStream<TcpStream>;

/// Where the replicas, the backends and the DNS server live.
enum Hosts {
    Namespaces(Lab),
    /// Replica `i` on `127.0.1.(i+1)` with these proxy and admin ports; backends on
    /// `127.0.2.(j+1)`; the spreading done by [`Entry::pick`].
    Loopback {
        listen: Vec<SocketAddr>,
        admin: Vec<SocketAddr>,
    },
}

/// Where a client connects: the VIP, or (on loopback) one of the live replicas at random.
#[derive(Clone)]
pub struct Entry {
    vip: Option<SocketAddr>,
    members: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Entry {
    /// The address for one new connection.
    pub fn pick(&self) -> SocketAddr {
        if let Some(vip) = self.vip {
            return vip;
        }
        let members = self.members.lock().unwrap();
        members[rand::random_range(0..members.len())]
    }
}

/// The running set: replicas, backends, DNS.
pub struct Cluster {
    /// Replica processes by index (None while one is stopped). Dropped before the hosts.
    pub replicas: Vec<Option<Process>>,
    pub backends: Vec<EchoBackend>,
    pub dns: DnsResponder,
    pub entry: Entry,
    hosts: Hosts,
    dir: TempDir,
    generation: usize,
}

impl Cluster {
    /// Builds the hosts (namespaces if possible: the reason they are not is printed), starts
    /// `backends` greeting echo backends named a, b, c, … and the DNS responder announcing the
    /// first `announced` of them. Replicas are started with [`Cluster::start_replica`].
    ///
    /// With namespaces, the calling thread moves into the host namespace: call this before
    /// building the runtime that runs the test, on the thread that runs it.
    /// `SWITCHBOARD_TEST_LOOPBACK=1` skips the namespaces, to run the fallback on purpose.
    pub fn hosts(replicas: usize, backends: usize) -> (Option<Lab>, String) {
        if std::env::var_os("SWITCHBOARD_TEST_LOOPBACK").is_some() {
            return (
                None,
                "127.0.x.y addresses (SWITCHBOARD_TEST_LOOPBACK is set)".into(),
            );
        }
        match Lab::build(replicas, backends) {
            Ok(lab) => match lab.enter_host() {
                Ok(()) => (Some(lab), "network namespaces, nftables numgen DNAT".into()),
                Err(e) => (None, format!("127.0.x.y addresses ({e})")),
            },
            Err(e) => (None, format!("127.0.x.y addresses (no namespaces: {e})")),
        }
    }

    /// Starts backends and DNS on the hosts from [`Cluster::hosts`].
    pub async fn start(
        lab: Option<Lab>,
        replicas: usize,
        backends: usize,
        announced: usize,
    ) -> Cluster {
        let names = ["a", "b", "c", "d", "e", "f"];
        let (hosts, backend_addrs, dns_bind) = match lab {
            Some(lab) => {
                let addrs: Vec<SocketAddr> = (0..backends)
                    .map(|j| SocketAddr::from((Lab::backend_ip(j), netns::BACKEND_PORT)))
                    .collect();
                let dns = SocketAddr::from((Lab::DNS_IP, netns::DNS_PORT));
                (Hosts::Namespaces(lab), addrs, dns)
            }
            None => {
                let port =
                    free_port_on_all(&(0..backends).map(loopback_backend).collect::<Vec<_>>());
                let addrs = (0..backends)
                    .map(|j| SocketAddr::from((loopback_backend(j), port)))
                    .collect();
                let listen = (0..replicas)
                    .map(|i| free_addr(Ipv4Addr::new(127, 0, 1, i as u8 + 1)))
                    .collect();
                let admin = (0..replicas)
                    .map(|i| free_addr(Ipv4Addr::new(127, 0, 1, i as u8 + 1)))
                    .collect();
                let hosts = Hosts::Loopback { listen, admin };
                (hosts, addrs, SocketAddr::from(([127, 0, 0, 1], 0)))
            }
        };
        let mut started = Vec::new();
        for (j, addr) in backend_addrs.iter().enumerate() {
            let backend = EchoBackend::start_greeting_on(names[j], *addr)
                .await
                .unwrap_or_else(|e| panic!("backend {} on {addr}: {e}", names[j]));
            started.push(backend);
        }
        let announced_ips: Vec<Ipv4Addr> = backend_addrs[..announced]
            .iter()
            .map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => v4,
                other => panic!("not IPv4: {other}"),
            })
            .collect();
        let dns = DnsResponder::start_on(NAME, &announced_ips, dns_bind).await;
        let all: Vec<usize> = (0..replicas).collect();
        let mut cluster = Cluster {
            replicas: (0..replicas).map(|_| None).collect(),
            backends: started,
            dns,
            entry: Entry {
                vip: None,
                members: Arc::new(Mutex::new(Vec::new())),
            },
            hosts,
            dir: TempDir::new("scale-out"),
            generation: 0,
        };
        if let Hosts::Namespaces(_) = cluster.hosts {
            cluster.entry.vip = Some(Lab::vip());
        }
        cluster.spread_over(&all);
        cluster
    }

    /// Replica `i`'s proxy address (in its namespace, or on loopback).
    pub fn listen(&self, i: usize) -> SocketAddr {
        match &self.hosts {
            Hosts::Namespaces(_) => SocketAddr::from((Lab::replica_ip(i), netns::PROXY_PORT)),
            Hosts::Loopback { listen, .. } => listen[i],
        }
    }

    /// Replica `i`'s admin address.
    pub fn admin(&self, i: usize) -> SocketAddr {
        match &self.hosts {
            Hosts::Namespaces(_) => SocketAddr::from((Lab::replica_ip(i), netns::ADMIN_PORT)),
            Hosts::Loopback { admin, .. } => admin[i],
        }
    }

    /// The hand-over socket of replica `i`.
    pub fn handover_socket(&self, i: usize) -> std::path::PathBuf {
        self.dir.path(&format!("r{i}.sock"))
    }

    /// Backend `j`'s address.
    pub fn backend(&self, j: usize) -> SocketAddr {
        self.backends[j].addr
    }

    /// Announces backends `js` (indexes) in DNS, and only them.
    pub fn announce(&self, js: &[usize]) {
        let ips: Vec<Ipv4Addr> = js
            .iter()
            .map(|&j| match self.backend(j).ip() {
                std::net::IpAddr::V4(v4) => v4,
                other => panic!("not IPv4: {other}"),
            })
            .collect();
        self.dns.set_records(&ips);
    }

    /// Sends new connections to the replicas `members` only (existing ones stay where they are).
    pub fn spread_over(&mut self, members: &[usize]) {
        match &self.hosts {
            Hosts::Namespaces(lab) => lab.spread_over(members).unwrap(),
            Hosts::Loopback { listen, .. } => {
                *self.entry.members.lock().unwrap() = members.iter().map(|&i| listen[i]).collect();
            }
        }
    }

    /// The TOML of replica `i`: sticky-hash on `?k=` over `dns:NAME:PORT`.
    pub fn config(&self, i: usize) -> String {
        let port = self.backend(0).port();
        format!(
            "listen = \"{}\"\n\
             [admin]\nlisten = \"{}\"\nhandover_socket = \"{}\"\n\
             [dns]\nnameservers = [\"{}\"]\n\
             [timeouts]\nshutdown_delay = \"200ms\"\nshutdown_grace = \"10s\"\n\
             [drain]\ntimeout = \"200ms\"\nspread = \"1s\"\nclose_linger = \"300ms\"\n\
             [[route]]\nupstream = \"chat\"\n\
             [upstream.chat]\nbalance = \"sticky-hash\"\nhash_key = \"query:k\"\n\
             servers = [\"dns:{NAME}:{port}\"]\nresolve_interval = \"200ms\"\n",
            self.listen(i),
            self.admin(i),
            self.handover_socket(i).display(),
            self.dns.addr,
        )
    }

    /// Starts replica `i` (or, with `take_over`, a new process that takes its listeners over
    /// through its hand-over socket) and waits until it is ready. Returns the process.
    pub async fn launch(&mut self, i: usize, take_over: bool) -> Process {
        self.generation += 1;
        let name = format!("r{i}-{}", self.generation);
        let file = self.dir.path(&format!("{name}.toml"));
        std::fs::write(&file, self.config(i)).unwrap();
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"));
        let mut command = match &self.hosts {
            Hosts::Namespaces(lab) => lab.replica(i).command(binary),
            Hosts::Loopback { .. } => tokio::process::Command::new(binary),
        };
        command.arg("--config").arg(&file);
        if take_over {
            command.arg("--take-over").arg(self.handover_socket(i));
        }
        let process = Process::spawn(&mut command, self.dir.path(&format!("{name}.log")));
        ready(self.admin(i), &process).await;
        process
    }

    /// Starts replica `i` and keeps it in [`Cluster::replicas`].
    pub async fn start_replica(&mut self, i: usize) {
        let process = self.launch(i, false).await;
        self.replicas[i] = Some(process);
    }

    /// The backends replica `i` sends new connections to (addresses, sorted; not draining).
    pub async fn serving(&self, i: usize) -> Vec<SocketAddr> {
        let response = http_get(self.admin(i), "/admin/upstreams", &[]).await;
        let upstreams: serde_json::Value = serde_json::from_str(&response.body_text()).unwrap();
        let mut addrs: Vec<SocketAddr> = super::serving_backends(&upstreams, "chat")
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        addrs.sort();
        addrs
    }

    /// Waits until every running replica serves exactly backends `js`.
    pub async fn wait_for_backends(&self, js: &[usize]) {
        let mut want: Vec<SocketAddr> = js.iter().map(|&j| self.backend(j)).collect();
        want.sort();
        for i in 0..self.replicas.len() {
            if self.replicas[i].is_none() {
                continue;
            }
            let want = want.clone();
            super::eventually(&format!("replica {i} serves {want:?}"), || {
                let want = want.clone();
                async move { (self.serving(i).await == want).then_some(()) }
            })
            .await;
        }
    }

    /// The `/metrics` page of replica `i`.
    pub async fn scrape(&self, i: usize) -> String {
        http_get(self.admin(i), "/metrics", &[]).await.body_text()
    }
}

fn loopback_backend(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 2, j as u8 + 1)
}

/// An address on `ip` that was free a moment ago (for the binary, which binds it itself).
fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    let probe = std::net::TcpListener::bind((ip, 0)).unwrap();
    probe.local_addr().unwrap()
}

/// A port free on every one of `ips` a moment ago: the namespaces' backend port when it is
/// free (fixed addresses hash the same every run, so the share of keys a new backend takes is
/// the same every run too), else a random one.
fn free_port_on_all(ips: &[Ipv4Addr]) -> u16 {
    for attempt in 0..50 {
        let port = match attempt {
            0 => netns::BACKEND_PORT,
            _ => free_addr(ips[0]).port(),
        };
        let held: Vec<_> = ips
            .iter()
            .map_while(|ip| std::net::TcpListener::bind((*ip, port)).ok())
            .collect();
        if held.len() == ips.len() {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A new connection through `entry` for key `k`: the tunnel and the backend that greeted it.
pub async fn open(addr: SocketAddr, k: usize) -> Result<(Tunnel, String), String> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut ws, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/chat?k={k}"), stream)
                .await
                .map_err(|e| format!("upgrade via {addr}: {e}"))?;
        match ws.next().await {
            Some(Ok(Message::Text(name))) => Ok((ws, name.to_string())),
            other => Err(format!("no greeting via {addr}: {other:?}")),
        }
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no greeting via {addr} within the deadline")))
}

/// Closes a tunnel politely and reads to its end (bounded by [`DEADLINE`]).
pub async fn close(mut ws: Tunnel) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Sends `text` and expects it back, next, as the only thing the tunnel carries.
pub async fn echo(ws: &mut Tunnel, text: &str) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Text(back)))) if back.as_str() == text => Ok(()),
        other => Err(format!("expected the echo of {text:?}, got {other:?}")),
    }
}
