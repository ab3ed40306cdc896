//! A real browser: headless Chromium loads a page over https:// through switchboard; the page
//! opens wss:// through switchboard to an echo backend, echoes a text and a 1 MiB message, and
//! closes with 1000. Run once over HTTP/1.1 and once with the page over HTTP/2, where the
//! metrics tell whether Chromium used RFC 8441 for its WebSocket.
//!
//! Chromium is Debian's package, which `.ci/run` installs; it is never downloaded. Certificate
//! errors are ignored (`--ignore-certificate-errors`) rather than trusting the test CA, which
//! would need an NSS database. Without Chromium the test says so and passes, except under CI
//! (`CI` set), where it fails.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::backends::EchoBackend;
use support::tls::{TempDir, TestCa};
use support::{Switchboard, metric};

const PAGE: &str = include_str!("browser/selftest.html");

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Serves the self-test page and receives its report at `/report?LINE`.
async fn page_backend() -> (std::net::SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reports, received) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let reports = reports.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let reports = reports.clone();
                        async move {
                            let body = if req.uri().path() == "/report" {
                                let line = req
                                    .uri()
                                    .query()
                                    .unwrap_or("")
                                    .replace("%20", " ")
                                    .replace("%3D", "=");
                                let _ = reports.send(line).await;
                                Bytes::new()
                            } else {
                                Bytes::from_static(PAGE.as_bytes())
                            };
                            let mut response = hyper::Response::new(Full::new(body));
                            response.headers_mut().insert(
                                "content-type",
                                "text/html; charset=utf-8".parse().unwrap(),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// Opens `url` in headless Chromium and waits for the page's report.
async fn run_chromium(
    binary: &PathBuf,
    url: &str,
    extra: &[&str],
    reports: &mut mpsc::Receiver<String>,
) -> String {
    let profile = TempDir::new("chromium-profile");
    let mut child = tokio::process::Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let report = tokio::time::timeout(Duration::from_secs(60), reports.recv()).await;
    let _ = child.kill().await;
    match report {
        Ok(Some(line)) => line,
        Ok(None) => "the page backend stopped".to_owned(),
        Err(_) => "no report from the page within 60 s".to_owned(),
    }
}

#[tokio::test]
async fn chromium_talks_wss_through_switchboard_over_http1_and_h2() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium: .ci/run installs Debian's chromium"
        );
        eprintln!(
            "SKIPPED: Chromium is not installed (apt-get install chromium); the browser test did not run"
        );
        return;
    };
    let ca = TestCa::new("browser test CA");
    let dir = TempDir::new("browser");
    let (cert, key) = ca.write_leaf(&dir, "site", &["localhost", "127.0.0.1"]);
    let echo = EchoBackend::start("echo").await;
    let (page, mut reports) = page_backend().await;
    let sb = Switchboard::start_tls(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[route]]\npath_prefix = \"/ws\"\nupstream = \"ws\"\n[[route]]\nupstream = \"page\"\n\
         [upstream.ws]\nservers = [\"{}\"]\n[upstream.page]\nservers = [\"{}\"]\n",
        cert.display(),
        key.display(),
        echo.addr,
        page
    ))
    .await;
    let url = format!("https://127.0.0.1:{}/", sb.addr.port());

    let http1 = run_chromium(&binary, &url, &["--disable-http2"], &mut reports).await;
    assert!(http1.starts_with("RESULT ok"), "over HTTP/1.1: {http1}");
    let text = sb.scrape().await;
    assert_eq!(
        metric(
            &text,
            "switchboard_upgrades_total",
            &[("outcome", "upgraded"), ("protocol", "http1")]
        ),
        1.0
    );

    let h2 = run_chromium(&binary, &url, &[], &mut reports).await;
    assert!(
        h2.starts_with("RESULT ok"),
        "with the page over HTTP/2: {h2}"
    );
    let text = sb.scrape().await;
    assert!(
        metric(&text, "switchboard_tls_alpn_total", &[("protocol", "h2")]) >= 1.0,
        "Chromium did not negotiate h2"
    );
    let over_h2 = metric(
        &text,
        "switchboard_upgrades_total",
        &[("outcome", "upgraded"), ("protocol", "h2")],
    );
    let over_h1 = metric(
        &text,
        "switchboard_upgrades_total",
        &[("outcome", "upgraded"), ("protocol", "http1")],
    );
    assert_eq!(over_h2 + over_h1, 2.0);
    eprintln!(
        "Chromium's WebSocket with the page over HTTP/2 used {}",
        if over_h2 == 1.0 {
            "RFC 8441 extended CONNECT"
        } else {
            "a separate HTTP/1.1 connection (no RFC 8441)"
        }
    );
    sb.stop().await;
}
