//! The signed sticky cookie end to end: a socket.io session (polling, then the upgrade) stays
//! on one backend through two replicas that share nothing but the secret, even though every
//! client has one IP; tampered cookies are ignored; a drained, dead or spilled-to backend moves
//! or keeps the session as it should.

mod support;

use support::session::{SessionBackend, Visit, poll, secret_file, sticky_config, upgrade};
use support::tls::TempDir;
use support::{Switchboard, eventually, metric};

const SECRET: &[u8] = b"replicas share this 32-byte key\n";

async fn three_backends() -> Vec<SessionBackend> {
    let mut backends = Vec::new();
    for name in ["s1", "s2", "s3"] {
        backends.push(SessionBackend::start(name).await);
    }
    backends
}

fn refs(backends: &[SessionBackend]) -> Vec<&SessionBackend> {
    backends.iter().collect()
}

fn cookie_count(sb_metrics: &str, outcome: &str) -> f64 {
    metric(
        sb_metrics,
        "switchboard_sticky_cookie_total",
        &[("upstream", "chat"), ("outcome", outcome)],
    )
}

#[tokio::test]
async fn a_socketio_session_through_two_replicas_stays_on_one_backend() {
    for balance in ["balance = \"round-robin\"", "balance = \"least-conn\""] {
        let dir = TempDir::new("sticky-replicas");
        let secret = secret_file(&dir, "route-key", SECRET);
        let backends = three_backends().await;
        let config = sticky_config(&secret, balance, &refs(&backends));
        let (a, b) = (
            Switchboard::start(&config).await,
            Switchboard::start(&config).await,
        );

        // Without the cookie, one client IP alternating between replicas is spread around:
        // what breaks socket.io behind a cloud load balancer.
        let mut without = Vec::new();
        for sb in [&a, &b, &a, &b] {
            without.push(poll(sb.addr, None).await.backend);
        }
        without.sort();
        without.dedup();
        assert!(without.len() > 1, "{balance}: {without:?}");

        // The handshake poll gets a cookie; the rest of the session carries it.
        let first = poll(a.addr, None).await;
        let cookie = first.cookie().expect("the first response sets the cookie");
        let line = first.set_cookie.as_deref().unwrap();
        assert!(
            line.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
            "{line}"
        );
        let with_io = format!("io=session; {cookie}");
        let second = poll(b.addr, Some(&with_io)).await;
        let third = poll(a.addr, Some(&with_io)).await;
        let (upgraded, tunnel) = upgrade(b.addr, Some(&with_io)).await;
        drop(tunnel);
        for visit in [&second, &third, &upgraded] {
            assert_eq!(visit.backend, first.backend, "{balance}: {visit:?}");
            assert_eq!(
                visit.set_cookie, None,
                "{balance}: a valid cookie is not re-set"
            );
        }

        // Backends see their own cookies, never the proxy's.
        for backend in &backends {
            for cookies in backend.cookies_seen() {
                assert!(!cookies.contains("sb_route"), "{cookies}");
            }
        }
        let session = backends.iter().find(|s| s.name == first.backend).unwrap();
        assert!(session.cookies_seen().iter().any(|c| c == "io=session"));

        let (ma, mb) = (a.scrape().await, b.scrape().await);
        assert_eq!(cookie_count(&ma, "valid") + cookie_count(&mb, "valid"), 3.0);
        assert_eq!(
            cookie_count(&ma, "missing") + cookie_count(&mb, "missing"),
            5.0
        );
        a.stop().await;
        b.stop().await;
    }
}

