//! Config: every shipped file parses; every kind of mistake names the file, line and key; the
//! binary exits 1 and starts nothing on a bad config.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::tls::{TempDir, TestCa};

use switchboard::config::{ConfigError, from_toml_str};

fn error_of(text: &str) -> ConfigError {
    from_toml_str(text, "bad.toml").expect_err("config should be rejected")
}

const ROUTE: &str = "[[route]]\nupstream = \"app\"\n";

#[test]
fn every_shipped_config_is_valid() {
    let mut files = Vec::new();
    for dir in ["config", "config/examples"] {
        for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    // Examples name certificate files under certs/: make real ones for them in a temporary
    // folder (a pair for each `X.pem` with an `X.key`, a CA for a lone `.pem`).
    let ca = TestCa::new("example CA");
    let certs = TempDir::new("example-certs");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let referenced: Vec<&str> = text
            .split('"')
            .filter(|s| {
                s.starts_with("certs/")
                    && !text
                        .lines()
                        .any(|l| l.trim_start().starts_with('#') && l.contains(*s))
            })
            .collect();
        for file in &referenced {
            let stem = file
                .trim_start_matches("certs/")
                .trim_end_matches(".pem")
                .trim_end_matches(".key");
            if referenced.contains(&format!("certs/{stem}.key").as_str()) {
                if !certs.path(&format!("{stem}.key")).exists() {
                    ca.write_leaf(&certs, stem, &["example.com"]);
                }
            } else {
                ca.write_ca(&certs, file.trim_start_matches("certs/"));
            }
        }
        let text = text.replace("\"certs/", &format!("\"{}/", certs.0.display()));
        from_toml_str(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = error_of(&format!(
        "listen = \"127.0.0.1:1\"\n{ROUTE}[upstream.app]\nservers = [\"127.0.0.1:2\"]\nbalanse = \"least-conn\"\n"
    ));
    assert_eq!(e.line, Some(6));
    let text = e.to_string();
    assert!(text.starts_with("bad.toml:6:"), "{text}");
    assert!(text.contains("balanse"), "{text}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let e = error_of(&format!(
        "listen = \"127.0.0.1:1\"\n[limits]\nmax_connections = \"many\"\n{ROUTE}"
    ));
    assert_eq!(e.line, Some(3));
    assert!(e.to_string().contains("max_connections"), "{e}");
}

#[test]
fn unknown_upstream_in_a_route() {
    let e = error_of(
        "listen = \"127.0.0.1:1\"\n[[route]]\nupstream = \"nope\"\n[upstream.app]\nservers = [\"127.0.0.1:2\"]\n",
    );
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("route.upstream"))
    );
    assert!(e.to_string().contains("defined upstreams: app"), "{e}");
}

#[test]
fn empty_server_list() {
    let e = error_of(&format!(
        "listen = \"127.0.0.1:1\"\n{ROUTE}[upstream.app]\nservers = []\n"
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(5), Some("upstream.app.servers"))
    );
}

#[test]
fn bad_addresses() {
    let e = error_of(&format!(
        "listen = \"127.0.0.1:99999\"\n{ROUTE}[upstream.app]\nservers = [\"127.0.0.1:2\"]\n"
    ));
    assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("listen")));
    let e = error_of(&format!(
        "listen = \"127.0.0.1:1\"\n{ROUTE}[upstream.app]\nservers = [\n  \"127.0.0.1:2\",\n  \"no port here\",\n]\n"
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(7), Some("upstream.app.servers"))
    );
}

#[test]
fn bad_hash_keys() {
    for (key, fix) in [
        ("body:x", "is not a hash key"),
        ("query:", "is not a hash key"),
        ("header:bad name", "is not a hash key"),
    ] {
        let e = error_of(&format!(
            "listen = \"127.0.0.1:1\"\n{ROUTE}[upstream.app]\nbalance = \"sticky-hash\"\nhash_key = \"{key}\"\nservers = [\"127.0.0.1:2\"]\n"
        ));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(6), Some("upstream.app.hash_key")),
            "{key}"
        );
        assert!(e.to_string().contains(fix), "{e}");
    }
    let e = error_of(&format!(
        "listen = \"127.0.0.1:1\"\n{ROUTE}[upstream.app]\nbalance = \"sticky-hash\"\nservers = [\"127.0.0.1:2\"]\n"
    ));
    assert!(e.to_string().contains("needs a hash_key"), "{e}");
}

