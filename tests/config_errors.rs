//! Config errors in config words: no serde or Rust vocabulary, durations as people write them,
//! and every mistake of a file reported in one run with its line, key and hint.

use std::process::Command;
use std::time::Duration;

use switchboard::config::{ConfigError, MAX_ERRORS, from_toml_str};

fn error_of(text: &str) -> ConfigError {
    from_toml_str(text, "bad.toml").expect_err("config should be rejected")
}

/// A minimal valid config followed by `extra`, whose first line is line 6.
fn minimal_with(extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:1\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:2\"]\n{extra}"
    )
}

/// Words of serde, toml's Rust side or Rust's debug output that must never reach an operator.
const RUST_WORDS: [&str; 16] = [
    "i64",
    "u32",
    "f64",
    "i128",
    "invalid type",
    "sequence",
    "a map",
    "struct ",
    "Raw",
    "unknown field",
    "missing field",
    "floating point",
    "Some(",
    "StickyHash",
    "Cookie(",
    "config/switchboard.toml",
];

/// Asserts that no message or hint of `e` speaks Rust or points into the repository.
fn assert_config_words(e: &ConfigError) {
    for one in e.errors() {
        let text = format!("{} {}", one.message, one.hint.as_deref().unwrap_or(""));
        for word in RUST_WORDS {
            assert!(!text.contains(word), "`{word}` in: {e}");
        }
    }
}

#[test]
fn type_mismatches_of_every_raw_field_type_are_said_in_config_words() {
    for (extra, key, message, hint) in [
        // integers
        (
            "[limits]\nmax_connections = \"many\"\n",
            "limits.max_connections",
            "expected a whole number, found \"many\"",
            "write a whole number without quotes",
        ),
        (
            "[limits]\nmax_connections = \"5000\"\n",
            "limits.max_connections",
            "expected a whole number, found \"5000\"",
            "write 5000 without quotes",
        ),
        (
            "[drain]\nclose_code = 1001.5\n",
            "drain.close_code",
            "expected a whole number, found 1001.5",
            "without a decimal point",
        ),
        (
            "[limits]\nmax_connections = \"off\"\n",
            "limits.max_connections",
            "expected a whole number, found \"off\"",
            "this key cannot be \"off\"",
        ),
        (
            "[limits]\nmax_connections = 1979-05-27\n",
            "limits.max_connections",
            "found the date 1979-05-27",
            "whole number",
        ),
        // strings
        (
            "[upstream.app.health_check]\nkind = 5\n",
            "upstream.app.health_check.kind",
            "expected text in quotes, like \"…\", found 5",
            "write \"5\", in quotes",
        ),
        (
            "[log]\nformat = [\"json\"]\n",
            "log.format",
            "expected text in quotes, like \"…\", found a list",
            "write format = \"…\"",
        ),
        // lists
        (
            "[[route]]\npath_prefix = \"/b\"\nupstream = \"app\"\nallowed_origins = \"https://a.example\"\n",
            "route.allowed_origins",
            "expected a list like [\"a\", \"b\"], found \"https://a.example\"",
            "write allowed_origins = [\"https://a.example\"], even for one entry",
        ),
        // tables
        (
            "tls = \"backend.internal\"\n",
            "upstream.app.tls",
            "expected a table like { … }, found \"backend.internal\"",
            "write [upstream.app.tls] with its keys on the lines below, or tls = { key = value, … }",
        ),
        // booleans
        (
            "[[route]]\npath_prefix = \"/b\"\nupstream = \"app\"\nrequire_origin = \"true\"\n",
            "route.require_origin",
            "expected true or false, found \"true\"",
            "write true without quotes",
        ),
        (
            "[[route]]\npath_prefix = \"/b\"\nupstream = \"app\"\nrequire_origin = 1\n",
            "route.require_origin",
            "expected true or false, found 1",
            "write true or false, without quotes",
        ),
        // floats
        (
            "load_factor = \"1.25\"\n",
            "upstream.app.load_factor",
            "expected a number, found \"1.25\"",
            "write 1.25 without quotes",
        ),
        // a server entry (switchboard's own wording survives)
        (
            "[upstream.b]\nservers = [\"127.0.0.1:3\", 5]\n",
            "upstream.b.servers",
            "expected a server address \"host:port\" or a table { addr = \"host:port\", weight = N }, found 5",
            "every key with its type",
        ),
    ] {
        let e = error_of(&minimal_with(extra));
        assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
        assert!(e.message.contains(message), "{extra}: {e}");
        let shown = e.hint.clone().unwrap_or_default();
        assert!(shown.contains(hint), "{extra}: {e}");
        assert!(e.line.is_some_and(|l| l >= 6), "{extra}: {e}");
        assert_config_words(&e);
    }
}

