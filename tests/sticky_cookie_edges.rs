//! The sticky cookie at the edges: `Secure` on TLS listeners, HTTP/2 (the 200 of an extended
//! CONNECT carries the cookie; cookies split over several fields are read), a reload that
//! rotates the secret, and config errors that name the key and line.

mod support;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use support::clients::{extended_connect, read_frame};
use support::session::{SessionBackend, poll, secret_file, sticky_config};
use support::tls::{TempDir, TestCa, tls_connect};
use support::{DEADLINE, Switchboard, metric};
use switchboard::config::from_toml_str;

const SECRET: &[u8] = b"replicas share this 32-byte key\n";

/// The sticky `Set-Cookie` line of a response head, if any.
fn sticky_line(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|l| l.starts_with("sb_route="))
}

fn pair(line: &str) -> String {
    line.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn tls_listeners_set_secure_cookies_and_h2_reads_split_cookie_fields() {
    let ca = TestCa::new("test CA");
    let dir = TempDir::new("sticky-tls");
    let (cert, key) = ca.write_leaf(&dir, "site", &["chat.test"]);
    let secret = secret_file(&dir, "route-key", SECRET);
    let backends = [
        SessionBackend::start("s1").await,
        SessionBackend::start("s2").await,
    ];
    let sb = Switchboard::start_tls(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        sticky_config(
            &secret,
            "balance = \"round-robin\"",
            &[&backends[0], &backends[1]]
        )
    ))
    .await;

    // HTTP/1.1 over TLS.
    let tls = tls_connect(sb.addr, "chat.test", ca.client_config(&[b"http/1.1"])).await;
    let (mut h1, connection) = http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/socket.io/?transport=polling")
        .header("host", "chat.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = h1.send_request(request).await.unwrap();
    let line = sticky_line(response.headers()).expect("cookie set");
    assert!(line.ends_with("; HttpOnly; SameSite=Lax; Secure"), "{line}");
    let first = response.into_body().collect().await.unwrap().to_bytes();

    // HTTP/2: the cookie arrives in two fields (RFC 9113 §8.2.3), around the app's own.
    let tls = tls_connect(sb.addr, "chat.test", ca.client_config(&[b"h2"])).await;
    let (mut h2, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let cookie = pair(&line);
    for _ in 0..2 {
        let request = Request::get("https://chat.test/socket.io/?transport=polling")
            .header("cookie", "io=session")
            .header("cookie", cookie.as_str())
            .body(Empty::new())
            .unwrap();
        h2.ready().await.unwrap();
        let response = h2.send_request(request).await.unwrap();
        assert_eq!(sticky_line(response.headers()), None);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, first);
    }
    let uri = "https://chat.test/socket.io/?transport=websocket";
    let mut tunnel = extended_connect(
        &mut h2,
        uri,
        &[("cookie", "io=session"), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(sticky_line(tunnel.headers()), None);
    let mut io = TokioIo::new(hyper::upgrade::on(&mut tunnel).await.unwrap());
    let frame = tokio::time::timeout(DEADLINE, read_frame(&mut io))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.payload, first);
    drop(io);

    // Without the cookie, the extended CONNECT's 200 sets one (Secure: the listener is TLS).
    let fresh = extended_connect(&mut h2, uri, &[]).await;
    let line = sticky_line(fresh.headers()).expect("the 200 sets the cookie");
    assert!(line.ends_with("; Secure"), "{line}");
    drop(fresh);

    let session = backends
        .iter()
        .find(|b| b.name.as_bytes() == first)
        .unwrap();
    let seen = session.cookies_seen();
    assert!(seen.iter().skip(1).all(|c| c == "io=session"), "{seen:?}");
    drop((h1, h2));
    sb.stop().await;
}

#[tokio::test]
async fn a_reload_rereads_the_secret_and_old_cookies_are_replaced() {
    let dir = TempDir::new("sticky-reload");
    let secret = secret_file(&dir, "route-key", SECRET);
    let backends = [
        SessionBackend::start("s1").await,
        SessionBackend::start("s2").await,
    ];
    let body = sticky_config(
        &secret,
        "balance = \"round-robin\"",
        &[&backends[0], &backends[1]],
    );
    let (sb, _file) = Switchboard::start_file(&body).await;
    let old = poll(sb.addr, None).await.cookie().unwrap();
    assert_eq!(poll(sb.addr, Some(&old)).await.set_cookie, None);

    std::fs::write(&secret, b"a rotated secret, also 32 bytes.").unwrap();
    let reloaded = sb.admin_post("/admin/reload", &[]).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body_text());
    let visit = poll(sb.addr, Some(&old)).await;
    let new = visit
        .cookie()
        .expect("a cookie under the old secret is replaced");
    assert_eq!(poll(sb.addr, Some(&new)).await.set_cookie, None);
    let text = sb.scrape().await;
    let count = |o| metric(&text, "switchboard_sticky_cookie_total", &[("outcome", o)]);
    assert_eq!((count("valid"), count("invalid")), (2.0, 1.0));
    sb.stop().await;
}

fn config_with(cookie: &str) -> String {
    format!(
        "listen = \"127.0.0.1:1\"\n[[route]]\nupstream = \"chat\"\n[upstream.chat]\n\
         servers = [\"127.0.0.1:2\"]\nsticky_cookie = {cookie}\n"
    )
}

#[test]
fn config_errors_name_the_key_and_line() {
    let dir = TempDir::new("sticky-config");
    let good = secret_file(&dir, "good", SECRET);
    let short = secret_file(&dir, "short", b"fifteen bytes!!\n");
    let missing = dir.path("nope");
    let cases = [
        (
            format!(
                "{{ name = \"sb_route\", secret_file = \"{}\" }}",
                missing.display()
            ),
            "secret_file",
            "cannot read",
        ),
        (
            format!("{{ secret_file = \"{}\" }}", short.display()),
            "secret_file",
            "holds 15 bytes; a signing secret needs at least 16",
        ),
        (
            format!(
                "{{ secret_file = \"{}\", max_age = \"forever\" }}",
                good.display()
            ),
            "max_age",
            "forever",
        ),
        (
            format!(
                "{{ secret_file = \"{}\", max_age = \"500ms\" }}",
                good.display()
            ),
            "max_age",
            "at least 1s",
        ),
        (
            format!(
                "{{ name = \"sb route\", secret_file = \"{}\" }}",
                good.display()
            ),
            "name",
            "not a cookie name",
        ),
        (
            "{ name = \"sb_route\" }".to_owned(),
            "secret_file",
            "needs a secret",
        ),
    ];
    for (cookie, field, words) in cases {
        let e = from_toml_str(&config_with(&cookie), "bad.toml").expect_err(&cookie);
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(
            e.key.as_deref(),
            Some(format!("upstream.chat.sticky_cookie.{field}").as_str()),
            "{e}"
        );
        assert!(e.to_string().contains(words), "{e}");
        assert!(e.hint.is_some(), "{e}");
    }
    let ok = from_toml_str(
        &config_with(&format!("{{ secret_file = \"{}\" }}", good.display())),
        "good.toml",
    )
    .unwrap();
    let cookie = ok.upstreams[0].sticky_cookie.as_ref().unwrap();
    assert_eq!((cookie.name.as_str(), cookie.max_age), ("sb_route", None));
    assert!(
        !format!("{ok:?}").contains("32-byte"),
        "Debug leaks no secret"
    );
}
