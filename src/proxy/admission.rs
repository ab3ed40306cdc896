//! Who may open a WebSocket: checked first thing in [`super::websocket::upgrade`], for HTTP/1.1
//! and RFC 8441 upgrades alike, before any backend is picked.
//!
//! Two checks, in this order. The route's origin rules (`allowed_origins`, `require_origin`):
//! browsers send a site's cookies with a WebSocket handshake whatever page opens it, and the
//! `Origin` header is the only thing that tells the server which page that was (Cross-Site
//! WebSocket Hijacking); refused with 403. Then the per-address limits
//! (`limits.max_tunnels_per_ip`, `limits.upgrades_per_ip_per_second`), so one host cannot take
//! every tunnel slot; refused with 429 and `Retry-After`. Each refusal is counted in
//! `switchboard_upgrades_rejected_total{reason="origin"|"per_ip_limit"}` here.
//!
//! The per-address state, [`PerIp`], is process state (it lives in [`super::Proxy`]), so a
//! reload changes the limits but not the counts. A client address is an IPv4 address, or an
//! IPv6 address's /64 (what one host or home network usually gets, so an IPv6 host cannot dodge
//! the limits by changing its interface id); IPv4-mapped IPv6 addresses count as IPv4.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use http::HeaderMap;
use http::header::ORIGIN;

use super::router::{Router, request_host};
use super::{Proxy, Snapshot};
use crate::balancer::pacing::now_ns;
use crate::config::{Config, Limits, Origin, OriginPolicy, Route};
use crate::error::ProxyError;

/// Shards of the per-address map; an upgrade locks one.
const SHARDS: usize = 16;

/// How often, at most, a shard is swept for rate buckets that have refilled.
const SWEEP_NS: u64 = 1_000_000_000;

/// The policy of a route without origin rules.
static OPEN: OriginPolicy = OriginPolicy {
    allowed: None,
    require: false,
};

/// Checks one upgrade: the origin rules of the route it came by, then the per-address limits
/// of `peer`. A refusal is counted and returned as the error to answer with; what is admitted
/// holds its tunnel slot (with `max_tunnels_per_ip`) until the returned value is dropped, so
/// it goes to the tunnel.
pub fn admit(
    proxy: &Proxy,
    snap: &Snapshot,
    upstream: usize,
    parts: &http::request::Parts,
    peer: IpAddr,
) -> Result<Admitted, ProxyError> {
    let refused = |reason: &str| {
        snap.metrics
            .upgrades_rejected_total
            .with_label_values(&[snap.balancers[upstream].name.as_str(), reason])
            .inc();
    };
    let policy = route_policy(&snap.config, upstream, parts);
    if let Err(reason) = check_origin(policy, &parts.headers) {
        refused("origin");
        return Err(ProxyError::Forbidden { reason });
    }
    proxy
        .admission
        .admit(peer, &snap.config.limits)
        .map_err(|limit| {
            refused("per_ip_limit");
            ProxyError::TooManyPerIp { limit }
        })
}

/// The origin rules of the route a request to `upstream` came by. Routes are not known past
/// the router, which answers with the upstream: when every route to that upstream has the same
/// rules (the usual case) they are the answer; otherwise the request is routed once more over
/// route indices, by the same [`Router`], to find which route it was.
fn route_policy<'a>(
    config: &'a Config,
    upstream: usize,
    parts: &http::request::Parts,
) -> &'a OriginPolicy {
    let mut policies = config
        .routes
        .iter()
        .zip(&config.route_origins)
        .filter(|(route, _)| route.upstream == upstream)
        .map(|(_, policy)| policy);
    let Some(first) = policies.next() else {
        return &OPEN;
    };
    if policies.all(|p| p == first) {
        return first;
    }
    let by_index: Vec<Route> = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| Route {
            host: route.host.clone(),
            path_prefix: route.path_prefix.clone(),
            upstream: i,
        })
        .collect();
    Router::new(&by_index)
        .route(request_host(parts), parts.uri.path())
        .and_then(|i| config.route_origins.get(i))
        .unwrap_or(first)
}