#[test]
fn unknown_keys_suggest_the_closest_in_config_spelling() {
    let e = error_of(&minimal_with("balanse = \"least-conn\"\n"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(6), Some("upstream.app.balanse"))
    );
    assert!(e.message.starts_with("unknown key `balanse`"), "{e}");
    let hint = e.hint.as_deref().unwrap();
    assert!(hint.starts_with("did you mean `balance`?"), "{hint}");
    assert!(hint.contains("hash_key, load_factor"), "{hint}");

    // Top level: the tables are listed as the file spells them, not as the structs do.
    let e = error_of(&minimal_with("[limit]\nmax_connections = 5\n"));
    assert_eq!(e.key.as_deref(), Some("limit"));
    let hint = e.hint.as_deref().unwrap();
    assert!(hint.starts_with("did you mean `limits`?"), "{hint}");
    assert!(hint.contains("route, upstream"), "{hint}");

    // Nothing close: only the list.
    let e = error_of(&minimal_with("[websocket]\ncompression = true\n"));
    assert!(
        e.hint
            .as_deref()
            .unwrap()
            .starts_with("the keys here are: ping_interval"),
        "{e}"
    );
    assert_config_words(&e);
}

#[test]
fn missing_and_duplicate_keys() {
    let e =
        error_of("[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:2\"]\n");
    assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("listen")));
    assert_eq!(e.message, "missing key `listen` (in `[[route]]`)");
    assert!(
        e.hint
            .as_deref()
            .unwrap()
            .starts_with("add listen = \"127.0.0.1:8080\"")
    );

    let e = error_of(&minimal_with("[upstream.b]\nweight = 2\n"));
    let keys: Vec<_> = e.errors().map(|e| e.key.clone().unwrap()).collect();
    assert_eq!(keys, ["upstream.b.servers", "upstream.b.weight"], "{e}");
    let missing = e.errors().next().unwrap();
    assert_eq!(missing.line, Some(6), "the table's header: {e}");
    assert_eq!(
        missing.hint.as_deref(),
        Some("add servers = [\"127.0.0.1:9001\"]")
    );

    // A route without upstream is dropped, and the file's other routes still checked.
    let e = error_of(&minimal_with(
        "[[route]]\npath_prefix = \"/x\"\n[[route]]\npath_prefix = \"y\"\nupstream = \"app\"\n",
    ));
    let found: Vec<_> = e
        .errors()
        .map(|e| (e.line.unwrap(), e.key.clone().unwrap()))
        .collect();
    assert_eq!(
        found,
        [
            (6, "route.upstream".into()),
            (9, "route.path_prefix".into())
        ],
        "{e}"
    );

    let e = error_of(&minimal_with(
        "[limits]\nmax_connections = 5\nmax_connections = 6\n",
    ));
    assert_eq!(e.line, Some(8));
    assert!(e.message.starts_with("this key is written twice"), "{e}");
    assert_config_words(&e);
}

#[test]
fn durations_take_fractions_and_compounds() {
    for (text, expected) in [
        ("1.5s", Duration::from_millis(1_500)),
        ("1m30s", Duration::from_secs(90)),
        ("250ms", Duration::from_millis(250)),
        ("2h", Duration::from_secs(7_200)),
        ("1h30m", Duration::from_secs(5_400)),
        ("0.5s", Duration::from_millis(500)),
    ] {
        let c = from_toml_str(
            &minimal_with(&format!("[timeouts]\nconnect = \"{text}\"\n")),
            "t",
        )
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.timeouts.connect, expected, "{text}");
    }
    let c = from_toml_str(
        &minimal_with("[upstream.app.health_check]\nkind = \"tcp\"\ninterval = \"1.5s\"\ntimeout = \"750ms\"\n"),
        "t",
    )
    .unwrap();
    let check = c.upstreams[0].health_check.clone().unwrap();
    assert_eq!(
        (check.interval, check.timeout),
        (Duration::from_millis(1_500), Duration::from_millis(750))
    );
}

