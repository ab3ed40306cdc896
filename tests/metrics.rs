//! `/metrics` parsed and checked against what the test did.

mod support;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use support::backends::{EchoBackend, HttpBackend, header_value, refusing_addr};
use support::clients::{http_get, raw_send, read_to_end, ws_connect};
use support::{DEADLINE, Switchboard, eventually, metric};

#[tokio::test]
async fn counters_match_what_happened() {
    let echo = EchoBackend::start("echo").await;
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&format!(
        r#"
[[route]]
path_prefix = "/ws"
upstream = "chat"
[[route]]
path_prefix = "/"
upstream = "web"
[upstream.chat]
servers = ["{}"]
[upstream.web]
servers = ["{}"]
"#,
        echo.addr, web.addr
    ))
    .await;

    for _ in 0..3 {
        assert_eq!(http_get(sb.addr, "/api", &[]).await.status, 200);
    }
    assert_eq!(
        http_get(sb.addr, "/api", &[("x-answer-status", "500")])
            .await
            .status,
        500
    );

    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut ws = ws_connect(&sb.ws_url("/ws")).await;
        ws.send(Message::text("hello")).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text("hello"));
        sockets.push(ws);
    }

    let text = sb.scrape().await;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(
        m(
            "switchboard_http_requests_total",
            &[("upstream", "web"), ("code", "200")]
        ),
        3.0
    );
    assert_eq!(
        m(
            "switchboard_http_requests_total",
            &[("upstream", "web"), ("code", "500")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "switchboard_http_request_duration_seconds_count",
            &[("upstream", "web")]
        ),
        4.0
    );
    assert_eq!(
        m(
            "switchboard_upgrades_total",
            &[
                ("upstream", "chat"),
                ("backend", &echo.addr.to_string()),
                ("outcome", "upgraded")
            ]
        ),
        2.0
    );
    assert_eq!(
        m(
            "switchboard_upgrade_duration_seconds_count",
            &[("upstream", "chat")]
        ),
        2.0
    );
    assert_eq!(
        m("switchboard_tunnels_active", &[("upstream", "chat")]),
        2.0
    );
    assert!(m("switchboard_connections_active", &[]) >= 2.0);
    assert!(m("switchboard_connections_total", &[]) >= 6.0);
    // Counted per tunnel and published within about a second while the tunnels live: a
    // masked 5-byte text frame is 2 + 4 + 5 bytes from the client, the echo is 2 + 5 bytes from
    // the backend.
    let live = eventually("bytes of live tunnels published", || async {
        let text = sb.scrape().await;
        let bytes = |direction| {
            metric(
                &text,
                "switchboard_tunnel_bytes_total",
                &[("upstream", "chat"), ("direction", direction)],
            )
        };
        (bytes("to_backend") == 22.0).then(|| (bytes("to_backend"), bytes("to_client")))
    })
    .await;
    assert_eq!(live, (22.0, 14.0));
    assert_eq!(m("switchboard_backend_up", &[("upstream", "chat")]), 1.0);

    for mut ws in sockets {
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    }
    let text = eventually("tunnels closed", || async {
        let text = sb.scrape().await;
        (metric(&text, "switchboard_tunnels_active", &[]) == 0.0).then_some(text)
    })
    .await;
    assert_eq!(
        metric(
            &text,
            "switchboard_tunnel_duration_seconds_count",
            &[("upstream", "chat")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "switchboard_tunnels_closed_total",
            &[("reason", "client_closed"), ("code", "1005")]
        ),
        2.0
    );
    assert!(
        metric(
            &text,
            "switchboard_tunnel_bytes_total",
            &[("direction", "to_backend")]
        ) > 22.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"web\"\n[upstream.web]\nservers = [\"{}\"]",
        web.addr
    ))
    .await;
    let r = http_get(sb.admin, "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(r.body_text().contains("# HELP switchboard_tunnels_active"));
    assert_eq!(http_get(sb.admin, "/healthz", &[]).await.status, 200);
    assert_eq!(http_get(sb.admin, "/readyz", &[]).await.status, 200);
    assert_eq!(http_get(sb.admin, "/nothing", &[]).await.status, 404);
    sb.stop().await;
}

#[tokio::test]
async fn head_on_the_probes_answers_like_get_without_a_body() {
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"web\"\n[upstream.web]\nservers = [\"{}\"]",
        web.addr
    ))
    .await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        let get = http_get(sb.admin, path, &[]).await;
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        let mut stream = raw_send(sb.admin, request.as_bytes()).await;
        let answer = String::from_utf8(read_to_end(&mut stream).await).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
        assert_eq!(body, "", "HEAD {path} sent a body");
        assert!(
            head.starts_with(&format!("HTTP/1.1 {} ", get.status)),
            "HEAD {path}: {head}"
        );
        let header = |name: &str| header_value(head, name);
        assert_eq!(
            header("content-type").as_deref(),
            get.headers["content-type"].to_str().ok(),
            "HEAD {path}"
        );
        let length: usize = header("content-length")
            .expect("HEAD says how long GET's body is")
            .parse()
            .unwrap();
        if path == "/metrics" {
            // The page changes between two scrapes (process metrics), its length a little.
            assert!(length > 1000, "{length}");
        } else {
            assert_eq!(length, get.body.len(), "HEAD {path}");
        }
    }
    sb.stop().await;
}

