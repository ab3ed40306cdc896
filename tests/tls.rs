//! TLS termination and TLS to backends, with certificates made in the test.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

use support::backends::EchoBackend;
use support::clients::{raw_send, read_to_end};
use support::tls::{TempDir, TestCa, peer_names, server_config, tls_connect};
use support::{DEADLINE, Switchboard, eventually, metric};

fn tls_table(cert: &std::path::Path, key: &std::path::Path, extra: &str) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    )
}

fn route_to(servers: &str, upstream_extra: &str) -> String {
    format!(
        "[[route]]\nupstream = \"app\"\n[upstream.app]\n{upstream_extra}\nservers = [{servers}]\n"
    )
}

async fn wss_echo(stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>, host: &str) {
    let (mut ws, response) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), stream)
        .await
        .expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("over tls"));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_wss_works() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("sni");
    let (default_cert, default_key) = ca.write_leaf(&dir, "default", &["default.test"]);
    let (chat_cert, chat_key) = ca.write_leaf(&dir, "chat", &["chat.test"]);
    let (game_cert, game_key) = ca.write_leaf(&dir, "game", &["*.game.test"]);
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start_tls(&format!(
        "{}[[tls.certificates]]\nserver_names = [\"chat.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        tls_table(&default_cert, &default_key, ""),
        chat_cert.display(),
        chat_key.display(),
        game_cert.display(),
        game_key.display(),
        route_to(&format!("\"{}\"", echo.addr), "")
    ))
    .await;
    let client = ca.client_config(&[b"http/1.1"]);

    let chat = tls_connect(sb.addr, "chat.test", client.clone()).await;
    assert_eq!(peer_names(&chat), ["chat.test"]);
    wss_echo(chat, "chat.test").await;

    // A wildcard from the certificate's own names, one label deep.
    let game = tls_connect(sb.addr, "lobby.game.test", client.clone()).await;
    assert_eq!(peer_names(&game), ["*.game.test"]);
    drop(game);

    // An unknown name gets the default certificate (the client then rejects it, as it should).
    let tcp = tokio::net::TcpStream::connect(sb.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("unknown.test").unwrap();
    let refused = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await;
    assert!(
        refused.is_err(),
        "a certificate for unknown.test cannot have been presented"
    );
    let default = tls_connect(sb.addr, "default.test", client.clone()).await;
    assert_eq!(peer_names(&default), ["default.test"]);
    drop(default);

    let seen = echo.handshakes.lock().unwrap()[0].clone();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert!(seen["forwarded"].to_str().unwrap().contains("proto=https"));

    let text = sb.scrape().await;
    assert!(
        metric(
            &text,
            "switchboard_tls_handshakes_total",
            &[("outcome", "ok"), ("version", "TLSv1.3")]
        ) >= 3.0
    );
    assert!(
        metric(
            &text,
            "switchboard_tls_alpn_total",
            &[("protocol", "http/1.1")]
        ) >= 3.0
    );
    let expiry = metric(
        &text,
        "switchboard_tls_cert_not_after_seconds",
        &[("cert", &chat_cert.display().to_string())],
    );
    assert!(expiry > 1.7e9, "expiry {expiry}");
    sb.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_a_clear_400() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("plain");
    let (cert, key) = ca.write_leaf(&dir, "site", &["site.test"]);
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start_tls(&format!(
        "{}{}",
        tls_table(&cert, &key, ""),
        route_to(&format!("\"{}\"", echo.addr), "")
    ))
    .await;
    let mut stream = raw_send(sb.addr, b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&read_to_end(&mut stream).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("https://"), "{answer}");
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_tls_handshakes_total",
            &[("outcome", "plain_http")]
        ),
        1.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn certificate_swap_on_disk_is_picked_up_and_a_broken_file_is_ignored() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("reload");
    let (cert, key) = ca.write_leaf(&dir, "site", &["site.test", "v1.site.test"]);
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start_tls(&format!(
        "{}{}",
        tls_table(&cert, &key, "reload_interval = \"50ms\""),
        route_to(&format!("\"{}\"", echo.addr), "")
    ))
    .await;
    let client = ca.client_config(&[b"http/1.1"]);
    let held = tls_connect(sb.addr, "site.test", client.clone()).await;
    assert!(peer_names(&held).contains(&"v1.site.test".to_owned()));

    // Renewal: both files replaced, as certbot does.
    let renewed = ca.leaf(&["site.test", "v2.site.test"]);
    std::fs::write(&key, &renewed.key_pem).unwrap();
    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    eventually("the renewed certificate is served", || async {
        let fresh = tls_connect(sb.addr, "site.test", client.clone()).await;
        peer_names(&fresh)
            .contains(&"v2.site.test".to_owned())
            .then_some(())
    })
    .await;
    // The connection made before keeps working with its certificate.
    assert!(peer_names(&held).contains(&"v1.site.test".to_owned()));

    // A broken renewal: the last good certificate stays, the failure is counted.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    eventually("the broken file is noticed", || async {
        let text = sb.scrape().await;
        (metric(
            &text,
            "switchboard_tls_cert_reloads_total",
            &[("outcome", "error")],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    let after = tls_connect(sb.addr, "site.test", client.clone()).await;
    assert!(peer_names(&after).contains(&"v2.site.test".to_owned()));
    drop((held, after));
    sb.stop().await;
}

#[tokio::test]
async fn config_errors_name_the_key_and_the_file() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("errors");
    let (cert, key) = ca.write_leaf(&dir, "a", &["a.test"]);
    let (_, other_key) = ca.write_leaf(&dir, "b", &["b.test"]);
    let missing = dir.path("missing.pem");
    let body = route_to("\"127.0.0.1:1\"", "");
    let check = |cert: &std::path::Path, key: &std::path::Path| {
        let text = format!(
            "listen = \"127.0.0.1:0\"\n{}{body}",
            tls_table(cert, key, "")
        );
        switchboard::config::from_toml_str(&text, "tls.toml").expect_err("must be rejected")
    };

    let e = check(&missing, &key);
    assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("tls.cert")));
    assert!(e.message.contains("missing.pem"), "{e}");

    let e = check(&cert, &other_key);
    assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("tls.key")));
    assert!(
        e.message.contains("does not match") && e.message.contains("b.key"),
        "{e}"
    );

    // A key file with only a certificate in it.
    let e = check(&cert, &cert);
    assert_eq!(e.key.as_deref(), Some("tls.key"));
    assert!(
        e.message.contains("no PEM private key") && e.message.contains("a.pem"),
        "{e}"
    );

    let e = check(&key, &key);
    assert_eq!(e.key.as_deref(), Some("tls.cert"));
    assert!(e.message.contains("no PEM certificate"), "{e}");

    let text = format!(
        "listen = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\ntls = {{ server_name = \"backend.test\", ca = \"{}\" }}\n",
        missing.display()
    );
    let e = switchboard::config::from_toml_str(&text, "tls.toml").expect_err("must be rejected");
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(6), Some("upstream.app.tls.ca"))
    );
}