/// Whether `policy` lets an upgrade with these headers in; the error says why not, for the log.
pub fn check_origin(policy: &OriginPolicy, headers: &HeaderMap) -> Result<(), String> {
    if policy.is_open() {
        return Ok(());
    }
    let mut values = headers.get_all(ORIGIN).iter();
    let Some(value) = values.next() else {
        return match policy.require {
            true => Err("no Origin header, and the route has require_origin = true".into()),
            false => Ok(()),
        };
    };
    let Some(allowed) = &policy.allowed else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err("more than one Origin header".into());
    }
    let Ok(text) = value.to_str() else {
        return Err(format!("Origin {value:?} is not an origin"));
    };
    let origin = Origin::parse(text).map_err(|why| format!("Origin {text:?}: {why}"))?;
    if allowed.iter().any(|pattern| pattern.matches(&origin)) {
        Ok(())
    } else {
        Err(format!(
            "Origin {text:?} is not in the route's allowed_origins"
        ))
    }
}

/// A client address as the per-address limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    /// An IPv4 address (also when it came IPv4-mapped over IPv6).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => IpKey::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

/// What one client address holds now.
#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Tunnels and upgrades in progress, counted while `max_tunnels_per_ip` is on.
    tunnels: u32,
    /// GCRA theoretical arrival time of the address's next upgrade token, nanoseconds on the
    /// process clock ([`now_ns`]); at or before now, the bucket is full.
    tat_ns: u64,
}

impl Entry {
    /// Holds nothing a fresh entry would not: safe to forget.
    fn idle(&self, now_ns: u64) -> bool {
        self.tunnels == 0 && self.tat_ns <= now_ns
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<IpKey, Entry>,
    swept_at_ns: u64,
}

impl Shard {
    /// Forgets refilled buckets, at most once per [`SWEEP_NS`]; entries with tunnels stay. So the
    /// map holds the addresses with tunnels plus those that upgraded in the last
    /// `burst / rate` seconds (about one), and no more.
    fn sweep(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.swept_at_ns) < SWEEP_NS {
            return;
        }
        self.swept_at_ns = now_ns;
        self.map.retain(|_, entry| !entry.idle(now_ns));
        // After a flood of addresses, give the memory back.
        if self.map.capacity() > 1024 && self.map.capacity() > 4 * self.map.len() {
            self.map.shrink_to_fit();
        }
    }
}

/// The per-address limits' state: tunnel counts and upgrade buckets by [`IpKey`], in a sharded
/// map locked once per upgrade and once per tunnel end (never per message). Entries are removed
/// when they hold nothing: at a tunnel count of zero with a full bucket, and by a sweep for
/// buckets that refilled later. With both limits off nothing is locked or stored.
///
/// Tunnels are counted only while `max_tunnels_per_ip` is set: a reload that turns it on
/// counts the tunnels opened from then on, not those already open.
pub struct PerIp {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Default for PerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl PerIp {
    /// Empty state.
    pub fn new() -> Self {
        PerIp {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Admits one upgrade from `ip` under `limits`, or names the limit (its `[limits]` key)
    /// that refuses it. A refused upgrade takes no token and no slot.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Admitted, &'static str> {
        let (max_tunnels, rate) = (limits.max_tunnels_per_ip, limits.upgrades_per_ip_per_second);
        if max_tunnels.is_none() && rate.is_none() {
            // Off: the clock is not read and nothing is locked.
            return Ok(Admitted { slot: None });
        }
        self.admit_at(IpKey::from(ip), max_tunnels, rate, now_ns())
    }

    /// [`PerIp::admit`] for a key at a given time on the process clock.
    fn admit_at(
        self: &Arc<Self>,
        key: IpKey,
        max_tunnels: Option<u32>,
        rate: Option<(f64, u32)>,
        now_ns: u64,
    ) -> Result<Admitted, &'static str> {
        if max_tunnels.is_none() && rate.is_none() {
            return Ok(Admitted { slot: None });
        }
        let mut shard = self.shard(key);
        shard.sweep(now_ns);
        let entry = shard.map.entry(key).or_default();
        if max_tunnels.is_some_and(|max| entry.tunnels >= max) {
            return Err("max_tunnels_per_ip");
        }
        if let Some((rate, burst)) = rate {
            // GCRA, as in crate::balancer::pacing but under the shard's lock and without waits:
            // the bucket is full when the arrival time is not ahead of now, and `burst` upgrades
            // may go at once.
            let interval = ((1e9 / rate) as u64).max(1);
            let tolerance = interval.saturating_mul(u64::from(burst.max(1) - 1));
            let start = entry.tat_ns.max(now_ns);
            if start.saturating_sub(tolerance) > now_ns {
                return Err("upgrades_per_ip_per_second");
            }
            entry.tat_ns = start.saturating_add(interval);
        }
        if max_tunnels.is_none() {
            return Ok(Admitted { slot: None });
        }
        entry.tunnels += 1;
        Ok(Admitted {
            slot: Some(Slot {
                per_ip: self.clone(),
                key,
            }),
        })
    }

