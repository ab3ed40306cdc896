//! The command line as an nginx or HAProxy operator reaches for it: `-t`/`--test` and `-c FILE`,
//! `SWITCHBOARD_CONFIG`, `check` in the config's own words and as JSON, no panic on a closed
//! stdout, `--print-default-config`, and a `demo` that refuses options it would ignore.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::tls::TempDir;
use switchboard::config::from_toml_str;

fn switchboard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.env_remove("SWITCHBOARD_CONFIG");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Three strategies, a health check, weights, origins and a slow start: everything `check`
/// used to print with `{:?}`.
const CONFIG: &str = r#"
listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9100"
[log]
level = "warn,switchboard=info"
[[route]]
path_prefix = "/socket.io/"
upstream = "io"
allowed_origins = ["https://chat.example.com", "http://localhost:3000"]
[[route]]
host = "*.example.com"
upstream = "game"
[[route]]
upstream = "web"
[upstream.io]
balance = "sticky-hash"
hash_key = "cookie:io"
servers = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }]
[upstream.game]
balance = "least-conn"
servers = ["127.0.0.1:7000"]
[upstream.game.health_check]
kind = "http"
path = "/healthz"
interval = "10s"
timeout = "1500ms"
[upstream.web]
balance = "round-robin"
servers = ["127.0.0.1:8000"]
slow_start = "1m"
"#;

fn config_file(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn run(args: &[&str], config: &Path) -> Output {
    switchboard()
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn dash_t_and_test_are_check() {
    let dir = TempDir::new("cli-t");
    let good = config_file(&dir, "good.toml", CONFIG);
    let checked = run(&["check"], &good);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stderr));
    for alias in ["-t", "--test"] {
        let out = run(&[alias], &good);
        assert_eq!(out.status.code(), Some(0), "{alias}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), text(&checked.stdout), "{alias}");
    }
    let bad = config_file(&dir, "bad.toml", "listen = \"127.0.0.1:1\"\n");
    let out = run(&["-t"], &bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bad.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn config_path_comes_from_the_environment_and_the_flag_wins() {
    let dir = TempDir::new("cli-env");
    let from_env = config_file(&dir, "env.toml", CONFIG);
    let out = switchboard()
        .arg("check")
        .env("SWITCHBOARD_CONFIG", &from_env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("{}: ok", from_env.display())));

    let flag = config_file(&dir, "flag.toml", CONFIG);
    let out = switchboard()
        .args(["check", "-c"])
        .arg(&flag)
        .env("SWITCHBOARD_CONFIG", &from_env)
        .output()
        .unwrap();
    assert!(text(&out.stdout).starts_with(&format!("{}: ok", flag.display())));
}

#[test]
fn check_speaks_config_words() {
    let dir = TempDir::new("cli-words");
    let out = run(&["check"], &config_file(&dir, "words.toml", CONFIG));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "listen 127.0.0.1:8080 (http)",
        "admin  127.0.0.1:9100",
        "log    text, level warn,switchboard=info",
        "  */socket.io/ -> io; WebSockets from https://chat.example.com, http://localhost:3000",
        "  *.example.com/ -> game",
        "  io: sticky-hash on cookie:io",
        "    server 127.0.0.1:9001",
        "    server 127.0.0.1:9002 weight 2",
        "  game: least-conn",
        "    health check: http GET /healthz every 10s, timeout 1500ms, up after 2, down after 3",
        "  web: round-robin",
        "    slow start over 1m",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no `{line}` in\n{stdout}"
        );
    }
    for debug in ["StickyHash", "LeastConn", "Cookie(", "Some(", "secs", "\""] {
        assert!(!stdout.contains(debug), "`{debug}` in\n{stdout}");
    }
}

