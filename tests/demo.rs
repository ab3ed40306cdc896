//! The demo's claims, end to end: with sticky-hash on the room, two people in one room reach the
//! same process-local chat backend and see each other's messages; and when that backend is
//! drained through the page's panel (`/demo/backends`, relayed by the chat backend to the admin
//! API), both get Close 1001, reconnect, and meet again on one other backend.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use support::clients::{HttpResponse, Ws, http_get, http_request, ws_connect};
use support::{DEADLINE, Switchboard, eventually};

/// Three chat backends behind switchboard as `switchboard demo` runs them, after `extra` (TOML
/// tables such as `[drain]`). The backends know the admin listener.
async fn start_demo(extra: &str) -> Switchboard {
    let mut listeners = Vec::new();
    let mut servers = Vec::new();
    for _ in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push(format!("\"{}\"", listener.local_addr().unwrap()));
        listeners.push(listener);
    }
    let sb = Switchboard::start(&format!(
        "{extra}\n[[route]]\nupstream = \"chat\"\n[upstream.chat]\nbalance = \"sticky-hash\"\nhash_key = \"query:room\"\nservers = [{}]",
        servers.join(", ")
    ))
    .await;
    // The backends' sockets are bound already: connections wait in their backlog until here.
    for (n, listener) in listeners.into_iter().enumerate() {
        tokio::spawn(switchboard::demo::chat_backend(
            listener,
            format!("backend-{}", n + 1),
            Some(sb.admin),
        ));
    }
    sb
}

async fn next_json(ws: &mut Ws) -> String {
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            return text.to_string();
        }
    }
}

/// Reads until a text line containing `needle` (at most 8 lines).
async fn wait_for_line(ws: &mut Ws, needle: &str) -> String {
    let mut seen = Vec::new();
    for _ in 0..8 {
        let line = next_json(ws).await;
        if line.contains(needle) {
            return line;
        }
        seen.push(line);
    }
    panic!("no line with {needle:?}; got {seen:?}");
}

/// Reads until the server's Close frame (skipping at most 8 other messages), then on to the end
/// of the stream so that the closing handshake completes; returns the Close code.
async fn close_code(ws: &mut Ws) -> CloseCode {
    for _ in 0..8 {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message or Close within the deadline")
            .expect("a Close before the stream ends")
            .expect("a frame");
        if let Message::Close(frame) = message {
            let code = frame.expect("a Close with a code").code;
            let rest = tokio::time::timeout(DEADLINE, async {
                for _ in 0..8 {
                    if ws.next().await.is_none() {
                        return;
                    }
                }
            });
            rest.await.expect("the stream ends after the Close");
            return code;
        }
    }
    panic!("no Close frame");
}

fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let start = json.find(&format!("\"{name}\":\"")).expect("field present") + name.len() + 4;
    &json[start..start + json[start..].find('"').unwrap()]
}

async fn post(sb: &Switchboard, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(sb.addr, "POST", path, headers, Bytes::new()).await
}

/// `GET /demo/backends` through switchboard, parsed: the backends of upstream `chat`.
async fn panel(sb: &Switchboard) -> Vec<serde_json::Value> {
    let response = http_get(sb.addr, "/demo/backends", &[]).await;
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    let upstreams = json["upstreams"].as_array().expect("upstreams");
    assert_eq!(upstreams.len(), 1, "{json}");
    assert_eq!(upstreams[0]["name"], "chat");
    upstreams[0]["backends"]
        .as_array()
        .expect("backends")
        .clone()
}

fn backend<'a>(backends: &'a [serde_json::Value], addr: &str) -> &'a serde_json::Value {
    backends
        .iter()
        .find(|b| b["addr"] == addr)
        .unwrap_or_else(|| panic!("no backend {addr} in {backends:?}"))
}