/// `cookie` with one character of its token changed (still base64url).
fn tampered(cookie: &str) -> String {
    let mut bytes = cookie.as_bytes().to_vec();
    let at = bytes.len() - 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn a_tampered_or_foreign_cookie_is_ignored_and_replaced() {
    let dir = TempDir::new("sticky-tamper");
    let secret = secret_file(&dir, "route-key", SECRET);
    let other = secret_file(&dir, "other-key", b"another replica set's own secret");
    let backends = three_backends().await;
    let servers = refs(&backends);
    let balance = "balance = \"round-robin\"";
    let sb = Switchboard::start(&sticky_config(&secret, balance, &servers)).await;
    let foreign = Switchboard::start(&sticky_config(&other, balance, &servers)).await;

    let genuine = poll(sb.addr, None).await.cookie().unwrap();
    let foreign_cookie = poll(foreign.addr, None).await.cookie().unwrap();
    for bad in [tampered(&genuine), foreign_cookie, "sb_route=s1".to_owned()] {
        let visit: Visit = poll(sb.addr, Some(&bad)).await;
        let fresh = visit.cookie().expect("an invalid cookie is replaced");
        assert_ne!(fresh, bad);
        // The replacement is genuine: it is honoured without being set again.
        let again = poll(sb.addr, Some(&fresh)).await;
        assert_eq!((again.backend, again.set_cookie), (visit.backend, None));
    }
    let text = sb.scrape().await;
    assert_eq!(cookie_count(&text, "invalid"), 3.0);
    assert_eq!(cookie_count(&text, "valid"), 3.0);
    sb.stop().await;
    foreign.stop().await;
}

#[tokio::test]
async fn a_drained_backends_cookie_is_replaced() {
    let dir = TempDir::new("sticky-drain");
    let secret = secret_file(&dir, "route-key", SECRET);
    let backends = three_backends().await;
    let config = sticky_config(&secret, "balance = \"round-robin\"", &refs(&backends));
    let sb = Switchboard::start(&config).await;

    let first = poll(sb.addr, None).await;
    let cookie = first.cookie().unwrap();
    let pinned = backends.iter().find(|s| s.name == first.backend).unwrap();
    let path = format!("/admin/upstreams/chat/backends/{}/drain", pinned.addr);
    assert_eq!(sb.admin_post(&path, &[]).await.status, 200);

    for _ in 0..3 {
        let moved = poll(sb.addr, Some(&cookie)).await;
        assert_ne!(
            moved.backend, first.backend,
            "a draining backend takes no session"
        );
        let fresh = moved.cookie().expect("the cookie is replaced");
        let (upgraded, tunnel) = upgrade(sb.addr, Some(&fresh)).await;
        drop(tunnel);
        assert_eq!(
            (upgraded.backend, upgraded.set_cookie),
            (moved.backend, None)
        );
    }
    assert_eq!(cookie_count(&sb.scrape().await, "unavailable"), 3.0);
    sb.stop().await;
}

#[tokio::test]
async fn a_pinned_backend_that_refuses_connects_moves_the_session_by_either_road() {
    let dir = TempDir::new("sticky-dead");
    let secret = secret_file(&dir, "route-key", SECRET);
    let mut backends = three_backends().await;
    let config = sticky_config(&secret, "balance = \"round-robin\"", &refs(&backends));
    let (a, b) = (
        Switchboard::start(&config).await,
        Switchboard::start(&config).await,
    );
    let (first, tunnel) = upgrade(a.addr, None).await;
    drop(tunnel);
    let cookie = first.cookie().unwrap();
    let dead = backends
        .iter_mut()
        .find(|s| s.name == first.backend)
        .unwrap();
    dead.stop().await;

    // Upgrade: the pin is tried first (nothing says the backend is gone yet), refused, and the
    // next backend answers with a cookie of its own.
    let (moved, tunnel) = upgrade(a.addr, Some(&cookie)).await;
    drop(tunnel);
    assert_ne!(moved.backend, first.backend);
    let fresh = moved
        .cookie()
        .expect("a new cookie for the backend that answered");
    let (again, tunnel) = upgrade(a.addr, Some(&fresh)).await;
    drop(tunnel);
    assert_eq!(
        (again.backend, again.set_cookie),
        (moved.backend.clone(), None)
    );

    // Plain request on the other replica, which has no pooled connection to the dead backend.
    let polled = poll(b.addr, Some(&cookie)).await;
    assert_ne!(polled.backend, first.backend);
    assert!(polled.cookie().is_some());
    let text = b.scrape().await;
    assert_eq!(cookie_count(&text, "valid"), 1.0);
    assert!(
        metric(
            &text,
            "switchboard_backend_connect_errors_total",
            &[("reason", "refused")]
        ) >= 1.0
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_spilled_key_keeps_its_session_on_the_backend_it_spilled_to() {
    let dir = TempDir::new("sticky-spill");
    let secret = secret_file(&dir, "route-key", SECRET);
    let backends = three_backends().await;
    let balance = "balance = \"sticky-hash\"\nhash_key = \"ip\"\nload_factor = 1.0";
    let sb = Switchboard::start(&sticky_config(&secret, balance, &refs(&backends))).await;

    // One tunnel fills the IP's hashed backend to its bound (1.0 × 2 connections / 3 backends,
    // rounded up: 1), so the next request from that IP spills.
    let (hashed, tunnel) = upgrade(sb.addr, None).await;
    let spilled = poll(sb.addr, None).await;
    assert_ne!(spilled.backend, hashed.backend, "the bound spills the key");
    let cookie = spilled
        .cookie()
        .expect("the cookie names the backend spilled to");
    drop(tunnel);
    eventually("the tunnel is gone", || async {
        let text = sb.scrape().await;
        (metric(&text, "switchboard_tunnels_active", &[]) == 0.0).then_some(())
    })
    .await;

    // The hash would go back to its first choice; the session follows its cookie.
    assert_eq!(poll(sb.addr, None).await.backend, hashed.backend);
    let followed = poll(sb.addr, Some(&cookie)).await;
    assert_eq!(
        (followed.backend, followed.set_cookie),
        (spilled.backend, None)
    );
    sb.stop().await;
}
