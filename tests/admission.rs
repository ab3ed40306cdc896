//! Who may open a WebSocket, end to end: a route's `allowed_origins` and `require_origin`, and
//! the per-address limits of `[limits]`, with real clients, real backends and real sockets.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use support::backends::{EchoBackend, refusing_addr};
use support::clients::Ws;
use support::{DEADLINE, Switchboard, eventually, metric};

/// A refused upgrade: its status and `Retry-After`.
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<u64>,
}

/// An HTTP/1.1 WebSocket upgrade by a real client, with `Origin` when given.
async fn upgrade(sb: &Switchboard, path: &str, origin: Option<&str>) -> Result<Ws, Refused> {
    let mut request = sb.ws_url(path).into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    let answer = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("an answer within the deadline");
    match answer {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::Error::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse().unwrap()),
        }),
        Err(e) => panic!("upgrade to {path} failed otherwise: {e}"),
    }
}

/// The status of an upgrade that must be refused.
async fn refused(sb: &Switchboard, path: &str, origin: Option<&str>) -> Refused {
    match upgrade(sb, path, origin).await {
        Ok(_) => panic!("upgrade to {path} with Origin {origin:?} was let through"),
        Err(refusal) => refusal,
    }
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("an echo within the deadline")
        .expect("stream open")
        .expect("valid message");
    assert_eq!(echoed, Message::text(text));
}

/// Closes a socket politely and waits for the close to complete.
async fn close(mut ws: Ws) {
    ws.close(None).await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await
    .expect("the close completes within the deadline");
}

/// An upgrade that must open: one echo through it, then a polite close.
async fn opens(sb: &Switchboard, path: &str, origin: Option<&str>) {
    let mut ws = upgrade(sb, path, origin)
        .await
        .unwrap_or_else(|r| panic!("{path} with Origin {origin:?}: {r:?}"));
    echo(&mut ws, path).await;
    close(ws).await;
}

/// The `Origin` of each handshake the backend saw, in order.
fn origins_seen(backend: &EchoBackend) -> Vec<Option<String>> {
    backend
        .handshakes
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.get("origin").map(|v| v.to_str().unwrap().to_owned()))
        .collect()
}

fn rejected(text: &str, reason: &str) -> f64 {
    metric(
        text,
        "switchboard_upgrades_rejected_total",
        &[("upstream", "app"), ("reason", reason)],
    )
}

/// One upstream `app` on `backend`, behind one route with `route` lines, after `extra`.
fn config(backend: &EchoBackend, route: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n{route}\n\
         [upstream.app]\nservers = [\"{}\"]\n",
        backend.addr
    )
}

#[tokio::test]
async fn a_listed_origin_upgrades_and_an_unlisted_one_gets_403_before_any_backend() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(
        &backend,
        "allowed_origins = [\"https://chat.example.com\", \"http://localhost:3000\"]",
        "",
    ))
    .await;

    let mut admitted = Vec::new();
    // Scheme and host in any case; the default port written or not.
    for origin in [
        "https://chat.example.com",
        "HTTPS://Chat.Example.COM",
        "https://chat.example.com:443",
        "http://localhost:3000",
    ] {
        opens(&sb, "/chat", Some(origin)).await;
        admitted.push(Some(origin.to_owned()));
    }
    let unlisted = [
        "https://evil.test",
        "https://chat.example.com:8443",
        "http://chat.example.com",
        "https://chat.example.com.evil.test",
        "https://evilchat.example.com",
        "http://localhost:3001",
        "http://localhost",
        "null",
        "chat.example.com",
    ];
    for origin in unlisted {
        let refusal = refused(&sb, "/chat", Some(origin)).await;
        assert_eq!(refusal.status, 403, "{origin}");
        assert_eq!(refusal.retry_after, None, "{origin}");
    }
    // The backend saw exactly the admitted handshakes: each refusal was answered before any
    // backend was picked (had one reached it, it would be in this list).
    assert_eq!(origins_seen(&backend), admitted);

    let text = sb.scrape().await;
    assert_eq!(rejected(&text, "origin"), unlisted.len() as f64);
    assert_eq!(rejected(&text, "per_ip_limit"), 0.0);
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[("outcome", "upgraded")]
        ),
        admitted.len() as f64
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_wildcard_matches_subdomains_but_not_the_bare_suffix_or_another_domain() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(
        &backend,
        "allowed_origins = [\"https://*.example.com\"]",
        "",
    ))
    .await;
    for origin in [
        "https://a.example.com",
        "https://a.b.example.com",
        "https://A.Example.Com",
    ] {
        opens(&sb, "/", Some(origin)).await;
    }
    let others = [
        "https://example.com",
        "https://notexample.com",
        "https://example.com.evil.test",
        "https://evil.test",
        "http://a.example.com",
    ];
    for origin in others {
        assert_eq!(
            refused(&sb, "/", Some(origin)).await.status,
            403,
            "{origin}"
        );
    }
    assert_eq!(backend.handshakes.lock().unwrap().len(), 3);
    assert_eq!(rejected(&sb.scrape().await, "origin"), others.len() as f64);
    sb.stop().await;
}

