//! Config: every shipped file parses; every kind of mistake names the file, line and key; the
//! binary exits 1 and starts nothing on a bad config.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::tls::{TempDir, TestCa};

use switchboard::config::{
    ConfigError, HealthCheck, HealthCheckKind, HostPattern, OriginPattern, OriginPolicy,
    from_toml_str,
};

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
        // Quoted paths on lines that are not comments (a header may name them in prose).
        let referenced: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split('"').skip(1).step_by(2))
            .filter(|s| s.starts_with("certs/"))
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
        // Sticky cookies name secret files under secrets/: 32 bytes for each.
        for file in text.split('"').filter(|s| s.starts_with("secrets/")) {
            let path = certs.path(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, [7u8; 32]).unwrap();
        }
        let text = text.replace("\"secrets/", &format!("\"{}/secrets/", certs.0.display()));
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
    assert_eq!(c.timeouts.connect.as_secs(), 4);
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
            "drain.close_code",
            "expected a whole number, found 1012.5",
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
            "websocket.ping_intervall",
            "unknown key `ping_intervall`",
        ),
        (
            "[drain]\nclose = 1001\n",
            7,
            "drain.close",
            "unknown key `close`",
        ),
    ] {
        let e = error_of(&minimal_with(extra));
        let text = e.to_string();
        assert_eq!(e.line, Some(line), "{extra}: {text}");
        assert!(
            text.starts_with(&format!("bad.toml:{line}:")),
            "{extra}: {text}"
        );
        assert_eq!(e.key.as_deref(), Some(key), "{extra}: {text}");
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

#[test]
fn pacing_rebalancing_and_health_check_defaults() {
    let c = from_toml_str(&minimal_with(""), "t").unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.slow_start, Duration::ZERO);
    assert_eq!(u.upgrade_pacing, None);
    assert_eq!(u.rebalance_skew, None);
    assert_eq!(u.rebalance_rate, 10.0);
    assert_eq!(u.health_check, None);
    assert_eq!(c.admin_token, None);

    let c = from_toml_str(
        &minimal_with("[upstream.app.health_check]\nkind = \"http\"\n"),
        "t",
    );
    let check = c.unwrap().upstreams[0].health_check.clone().unwrap();
    assert_eq!(
        check,
        HealthCheck {
            kind: HealthCheckKind::Http,
            path: "/".into(),
            host: None,
            expect_status: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            proxy_header: None,
        }
    );
}

