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
use switchboard::tls::server::Checked;

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

    let label = cert.display().to_string();
    let reloads = |text: &str, outcome: &str| {
        metric(
            text,
            "switchboard_tls_cert_reloads_total",
            &[("cert", &label), ("outcome", outcome)],
        )
    };
    let before_renewal = sb.scrape().await;
    let errors_before_renewal = reloads(&before_renewal, "error");

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
    let text = sb.scrape().await;
    assert_eq!(
        reloads(&text, "error"),
        errors_before_renewal,
        "a normal renewal is not an error"
    );
    assert_eq!(reloads(&text, "ok"), reloads(&before_renewal, "ok") + 1.0);

    // A broken renewal: the last good certificate stays, the failure is counted once.
    let errors_before = reloads(&text, "error");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let errors = eventually("the broken file is noticed", || async {
        let errors = reloads(&sb.scrape().await, "error");
        (errors > errors_before).then_some(errors)
    })
    .await;
    assert_eq!(errors, errors_before + 1.0);
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

    // A certificate file with only a key in it (the two paths swapped).
    let e = check(&key, &key);
    assert_eq!(e.key.as_deref(), Some("tls.cert"));
    assert!(
        e.message.contains("a.key") && e.message.contains("is a private key"),
        "{e}"
    );
    assert!(e.message.contains("only CERTIFICATE blocks"), "{e}");

    // A file with no PEM block at all.
    let empty = dir.path("empty.pem");
    std::fs::write(&empty, "not PEM\n").unwrap();
    let e = check(&empty, &key);
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

/// A malformed or unexpected PEM block is an error naming the file and the config key, not a
/// block skipped in silence (which served the leaf without its chain, or a truncated chain).
#[test]
fn malformed_or_unexpected_pem_blocks_are_config_errors() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("pem-blocks");
    let leaf = ca.leaf(&["site.test"]);
    let other = ca.leaf(&["other.test"]);
    let (good_cert, good_key) = (dir.path("good.pem"), dir.path("good.key"));
    std::fs::write(&good_cert, &leaf.cert_pem).unwrap();
    std::fs::write(&good_key, &leaf.key_pem).unwrap();
    let body = route_to("\"127.0.0.1:1\"", "");
    // Writes `contents` as `name` and validates a config using it as the cert (or the key) file.
    let check = |name: &str, contents: String, as_cert: bool| {
        let path = dir.path(name);
        std::fs::write(&path, contents).unwrap();
        let (cert, key) = if as_cert {
            (path.as_path(), good_key.as_path())
        } else {
            (good_cert.as_path(), path.as_path())
        };
        let text = format!(
            "listen = \"127.0.0.1:0\"\n{}{body}",
            tls_table(cert, key, "")
        );
        let e = switchboard::config::from_toml_str(&text, "tls.toml")
            .expect_err("the config must be rejected");
        let (line, key) = if as_cert {
            (3, "tls.cert")
        } else {
            (4, "tls.key")
        };
        assert_eq!((e.line, e.key.as_deref()), (Some(line), Some(key)), "{e}");
        assert!(e.message.contains(name), "the message names the file: {e}");
        e.message
    };
    // The well-formed pair loads: the errors below come from the added blocks.
    switchboard::tls::load_certified_key(&good_cert, &good_key).expect("the good pair loads");

    // Certificate files.
    let truncated = {
        let lines: Vec<&str> = other.cert_pem.lines().collect();
        lines[..lines.len() / 2].join("\n") + "\n"
    };
    let m = check(
        "truncated.pem",
        format!("{}{truncated}", leaf.cert_pem),
        true,
    );
    assert!(m.contains("has no END line"), "{m}");
    let m = check(
        "truncated-middle.pem",
        format!("{}{truncated}{}", leaf.cert_pem, other.cert_pem),
        true,
    );
    assert!(m.contains("has no END line before the next BEGIN"), "{m}");
    let m = check(
        "garbage.pem",
        format!(
            "{}-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
            leaf.cert_pem
        ),
        true,
    );
    assert!(m.contains("block 2") && m.contains("malformed"), "{m}");
    let m = check(
        "not-der.pem",
        format!(
            "{}-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            leaf.cert_pem
        ),
        true,
    );
    assert!(m.contains("certificate 2 of the chain"), "{m}");
    let m = check(
        "combined.pem",
        format!("{}{}", leaf.cert_pem, leaf.key_pem),
        true,
    );
    assert!(
        m.contains("block 2 (`PRIVATE KEY`") && m.contains("is a private key"),
        "{m}"
    );
    assert!(
        m.contains("named by `key`"),
        "the hint says where the key goes: {m}"
    );
    let m = check(
        "unknown.pem",
        format!(
            "{}-----BEGIN CERTIFCATE-----\nAAAA\n-----END CERTIFCATE-----\n",
            leaf.cert_pem
        ),
        true,
    );
    assert!(
        m.contains("`CERTIFCATE`") && m.contains("is not a certificate"),
        "{m}"
    );
    let m = check(
        "stray-end.pem",
        format!("{}-----END CERTIFICATE-----\n", leaf.cert_pem),
        true,
    );
    assert!(m.contains("without a BEGIN line"), "{m}");

    // Key files: exactly one private key.
    let m = check(
        "two-keys.key",
        format!("{}{}", leaf.key_pem, other.key_pem),
        false,
    );
    assert!(
        m.contains("2 private keys") && m.contains("exactly one"),
        "{m}"
    );
    let m = check(
        "key-and-cert.key",
        format!("{}{}", leaf.key_pem, leaf.cert_pem),
        false,
    );
    assert!(
        m.contains("`CERTIFICATE`") && m.contains("is not a private key"),
        "{m}"
    );
    let m = check(
        "garbage.key",
        "-----BEGIN PRIVATE KEY-----\n!!not base64!!\n-----END PRIVATE KEY-----\n".to_owned(),
        false,
    );
    assert!(m.contains("malformed"), "{m}");
    let m = check(
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
            .to_owned(),
        false,
    );
    assert!(m.contains("is encrypted"), "{m}");
}