#[tokio::test]
async fn no_origin_is_allowed_unless_the_route_requires_one() {
    let backend = EchoBackend::start("echo").await;
    // Three routes to one upstream with different rules: each route's own rules apply.
    let sb = Switchboard::start(&format!(
        "[[route]]\npath_prefix = \"/open\"\nupstream = \"app\"\n\
         allowed_origins = [\"https://chat.example.com\"]\n\
         [[route]]\npath_prefix = \"/strict\"\nupstream = \"app\"\n\
         allowed_origins = [\"https://chat.example.com\", \"null\"]\nrequire_origin = true\n\
         [[route]]\npath_prefix = \"/any\"\nupstream = \"app\"\nrequire_origin = true\n\
         [upstream.app]\nservers = [\"{}\"]\n",
        backend.addr
    ))
    .await;

    // A client without Origin (not a browser) passes where no Origin is required.
    opens(&sb, "/open", None).await;
    assert_eq!(
        refused(&sb, "/open", Some("https://evil.test"))
            .await
            .status,
        403
    );

    assert_eq!(refused(&sb, "/strict", None).await.status, 403);
    assert_eq!(
        refused(&sb, "/strict", Some("https://evil.test"))
            .await
            .status,
        403
    );
    opens(&sb, "/strict", Some("https://chat.example.com")).await;
    // "null" matches only because it is listed here.
    opens(&sb, "/strict", Some("null")).await;

    // require_origin without a list: any origin, but one must be sent.
    assert_eq!(refused(&sb, "/any", None).await.status, 403);
    opens(&sb, "/any", Some("https://anything.test")).await;

    assert_eq!(
        origins_seen(&backend),
        [
            None,
            Some("https://chat.example.com".to_owned()),
            Some("null".to_owned()),
            Some("https://anything.test".to_owned()),
        ]
    );
    assert_eq!(rejected(&sb.scrape().await, "origin"), 4.0);
    sb.stop().await;
}

/// An RFC 8441 extended CONNECT for a WebSocket on `sender`; returns the status.
async fn h2_upgrade(
    sender: &mut http2::SendRequest<Empty<Bytes>>,
    uri: &str,
    origin: &str,
) -> (u16, http::Response<hyper::body::Incoming>) {
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(uri)
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .header("origin", origin)
        .body(Empty::new())
        .unwrap();
    sender.ready().await.unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("an answer within the deadline")
        .expect("answered");
    (response.status().as_u16(), response)
}

#[tokio::test]
async fn origins_are_checked_on_http2_websockets_too() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(
        &backend,
        "allowed_origins = [\"https://chat.example.com\"]",
        "",
    ))
    .await;
    // HTTP/2 with prior knowledge on the plain listener.
    let tcp = tokio::net::TcpStream::connect(sb.addr).await.unwrap();
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let uri = format!("http://{}/ws", sb.addr);

    let (status, _) = h2_upgrade(&mut sender, &uri, "https://evil.test").await;
    assert_eq!(status, 403);
    assert!(backend.handshakes.lock().unwrap().is_empty());
    let (status, mut response) = h2_upgrade(&mut sender, &uri, "https://chat.example.com").await;
    assert_eq!(status, 200);
    let upgraded = hyper::upgrade::on(&mut response).await.expect("upgraded");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("over h2")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("over h2"));
    assert_eq!(
        origins_seen(&backend),
        [Some("https://chat.example.com".into())]
    );
    assert_eq!(rejected(&sb.scrape().await, "origin"), 1.0);
    drop((ws, sender));
    sb.stop().await;
}