/// The keys of the client edge, the hand-over and DNS discovery.
fn edge_config(dir: &TempDir) -> String {
    format!(
        r#"
listen = "127.0.0.1:8080"
proxy_protocol = "v2"
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]
[admin]
listen = "127.0.0.1:9100"
handover_socket = "{}"
[[route]]
upstream = "chat"
[upstream.chat]
servers = ["127.0.0.1:9001", "dns:chat.default.svc.cluster.local:9000"]
resolve_interval = "5s"
send_proxy_protocol = "v1"
"#,
        dir.path("handover.sock").display()
    )
}

#[test]
fn check_shows_the_proxy_protocol_the_handover_socket_and_dns_servers() {
    let dir = TempDir::new("cli-edge");
    let path = config_file(&dir, "edge.toml", &edge_config(&dir));
    let out = run(&["check"], &path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let socket = format!("hand-over socket {}", dir.path("handover.sock").display());
    for line in [
        "client connections start with a PROXY v2 header",
        "trusted proxies 10.0.0.0/8, 127.0.0.1/32",
        socket.as_str(),
        "  chat: least-conn",
        "    PROXY v1 header sent to backends",
        "    server 127.0.0.1:9001",
        "    server dns:chat.default.svc.cluster.local:9000: every A/AAAA record, looked up every 5s",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no `{line}` in\n{stdout}"
        );
    }

    let out = run(&["check", "--json"], &path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["proxy_protocol"], "v2");
    assert_eq!(
        doc["trusted_proxies"],
        serde_json::json!(["10.0.0.0/8", "127.0.0.1/32"])
    );
    assert_eq!(
        doc["handover_socket"],
        dir.path("handover.sock").display().to_string()
    );
    let chat = &doc["upstreams"][0];
    assert_eq!(chat["send_proxy_protocol"], "v1");
    assert_eq!(
        chat["dns"]["servers"],
        serde_json::json!(["dns:chat.default.svc.cluster.local:9000"])
    );
    assert_eq!(chat["dns"]["resolve_interval"], "5s");

    // Without them: no such lines, and null / empty in JSON.
    let plain = run(&["check"], &config_file(&dir, "plain.toml", CONFIG));
    let stdout = text(&plain.stdout);
    for absent in ["PROXY", "trusted proxies", "hand-over socket"] {
        assert!(!stdout.contains(absent), "`{absent}` in\n{stdout}");
    }
    let plain = run(
        &["check", "--json"],
        &config_file(&dir, "plain.toml", CONFIG),
    );
    let doc: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(doc["proxy_protocol"], serde_json::Value::Null);
    assert_eq!(doc["trusted_proxies"], serde_json::json!([]));
    assert_eq!(
        doc["upstreams"][0]["send_proxy_protocol"],
        serde_json::Value::Null
    );
}

