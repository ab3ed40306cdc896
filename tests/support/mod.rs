//! Test harness: switchboard in process on 127.0.0.1:0, real backends, real clients.
//!
//! Nothing here waits a fixed time for something to happen. Readiness comes from the bind (the
//! listener exists before the server task starts), and where a test must observe something that
//! happens asynchronously it uses [`eventually`], which re-checks until a deadline and fails the
//! test at the deadline.
#![allow(dead_code)]

pub mod backends;
pub mod clients;
pub mod dashboard;
pub mod dns;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod replicas;
pub mod session;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use switchboard::metrics::Metrics;
use switchboard::{Listeners, Shutdown};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running switchboard.
pub struct Switchboard {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: Shutdown,
    pub metrics: Metrics,
    pub task: JoinHandle<Result<(), switchboard::RunError>>,
}

impl Switchboard {
    /// Starts switchboard from TOML text; `listen` and `[admin]` are filled in with :0 sockets.
    pub async fn start(toml_body: &str) -> Switchboard {
        Self::start_with(toml_body, false).await
    }

    /// Like [`Switchboard::start`], for a config whose `[tls]` makes `listen` a TLS listener.
    pub async fn start_tls(toml_body: &str) -> Switchboard {
        Self::start_with(toml_body, true).await
    }

    async fn start_with(toml_body: &str, tls: bool) -> Switchboard {
        let config = switchboard::config::from_toml_str(&with_listeners(toml_body), "test.toml")
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        Self::run_config(config, tls).await
    }

    async fn run_config(config: switchboard::Config, tls: bool) -> Switchboard {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let metrics = Metrics::new();
        let (plain, tls) = if tls {
            (None, Some(proxy))
        } else {
            (Some(proxy), None)
        };
        let task = tokio::spawn(switchboard::run(
            config,
            Listeners {
                plain,
                tls,
                admin: Some(admin),
            },
            shutdown.clone(),
            metrics.clone(),
        ));
        Switchboard {
            addr,
            admin: admin_addr,
            shutdown,
            metrics,
            task,
        }
    }

    /// `ws://` URL for a path on this switchboard.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The `/metrics` page, fetched over HTTP from the admin listener.
    pub async fn scrape(&self) -> String {
        let response = clients::http_get(self.admin, "/metrics", &[]).await;
        assert_eq!(response.status, 200);
        response.body_text()
    }

    /// Triggers a graceful shutdown and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("switchboard stops within the deadline")
            .expect("switchboard task did not panic")
            .expect("switchboard ran");
    }
}

/// A config file that a running switchboard was started from, for reload tests.
pub struct ConfigFile {
    pub dir: tls::TempDir,
    pub path: std::path::PathBuf,
}

impl ConfigFile {
    /// Replaces the file with `body` under the same listener lines the harness uses.
    pub fn write(&self, body: &str) {
        std::fs::write(&self.path, with_listeners(body)).unwrap();
    }

    /// Replaces the whole file, listener lines included.
    pub fn write_raw(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }
}

fn with_listeners(body: &str) -> String {
    format!("listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{body}")
}

impl Switchboard {
    /// Starts switchboard from a config *file* holding `body`, so that it can be reloaded.
    pub async fn start_file(body: &str) -> (Switchboard, ConfigFile) {
        Self::start_file_with(body, false).await
    }

    /// Like [`Switchboard::start_file`]; with `tls`, `listen` is the TLS listener.
    pub async fn start_file_with(body: &str, tls: bool) -> (Switchboard, ConfigFile) {
        let dir = tls::TempDir::new("reload");
        let file = ConfigFile {
            path: dir.path("switchboard.toml"),
            dir,
        };
        file.write(body);
        let config = switchboard::config::load(&file.path)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        (Self::run_config(config, tls).await, file)
    }

    /// POST `path` on the admin listener.
    pub async fn admin_post(&self, path: &str, headers: &[(&str, &str)]) -> clients::HttpResponse {
        clients::http_request(self.admin, "POST", path, headers, bytes::Bytes::new()).await
    }

    /// `GET /admin/upstreams`, parsed.
    pub async fn upstreams(&self) -> serde_json::Value {
        let response = clients::http_get(self.admin, "/admin/upstreams", &[]).await;
        assert_eq!(response.status, 200, "{}", response.body_text());
        serde_json::from_slice(&response.body).expect("JSON")
    }
}

/// A config body with one round-robin upstream `app` behind `path_prefix = "/"`, after `extra`
/// (top-level tables such as `[timeouts]`). `servers` is the TOML list's inside.
pub fn one_upstream(servers: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n[upstream.app]\nbalance = \"round-robin\"\nservers = [{servers}]\n"
    )
}

/// The backends of `upstream` in an `/admin/upstreams` answer that take new connections (not
/// draining), as their addresses, sorted.
pub fn serving_backends(upstreams: &serde_json::Value, upstream: &str) -> Vec<String> {
    let mut addrs: Vec<String> = upstreams["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["name"] == upstream)
        .flat_map(|u| u["backends"].as_array().unwrap().clone())
        .filter(|b| b["state"] != "draining")
        .map(|b| b["addr"].as_str().unwrap().to_owned())
        .collect();
    addrs.sort();
    addrs
}

/// Re-checks `check` until it returns `Some`, failing the test after [`DEADLINE`]. For effects
/// that happen after the action that caused them (a counter decremented when a task ends).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let result = tokio::time::timeout(DEADLINE, async {
        loop {
            ticks.tick().await;
            if let Some(value) = check().await {
                return value;
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// The value of one sample in Prometheus text format, e.g.
/// `metric(&text, "switchboard_upgrades_total", &[("outcome", "upgraded")])`; labels not listed
/// are not compared, and matching samples are summed.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all_match = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            all_match.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The largest TCP send and receive buffers the kernel lets a socket grow to (the third value
/// of `tcp_wmem` and `tcp_rmem`; 8 MiB each where they cannot be read): what a stalled path
/// can absorb before it pushes back.
pub fn tcp_buffer_max() -> (usize, usize) {
    let max = |file: &str| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.split_whitespace().nth(2)?.parse::<usize>().ok())
            .unwrap_or(8 << 20)
    };
    (
        max("/proc/sys/net/ipv4/tcp_wmem"),
        max("/proc/sys/net/ipv4/tcp_rmem"),
    )
}

/// A config with two upstreams over one echo backend and one `special` backend: requests under
/// `prefix` go to `special`, the rest to the echo backend; polite closes are immediate.
pub fn special_and_echo(prefix: &str, special: SocketAddr, echo: SocketAddr) -> String {
    format!(
        "[drain]\nspread = \"0s\"\nclose_linger = \"100ms\"\n\
         [[route]]\npath_prefix = \"{prefix}\"\nupstream = \"special\"\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"echo\"\n\
         [upstream.special]\nservers = [\"{special}\"]\n\
         [upstream.echo]\nservers = [\"{echo}\"]\n"
    )
}

/// Two distinct loopback addresses that were free a moment ago (both reserved at once, then
/// released), for a test that starts the binary, which binds them itself.
pub fn two_free_addrs() -> (SocketAddr, SocketAddr) {
    let reserved = [
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    ];
    (
        reserved[0].local_addr().unwrap(),
        reserved[1].local_addr().unwrap(),
    )
}
