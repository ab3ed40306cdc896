//! The real binary's log lines: colour only at a terminal or on request, the level from
//! `[log] level` with `RUST_LOG` winning, a start line naming every listener and the config
//! file, and an open-files warning that says what to set.
//!
//! Every config listens on 127.0.0.1:0; the start line says which ports the system chose.

mod support;

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use support::DEADLINE;
use support::clients::http_get;
use support::tls::{TempDir, TestCa};

/// Lines read before a test gives up looking for one.
const MAX_LINES: usize = 50;

const ROUTE: &str = "[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n";

/// The binary running on a config, its stdout read line by line.
struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    /// Starts `switchboard -c config args…`; with `open_files`, under that open-files limit
    /// (soft and hard, so switchboard cannot raise it), set by the shell before it execs.
    fn start(config: &Path, args: &[&str], env: &[(&str, &str)], open_files: Option<u32>) -> Self {
        let binary = env!("CARGO_BIN_EXE_switchboard");
        let mut command = match open_files {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary);
                sh
            }
            None => Command::new(binary),
        };
        command.arg("-c").arg(config).args(args);
        command.env_remove("RUST_LOG").env_remove("NO_COLOR");
        command.envs(env.iter().copied());
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Running { child, lines }
    }

    async fn next_line(&mut self) -> String {
        tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("a log line in time")
            .unwrap()
            .expect("the process is still writing")
    }

    /// The first line containing `needle`, within [`MAX_LINES`].
    async fn line_with(&mut self, needle: &str) -> String {
        for _ in 0..MAX_LINES {
            let line = self.next_line().await;
            if line.contains(needle) {
                return line;
            }
        }
        panic!("no line with `{needle}` in the first {MAX_LINES}");
    }

    /// SIGTERM, then the exit status: a clean shutdown is 0.
    async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        // Drain what it says while shutting down, so it never blocks on a full pipe.
        for _ in 0..MAX_LINES {
            match tokio::time::timeout(DEADLINE, self.lines.next_line()).await {
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        let exit = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        assert_eq!(exit.code(), Some(0));
    }
}

fn write_config(dir: &TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path("switchboard.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[tokio::test]
async fn no_colour_codes_in_a_pipe_unless_asked() {
    let dir = TempDir::new("logs-colour");
    let config = write_config(&dir, &format!("listen = \"127.0.0.1:0\"\n{ROUTE}"));

    // stdout is a pipe here, as it is under systemd, docker or `> file`.
    let mut plain = Running::start(&config, &[], &[], None);
    let line = plain.line_with("switchboard started").await;
    assert!(!line.contains('\x1b'), "{line:?}");
    plain.stop().await;

    let mut coloured = Running::start(&config, &["--color", "always"], &[], None);
    let line = coloured.line_with("switchboard started").await;
    assert!(line.contains("\x1b["), "{line:?}");
    coloured.stop().await;
}

#[tokio::test]
async fn start_line_names_every_listener_and_the_config_file() {
    let dir = TempDir::new("logs-start");
    let (cert, key) = TestCa::new("start CA").write_leaf(&dir, "site", &["site.test"]);
    let config = write_config(
        &dir,
        &format!(
            "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{ROUTE}",
            cert.display(),
            key.display()
        ),
    );
    let mut running = Running::start(&config, &["--log-format", "json"], &[], None);
    let line = running.line_with("switchboard started").await;
    let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fields = &doc["fields"];
    assert_eq!(
        fields["config"],
        std::fs::canonicalize(&config)
            .unwrap()
            .display()
            .to_string()
    );
    let listeners: Vec<(String, std::net::SocketAddr)> = fields["listeners"]
        .as_str()
        .unwrap()
        .split(", ")
        .map(|entry| {
            let (kind, addr) = entry.split_once(' ').unwrap();
            (kind.to_owned(), addr.parse().unwrap())
        })
        .collect();
    let kinds: Vec<&str> = listeners.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["http", "https", "admin"], "{line}");
    // The addresses are the bound ones, not the configured port 0.
    for (_, addr) in &listeners {
        assert_ne!(addr.port(), 0, "{line}");
        tokio::net::TcpStream::connect(addr).await.unwrap();
    }
    assert_eq!(http_get(listeners[2].1, "/healthz", &[]).await.status, 200);
    running.stop().await;
}

#[tokio::test]
async fn level_comes_from_the_config_and_rust_log_wins() {
    let dir = TempDir::new("logs-level");
    let config = write_config(
        &dir,
        &format!("listen = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n{ROUTE}"),
    );
    // Under 256 open files the first thing switchboard says is the open-files limit (info),
    // then the warning that it is short: at "warn" only the warning is written.
    let mut quiet = Running::start(&config, &[], &[], Some(256));
    let first = quiet.next_line().await;
    assert!(first.contains("WARN"), "{first}");
    assert!(first.contains("need about"), "{first}");
    drop(quiet);

    let mut verbose = Running::start(&config, &[], &[("RUST_LOG", "info")], Some(256));
    let first = verbose.next_line().await;
    assert!(first.contains("INFO"), "{first}");
    assert!(first.contains("open-files limit"), "{first}");
    verbose.line_with("switchboard started").await;
    verbose.stop().await;
}

#[tokio::test]
async fn open_files_warning_says_what_to_set() {
    let dir = TempDir::new("logs-fds");
    let config = write_config(
        &dir,
        &format!(
            "listen = \"127.0.0.1:0\"\n[limits]\nmax_connections = 1000\nmax_tunnels = 50\n{ROUTE}"
        ),
    );
    let mut running = Running::start(&config, &[], &[], Some(256));
    let warning = running.line_with("WARN").await;
    // 1000 clients, each with at most one backend connection, 64 for the process itself and
    // one per backend for health checks: 2065. Within 256: (256 - 65) / 2 = 95.
    for says in [
        "limits.max_connections = 1000 and limits.max_tunnels = 50 need about 2065 open files",
        "but the limit is 256",
        "raise the open-files limit to 2065 (`ulimit -n 2065`, or LimitNOFILE=2065",
        "or lower limits.max_connections to 95",
    ] {
        assert!(warning.contains(says), "no `{says}` in {warning}");
    }
    running.line_with("switchboard started").await;
    running.stop().await;
}
