//! Config: every shipped file parses; every kind of mistake names the file, line and key; the
//! binary exits 1 and starts nothing on a bad config.

mod support;

use std::path::Path;
use std::process::Command;

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