/// Accepts one TLS connection with `terminator` on a fresh 127.0.0.1:0 socket and returns the
/// names of the certificate it presented for `site.test`.
async fn names_served(
    terminator: &switchboard::tls::server::TlsTerminator,
    client: Arc<rustls::ClientConfig>,
) -> Vec<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::timeout(DEADLINE, terminator.accept(tcp))
            .await
            .expect("server handshake within the deadline")
            .expect("server handshake")
    };
    let (accepted, stream) = tokio::join!(server, tls_connect(addr, "site.test", client));
    drop(accepted);
    peer_names(&stream)
}

/// certbot writes the key, then the certificate. A check between the two writes must not load
/// the new key with the old certificate (a mismatch, logged as an error on every renewal): the
/// watcher reloads a pair only once its files were unchanged for one check.
#[tokio::test]
async fn a_renewal_writing_the_key_first_reloads_once_without_an_error() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("settle");
    let (cert, key) = ca.write_leaf(&dir, "site", &["site.test", "v1.site.test"]);
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{}{}",
        tls_table(&cert, &key, ""),
        route_to("\"127.0.0.1:1\"", "")
    );
    let config = switchboard::config::from_toml_str(&text, "settle.toml").unwrap();
    let tls = config.tls.expect("[tls]");
    let metrics = switchboard::metrics::Metrics::new();
    let terminator =
        Arc::new(switchboard::tls::server::TlsTerminator::new(&tls, metrics.clone()).unwrap());
    // The watcher without its timer: each `check` is one tick of `reload_interval`.
    let mut watcher = terminator.watcher(&tls);
    let client = ca.client_config(&[b"http/1.1"]);
    assert!(
        names_served(&terminator, client.clone())
            .await
            .contains(&"v1.site.test".into())
    );

    let label = cert.display().to_string();
    let reloads = |outcome: &str| {
        metrics
            .tls_cert_reloads_total
            .with_label_values(&[label.as_str(), outcome])
            .get()
    };
    let (ok_before, errors_before) = (reloads("ok"), reloads("error"));
    assert_eq!(watcher.check(), Checked::default(), "nothing changed yet");

    let renewed = ca.leaf(&["site.test", "v2.site.test"]);
    std::fs::write(&key, &renewed.key_pem).unwrap();
    // Tick N: the new key is seen, beside the old certificate. Nothing is loaded yet.
    assert_eq!(
        watcher.check(),
        Checked {
            settling: 1,
            ..Checked::default()
        }
    );
    assert_eq!(
        (reloads("ok"), reloads("error")),
        (ok_before, errors_before)
    );

    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    // Tick N+1: changed again (the certificate): still settling.
    assert_eq!(
        watcher.check(),
        Checked {
            settling: 1,
            ..Checked::default()
        }
    );
    assert_eq!(
        (reloads("ok"), reloads("error")),
        (ok_before, errors_before)
    );
    assert!(
        names_served(&terminator, client.clone())
            .await
            .contains(&"v1.site.test".into())
    );

    // Tick N+2: unchanged for one interval: loaded, once, as a matching pair.
    assert_eq!(
        watcher.check(),
        Checked {
            reloaded: 1,
            ..Checked::default()
        }
    );
    assert_eq!(reloads("error"), errors_before, "a renewal is not an error");
    assert_eq!(reloads("ok"), ok_before + 1);
    assert!(
        names_served(&terminator, client.clone())
            .await
            .contains(&"v2.site.test".into())
    );

    // And nothing more happens while the files stay as they are.
    assert_eq!(watcher.check(), Checked::default());
    assert_eq!(
        (reloads("ok"), reloads("error")),
        (ok_before + 1, errors_before)
    );

    // A key that stays alone (no certificate follows) is a real mismatch: counted once.
    let stray = ca.leaf(&["site.test", "v3.site.test"]);
    std::fs::write(&key, &stray.key_pem).unwrap();
    assert_eq!(watcher.check().settling, 1);
    assert_eq!(
        watcher.check(),
        Checked {
            failed: 1,
            ..Checked::default()
        }
    );
    assert_eq!(watcher.check(), Checked::default());
    assert_eq!(reloads("error"), errors_before + 1);
    assert!(
        names_served(&terminator, client.clone())
            .await
            .contains(&"v2.site.test".into())
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