#[tokio::test]
async fn people_in_one_room_meet_on_one_backend() {
    let sb = start_demo("").await;

    let page = http_get(sb.addr, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.body_text().contains("switchboard demo chat"));
    assert!(page.body_text().contains(r#"<table id="backends">"#));

    let mut alice = ws_connect(&sb.ws_url("/chat?room=games&name=alice")).await;
    let welcome_a = next_json(&mut alice).await;
    let mut bob = ws_connect(&sb.ws_url("/chat?room=games&name=bob")).await;
    let welcome_b = next_json(&mut bob).await;
    assert_eq!(field(&welcome_a, "backend"), field(&welcome_b, "backend"));

    alice.send(Message::text("hi bob")).await.unwrap();
    // Bob sees his own join, then alice's message.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let line = next_json(&mut bob).await;
        let done = line.contains("hi bob");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(
        seen.last()
            .unwrap()
            .contains(r#""from":"alice","text":"hi bob""#),
        "{seen:?}"
    );
    drop((alice, bob));
    sb.stop().await;
}

#[tokio::test]
async fn draining_a_rooms_backend_moves_its_members_together() {
    let sb = start_demo("[drain]\ntimeout = \"1s\"\nspread = \"1s\"").await;

    let mut alice = ws_connect(&sb.ws_url("/chat?room=r&name=alice")).await;
    let welcome_a = next_json(&mut alice).await;
    let mut bob = ws_connect(&sb.ws_url("/chat?room=r&name=bob")).await;
    let welcome_b = next_json(&mut bob).await;
    let x = field(&welcome_a, "addr").to_owned();
    assert_eq!(field(&welcome_b, "addr"), x);

    let backends = panel(&sb).await;
    assert_eq!(backends.len(), 3, "{backends:?}");
    // X served both; the others are up, or unknown if nothing has tried them yet.
    assert_eq!(backend(&backends, &x)["state"], "up", "{backends:?}");
    assert!(
        backends
            .iter()
            .all(|b| b["state"] == "up" || b["state"] == "unknown"),
        "{backends:?}"
    );
    eventually("the panel counts both tunnels on X", || async {
        (backend(&panel(&sb).await, &x)["tunnels"] == 2).then_some(())
    })
    .await;

    let drained = post(&sb, &format!("/demo/backends/{x}/drain"), &[]).await;
    assert_eq!(drained.status, 200, "{}", drained.body_text());
    assert_eq!(backend(&panel(&sb).await, &x)["state"], "draining");

    assert_eq!(close_code(&mut alice).await, CloseCode::Away);
    assert_eq!(close_code(&mut bob).await, CloseCode::Away);
    // Their sockets end, as a browser's do after a Close.
    drop((alice, bob));

    let mut alice = ws_connect(&sb.ws_url("/chat?room=r&name=alice")).await;
    let welcome_a = next_json(&mut alice).await;
    let mut bob = ws_connect(&sb.ws_url("/chat?room=r&name=bob")).await;
    let welcome_b = next_json(&mut bob).await;
    let y = field(&welcome_a, "addr").to_owned();
    assert_ne!(y, x, "the room left the drained backend");
    assert_eq!(
        field(&welcome_b, "addr"),
        y,
        "both on the room's next backend"
    );
    assert_eq!(field(&welcome_a, "room"), "r");

    alice.send(Message::text("found you")).await.unwrap();
    let line = wait_for_line(&mut bob, "found you").await;
    assert!(line.contains(r#""from":"alice""#), "{line}");
    bob.send(Message::text("me too")).await.unwrap();
    let line = wait_for_line(&mut alice, "me too").await;
    assert!(line.contains(r#""from":"bob""#), "{line}");

    eventually("the panel shows the tunnels moved", || async {
        let backends = panel(&sb).await;
        (backend(&backends, &x)["tunnels"] == 0 && backend(&backends, &y)["tunnels"] == 2)
            .then_some(())
    })
    .await;

    let undrained = post(&sb, &format!("/demo/backends/{x}/undrain"), &[]).await;
    assert_eq!(undrained.status, 200, "{}", undrained.body_text());
    assert_eq!(backend(&panel(&sb).await, &x)["state"], "up");

    drop((alice, bob));
    sb.stop().await;
}

#[tokio::test]
async fn the_panel_refuses_other_sites_unknown_backends_and_draining_the_last_one() {
    let sb = start_demo("").await;
    let addrs: Vec<String> = panel(&sb)
        .await
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_owned())
        .collect();
    let drain = |addr: &str| format!("/demo/backends/{addr}/drain");

    let cross = post(&sb, &drain(&addrs[0]), &[("origin", "http://evil.example")]).await;
    assert_eq!(cross.status, 403, "{}", cross.body_text());
    let same_origin = format!("http://{}", sb.addr);
    let own = post(&sb, &drain(&addrs[0]), &[("origin", &same_origin)]).await;
    assert_eq!(own.status, 200, "{}", own.body_text());

    let unknown = post(&sb, &drain("127.0.0.1:1"), &[]).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body_text());
    let bad = post(&sb, "/demo/backends/a%2Fb/drain", &[]).await;
    assert_eq!(bad.status, 400, "{}", bad.body_text());
    let get = http_get(sb.addr, &drain(&addrs[0]), &[]).await;
    assert_eq!(get.status, 405, "{}", get.body_text());

    assert_eq!(post(&sb, &drain(&addrs[1]), &[]).await.status, 200);
    let last = post(&sb, &drain(&addrs[2]), &[]).await;
    assert_eq!(last.status, 409, "{}", last.body_text());
    let backends = panel(&sb).await;
    let state = &backend(&backends, &addrs[2])["state"];
    assert!(state == "up" || state == "unknown", "{backends:?}");
    sb.stop().await;
}