#[test]
fn minimal_config_gets_defaults() {
    let c = from_toml_str(
        &format!("listen = \"127.0.0.1:1\"\n{ROUTE}[upstream.app]\nservers = [\"127.0.0.1:2\"]\n"),
        "t",
    )
    .unwrap();
    assert_eq!(c.routes[0].path_prefix, "/");
    assert_eq!(
        c.upstreams[0].balance,
        switchboard::config::Balance::LeastConn
    );
    assert_eq!(c.timeouts.connect.as_secs(), 3);
    assert!(c.admin.is_none());
}

/// A minimal valid config followed by `extra`, whose first line is line 6.
fn minimal_with(extra: &str) -> String {
    format!("listen = \"127.0.0.1:1\"\n{ROUTE}[upstream.app]\nservers = [\"127.0.0.1:2\"]\n{extra}")
}

#[test]
fn drain_websocket_and_shutdown_delay_defaults() {
    let c = from_toml_str(&minimal_with(""), "t").unwrap();
    assert_eq!(c.drain.spread, Duration::from_secs(5));
    assert_eq!(c.drain.close_code, 1001);
    assert_eq!(c.drain.close_linger, Duration::from_secs(5));
    assert_eq!(c.drain.timeout, Duration::from_secs(30));
    assert_eq!(c.websocket.ping_interval, None);
    assert_eq!(c.websocket.max_message_bytes, None);
    assert_eq!(c.websocket.max_lifetime, None);
    assert_eq!(c.websocket.lifetime_jitter, 0.10);
    assert_eq!(c.timeouts.shutdown_delay, Duration::ZERO);
    assert_eq!(c.timeouts.shutdown_grace, Duration::from_secs(30));

    // Empty tables and explicit "off" (any case) mean the same.
    let c = from_toml_str(
        &minimal_with(
            "[drain]\n[websocket]\nping_interval = \"OFF\"\nmax_message_bytes = \"off\"\nmax_lifetime = \"Off\"\n",
        ),
        "t",
    )
    .unwrap();
    assert_eq!(c.drain.spread, Duration::from_secs(5));
    assert_eq!(c.websocket.ping_interval, None);
    assert_eq!(c.websocket.max_message_bytes, None);
    assert_eq!(c.websocket.max_lifetime, None);
}

#[test]
fn drain_websocket_and_shutdown_delay_values() {
    let c = from_toml_str(
        &minimal_with(concat!(
            "[timeouts]\nshutdown_delay = \"2s\"\nshutdown_grace = \"60s\"\n",
            "[drain]\nspread = \"250ms\"\nclose_code = 1012\nclose_linger = \"1s\"\ntimeout = \"10m\"\n",
            "[websocket]\nping_interval = \"30s\"\nmax_message_bytes = 1048576\n",
            "max_lifetime = \"24h\"\nlifetime_jitter = \"2.5%\"\n",
        )),
        "t",
    )
    .unwrap();
    assert_eq!(c.timeouts.shutdown_delay, Duration::from_secs(2));
    assert_eq!(c.timeouts.shutdown_grace, Duration::from_secs(60));
    assert_eq!(c.drain.spread, Duration::from_millis(250));
    assert_eq!(c.drain.close_code, 1012);
    assert_eq!(c.drain.close_linger, Duration::from_secs(1));
    assert_eq!(c.drain.timeout, Duration::from_secs(600));
    assert_eq!(c.websocket.ping_interval, Some(Duration::from_secs(30)));
    assert_eq!(c.websocket.max_message_bytes, Some(1_048_576));
    assert_eq!(
        c.websocket.max_lifetime,
        Some(Duration::from_secs(24 * 3600))
    );
    assert_eq!(c.websocket.lifetime_jitter, 0.025);

    // Zero is allowed where it means "none"; the largest message size is 2^53.
    let c = from_toml_str(
        &minimal_with(concat!(
            "[timeouts]\nshutdown_delay = \"0s\"\n[drain]\nspread = \"0s\"\n",
            "[websocket]\nmax_message_bytes = 9007199254740992\nlifetime_jitter = \"0%\"\n",
        )),
        "t",
    )
    .unwrap();
    assert_eq!(c.timeouts.shutdown_delay, Duration::ZERO);
    assert_eq!(c.drain.spread, Duration::ZERO);
    assert_eq!(c.websocket.max_message_bytes, Some(1 << 53));
    assert_eq!(c.websocket.lifetime_jitter, 0.0);
}