/// A WebSocket echo backend behind TLS.
async fn tls_echo_backend(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTPS backend answering every request with "secure".
async fn tls_http_backend(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"secure"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn backends_over_tls_with_a_private_ca_and_502_for_the_wrong_ca() {
    let backend_ca = TestCa::new("backend CA");
    let wrong_ca = TestCa::new("some other CA");
    let dir = TempDir::new("backend-tls");
    let leaf = backend_ca.leaf(&["backend.internal"]);
    let ws_backend = tls_echo_backend(server_config(&leaf)).await;
    let http_backend = tls_http_backend(server_config(&leaf)).await;
    let good_ca = backend_ca.write_ca(&dir, "backend-ca.pem");
    let bad_ca = wrong_ca.write_ca(&dir, "wrong-ca.pem");
    let sb = Switchboard::start(&format!(
        r#"
[[route]]
path_prefix = "/ws"
upstream = "ws_good"
[[route]]
path_prefix = "/bad/ws"
upstream = "ws_bad"
[[route]]
path_prefix = "/bad"
upstream = "http_bad"
[[route]]
path_prefix = "/"
upstream = "http_good"
[upstream.ws_good]
servers = ["{ws_backend}"]
tls = {{ server_name = "backend.internal", ca = "{good}" }}
[upstream.ws_bad]
servers = ["{ws_backend}"]
tls = {{ server_name = "backend.internal", ca = "{bad}" }}
[upstream.http_good]
servers = ["{http_backend}"]
tls = {{ server_name = "backend.internal", ca = "{good}" }}
[upstream.http_bad]
servers = ["{http_backend}"]
tls = {{ server_name = "backend.internal", ca = "{bad}" }}
"#,
        good = good_ca.display(),
        bad = bad_ca.display()
    ))
    .await;

    let mut ws = support::clients::ws_connect(&sb.ws_url("/ws")).await;
    ws.send(Message::text("re-encrypted")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("re-encrypted"));
    drop(ws);

    let r = support::clients::http_get(sb.addr, "/page", &[]).await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "secure"));

    let mut stream = raw_send(
        sb.addr,
        support::clients::handshake_request("/bad/ws", "").as_bytes(),
    )
    .await;
    let head = support::clients::read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    drop(stream);

    let r = support::clients::http_get(sb.addr, "/bad", &[]).await;
    assert_eq!(r.status, 502);
    sb.stop().await;
}