#[test]
fn pacing_rebalancing_and_health_check_values() {
    let upstream = |extra: &str| {
        from_toml_str(&minimal_with(extra), "t")
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
            .upstreams
            .remove(0)
    };
    let u = upstream(concat!(
        "slow_start = \"30s\"\nmax_upgrades_per_second = 200\nupgrade_burst = 50\n",
        "rebalance_skew = 1.5\nrebalance_rate = 0.5\n",
        "[upstream.app.health_check]\nkind = \"websocket\"\npath = \"/healthz\"\n",
        "host = \"chat.internal\"\ninterval = \"2s\"\ntimeout = \"1s\"\nrise = 1\nfall = 100\n",
    ));
    assert_eq!(u.slow_start, Duration::from_secs(30));
    assert_eq!(u.upgrade_pacing, Some((200.0, 50)));
    assert_eq!(u.rebalance_skew, Some(1.5));
    assert_eq!(u.rebalance_rate, 0.5);
    let check = u.health_check.unwrap();
    assert_eq!(check.kind, HealthCheckKind::WebSocket);
    assert_eq!(
        (check.path.as_str(), check.host.as_deref()),
        ("/healthz", Some("chat.internal"))
    );
    assert_eq!(
        (check.interval, check.timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
    assert_eq!((check.rise, check.fall), (1, 100));

    // The burst defaults to one second's worth, rounded up, and at least 1; integers and floats
    // are both numbers; "0s" turns slow start off.
    for (rate, pacing) in [
        ("200", (200.0, 200)),
        ("2.5", (2.5, 3)),
        ("0.25", (0.25, 1)),
    ] {
        let u = upstream(&format!("max_upgrades_per_second = {rate}\n"));
        assert_eq!(u.upgrade_pacing, Some(pacing), "{rate}");
    }
    let u = upstream(
        "balance = \"round-robin\"\nslow_start = \"0s\"\nrebalance_skew = 2\nrebalance_rate = 10\n",
    );
    assert_eq!(u.slow_start, Duration::ZERO);
    assert_eq!((u.rebalance_skew, u.rebalance_rate), (Some(2.0), 10.0));
    let u = upstream("[upstream.app.health_check]\nkind = \"http\"\nexpect_status = 204\n");
    assert_eq!(u.health_check.unwrap().expect_status, Some(204));
    let u = upstream("[upstream.app.health_check]\nkind = \"tcp\"\n");
    assert_eq!(u.health_check.unwrap().kind, HealthCheckKind::Tcp);
}

#[test]
fn bad_pacing_rebalancing_and_health_check_values() {
    const HC: &str = "[upstream.app.health_check]\n";
    let hc = |rest: &str| format!("{HC}kind = \"http\"\n{rest}");
    for (extra, line, key, says) in [
        (
            "slow_start = \"30\"\n".to_owned(),
            6,
            "upstream.app.slow_start",
            "no unit",
        ),
        (
            "max_upgrades_per_second = 0\n".into(),
            6,
            "upstream.app.max_upgrades_per_second",
            "above zero",
        ),
        (
            "max_upgrades_per_second = -1.5\n".into(),
            6,
            "upstream.app.max_upgrades_per_second",
            "above zero",
        ),
        (
            "max_upgrades_per_second = \"200\"\n".into(),
            6,
            "upstream.app.max_upgrades_per_second",
            "expected a number such as 200, found \"200\"",
        ),
        (
            "max_upgrades_per_second = inf\n".into(),
            6,
            "upstream.app.max_upgrades_per_second",
            "finite number",
        ),
        (
            "upgrade_burst = 5\n".into(),
            6,
            "upstream.app.upgrade_burst",
            "needs max_upgrades_per_second",
        ),
        (
            "max_upgrades_per_second = 5\nupgrade_burst = 0\n".into(),
            7,
            "upstream.app.upgrade_burst",
            "out of range",
        ),
        (
            "rebalance_skew = 1.0\n".into(),
            6,
            "upstream.app.rebalance_skew",
            "above 1.0",
        ),
        (
            "rebalance_skew = 1\n".into(),
            6,
            "upstream.app.rebalance_skew",
            "above 1.0",
        ),
        (
            "rebalance_skew = \"1.5\"\n".into(),
            6,
            "upstream.app.rebalance_skew",
            "expected a number such as 1.5",
        ),
        (
            "balance = \"sticky-hash\"\nhash_key = \"ip\"\nrebalance_skew = 1.5\n".into(),
            8,
            "upstream.app.rebalance_skew",
            "affinity wins: rebalancing would move sticky keys",
        ),
        (
            "rebalance_rate = 0\n".into(),
            6,
            "upstream.app.rebalance_rate",
            "above zero",
        ),
        (
            "rebalance_rate = \"fast\"\n".into(),
            6,
            "upstream.app.rebalance_rate",
            "expected a number such as 10",
        ),
        (
            format!("{HC}path = \"/\"\n"),
            6,
            "upstream.app.health_check.kind",
            "needs a kind",
        ),
        (
            format!("{HC}kind = \"udp\"\n"),
            7,
            "upstream.app.health_check.kind",
            "unknown health check kind `udp`",
        ),
        (
            hc("path = \"healthz\"\n"),
            8,
            "upstream.app.health_check.path",
            "starts with `/`",
        ),
        (
            hc("path = \"/a b\"\n"),
            8,
            "upstream.app.health_check.path",
            "not a request path",
        ),
        (
            format!("{HC}kind = \"tcp\"\npath = \"/\"\n"),
            8,
            "upstream.app.health_check.path",
            "tcp check sends no request",
        ),
        (
            hc("host = \"a b\"\n"),
            8,
            "upstream.app.health_check.host",
            "not a Host header value",
        ),
        (
            hc("expect_status = 99\n"),
            8,
            "upstream.app.health_check.expect_status",
            "100 to 599",
        ),
        (
            hc("expect_status = 600\n"),
            8,
            "upstream.app.health_check.expect_status",
            "100 to 599",
        ),
        (
            format!("{HC}kind = \"websocket\"\nexpect_status = 200\n"),
            8,
            "upstream.app.health_check.expect_status",
            "only applies to kind = \"http\"",
        ),
        (
            format!("{HC}kind = \"tcp\"\nexpect_status = 200\n"),
            8,
            "upstream.app.health_check.expect_status",
            "only applies to kind = \"http\"",
        ),
        (
            hc("interval = \"2s\"\ntimeout = \"2s\"\n"),
            9,
            "upstream.app.health_check.timeout",
            "shorter than the interval",
        ),
        (
            hc("interval = \"1s\"\n"),
            8,
            "upstream.app.health_check.interval",
            "timeout (2s, the default) must be shorter than the interval (1s)",
        ),
        (
            hc("interval = \"0s\"\n"),
            8,
            "upstream.app.health_check.interval",
            "longer than zero",
        ),
        (
            hc("timeout = \"fast\"\n"),
            8,
            "upstream.app.health_check.timeout",
            "fast",
        ),
        (
            hc("rise = 0\n"),
            8,
            "upstream.app.health_check.rise",
            "use 1 to 100",
        ),
        (
            hc("fall = 101\n"),
            8,
            "upstream.app.health_check.fall",
            "use 1 to 100",
        ),
        (
            hc("falls = 3\n"),
            8,
            "upstream.app.health_check.falls",
            "unknown key `falls`",
        ),
    ] {
        let e = error_of(&minimal_with(&extra));
        let text = e.to_string();
        assert_eq!(e.line, Some(line), "{extra}: {text}");
        assert!(
            text.starts_with(&format!("bad.toml:{line}:")),
            "{extra}: {text}"
        );
        assert_eq!(e.key.as_deref(), Some(key), "{extra}: {text}");
        assert!(text.contains(key), "{extra}: {text}");
        assert!(text.contains(says), "{extra}: {text}");
    }
}

#[test]
fn admin_token_file_is_read_and_checked() {
    let dir = TempDir::new("admin-token");
    let config = |file: &std::path::Path| {
        format!(
            "listen = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:2\"\ntoken_file = \"{}\"\n{ROUTE}[upstream.app]\nservers = [\"127.0.0.1:2\"]\n",
            file.display()
        )
    };
    let file = dir.path("token");
    std::fs::write(&file, "  s3cret-token\n").unwrap();
    let c = from_toml_str(&config(&file), "t").unwrap();
    assert_eq!(c.admin_token.as_deref(), Some("s3cret-token"));

    for (contents, says) in [
        ("", "is empty"),
        (" \n\t\n", "is empty"),
        ("two words\n", "spaces, line breaks"),
    ] {
        std::fs::write(&file, contents).unwrap();
        let e = error_of(&config(&file));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("admin.token_file")),
            "{e}"
        );
        assert!(e.to_string().contains(says), "{contents:?}: {e}");
    }
    let missing = dir.path("missing");
    let e = error_of(&config(&missing));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(4), Some("admin.token_file"))
    );
    let reason = std::fs::read(&missing).unwrap_err().to_string();
    assert!(e.to_string().contains(&reason), "{e}");
}

