//! The demo's claim, end to end: with sticky-hash on the room, two people in one room reach the
//! same process-local chat backend and see each other's messages.

mod support;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use support::clients::{Ws, http_get, ws_connect};
use support::{DEADLINE, Switchboard};

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

fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let start = json.find(&format!("\"{name}\":\"")).expect("field present") + name.len() + 4;
    &json[start..start + json[start..].find('"').unwrap()]
}

#[tokio::test]
async fn people_in_one_room_meet_on_one_backend() {
    let mut servers = Vec::new();
    for n in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push(format!("\"{}\"", listener.local_addr().unwrap()));
        tokio::spawn(switchboard::demo::chat_backend(
            listener,
            format!("backend-{n}"),
        ));
    }
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"chat\"\n[upstream.chat]\nbalance = \"sticky-hash\"\nhash_key = \"query:room\"\nservers = [{}]",
        servers.join(", ")
    ))
    .await;

    let page = http_get(sb.addr, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.body_text().contains("switchboard demo chat"));

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