    /// Client addresses with state now (tunnels, or a bucket not yet refilled and swept).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    /// Tunnels (and upgrades in progress) counted for `ip`'s address now.
    pub fn tunnels(&self, ip: IpAddr) -> u32 {
        let key = IpKey::from(ip);
        self.shard(key).map.get(&key).map_or(0, |e| e.tunnels)
    }

    fn shard(&self, key: IpKey) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, key: IpKey) {
        let now_ns = now_ns();
        let mut shard = self.shard(key);
        if let Some(entry) = shard.map.get_mut(&key) {
            entry.tunnels = entry.tunnels.saturating_sub(1);
            if entry.idle(now_ns) {
                shard.map.remove(&key);
            }
        }
    }
}

/// An upgrade let through [`admit`]. Holds the client address's tunnel slot (with
/// `max_tunnels_per_ip`) until dropped: the tunnel keeps it for its life, and an upgrade that
/// fails before becoming a tunnel gives it back at once.
pub struct Admitted {
    slot: Option<Slot>,
}

impl Admitted {
    /// Whether this upgrade holds a per-address tunnel slot.
    pub fn holds_slot(&self) -> bool {
        self.slot.is_some()
    }
}

/// One counted tunnel of one address.
struct Slot {
    per_ip: Arc<PerIp>,
    key: IpKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.per_ip.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostPattern, OriginPattern};

    const SECOND: u64 = 1_000_000_000;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            IpKey::from(ip("2001:db8:1:2:aaaa::1")),
            IpKey::from(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            IpKey::from(ip("2001:db8:1:2::1")),
            IpKey::from(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            IpKey::from(ip("::ffff:192.0.2.7")),
            IpKey::from(ip("192.0.2.7"))
        );
        assert_ne!(IpKey::from(ip("192.0.2.7")), IpKey::from(ip("192.0.2.8")));
    }

    #[test]
    fn tunnel_slots_are_held_until_dropped_and_the_entry_goes_at_zero() {
        let per_ip = Arc::new(PerIp::new());
        let a = IpKey::from(ip("192.0.2.1"));
        let first = per_ip.admit_at(a, Some(2), None, SECOND).unwrap();
        let second = per_ip.admit_at(a, Some(2), None, SECOND).unwrap();
        assert!(first.holds_slot());
        assert_eq!(
            per_ip.admit_at(a, Some(2), None, SECOND).err(),
            Some("max_tunnels_per_ip")
        );
        // Another address is not affected.
        let other = per_ip
            .admit_at(IpKey::from(ip("192.0.2.2")), Some(2), None, SECOND)
            .unwrap();
        assert_eq!(per_ip.tunnels(ip("192.0.2.1")), 2);
        drop(first);
        let third = per_ip.admit_at(a, Some(2), None, SECOND).unwrap();
        drop((second, third, other));
        assert_eq!(per_ip.tracked(), 0);
    }

    #[test]
    fn the_rate_admits_a_burst_then_refuses_until_tokens_come_back() {
        let per_ip = Arc::new(PerIp::new());
        let a = IpKey::from(ip("2001:db8::1"));
        let t0 = 10 * SECOND;
        for _ in 0..5 {
            per_ip.admit_at(a, None, Some((5.0, 5)), t0).unwrap();
        }
        assert_eq!(
            per_ip.admit_at(a, None, Some((5.0, 5)), t0).err(),
            Some("upgrades_per_ip_per_second")
        );
        // 200 ms later one token is back.
        let later = t0 + SECOND / 5;
        per_ip.admit_at(a, None, Some((5.0, 5)), later).unwrap();
        assert!(per_ip.admit_at(a, None, Some((5.0, 5)), later).is_err());
        // The bucket refills within a second; a sweep after that forgets the address, but
        // not one that holds a tunnel.
        let held = per_ip
            .admit_at(IpKey::from(ip("192.0.2.9")), Some(1), Some((5.0, 5)), later)
            .unwrap();
        assert_eq!(per_ip.tracked(), 2);
        let refilled = later + 10 * SECOND;
        for shard in per_ip.shards.iter() {
            shard.lock().unwrap().sweep(refilled);
        }
        assert_eq!(per_ip.tracked(), 1);
        assert_eq!(per_ip.tunnels(ip("192.0.2.9")), 1);
        drop(held);
        for shard in per_ip.shards.iter() {
            shard.lock().unwrap().sweep(refilled + 10 * SECOND);
        }
        assert_eq!(per_ip.tracked(), 0);
    }

    #[test]
    fn a_refused_rate_takes_no_slot_and_a_full_count_takes_no_token() {
        let per_ip = Arc::new(PerIp::new());
        let a = IpKey::from(ip("192.0.2.3"));
        let t0 = 5 * SECOND;
        let held = per_ip.admit_at(a, Some(1), Some((1.0, 1)), t0).unwrap();
        // Full count: refused before the bucket is asked.
        assert_eq!(
            per_ip
                .admit_at(a, Some(1), Some((1.0, 1)), t0 + 2 * SECOND)
                .err(),
            Some("max_tunnels_per_ip")
        );
        drop(held);
        // The bucket refilled meanwhile: the token was not spent by the refusal.
        let again = per_ip
            .admit_at(a, Some(1), Some((1.0, 1)), t0 + 2 * SECOND)
            .unwrap();
        drop(again);
        // Out of tokens: refused without a slot, so the count is still zero.
        assert_eq!(
            per_ip
                .admit_at(a, Some(1), Some((1.0, 1)), t0 + 2 * SECOND)
                .err(),
            Some("upgrades_per_ip_per_second")
        );
        assert_eq!(per_ip.tunnels(ip("192.0.2.3")), 0);
    }

    #[test]
    fn origin_rules() {
        let policy =
            |allowed: Option<Vec<OriginPattern>>, require| OriginPolicy { allowed, require };
        let chat = OriginPattern::Site {
            scheme: "https".into(),
            host: HostPattern::Exact("chat.example.com".into()),
            port: Some(443),
        };
        let headers = |origins: &[&str]| {
            let mut h = HeaderMap::new();
            for o in origins {
                h.append(ORIGIN, o.parse().unwrap());
            }
            h
        };
        let listed = policy(Some(vec![chat.clone()]), false);
        assert!(check_origin(&listed, &headers(&["https://chat.example.com"])).is_ok());
        assert!(check_origin(&listed, &headers(&["https://evil.test"])).is_err());
        assert!(check_origin(&listed, &headers(&["null"])).is_err());
        assert!(check_origin(&listed, &headers(&["chat.example.com"])).is_err());
        assert!(
            check_origin(
                &listed,
                &headers(&["https://chat.example.com", "https://evil.test"])
            )
            .is_err()
        );
        assert!(check_origin(&listed, &headers(&[])).is_ok());
        let required = policy(Some(vec![chat, OriginPattern::Null]), true);
        assert!(check_origin(&required, &headers(&[])).is_err());
        assert!(check_origin(&required, &headers(&["null"])).is_ok());
        let any_but_present = policy(None, true);
        assert!(check_origin(&any_but_present, &headers(&["https://x.test"])).is_ok());
        assert!(check_origin(&any_but_present, &headers(&[])).is_err());
        assert!(check_origin(&OPEN, &headers(&["whatever"])).is_ok());
    }
}