/// A config whose one route ends with `route_lines`, the first of them on line 6.
fn route_with(route_lines: &str) -> String {
    format!(
        "listen = \"127.0.0.1:1\"\n[upstream.app]\nservers = [\"127.0.0.1:2\"]\n[[route]]\nupstream = \"app\"\n{route_lines}"
    )
}

#[test]
fn origin_rules_and_per_ip_limits_are_off_by_default() {
    let c = from_toml_str(&minimal_with(""), "t").unwrap();
    assert_eq!(c.route_origins, [OriginPolicy::default()]);
    assert!(c.route_origins[0].is_open());
    assert_eq!(c.limits.max_tunnels_per_ip, None);
    assert_eq!(c.limits.upgrades_per_ip_per_second, None);
    let c = from_toml_str(
        &minimal_with(
            "[limits]\nmax_tunnels_per_ip = \"off\"\nupgrades_per_ip_per_second = \"OFF\"\n",
        ),
        "t",
    )
    .unwrap();
    assert_eq!(c.limits.max_tunnels_per_ip, None);
    assert_eq!(c.limits.upgrades_per_ip_per_second, None);
}

#[test]
fn origin_rules_and_per_ip_limits_values() {
    let c = from_toml_str(
        &route_with(concat!(
            "allowed_origins = [\"HTTPS://Chat.Example.com\", \"https://*.Example.com:443\",\n",
            "  \"http://localhost:3000\", \"null\", \"http://[::1]:8080\", \"app://local\"]\n",
            "require_origin = true\n",
        )),
        "t",
    )
    .unwrap();
    let site = |scheme: &str, host: HostPattern, port| OriginPattern::Site {
        scheme: scheme.into(),
        host,
        port,
    };
    assert_eq!(
        c.route_origins[0],
        OriginPolicy {
            allowed: Some(vec![
                site(
                    "https",
                    HostPattern::Exact("chat.example.com".into()),
                    Some(443)
                ),
                site(
                    "https",
                    HostPattern::Wildcard(".example.com".into()),
                    Some(443)
                ),
                site("http", HostPattern::Exact("localhost".into()), Some(3000)),
                OriginPattern::Null,
                site("http", HostPattern::Exact("[::1]".into()), Some(8080)),
                site("app", HostPattern::Exact("local".into()), None),
            ]),
            require: true,
        }
    );
    // An empty list is valid: no browser page may connect, clients without Origin may.
    let c = from_toml_str(&route_with("allowed_origins = []\n"), "t").unwrap();
    assert_eq!(c.route_origins[0].allowed, Some(vec![]));
    assert!(!c.route_origins[0].require);

    for (extra, tunnels, rate) in [
        (
            "max_tunnels_per_ip = 100\nupgrades_per_ip_per_second = 5\n",
            Some(100),
            Some((5.0, 5)),
        ),
        ("upgrades_per_ip_per_second = 0.5\n", None, Some((0.5, 1))),
        ("upgrades_per_ip_per_second = 2.5\n", None, Some((2.5, 3))),
        ("max_tunnels_per_ip = 1\n", Some(1), None),
    ] {
        let c = from_toml_str(&minimal_with(&format!("[limits]\n{extra}")), "t").unwrap();
        assert_eq!(c.limits.max_tunnels_per_ip, tunnels, "{extra}");
        assert_eq!(c.limits.upgrades_per_ip_per_second, rate, "{extra}");
    }
}