#[test]
fn bad_drain_websocket_and_shutdown_values() {
    for (extra, line, key, says) in [
        (
            "[drain]\nclose_code = 1000\n",
            7,
            "drain.close_code",
            "1001 (Going Away) or 1012",
        ),
        (
            "[drain]\nclose_code = 1012.5\n",
            7,
            "close_code",
            "expected i64",
        ),
        (
            "[drain]\nclose_linger = \"0s\"\n",
            7,
            "drain.close_linger",
            "longer than zero",
        ),
        (
            "[drain]\ntimeout = \"0s\"\n",
            7,
            "drain.timeout",
            "longer than zero",
        ),
        ("[drain]\nspread = \"5\"\n", 7, "drain.spread", "no unit"),
        (
            "[timeouts]\nshutdown_delay = \"soon\"\n",
            7,
            "timeouts.shutdown_delay",
            "soon",
        ),
        (
            "[websocket]\nmax_message_bytes = \"big\"\n",
            7,
            "websocket.max_message_bytes",
            "expected a number of bytes such as 1048576, or \"off\"",
        ),
        (
            "[websocket]\nmax_message_bytes = \"1048576\"\n",
            7,
            "websocket.max_message_bytes",
            "bare integer",
        ),
        (
            "[websocket]\n\nmax_message_bytes = 0\n",
            8,
            "websocket.max_message_bytes",
            "out of range",
        ),
        (
            "[websocket]\nmax_message_bytes = 9007199254740993\n",
            7,
            "websocket.max_message_bytes",
            "out of range",
        ),
        (
            "[websocket]\nmax_message_bytes = 1.5\n",
            7,
            "websocket.max_message_bytes",
            "expected a number of bytes",
        ),
        (
            "[websocket]\nlifetime_jitter = \"60%\"\n",
            7,
            "websocket.lifetime_jitter",
            "\"0%\" to \"50%\"",
        ),
        (
            "[websocket]\nlifetime_jitter = \"10\"\n",
            7,
            "websocket.lifetime_jitter",
            "not a percentage",
        ),
        (
            "[websocket]\nlifetime_jitter = \"-5%\"\n",
            7,
            "websocket.lifetime_jitter",
            "not a percentage",
        ),
        (
            "[websocket]\nping_interval = \"0s\"\n",
            7,
            "websocket.ping_interval",
            "at least \"1s\"",
        ),
        (
            "[websocket]\nping_interval = \"500ms\"\n",
            7,
            "websocket.ping_interval",
            "at least \"1s\"",
        ),
        (
            "[websocket]\nmax_lifetime = \"0s\"\n",
            7,
            "websocket.max_lifetime",
            "longer than zero",
        ),
        (
            "[websocket]\nmax_lifetime = \"forever\"\n",
            7,
            "websocket.max_lifetime",
            "\"off\"",
        ),
        (
            "[websocket]\nping_interval = \"30s\"\nping_intervall = \"30s\"\n",
            8,
            "ping_intervall",
            "unknown field",
        ),
        ("[drain]\nclose = 1001\n", 7, "close", "unknown field"),
    ] {
        let e = error_of(&minimal_with(extra));
        let text = e.to_string();
        assert_eq!(e.line, Some(line), "{extra}: {text}");
        assert!(
            text.starts_with(&format!("bad.toml:{line}:")),
            "{extra}: {text}"
        );
        // Semantic errors carry the dotted key; serde's (type, unknown field) name it in the text.
        if key.contains('.') {
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {text}");
        }
        assert!(text.contains(key), "{extra}: {text}");
        assert!(text.contains(says), "{extra}: {text}");
    }
}

fn switchboard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
}

#[test]
fn check_command_exits_0_or_1() {
    let dir = std::env::temp_dir().join(format!("switchboard-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:1\"\n[[route]]\nupstream = \"ghost\"\n",
    )
    .unwrap();

    let out = switchboard()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:3:") && stderr.contains("route.upstream"),
        "{stderr}"
    );

    // Running with it also exits 1, before binding anything.
    let out = switchboard().arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));

    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchboard.toml");
    let out = switchboard()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("chat.example.com/ws -> chat"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
