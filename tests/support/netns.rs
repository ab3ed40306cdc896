//! Hosts for the scale-out test: network namespaces joined by veth pairs, with an L4 spreader in
//! front of the replicas built the way kube-proxy's nftables mode builds a Service (DNAT to
//! `numgen random mod N` over the endpoints). Every address is inside namespaces this module
//! created, and they are deleted when the [`Lab`] is dropped.
//!
//! ```text
//!   host ns: clients, backends 10.91.0.11-14, DNS 10.91.0.2:53
//!      | eth0 10.91.0.2/24
//!      | l0   10.91.0.1/24   <- the VIP, 10.91.0.1:8080, DNATed by nftables
//!   lb ns (router)
//!      | rI   10.91.I.1/24     (I = 1..=replicas)
//!      | eth0 10.91.I.2/24
//!   replica ns I: switchboard listening on 10.91.I.2:8080, admin on :9090
//! ```
//!
//! The test's own thread moves into the host namespace ([`Lab::enter_host`]), so every socket
//! its single-threaded runtime makes is a socket of that namespace; replicas are started through
//! `ip netns exec`.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;

/// The port the replicas listen on, and the VIP's.
pub const PROXY_PORT: u16 = 8080;
/// The replicas' admin port.
pub const ADMIN_PORT: u16 = 9090;
/// The port every backend listens on (one port, many addresses: a headless Service).
pub const BACKEND_PORT: u16 = 9000;
/// The DNS responder's port on the host namespace's address.
pub const DNS_PORT: u16 = 53;

/// Runs `ip ARGS`, with its error output in the error.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn add(name: String) -> Result<Netns, String> {
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip netns exec NAME PROGRAM ARGS`.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &std::path::Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

/// The namespaces of one scale-out test.
pub struct Lab {
    /// Replica namespaces first, so their processes' namespaces go before the router's.
    replicas: Vec<Netns>,
    lb: Netns,
    host: Netns,
}

impl Lab {
    /// Builds the topology above, or says why it cannot (not root, no `ip`, no nftables).
    pub fn build(replicas: usize, backends: usize) -> Result<Lab, String> {
        let prefix = format!("sbso{}", std::process::id());
        let host = Netns::add(format!("{prefix}-host"))?;
        let lb = Netns::add(format!("{prefix}-lb"))?;
        let mut lab = Lab {
            replicas: Vec::new(),
            lb,
            host,
        };
        lab.lb.ip(&[
            "link",
            "add",
            "l0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lab.host.name,
        ])?;
        lab.lb.ip(&["addr", "add", "10.91.0.1/24", "dev", "l0"])?;
        lab.lb.ip(&["link", "set", "l0", "up"])?;
        lab.host
            .ip(&["addr", "add", "10.91.0.2/24", "dev", "eth0"])?;
        for j in 0..backends {
            let addr = format!("{}/24", Self::backend_ip(j));
            lab.host.ip(&["addr", "add", &addr, "dev", "eth0"])?;
        }
        lab.host.ip(&["link", "set", "eth0", "up"])?;
        lab.host
            .ip(&["route", "add", "default", "via", "10.91.0.1"])?;
        for i in 0..replicas {
            let ns = Netns::add(format!("{prefix}-r{i}"))?;
            let (router_side, subnet) = (format!("r{i}"), i + 1);
            lab.lb.ip(&[
                "link",
                "add",
                &router_side,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns.name,
            ])?;
            lab.lb.ip(&[
                "addr",
                "add",
                &format!("10.91.{subnet}.1/24"),
                "dev",
                &router_side,
            ])?;
            lab.lb.ip(&["link", "set", &router_side, "up"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("10.91.{subnet}.2/24"),
                "dev",
                "eth0",
            ])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.91.{subnet}.1"),
            ])?;
            lab.replicas.push(ns);
        }
        lab.lb.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let all: Vec<usize> = (0..replicas).collect();
        lab.spread_over(&all)?;
        Ok(lab)
    }

    /// Moves the calling thread into the host namespace: sockets it makes from now on are the
    /// host's (clients, backends, the DNS responder).
    pub fn enter_host(&self) -> Result<(), String> {
        let file = std::fs::File::open(format!("/run/netns/{}", self.host.name))
            .map_err(|e| format!("open the host namespace: {e}"))?;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("setns into the host namespace: {e}"))
    }

    /// Points the VIP at `members` (replica indexes) only, in one nftables transaction, as
    /// kube-proxy rewrites a Service's endpoint map; connections already made keep their NAT.
    pub fn spread_over(&self, members: &[usize]) -> Result<(), String> {
        let rule = if members.is_empty() {
            format!(
                "ip daddr {} tcp dport {PROXY_PORT} reject with tcp reset",
                Self::VIP
            )
        } else {
            let map: Vec<String> = members
                .iter()
                .enumerate()
                .map(|(slot, &i)| format!("{slot} : {}", Self::replica_ip(i)))
                .collect();
            format!(
                "ip daddr {} tcp dport {PROXY_PORT} dnat to numgen random mod {} map {{ {} }}",
                Self::VIP,
                members.len(),
                map.join(", ")
            )
        };
        let script = format!(
            "table ip spreader {{}}\ndelete table ip spreader\n\
             table ip spreader {{\n  chain prerouting {{\n    \
             type nat hook prerouting priority dstnat; policy accept;\n    {rule}\n  }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-spreader.nft", self.lb.name));
        std::fs::write(&file, script).map_err(|e| format!("write {}: {e}", file.display()))?;
        let result = self.lb.exec("nft", &["-f", &file.to_string_lossy()]);
        let _ = std::fs::remove_file(&file);
        result
    }

    /// The address clients connect to.
    pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
    /// The DNS responder's address (the host namespace's own).
    pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 2);

    /// Replica `i`'s address in its namespace.
    pub fn replica_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 91, i as u8 + 1, 2)
    }

    /// Backend `j`'s address in the host namespace.
    pub fn backend_ip(j: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 91, 0, 11 + j as u8)
    }

    /// The VIP with the proxy port.
    pub fn vip() -> SocketAddr {
        SocketAddr::from((Self::VIP, PROXY_PORT))
    }

    /// Replica `i`'s namespace.
    pub fn replica(&self, i: usize) -> &Netns {
        &self.replicas[i]
    }
}