#[tokio::test]
async fn a_backend_nothing_has_tried_is_unknown_not_up_and_still_gets_traffic() {
    let web = HttpBackend::start("web").await;
    let gone = refusing_addr().await;
    let sb = Switchboard::start(&format!(
        "[[route]]\npath_prefix = \"/gone\"\nupstream = \"gone\"\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"web\"\n\
         [upstream.gone]\nservers = [\"{gone}\"]\n[upstream.web]\nservers = [\"{}\"]",
        web.addr
    ))
    .await;
    let (web_name, gone_name) = (web.addr.to_string(), gone.to_string());
    let state = |text: &str, backend: &str, state: &str| {
        metric(
            text,
            "switchboard_backend_state",
            &[("backend", backend), ("state", state)],
        )
    };
    let up =
        |text: &str, backend: &str| metric(text, "switchboard_backend_up", &[("backend", backend)]);
    let json_state = |upstreams: &serde_json::Value, upstream: &str| {
        upstreams["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == upstream)
            .unwrap()["backends"][0]["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let text = sb.scrape().await;
    for backend in [&web_name, &gone_name] {
        assert_eq!(state(&text, backend, "unknown"), 1.0, "{backend}");
        assert_eq!(state(&text, backend, "up"), 0.0, "{backend}");
        assert_eq!(up(&text, backend), 0.0, "{backend}");
    }
    let upstreams = sb.upstreams().await;
    assert_eq!(json_state(&upstreams, "web"), "unknown");
    assert_eq!(json_state(&upstreams, "gone"), "unknown");

    // An unknown backend is picked like an up one; its first answer makes it up.
    assert_eq!(http_get(sb.addr, "/", &[]).await.status, 200);
    assert_eq!(http_get(sb.addr, "/gone", &[]).await.status, 502);
    let text = sb.scrape().await;
    assert_eq!(state(&text, &web_name, "up"), 1.0);
    assert_eq!(state(&text, &web_name, "unknown"), 0.0);
    assert_eq!(up(&text, &web_name), 1.0);
    assert_eq!(state(&text, &gone_name, "down"), 1.0);
    assert_eq!(state(&text, &gone_name, "unknown"), 0.0);
    assert_eq!(up(&text, &gone_name), 0.0);
    let upstreams = sb.upstreams().await;
    assert_eq!(json_state(&upstreams, "web"), "up");
    assert_eq!(json_state(&upstreams, "gone"), "down");
    sb.stop().await;
}

#[tokio::test]
async fn process_and_build_metrics_are_exported() {
    let web = HttpBackend::start("web").await;
    let sb = Switchboard::start(&format!(
        "[[route]]\nupstream = \"web\"\n[upstream.web]\nservers = [\"{}\"]",
        web.addr
    ))
    .await;
    let text = sb.scrape().await;
    let m = |name: &str| metric(&text, name, &[]);
    assert_eq!(
        metric(
            &text,
            "switchboard_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", switchboard::metrics::BUILD_COMMIT)
            ]
        ),
        1.0
    );
    let commit = switchboard::metrics::BUILD_COMMIT;
    assert!(
        commit == "unknown" || (commit.len() >= 4 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
    assert_eq!(m("switchboard_connections_limit"), 10_000.0, "the default");
    if cfg!(target_os = "linux") {
        assert!(m("process_resident_memory_bytes") > 1e6);
        assert!(m("process_virtual_memory_bytes") >= m("process_resident_memory_bytes"));
        // The listeners and the scrape's own connection at least.
        assert!(m("process_open_fds") >= 3.0);
        assert!(m("process_max_fds") >= m("process_open_fds"));
        assert!(m("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = m("process_start_time_seconds");
        assert!(
            started > now - 86_400.0 && started <= now + 1.0,
            "{started}"
        );
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    }
    sb.stop().await;
}