#[test]
fn bad_durations_say_what_to_write() {
    for (value, message, hint) in [
        (
            "120",
            "`120` is a bare number; a duration is written in quotes, with a unit",
            "write \"120s\"",
        ),
        ("1.5", "`1.5` is a bare number", "write \"1.5s\""),
        (
            "\"120\"",
            "`120` has no unit",
            "write \"120s\" (or \"120ms\" for milliseconds)",
        ),
        ("\"1m30\"", "`1m30` has no unit", "write \"1m30s\""),
        ("\"2d\"", "`2d` has the unknown unit `d`", "write \"48h\""),
        ("\"10 secs\"", "unknown unit `secs`", "write \"10s\""),
        (
            "\"30s1m\"",
            "repeats a unit or puts a smaller one first",
            "largest first",
        ),
        ("\"soon\"", "`soon` is not a duration", "\"1m30s\""),
        ("\"-5s\"", "`-5s` is negative", "zero or more"),
        (
            "\"0s\"",
            "must be longer than zero",
            "write a duration such as \"4s\"",
        ),
        (
            "\"off\"",
            "this key cannot be \"off\"",
            "write a duration such as \"4s\"",
        ),
        (
            "true",
            "expected a duration in quotes such as \"4s\", found true",
            "\"4s\"",
        ),
    ] {
        let e = error_of(&minimal_with(&format!("[timeouts]\nconnect = {value}\n")));
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(7), Some("timeouts.connect")),
            "{value}: {e}"
        );
        assert!(e.message.contains(message), "{value}: {e}");
        assert!(e.hint.as_deref().unwrap().contains(hint), "{value}: {e}");
        assert_config_words(&e);
    }
    // Keys that take "off" say so in the hint; where zero means none, "off" points at "0s".
    let e = error_of(&minimal_with("[timeouts]\ntunnel_idle = 90\n"));
    assert_eq!(
        e.hint.as_deref(),
        Some("write \"90s\" (or \"90ms\" for milliseconds), or \"off\"")
    );
    let e = error_of(&minimal_with("[timeouts]\nshutdown_delay = \"OFF\"\n"));
    assert_eq!(e.hint.as_deref(), Some("write \"0s\" for none"));
    let e = error_of(&minimal_with("[websocket]\nmax_lifetime = \"0s\"\n"));
    assert!(e.hint.as_deref().unwrap().ends_with("or \"off\""), "{e}");
    // Numbers that cannot be "off" say so too.
    for (extra, key) in [
        ("rebalance_rate = \"OFF\"\n", "upstream.app.rebalance_rate"),
        ("[drain]\nclose_code = \"off\"\n", "drain.close_code"),
        (
            "[[route]]\npath_prefix = \"/b\"\nupstream = \"app\"\nrequire_origin = \"off\"\n",
            "route.require_origin",
        ),
    ] {
        let e = error_of(&minimal_with(extra));
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(
            e.hint
                .as_deref()
                .unwrap()
                .starts_with("this key cannot be \"off\""),
            "{e}"
        );
    }
}

#[test]
fn off_is_taken_in_any_case_wherever_off_is_taken() {
    let c = from_toml_str(
        &minimal_with(concat!(
            "[timeouts]\ntunnel_idle = \"OFF\"\n",
            "[limits]\nmax_tunnels_per_ip = \"Off\"\nupgrades_per_ip_per_second = \" off \"\n",
            "[websocket]\nping_interval = \"oFF\"\nmax_message_bytes = \"OFF\"\nmax_lifetime = \"Off\"\n",
        )),
        "t",
    )
    .unwrap();
    assert_eq!(c.timeouts.tunnel_idle, None);
    assert_eq!(c.limits.max_tunnels_per_ip, None);
    assert_eq!(c.limits.upgrades_per_ip_per_second, None);
    assert_eq!(c.websocket.ping_interval, None);
    assert_eq!(c.websocket.max_message_bytes, None);
    assert_eq!(c.websocket.max_lifetime, None);
    let c = from_toml_str(&minimal_with("[timeouts]\ntunnel_idle = \"1h30m\"\n"), "t").unwrap();
    assert_eq!(c.timeouts.tunnel_idle, Some(Duration::from_secs(5_400)));
}

/// Three mistakes of three kinds: a bare number, an unknown key and a semantic error.
const THREE_MISTAKES: &str = r#"listen = "127.0.0.1:8080"

[timeouts]
connect = 120

[[route]]
path_prefix = "/ws"
upstream = "chat"

