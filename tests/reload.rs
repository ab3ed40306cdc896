//! Change without disconnects: hot reload keeps every tunnel it can, drains what it removes,
//! refuses a bad file and keeps serving; backends drained and undrained through the admin API.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use support::backends::EchoBackend;
use support::clients::{Ws, http_get, ws_connect};
use support::{DEADLINE, Switchboard, eventually, metric};

/// A least-conn upstream `chat` over `servers`, with short drains.
fn chat(servers: &[&EchoBackend], drain_timeout: &str) -> String {
    let list: Vec<String> = servers.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "[drain]\ntimeout = \"{drain_timeout}\"\nspread = \"200ms\"\nclose_linger = \"1s\"\n\
         [[route]]\nupstream = \"chat\"\n[upstream.chat]\nbalance = \"least-conn\"\nservers = [{}]\n",
        list.join(", ")
    )
}

/// A client whose backend greets it with its name.
async fn connect(sb: &Switchboard) -> (Ws, String) {
    let mut ws = ws_connect(&sb.ws_url("/chat")).await;
    let Message::Text(name) = next(&mut ws).await else {
        panic!("the backend greets first")
    };
    (ws, name.to_string())
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a message within the deadline")
        .expect("stream open")
        .expect("no error")
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next(ws).await, Message::text(text));
}

fn backend<'a>(upstreams: &'a Value, upstream: &str, addr: &str) -> &'a Value {
    upstreams["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream)
        .and_then(|u| u["backends"].as_array()?.iter().find(|b| b["addr"] == addr))
        .unwrap_or_else(|| panic!("no {upstream}/{addr} in {upstreams}"))
}

#[tokio::test]
async fn reload_keeps_the_kept_backends_tunnels_and_drains_the_removed_ones() {
    let a = EchoBackend::start_greeting("a").await;
    let b = EchoBackend::start_greeting("b").await;
    let c = EchoBackend::start_greeting("c").await;
    let (sb, file) = Switchboard::start_file(&chat(&[&a, &b], "300ms")).await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..10 {
        let (ws, name) = connect(&sb).await;
        match name.as_str() {
            "a" => on_a.push(ws),
            _ => on_b.push(ws),
        }
    }
    assert_eq!(
        (on_a.len(), on_b.len()),
        (5, 5),
        "least-conn spreads evenly"
    );

    // b goes, c comes.
    file.write(&chat(&[&a, &c], "300ms"));
    let reloaded = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body_text());
    assert_eq!(reloaded.body_text(), "{\"result\":\"ok\"}");

    // The removed backend is draining, its tunnels still up until drain.timeout.
    let upstreams = sb.upstreams().await;
    assert_eq!(
        backend(&upstreams, "chat", &b.addr.to_string())["state"],
        "draining"
    );
    assert_eq!(
        backend(&upstreams, "chat", &a.addr.to_string())["tunnels"],
        5
    );
    // New upgrades go to the emptier added backend, never to the removed one.
    let mut new_ones = Vec::new();
    for _ in 0..4 {
        let (ws, name) = connect(&sb).await;
        assert_eq!(name, "c");
        new_ones.push(ws);
    }
    // Every tunnel on b gets a polite Close 1001 within timeout + spread + linger.
    for ws in &mut on_b {
        match next(ws).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected Close 1001, got {other:?}"),
        }
    }
    // The kept backend's tunnels never noticed.
    for (i, ws) in on_a.iter_mut().enumerate() {
        echo(ws, &format!("still here {i}")).await;
    }
    for ws in &mut new_ones {
        echo(ws, "new").await;
    }
    // Counts stay true across the reload: what least-conn sees is what is live.
    let upstreams = sb.upstreams().await;
    assert_eq!(
        backend(&upstreams, "chat", &a.addr.to_string())["tunnels"],
        5
    );
    assert_eq!(
        backend(&upstreams, "chat", &c.addr.to_string())["tunnels"],
        4
    );
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_config_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );
    drop(on_b);
    eventually("drained tunnels counted", || async {
        let text = sb.scrape().await;
        let closed = metric(
            &text,
            "switchboard_tunnels_closed_total",
            &[("reason", "drain"), ("code", "1001")],
        );
        (closed == 5.0).then_some(())
    })
    .await;
    // Once its tunnels are gone, the removed backend's series go too.
    let gone = b.addr.to_string();
    eventually("removed backend's series dropped", || async {
        let text = sb.scrape().await;
        (!text.contains(&gone)).then_some(())
    })
    .await;
    drop((on_a, new_ones));
    sb.stop().await;
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_running_config_and_answers_400() {
    let a = EchoBackend::start_greeting("a").await;
    let (sb, file) = Switchboard::start_file(&chat(&[&a], "30s")).await;
    let (mut ws, _) = connect(&sb).await;
    file.write("[[route]]\nupstream = \"ghost\"\n");
    let refused = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(refused.status, 400);
    let body: Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["result"], "error");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("switchboard.toml:"), "{error}");
    assert!(error.contains("unknown upstream `ghost`"), "{error}");
    echo(&mut ws, "unaffected").await;
    let (_, name) = connect(&sb).await;
    assert_eq!(name, "a");
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_config_reloads_total",
            &[("result", "error")]
        ),
        1.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn reload_changes_a_route_and_a_timeout_for_new_requests() {
    let a = EchoBackend::start_greeting("a").await;
    let b = EchoBackend::start_greeting("b").await;
    let body = |first: &EchoBackend, idle: &str| {
        format!(
            "[timeouts]\ntunnel_idle = \"{idle}\"\n[[route]]\npath_prefix = \"/\"\nupstream = \"one\"\n\
             [[route]]\npath_prefix = \"/chat\"\nupstream = \"two\"\n\
             [upstream.one]\nservers = [\"{}\"]\n[upstream.two]\nservers = [\"{}\"]\n",
            first.addr, b.addr
        )
    };
    let (sb, file) = Switchboard::start_file(&body(&a, "1h")).await;
    let (mut old, name) = connect(&sb).await;
    assert_eq!(name, "b");
    // /chat now goes to upstream one (a), and tunnels idle out after 300 ms.
    file.write(&body(&a, "300ms").replace("path_prefix = \"/chat\"", "path_prefix = \"/other\""));
    assert_eq!(sb.admin_post("/admin/reload", &[]).await.status, 200);
    let (mut fresh, name) = connect(&sb).await;
    assert_eq!(name, "a");
    match next(&mut fresh).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("the new tunnel idles out under the new timeout: {other:?}"),
    }
    // The tunnel from before keeps the timeout it started with.
    echo(&mut old, "old settings").await;
    sb.stop().await;
}

