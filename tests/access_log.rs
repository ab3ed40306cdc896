//! The access log, read from the real binary's stdout: one line per plain request when its
//! response is done, lines for a WebSocket at upgrade and at close, request ids forwarded to
//! backends, failures in plain words, and `[log] access = "off"`.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;

use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio_tungstenite::tungstenite::Message;

use support::backends::{EchoBackend, HttpBackend, refusing_addr};
use support::clients::{http_get, http_request};
use support::{DEADLINE, eventually};

/// The binary, started on two reserved ports with `body` after `listen` and `[admin]`.
struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    listen: SocketAddr,
    _dir: support::tls::TempDir,
}

impl Running {
    async fn start(tag: &str, body: &str) -> Running {
        let dir = support::tls::TempDir::new(tag);
        let file = dir.path("switchboard.toml");
        let (listen, admin) = support::two_free_addrs();
        std::fs::write(
            &file,
            format!("listen = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n{body}"),
        )
        .unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&file)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        eventually("the binary serving", || async {
            tokio::net::TcpStream::connect(admin).await.ok().map(|_| ())
        })
        .await;
        Running {
            child,
            lines,
            listen,
            _dir: dir,
        }
    }

    /// The next JSON line whose `fields.message` is `message` (at most 1 000 lines).
    async fn next_json(&mut self, message: &str) -> Value {
        let found = tokio::time::timeout(DEADLINE, async {
            for _ in 0..1000 {
                let line = self.lines.next_line().await.unwrap().expect("a log line");
                let json: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if json["fields"]["message"] == message {
                    return json;
                }
            }
            panic!("no {message:?} line in 1 000 lines");
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {message:?} line within the deadline"))
    }

    /// Lines up to the first that contains `marker` (at most 1 000).
    async fn lines_until(&mut self, marker: &str) -> Vec<String> {
        let found = tokio::time::timeout(DEADLINE, async {
            let mut seen = Vec::new();
            for _ in 0..1000 {
                let line = self.lines.next_line().await.unwrap().expect("a log line");
                let done = line.contains(marker);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            panic!("no line with {marker:?} in 1 000 lines");
        })
        .await;
        found.unwrap_or_else(|_| panic!("no line with {marker:?} within the deadline"))
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn routes(web: SocketAddr, echo: SocketAddr, dead: SocketAddr) -> String {
    format!(
        "[[route]]\npath_prefix = \"/ws\"\nupstream = \"chat\"\n\
         [[route]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"web\"\n\
         [upstream.web]\nservers = [\"{web}\"]\n\
         [upstream.chat]\nservers = [\"{echo}\"]\n\
         [upstream.dead]\nservers = [\"{dead}\"]\n"
    )
}

#[tokio::test]
async fn json_access_lines_for_requests_and_websockets_with_request_ids() {
    let web = HttpBackend::start("web").await;
    let echo = EchoBackend::start("echo").await;
    let dead = refusing_addr().await;
    let body = format!(
        "[log]\nformat = \"json\"\n{}",
        routes(web.addr, echo.addr, dead)
    );
    let mut sb = Running::start("access-json", &body).await;

    let response = http_request(
        sb.listen,
        "POST",
        "/orders?token=secret",
        &[("x-request-id", "req-42")],
        Bytes::from_static(b"12345"),
    )
    .await;
    assert_eq!(response.status, 200);
    let line = sb.next_json("request").await;
    let f = &line["fields"];
    assert_eq!(line["target"], "access", "{line}");
    assert_eq!(f["method"], "POST");
    assert_eq!(f["path"], "/orders", "no query unless access_query: {line}");
    assert_eq!(f["status"], 200);
    assert_eq!(f["bytes_in"], 5);
    assert_eq!(f["bytes_out"], 5);
    assert_eq!(f["upstream"], "web");
    assert_eq!(f["backend"], web.addr.to_string());
    assert_eq!(f["attempts"], 1);
    assert_eq!(f["request_id"], "req-42");
    assert_eq!(f["complete"], true);
    assert!(f["duration_us"].as_u64().is_some(), "{line}");
    assert!(f["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let seen = web.recorded();
    assert_eq!(seen[0].headers.get_all("x-request-id").iter().count(), 1);
    assert_eq!(seen[0].headers["x-request-id"], "req-42");

    // Without one, an id is made, logged and forwarded.
    assert_eq!(http_get(sb.listen, "/plain", &[]).await.status, 200);
    let line = sb.next_json("request").await;
    let made = line["fields"]["request_id"].as_str().unwrap().to_owned();
    assert_eq!(made.len(), 32, "{line}");
    assert_eq!(web.recorded()[1].headers["x-request-id"], made.as_str());

    // A WebSocket: a line at upgrade and one at close, with the same id.
    let url = format!("ws://{}/ws/room", sb.listen);
    let mut ws = support::clients::ws_connect(&url).await;
    let upgraded = sb.next_json("websocket upgraded").await;
    assert_eq!(upgraded["target"], "access");
    assert_eq!(upgraded["fields"]["status"], 101);
    assert_eq!(upgraded["fields"]["path"], "/ws/room");
    ws.send(Message::text("hi")).await.unwrap();
    support::clients::close_and_drop(ws).await;
    let closed = sb.next_json("tunnel closed").await;
    assert_eq!(
        closed["fields"]["request_id"],
        upgraded["fields"]["request_id"]
    );

    // A failure names what was tried, in plain words.
    assert_eq!(http_get(sb.listen, "/dead", &[]).await.status, 502);
    let failed = sb.next_json("request failed").await;
    let tried = failed["fields"]["tried"].as_str().unwrap();
    assert_eq!(tried, format!("connection refused by {dead}"), "{failed}");
    let line = sb.next_json("request").await;
    assert_eq!(line["fields"]["status"], 502);
    assert_eq!(line["fields"]["backend"], dead.to_string());
    sb.stop().await;
}

#[tokio::test]
async fn access_off_writes_no_access_lines_and_access_query_keeps_queries() {
    let web = HttpBackend::start("web").await;
    let echo = EchoBackend::start("echo").await;
    let dead = refusing_addr().await;
    let body = format!(
        "[log]\naccess = \"off\"\n{}",
        routes(web.addr, echo.addr, dead)
    );
    let mut sb = Running::start("access-off", &body).await;
    // `OPTIONS *` is answered here, its line (if any) written before the answer; the failed
    // request after it writes a warning, the marker.
    let mut stream =
        support::clients::raw_send(sb.listen, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let head = support::clients::read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(http_get(sb.listen, "/dead", &[]).await.status, 502);
    let lines = sb.lines_until("request failed").await;
    assert!(
        lines.iter().all(|l| !l.contains(" access:")),
        "no access line: {lines:?}"
    );
    sb.stop().await;

    let body = format!(
        "[log]\nformat = \"json\"\naccess_query = true\n{}",
        routes(web.addr, echo.addr, dead)
    );
    let mut sb = Running::start("access-query", &body).await;
    assert_eq!(http_get(sb.listen, "/search?q=1", &[]).await.status, 200);
    let line = sb.next_json("request").await;
    assert_eq!(line["fields"]["path"], "/search?q=1");
    sb.stop().await;
}