#[test]
fn check_json_says_the_same_for_tools() {
    let dir = TempDir::new("cli-json");
    let path = config_file(&dir, "json.toml", CONFIG);
    let out = run(&["check", "--json"], &path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["config"], path.display().to_string());
    assert_eq!(doc["listeners"][1]["kind"], "admin");
    assert_eq!(doc["listeners"][1]["address"], "127.0.0.1:9100");
    assert_eq!(doc["log"]["level"], "warn,switchboard=info");
    assert_eq!(doc["routes"][0]["host"], serde_json::Value::Null);
    assert_eq!(doc["routes"][1]["host"], "*.example.com");
    let upstream = |name: &str| {
        doc["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()
            .clone()
    };
    let io = upstream("io");
    assert_eq!(io["balance"], "sticky-hash");
    assert_eq!(io["hash_key"], "cookie:io");
    assert_eq!(io["servers"][1]["addr"], "127.0.0.1:9002");
    assert_eq!(io["servers"][1]["weight"], 2);
    let game = upstream("game");
    assert_eq!(game["balance"], "least-conn");
    assert_eq!(game["health_check"]["interval"], "10s");
    assert_eq!(game["health_check"]["timeout"], "1500ms");
    assert_eq!(upstream("web")["slow_start"], "1m");

    // An invalid config still gives a document to parse, and exit 1.
    let bad = config_file(
        &dir,
        "bad.toml",
        "listen = \"127.0.0.1:1\"\n[[route]]\nupstream = \"ghost\"\n",
    );
    let out = run(&["-t", "--json"], &bad);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert!(
        doc["error"].as_str().unwrap().contains("bad.toml:3:"),
        "{doc}"
    );
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = TempDir::new("cli-pipe");
    let good = config_file(&dir, "good.toml", CONFIG);
    for args in [
        &["check"][..],
        &["-t", "--json"],
        &["--print-default-config"],
    ] {
        // The reading end is closed before the child writes a byte: every write gets EPIPE,
        // as `switchboard check | head -1` does once head has its line.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = switchboard()
            .args(args)
            .arg("-c")
            .arg(&good)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn print_default_config_prints_the_reference() {
    let out = switchboard()
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchboard.toml");
    assert_eq!(
        text(&out.stdout),
        std::fs::read_to_string(reference).unwrap()
    );
    from_toml_str(&text(&out.stdout), "printed").unwrap();

    let out = switchboard()
        .args(["--print-default-config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_refuses_a_config_it_would_ignore() {
    for args in [
        &["demo", "--config", "x.toml"][..],
        &["-c", "x.toml", "demo"],
    ] {
        let out = switchboard().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("leave out --config"), "{args:?}: {stderr}");
    }
    let out = switchboard().args(["demo", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn log_level_is_checked_with_its_line() {
    let with_level = |level: &str| {
        format!(
            "listen = \"127.0.0.1:1\"\n[log]\nlevel = \"{level}\"\n[[route]]\nupstream = \"a\"\n[upstream.a]\nservers = [\"127.0.0.1:2\"]\n"
        )
    };
    let ok = from_toml_str(&with_level("warn,switchboard=debug"), "t").unwrap();
    assert_eq!(ok.log_level, "warn,switchboard=debug");
    let absent = from_toml_str(&with_level("info").replace("level = \"info\"\n", ""), "t");
    assert_eq!(absent.unwrap().log_level, "info");
    for (level, says) in [
        ("inf", "`inf` is not a log level"),
        ("switchboard", "`switchboard` is not a log level"),
        ("switchboard=loud", "does not end in a log level"),
        ("", "is empty"),
    ] {
        let e = from_toml_str(&with_level(level), "bad.toml").unwrap_err();
        let text = e.to_string();
        assert_eq!(e.line, Some(3), "{text}");
        assert_eq!(e.key.as_deref(), Some("log.level"), "{text}");
        assert!(text.contains(says), "{text}");
        assert!(text.contains("\"warn,switchboard=debug\""), "{text}");
    }
}

#[test]
fn shipped_configs_that_need_files_say_so_at_the_top() {
    for dir in ["config", "config/examples"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let body = std::fs::read_to_string(&path).unwrap();
            let header: String = body
                .lines()
                .take_while(|l| l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            // Files the config reads: quoted relative paths on lines that are not comments.
            for line in body.lines().filter(|l| !l.trim_start().starts_with('#')) {
                let code = line.split(" #").next().unwrap();
                for file in code.split('"').skip(1).step_by(2) {
                    if file.starts_with("certs/") || file.starts_with("secrets/") {
                        assert!(
                            header.contains(file),
                            "{} reads {file} but its header does not say so",
                            path.display()
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn demo_runs_with_an_ignored_environment_and_prints_its_bound_address() {
    use tokio::io::AsyncBufReadExt;
    // SWITCHBOARD_CONFIG is a default for commands that read a config, not an option given to
    // the demo: it runs, and `--listen 127.0.0.1:0` prints the port the system chose.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("SWITCHBOARD_CONFIG", "/nonexistent.toml")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(support::DEADLINE, lines.next_line())
        .await
        .expect("the banner in time")
        .unwrap()
        .unwrap();
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {banner}"));
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "{banner}");
    let page = support::clients::http_get(addr, "/", &[]).await;
    assert_eq!(page.status, 200);
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(support::DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