#[tokio::test]
async fn drain_and_undrain_through_the_admin_api() {
    let a = EchoBackend::start_greeting("a").await;
    let b = EchoBackend::start_greeting("b").await;
    let (sb, _file) = Switchboard::start_file(&chat(&[&a, &b], "500ms")).await;
    let (mut on_a, _) = connect(&sb).await;
    let path = |action: &str| format!("/admin/upstreams/chat/backends/{}/{action}", a.addr);

    // Drained: new clients avoid it; undrained before the timeout: its tunnel stays.
    assert_eq!(sb.admin_post(&path("drain"), &[]).await.status, 200);
    assert_eq!(
        backend(&sb.upstreams().await, "chat", &a.addr.to_string())["state"],
        "draining"
    );
    for _ in 0..3 {
        let (_, name) = connect(&sb).await;
        assert_eq!(name, "b");
    }
    assert_eq!(sb.admin_post(&path("undrain"), &[]).await.status, 200);
    assert_eq!(
        backend(&sb.upstreams().await, "chat", &a.addr.to_string())["state"],
        "up"
    );
    // Well past the drain timeout, the tunnel is still there.
    let text = eventually("undrained", || async {
        let text = sb.scrape().await;
        (metric(
            &text,
            "switchboard_tunnels_draining",
            &[("upstream", "chat")],
        ) == 0.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "switchboard_backend_state", &[("state", "draining")]),
        0.0
    );
    echo(&mut on_a, "kept").await;

    // Drained for good: after drain.timeout its tunnel gets Close 1001.
    let started = std::time::Instant::now();
    assert_eq!(sb.admin_post(&path("drain"), &[]).await.status, 200);
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_tunnels_draining",
            &[("upstream", "chat")]
        ),
        1.0
    );
    match next(&mut on_a).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before drain.timeout"
    );

    // Unknown names are 404.
    let missing = sb
        .admin_post("/admin/upstreams/chat/backends/10.9.9.9:1/drain", &[])
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        sb.admin_post("/admin/upstreams/nope/backends/x/drain", &[])
            .await
            .status,
        404
    );
    sb.stop().await;
}