[upstream.chat]
balance = "sticky-hash"
hash_key = "cookie:io"
servers = ["127.0.0.1:9001", "127.0.0.1:9001"]
load_factr = 1.25
"#;

#[test]
fn every_mistake_of_a_file_is_reported_at_once_in_file_order() {
    let e = error_of(THREE_MISTAKES);
    let found: Vec<_> = e
        .errors()
        .map(|e| (e.line.unwrap(), e.key.clone().unwrap()))
        .collect();
    assert_eq!(
        found,
        [
            (4, "timeouts.connect".to_owned()),
            (13, "upstream.chat.servers".to_owned()),
            (14, "upstream.chat.load_factr".to_owned()),
        ]
    );
    assert_eq!(e.found(), 3);
    // The fields are the first mistake, for callers that show one.
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(4), Some("timeouts.connect"))
    );
    let shown = e.to_string();
    let starts: Vec<&str> = shown
        .lines()
        .filter(|l| !l.starts_with("  hint: "))
        .collect();
    assert_eq!(starts.len(), 4, "{shown}");
    assert!(
        starts[0].starts_with("bad.toml:4: `timeouts.connect`: "),
        "{shown}"
    );
    assert!(
        starts[1].starts_with("bad.toml:13: `upstream.chat.servers`: "),
        "{shown}"
    );
    assert!(
        starts[2].starts_with("bad.toml:14: `upstream.chat.load_factr`: "),
        "{shown}"
    );
    assert_eq!(starts[3], "3 errors in bad.toml");
    assert_eq!(shown.matches("\n  hint: ").count(), 3, "{shown}");
    assert_config_words(&e);
}

#[test]
fn validation_goes_on_with_defaults_after_each_mistake() {
    let e = error_of(&minimal_with(concat!(
        "[limits]\nmax_connections = 0\nheader_read_timeout = \"10\"\n",
        "[timeouts]\nconnect = \"0s\"\nhandshake = \"fast\"\n",
        "[drain]\nclose_code = 1000\n",
        "[websocket]\nlifetime_jitter = 10\nping_interval = \"100ms\"\n",
        "[upstream.app.health_check]\nkind = \"http\"\nrise = 0\nexpect_status = 700\n",
    )));
    let lines: Vec<usize> = e.errors().map(|e| e.line.unwrap()).collect();
    assert_eq!(lines, [7, 8, 10, 11, 13, 15, 16, 19, 20], "{e}");
    let jitter = e
        .errors()
        .find(|e| e.key.as_deref() == Some("websocket.lifetime_jitter"));
    assert_eq!(jitter.unwrap().hint.as_deref(), Some("write \"10%\""));
    assert_config_words(&e);
}

#[test]
fn a_wrong_value_does_not_echo_in_the_keys_that_depend_on_it() {
    // balance of the wrong type: hash_key is not judged against the default strategy.
    let e = error_of(&minimal_with("balance = 5\nhash_key = \"ip\"\n"));
    assert_eq!(e.found(), 1, "{e}");
    assert_eq!(e.key.as_deref(), Some("upstream.app.balance"));
    // An unknown strategy: the same.
    let e = error_of(&minimal_with("balance = \"sticky\"\nhash_key = \"ip\"\n"));
    assert_eq!(e.found(), 1, "{e}");
    // A bad kind: path and expect_status are not judged by a stand-in kind.
    let e = error_of(&minimal_with(
        "[upstream.app.health_check]\nkind = \"ftp\"\npath = \"/x\"\nexpect_status = 200\n",
    ));
    assert_eq!(e.found(), 1, "{e}");
    // A bad interval: the timeout is not compared with the default interval.
    let e = error_of(&minimal_with(
        "[upstream.app.health_check]\nkind = \"tcp\"\ninterval = \"1\"\ntimeout = \"9s\"\n",
    ));
    assert_eq!(e.found(), 1, "{e}");
    // An upstream that is dropped (no servers): the route naming it is not "unknown".
    let e = error_of(
        "listen = \"127.0.0.1:1\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nbalance = \"least-conn\"\n",
    );
    assert_eq!(e.found(), 1, "{e}");
    assert_eq!(e.key.as_deref(), Some("upstream.app.servers"));
    // The only route dropped (no upstream): not also "no [[route]] is defined".
    let e = error_of(
        "listen = \"127.0.0.1:1\"\n[[route]]\npath_prefix = \"/\"\n[upstream.app]\nservers = [\"127.0.0.1:2\"]\n",
    );
    assert_eq!(
        (e.found(), e.key.as_deref()),
        (1, Some("route.upstream")),
        "{e}"
    );
    // But a mistake in one [[route]] does not hide one in the next.
    let e = error_of(&minimal_with(
        "[[route]]\npath_prefix = \"/b\"\nupstream = \"app\"\nrequire_origin = \"yes\"\n\
         [[route]]\npath_prefix = \"c\"\nupstream = \"app\"\n",
    ));
    let keys: Vec<_> = e.errors().map(|e| e.key.clone().unwrap()).collect();
    assert_eq!(keys, ["route.require_origin", "route.path_prefix"], "{e}");
    // A bad origin entry does not make the list look empty.
    let e = error_of(&minimal_with(
        "[[route]]\npath_prefix = \"/b\"\nupstream = \"app\"\nallowed_origins = [\"chat.example\"]\nrequire_origin = true\n",
    ));
    assert_eq!(e.found(), 1, "{e}");
}