/// Waits until switchboard holds exactly `n` client connections. A tunnel gives its per-address
/// slot back before its connection's, so this also means the slots of the others are free.
async fn wait_for_connections(sb: &Switchboard, n: f64) {
    eventually(&format!("{n} client connections"), || async {
        let text = sb.scrape().await;
        (metric(&text, "switchboard_connections_active", &[]) == n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn max_tunnels_per_ip_refuses_the_third_with_429_until_one_ends() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(&backend, "", "[limits]\nmax_tunnels_per_ip = 2")).await;
    let mut first = upgrade(&sb, "/", None).await.unwrap();
    let mut second = upgrade(&sb, "/", None).await.unwrap();
    echo(&mut first, "one").await;
    echo(&mut second, "two").await;

    let refusal = refused(&sb, "/", None).await;
    assert_eq!(refusal.status, 429);
    let retry = refusal.retry_after.expect("429 carries Retry-After");
    assert!((1..=5).contains(&retry), "Retry-After: {retry}");
    assert_eq!(backend.handshakes.lock().unwrap().len(), 2);
    assert_eq!(rejected(&sb.scrape().await, "per_ip_limit"), 1.0);

    // One tunnel ends: its slot is free for a new one, and then the limit holds again.
    close(first).await;
    eventually("the closed tunnel is counted", || async {
        let text = sb.scrape().await;
        (metric(&text, "switchboard_tunnels_closed_total", &[]) == 1.0).then_some(())
    })
    .await;
    wait_for_connections(&sb, 1.0).await;
    let mut third = upgrade(&sb, "/", None).await.unwrap();
    echo(&mut third, "three").await;
    echo(&mut second, "still two").await;
    assert_eq!(refused(&sb, "/", None).await.status, 429);

    let text = sb.scrape().await;
    assert_eq!(rejected(&text, "per_ip_limit"), 2.0);
    assert_eq!(rejected(&text, "origin"), 0.0);
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[("outcome", "upgraded")]
        ),
        3.0
    );
    drop((second, third));
    sb.stop().await;
}

#[tokio::test]
async fn an_upgrade_that_fails_gives_its_slot_back() {
    let gone = refusing_addr().await;
    let sb = Switchboard::start(&format!(
        "[limits]\nmax_tunnels_per_ip = 1\n[[route]]\nupstream = \"app\"\n\
         [upstream.app]\nservers = [\"{gone}\"]\n"
    ))
    .await;
    // Each fails at the backend, never at the limit: the slot of the one before was freed.
    for _ in 0..3 {
        let refusal = refused(&sb, "/", None).await;
        assert!(refusal.status >= 500, "{refusal:?}");
    }
    assert_eq!(rejected(&sb.scrape().await, "per_ip_limit"), 0.0);
    sb.stop().await;
}

#[tokio::test]
async fn upgrades_per_ip_per_second_refuses_part_of_a_burst() {
    let backend = EchoBackend::start("echo").await;
    let sb = Switchboard::start(&config(
        &backend,
        "",
        "[limits]\nupgrades_per_ip_per_second = 5",
    ))
    .await;
    let attempts = futures_util::future::join_all((0..20).map(|_| upgrade(&sb, "/", None))).await;
    let mut open = Vec::new();
    let mut refusals = 0;
    for attempt in attempts {
        match attempt {
            Ok(ws) => open.push(ws),
            Err(refusal) => {
                assert_eq!(refusal.status, 429);
                let retry = refusal.retry_after.expect("429 carries Retry-After");
                assert!((1..=5).contains(&retry), "Retry-After: {retry}");
                refusals += 1;
            }
        }
    }
    // The burst (one second's worth, 5) goes at once; 20 within far less than the 3 s that
    // the rest would need to come back cannot all pass.
    assert!(open.len() >= 5, "only {} admitted", open.len());
    assert!(refusals >= 1, "all 20 admitted");
    for ws in &mut open {
        echo(ws, "admitted").await;
    }
    assert_eq!(backend.handshakes.lock().unwrap().len(), open.len());
    let text = sb.scrape().await;
    assert_eq!(rejected(&text, "per_ip_limit"), f64::from(refusals));
    assert_eq!(rejected(&text, "origin"), 0.0);
    drop(open);
    sb.stop().await;
}

#[tokio::test]
async fn tunnel_counts_survive_a_reload_that_changes_the_limit() {
    let backend = EchoBackend::start("echo").await;
    let body = |max: u32| {
        config(
            &backend,
            "",
            &format!("[limits]\nmax_tunnels_per_ip = {max}"),
        )
    };
    let (sb, file) = Switchboard::start_file(&body(1)).await;
    let mut first = upgrade(&sb, "/", None).await.unwrap();
    assert_eq!(refused(&sb, "/", None).await.status, 429);

    file.write(&body(2));
    let reloaded = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body_text());
    // The tunnel from before the reload still counts: one more fits, not two.
    let mut second = upgrade(&sb, "/", None).await.unwrap();
    assert_eq!(refused(&sb, "/", None).await.status, 429);
    echo(&mut first, "old").await;
    echo(&mut second, "new").await;
    assert_eq!(rejected(&sb.scrape().await, "per_ip_limit"), 2.0);
    drop((first, second));
    sb.stop().await;
}