#[tokio::test]
async fn admin_endpoints_need_the_token_when_one_is_configured() {
    let a = EchoBackend::start("a").await;
    let dir = support::tls::TempDir::new("token");
    let token = dir.path("admin-token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let body = format!(
        "{}[[route]]\nupstream = \"chat\"\n[upstream.chat]\nservers = [\"{}\"]\n",
        "", a.addr
    );
    let (sb, file) = Switchboard::start_file(&body).await;
    // The token comes with the admin table; rewrite the file with it and reload.
    std::fs::write(
        &file.path,
        format!(
            "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n{body}",
            token.display()
        ),
    )
    .unwrap();
    assert_eq!(sb.admin_post("/admin/reload", &[]).await.status, 200);
    let denied = http_get(sb.admin, "/admin/upstreams", &[]).await;
    assert_eq!(denied.status, 401);
    assert_eq!(sb.admin_post("/admin/reload", &[]).await.status, 401);
    let wrong = http_get(
        sb.admin,
        "/admin/upstreams",
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    let allowed = http_get(
        sb.admin,
        "/admin/upstreams",
        &[("authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        sb.admin_post("/admin/reload", &[("authorization", "Bearer s3cret")])
            .await
            .status,
        200
    );
    // /metrics and the probes stay open for Prometheus and the kubelet.
    assert_eq!(http_get(sb.admin, "/metrics", &[]).await.status, 200);
    assert_eq!(http_get(sb.admin, "/readyz", &[]).await.status, 200);
    sb.stop().await;
}

#[tokio::test]
async fn reload_moves_the_listener_and_keeps_the_tunnels_of_the_old_one() {
    let a = EchoBackend::start_greeting("a").await;
    let body = chat(&[&a], "30s");
    let (sb, file) = Switchboard::start_file(&body).await;
    let (mut old, _) = connect(&sb).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    file.write_raw(&format!(
        "listen = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{body}"
    ));
    let moved = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(moved.status, 200, "{}", moved.body_text());
    // The new address serves; the old one no longer accepts; the tunnel from before lives on.
    let mut fresh = ws_connect(&format!("ws://127.0.0.1:{port}/chat")).await;
    assert_eq!(next(&mut fresh).await, Message::text("a"));
    eventually("old listener closed", || async {
        tokio::net::TcpStream::connect(sb.addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    echo(&mut old, "across the move").await;

    // A port that cannot be bound fails the reload and changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    file.write_raw(&format!(
        "listen = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        taken.local_addr().unwrap(),
        chat(&[], "30s").replace("servers = []", &format!("servers = [\"{}\"]", a.addr))
    ));
    let refused = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(refused.status, 400, "{}", refused.body_text());
    assert!(
        refused.body_text().contains("cannot listen on"),
        "{}",
        refused.body_text()
    );
    let mut again = ws_connect(&format!("ws://127.0.0.1:{port}/chat")).await;
    assert_eq!(next(&mut again).await, Message::text("a"));
    drop((old, fresh, again));
    sb.stop().await;
}

#[tokio::test]
async fn a_reload_that_needs_a_restart_is_refused_naming_the_key() {
    let a = EchoBackend::start_greeting("a").await;
    let body = chat(&[&a], "30s");
    let (sb, file) = Switchboard::start_file(&body).await;
    let (mut ws, _) = connect(&sb).await;
    let top = "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let socket = file.dir.path("handover.sock");
    let changes = [
        (
            format!("{top}handover_socket = \"{}\"\n{body}", socket.display()),
            "`admin.handover_socket` changed from none to",
        ),
        (
            format!("{top}[limits]\nmax_tunnels = 7\n{body}"),
            "`limits.max_tunnels` changed",
        ),
        (
            format!("{top}[runtime]\nmode = \"shared\"\n{body}"),
            "`[runtime]` changed",
        ),
    ];
    for (text, why) in changes {
        file.write_raw(&text);
        let refused = sb.admin_post("/admin/reload", &[]).await;
        assert_eq!(refused.status, 400, "{}", refused.body_text());
        assert!(refused.body_text().contains(why), "{}", refused.body_text());
        assert!(
            !socket.exists(),
            "a refused reload bound the hand-over socket"
        );
    }
    // Nothing changed: the running config reloads, and the tunnel from before lives on.
    file.write(&body);
    assert_eq!(sb.admin_post("/admin/reload", &[]).await.status, 200);
    echo(&mut ws, "after three refusals").await;
    drop(ws);
    sb.stop().await;
}

#[tokio::test]
async fn reload_changes_the_certificate_for_new_handshakes() {
    use support::tls::{TempDir, TestCa, peer_names, tls_connect};
    let a = EchoBackend::start("a").await;
    let ca = TestCa::new("reload CA");
    let dir = TempDir::new("reload-cert");
    let (old_cert, old_key) = ca.write_leaf(&dir, "old", &["old.test"]);
    let (new_cert, new_key) = ca.write_leaf(&dir, "new", &["new.test"]);
    let body = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[route]]\nupstream = \"chat\"\n[upstream.chat]\nservers = [\"{}\"]\n",
            cert.display(),
            key.display(),
            a.addr
        )
    };
    let (sb, file) = Switchboard::start_file_with(&body(&old_cert, &old_key), true).await;
    let client = ca.client_config(&[b"http/1.1"]);
    let before = tls_connect(sb.addr, "old.test", client.clone()).await;
    assert_eq!(peer_names(&before), vec!["old.test"]);
    file.write(&body(&new_cert, &new_key));
    assert_eq!(sb.admin_post("/admin/reload", &[]).await.status, 200);
    let after = tls_connect(sb.addr, "new.test", client).await;
    assert_eq!(peer_names(&after), vec!["new.test"]);
    drop((before, after));
    sb.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_binary() {
    let a = EchoBackend::start_greeting("a").await;
    let b = EchoBackend::start_greeting("b").await;
    let dir = support::tls::TempDir::new("sighup");
    let file = dir.path("switchboard.toml");
    let (listen, admin) = support::two_free_addrs();
    let write = |backend: &EchoBackend| {
        std::fs::write(
            &file,
            format!(
                "listen = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n[[route]]\nupstream = \"chat\"\n[upstream.chat]\nservers = [\"{}\"]\n",
                backend.addr
            ),
        )
        .unwrap()
    };
    write(&a);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let greeting = || async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{listen}/chat"))
            .await
            .ok()?;
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(name)))) => Some(name.to_string()),
            _ => None,
        }
    };
    assert_eq!(eventually("binary serving", greeting).await, "a");
    write(&b);
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("reloaded by SIGHUP", || async {
        (greeting().await.as_deref() == Some("b")).then_some(())
    })
    .await;
    let metrics = http_get(admin, "/metrics", &[]).await.body_text();
    assert_eq!(
        metric(
            &metrics,
            "switchboard_config_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn reloads_under_continuous_echo_lose_no_message_on_kept_backends() {
    let a = EchoBackend::start_greeting("a").await;
    let b = EchoBackend::start_greeting("b").await;
    let c = EchoBackend::start_greeting("c").await;
    let (sb, file) = Switchboard::start_file(&chat(&[&a, &b], "200ms")).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..200 {
        let (mut ws, name) = connect(&sb).await;
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            // Echo without pause until told to stop (bounded by a count as well).
            let mut sent = 0u32;
            for i in 0..100_000u32 {
                if stop.is_cancelled() {
                    break;
                }
                if ws.send(Message::text(format!("m{i}"))).await.is_err() {
                    return (name, sent, Some("send failed".to_owned()));
                }
                match tokio::time::timeout(DEADLINE, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.as_str() == format!("m{i}") => sent += 1,
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        return (name, sent, Some(format!("close {frame:?}")));
                    }
                    other => return (name, sent, Some(format!("{other:?}"))),
                }
            }
            (name, sent, None)
        }));
    }
    // Three reloads while every tunnel echoes: add c, remove b, change a timeout.
    for body in [
        chat(&[&a, &b, &c], "200ms"),
        chat(&[&a, &c], "200ms"),
        chat(&[&a, &c], "200ms").replace("close_linger = \"1s\"", "close_linger = \"2s\""),
    ] {
        file.write(&body);
        let reloaded = sb.admin_post("/admin/reload", &[]).await;
        assert_eq!(reloaded.status, 200, "{}", reloaded.body_text());
    }
    // b's tunnels end with a polite close; then stop the others and check them.
    eventually("b drained", || async {
        let text = sb.scrape().await;
        (metric(
            &text,
            "switchboard_tunnels_draining",
            &[("upstream", "chat")],
        ) == 0.0
            && metric(
                &text,
                "switchboard_tunnels_closed_total",
                &[("reason", "drain")],
            ) > 0.0)
            .then_some(())
    })
    .await;
    stop.cancel();
    let mut on_b = 0;
    for worker in workers {
        let (name, sent, ended) = worker.await.unwrap();
        assert!(sent > 0, "{name} echoed nothing");
        if name == "b" {
            on_b += 1;
            let ended = ended.expect("b's tunnels were closed");
            assert!(ended.contains("Away"), "{ended}");
        } else {
            assert_eq!(ended, None, "a tunnel on kept backend {name} broke");
        }
    }
    assert_eq!(on_b, 100);
    sb.stop().await;
}