#[test]
fn bad_origins_name_the_entry_line_and_key() {
    const KEY: &str = "route.allowed_origins";
    for (lines, line, key, says) in [
        (
            "allowed_origins = [\"chat.example.com\"]\n",
            6,
            KEY,
            "no scheme",
        ),
        (
            "allowed_origins = [\"https://chat.example.com/\"]\n",
            6,
            KEY,
            "not even a trailing /",
        ),
        (
            "allowed_origins = [\"https://chat.example.com/app\"]\n",
            6,
            KEY,
            "no path",
        ),
        (
            "allowed_origins = [\n  \"https://ok.example.com\",\n  \"https://chat.*.com\",\n]\n",
            8,
            KEY,
            "only allowed as the whole first label",
        ),
        (
            "allowed_origins = [\"https://*\"]\n",
            6,
            KEY,
            "whole first label",
        ),
        (
            "allowed_origins = [\"https://chat.example.com:99999\"]\n",
            6,
            KEY,
            "port is not a number from 1 to 65535",
        ),
        (
            "allowed_origins = [\"https://chat.example.com:\"]\n",
            6,
            KEY,
            "port",
        ),
        (
            "allowed_origins = [\"*\"]\n",
            6,
            KEY,
            "leave allowed_origins out",
        ),
        (
            "allowed_origins = [\"https://me@chat.example.com\"]\n",
            6,
            KEY,
            "user name",
        ),
        (
            "allowed_origins = [\"https://bücher.example\"]\n",
            6,
            KEY,
            "xn--",
        ),
        (
            "allowed_origins = [\"https://\"]\n",
            6,
            KEY,
            "host is missing",
        ),
        (
            "allowed_origins = [\"https://[::1\"]\n",
            6,
            KEY,
            "closing ]",
        ),
        ("allowed_origins = [\"\"]\n", 6, KEY, "no scheme"),
        (
            "allowed_origins = [\n  \"https://chat.example.com\",\n  \"https://a b.example.com\"]\n",
            8,
            KEY,
            "not a valid name",
        ),
        (
            "allowed_origins = []\nrequire_origin = true\n",
            7,
            "route.require_origin",
            "no WebSocket can ever open",
        ),
        (
            "allowed_origins = \"https://chat.example.com\"\n",
            6,
            "route.allowed_origins",
            "expected a list like [\"a\", \"b\"], found \"https://chat.example.com\"",
        ),
        (
            "require_origin = \"yes\"\n",
            6,
            "route.require_origin",
            "expected true or false, found \"yes\"",
        ),
        (
            "allowed_origin = [\"https://chat.example.com\"]\n",
            6,
            "route.allowed_origin",
            "did you mean `allowed_origins`?",
        ),
    ] {
        let e = error_of(&route_with(lines));
        let text = e.to_string();
        assert_eq!(e.line, Some(line), "{lines}: {text}");
        assert!(
            text.starts_with(&format!("bad.toml:{line}:")),
            "{lines}: {text}"
        );
        assert_eq!(e.key.as_deref(), Some(key), "{lines}: {text}");
        assert!(e.hint.is_some(), "{lines}: {text}");
        assert!(text.contains(key), "{lines}: {text}");
        assert!(text.contains(says), "{lines}: {text}");
    }
    // Entry errors quote the entry and show the form in the hint.
    let e = error_of(&route_with(
        "allowed_origins = [\"https://chat.example.com/\"]\n",
    ));
    assert!(
        e.message
            .contains("`https://chat.example.com/` is not an origin"),
        "{e}"
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("write \"https://chat.example.com\": an origin is scheme://host[:port]")
    );
    let e = error_of(&route_with("allowed_origins = [\"chat.example.com\"]\n"));
    assert!(
        e.hint.unwrap().contains("\"https://*.example.com\""),
        "the hint shows the form"
    );
}

