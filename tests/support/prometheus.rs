//! A real Prometheus server (Debian's `/usr/bin/prometheus`) scraping a switchboard, for the
//! tests of the shipped alert rules and dashboard (`tests/prometheus_e2e.rs`).
//!
//! It runs on a config written for the test (1 s scrape and rule intervals, storage in a
//! temporary folder, the web API on a free 127.0.0.1 port) and is killed by PID when the guard
//! is dropped, whatever the test's outcome.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::clients::http_get;
use super::tls::TempDir;

/// Where Debian's package puts the server; `PROMETHEUS` overrides it.
const DEFAULT_BINARY: &str = "/usr/bin/prometheus";

/// Bound for Prometheus to start, scrape and evaluate (it is a second process on a shared
/// 2-core machine, so longer than the in-process [`super::DEADLINE`]).
pub const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(60);

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second as job `switchboard`,
    /// with `rules` (a rule file) loaded and evaluated every second; returns once its API
    /// answers ready. Panics with what to install when the binary is missing.
    pub async fn start(target: SocketAddr, rules: &Path) -> Prometheus {
        let binary = std::env::var_os("PROMETHEUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_BINARY.into());
        assert!(
            binary.is_file(),
            "{} not found: this test needs a real Prometheus. Install Debian's package \
             (`apt-get install prometheus`, as .ci/run does) or set PROMETHEUS to its binary",
            binary.display()
        );
        let dir = TempDir::new("prometheus");
        let config = dir.path("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: switchboard\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules.display()
            ),
        )
        .unwrap();
        let addr = free_addr();
        let log = std::fs::File::create(dir.path("prometheus.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut prometheus = Prometheus { addr, child, dir };
        prometheus
            .wait_for("Prometheus to answer ready", || async move {
                tokio::net::TcpStream::connect(addr).await.ok()?;
                (http_get(addr, "/-/ready", &[]).await.status == 200).then_some(())
            })
            .await;
        prometheus
    }

    /// Re-checks `check` every 250 ms until it returns `Some`, failing the test (with
    /// Prometheus's log) after [`PROMETHEUS_DEADLINE`] or when Prometheus has exited.
    pub async fn wait_for<T, F, Fut>(&mut self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + PROMETHEUS_DEADLINE;
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        loop {
            ticks.tick().await;
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "Prometheus exited ({status}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Some(value) = check().await {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}; Prometheus log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Prometheus's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // By PID: this child only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The answer of `/api/v1/query` for `expr` at the latest time: `Ok(result)` (the list of
/// series, possibly empty) or `Err(what Prometheus said)`.
pub async fn query(addr: SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
    let response = http_get(addr, &format!("/api/v1/query?query={}", encode(expr)), &[]).await;
    let body: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("Prometheus answered {expr:?} with non-JSON ({e})"));
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    match &body["data"]["result"] {
        Value::Array(series) => Ok(series.clone()),
        // A scalar or string result is one value.
        other => Ok(vec![other.clone()]),
    }
}

/// `GET path` on the Prometheus API, parsed.
pub async fn api(addr: SocketAddr, path: &str) -> Value {
    let response = http_get(addr, path, &[]).await;
    assert_eq!(response.status, 200, "{path}: {}", response.body_text());
    serde_json::from_slice(&response.body).expect("JSON")
}

/// Percent-encoding of a query parameter (RFC 3986: all but the unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A 127.0.0.1 port free now, for a server in another process (which must bind it itself).
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