#[tokio::test]
async fn plain_and_tls_listeners_side_by_side() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("both");
    let (cert, key) = ca.write_leaf(&dir, "site", &["site.test"]);
    let echo = EchoBackend::start("echo").await;
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secure = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), secure.local_addr().unwrap());
    let text = format!(
        "listen = \"{plain_addr}\"\n[tls]\nlisten = \"{tls_addr}\"\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        route_to(&format!("\"{}\"", echo.addr), "")
    );
    let config = switchboard::config::from_toml_str(&text, "both.toml").unwrap();
    assert_eq!(
        (config.plain_listen(), config.tls_listen()),
        (Some(plain_addr), Some(tls_addr))
    );
    let shutdown = switchboard::Shutdown::new();
    let task = tokio::spawn(switchboard::run(
        config,
        switchboard::Listeners {
            plain: Some(plain),
            tls: Some(secure),
            admin: None,
        },
        shutdown.clone(),
        switchboard::metrics::Metrics::new(),
    ));

    let mut ws = support::clients::ws_connect(&format!("ws://{plain_addr}/ws")).await;
    ws.send(Message::text("plain")).await.unwrap();
    assert_eq!(
        tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::text("plain")
    );
    drop(ws);
    let stream = tls_connect(tls_addr, "site.test", ca.client_config(&[b"http/1.1"])).await;
    wss_echo(stream, "site.test").await;

    shutdown.trigger();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped_after_the_timeout() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("slow");
    let (cert, key) = ca.write_leaf(&dir, "site", &["site.test"]);
    let echo = EchoBackend::start("echo").await;
    let sb = Switchboard::start_tls(&format!(
        "{}{}",
        tls_table(&cert, &key, "handshake_timeout = \"200ms\""),
        route_to(&format!("\"{}\"", echo.addr), "")
    ))
    .await;
    // Connect and send nothing: switchboard closes the connection once the timeout passes.
    let mut silent = raw_send(sb.addr, b"").await;
    assert!(read_to_end(&mut silent).await.is_empty());
    // Half a ClientHello, then silence: the same.
    let mut partial = raw_send(sb.addr, &[0x16, 0x03, 0x01, 0x00, 0x80, 0x01]).await;
    assert!(read_to_end(&mut partial).await.is_empty());
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_tls_handshakes_total",
            &[("outcome", "timeout")]
        ),
        2.0
    );
    sb.stop().await;
}

#[tokio::test]
async fn check_reports_each_certificate_with_names_and_expiry() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("check");
    let (cert, key) = ca.write_leaf(&dir, "site", &["site.test", "www.site.test"]);
    let (game_cert, game_key) = ca.write_leaf(&dir, "game", &["*.game.test"]);
    let file = dir.path("check.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\n{}[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n{}",
            tls_table(&cert, &key, ""),
            game_cert.display(),
            game_key.display(),
            route_to("\"127.0.0.1:1\"", "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(https)"), "{stdout}");
    assert!(
        stdout.contains("site.pem (default): names site.test, www.site.test"),
        "{stdout}"
    );
    assert!(stdout.contains("game.pem: names *.game.test"), "{stdout}");
    assert!(stdout.matches("expires").count() == 2, "{stdout}");
}