#[test]
fn bad_per_ip_limits_name_line_and_key() {
    const TUNNELS: &str = "limits.max_tunnels_per_ip";
    const RATE: &str = "limits.upgrades_per_ip_per_second";
    for (extra, line, key, says) in [
        ("max_tunnels_per_ip = 0\n", 7, TUNNELS, "out of range"),
        ("max_tunnels_per_ip = -1\n", 7, TUNNELS, "out of range"),
        (
            "max_tunnels_per_ip = 10000001\n",
            7,
            TUNNELS,
            "1 to 10000000",
        ),
        ("max_tunnels_per_ip = 2.5\n", 7, TUNNELS, "whole number"),
        ("max_tunnels_per_ip = \"10\"\n", 7, TUNNELS, "whole number"),
        ("max_tunnels_per_ip = \"none\"\n", 7, TUNNELS, "or \"off\""),
        ("upgrades_per_ip_per_second = 0\n", 7, RATE, "above zero"),
        ("upgrades_per_ip_per_second = -3\n", 7, RATE, "above zero"),
        (
            "upgrades_per_ip_per_second = \"5\"\n",
            7,
            RATE,
            "expected a number such as 5, found \"5\"",
        ),
        (
            "upgrades_per_ip_per_second = nan\n",
            7,
            RATE,
            "finite number",
        ),
        ("upgrades_per_ip_per_second = true\n", 7, RATE, "found true"),
        (
            "max_tunnels_per_ip = 5\n\nupgrades_per_ip_per_second = 0.0\n",
            9,
            RATE,
            "above zero",
        ),
        (
            "max_tunnel_per_ip = 5\n",
            7,
            "limits.max_tunnel_per_ip",
            "did you mean `max_tunnels_per_ip`?",
        ),
    ] {
        let e = error_of(&minimal_with(&format!("[limits]\n{extra}")));
        let text = e.to_string();
        assert_eq!(e.line, Some(line), "{extra}: {text}");
        assert!(
            text.starts_with(&format!("bad.toml:{line}:")),
            "{extra}: {text}"
        );
        assert_eq!(e.key.as_deref(), Some(key), "{extra}: {text}");
        assert!(e.hint.is_some(), "{extra}: {text}");
        assert!(text.contains(key), "{extra}: {text}");
        assert!(text.contains(says), "{extra}: {text}");
    }
}

#[test]
fn check_catches_what_would_fail_or_mislead_at_run_time() {
    let base = "listen = \"127.0.0.1:8080\"\n";
    let up = "[upstream.app]\nservers = [\"127.0.0.1:9001\"]\n";
    let cases = [
        (
            format!(
                "{base}[[route]]\npath_prefix = \"/ws\"\nupstream = \"app\"\n[[route]]\npath_prefix = \"/ws\"\nupstream = \"app\"\n{up}"
            ),
            "route",
            "dead",
        ),
        (
            format!("{base}[admin]\nlisten = \"127.0.0.1:8080\"\n{ROUTE}{up}"),
            "admin.listen",
            "also `listen`",
        ),
        (
            format!(
                "{base}{ROUTE}[upstream.app]\nservers = [\"localhost:9001\", \"127.0.0.1:9001\"]\n"
            ),
            "upstream.app.servers",
            "same backend",
        ),
        (
            format!(
                "{base}[[route]]\nupstream = \"none\"\n[upstream.none]\nservers = [\"127.0.0.1:9001\"]\n"
            ),
            "upstream.none",
            "reserved",
        ),
    ];
    for (text, key, words) in cases {
        let e = error_of(&text);
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.line.is_some(), "{e}");
        assert!(e.message.contains(words), "{e}");
        assert!(e.hint.is_some(), "{e}");
    }
}