#[test]
fn the_list_is_bounded() {
    let mut text = minimal_with("[limits]\n");
    for i in 0..30 {
        text.push_str(&format!("bad_key_{i} = 1\n"));
    }
    let e = error_of(&text);
    assert_eq!(e.errors().count(), MAX_ERRORS);
    assert!(
        e.to_string()
            .ends_with(&format!("{MAX_ERRORS} errors in bad.toml")),
        "{e}"
    );

    let mut text = minimal_with("");
    for i in 0..30 {
        text.push_str(&format!(
            "[[route]]\npath_prefix = \"/{i}\"\nupstream = \"nope\"\n"
        ));
    }
    let e = error_of(&text);
    assert_eq!((e.errors().count(), e.found()), (MAX_ERRORS, 30));
    assert!(
        e.to_string()
            .ends_with("30 errors in bad.toml; the first 20 are shown"),
        "{e}"
    );
}

#[test]
fn a_syntax_error_is_reported_alone_with_its_line() {
    let e = error_of(&minimal_with(
        "[limits]\nmax_connections = \n[timeouts]\nconnect = 5\n",
    ));
    assert_eq!((e.found(), e.line), (1, Some(7)), "{e}");
    assert!(e.message.contains("(in `max_connections =`)"), "{e}");
}

#[test]
fn hints_name_the_installed_reference() {
    for text in [
        minimal_with("[websocket]\ncompression = true\n"),
        minimal_with("[upstream.b]\nservers = [\"127.0.0.1:3\", 5]\n"),
        "listen = [".to_owned(),
    ] {
        let e = error_of(&text);
        let hints: String = e.errors().filter_map(|e| e.hint.clone()).collect();
        assert!(!hints.contains("config/"), "{e}");
        assert!(
            e.errors()
                .filter_map(|e| e.hint.as_deref())
                .any(|h| h.contains("switchboard --print-default-config")),
            "{e}"
        );
    }
}

#[test]
fn check_and_start_print_every_mistake() {
    let dir =
        std::env::temp_dir().join(format!("switchboard-config-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("three.toml");
    std::fs::write(&bad, THREE_MISTAKES).unwrap();
    for args in [&["check", "--config"][..], &["--config"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in [4, 13, 14] {
            assert!(
                stderr.contains(&format!("three.toml:{line}: `")),
                "{args:?}: {stderr}"
            );
        }
        assert!(stderr.contains("3 errors in "), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest::proptest! {
    /// What the fuzz target checks, on mutations of a real config: no panic; every error names
    /// its origin, has a message and points at a line of the text (or one past its end).
    #[test]
    fn every_error_names_its_origin_and_a_line_of_the_text(
        cut in 0usize..400,
        insert in "[ -~\n]{0,12}",
    ) {
        let base = include_str!("../config/minimal.toml");
        let at = base.char_indices().map(|(i, _)| i).nth(cut % base.chars().count()).unwrap_or(0);
        let text = format!("{}{insert}{}", &base[..at], &base[at..]);
        if let Err(e) = from_toml_str(&text, "fuzz") {
            let lines = text.lines().count().max(1);
            for one in e.errors() {
                proptest::prop_assert_eq!(&one.origin, "fuzz");
                proptest::prop_assert!(!one.message.is_empty());
                if let Some(line) = one.line {
                    proptest::prop_assert!((1..=lines + 1).contains(&line), "{}", e);
                }
            }
            proptest::prop_assert!(e.to_string().starts_with("fuzz"));
        }
    }
}
