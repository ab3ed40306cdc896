//! README.md's metrics table against what switchboard exports, both ways, names and types, so
//! the documentation cannot drift from the code: every family a scrape shows (after traffic
//! that gives the labelled families their series) and every registered family (many have no
//! series until something happens: TLS, reloads, health checks) must be a row with its type,
//! and every row must be registered.

mod support;

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use support::backends::{EchoBackend, HttpBackend, refusing_addr};
use support::clients::{http_get, ws_connect};
use support::{DEADLINE, Switchboard, eventually, metric};

/// `name → type` of each row of the table under `## Metrics`.
fn readme_table() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README.md has a `## Metrics` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 4, "a metrics row has 4 cells: {line}");
        let name = cells[0].trim_matches('`').to_owned();
        let previous = rows.insert(name.clone(), cells[1].to_owned());
        assert!(previous.is_none(), "{name} has two rows in README.md");
    }
    assert!(rows.len() > 20, "the metrics table was not found");
    rows
}

/// `name → type` of each `# TYPE` line of a scrape.
fn scraped_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// What differs between `exported` (`name → type`) and the table, one line each.
fn differences(
    what: &str,
    exported: &BTreeMap<String, String>,
    table: &BTreeMap<String, String>,
) -> Vec<String> {
    exported
        .iter()
        .filter_map(|(name, kind)| match table.get(name) {
            None => Some(format!("{what} {name} ({kind}) has no row in README.md")),
            Some(row) if row != kind => {
                Some(format!("{what} {name} is a {kind}; README.md says {row}"))
            }
            Some(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn the_readme_metrics_table_is_what_switchboard_exports() {
    let echo = EchoBackend::start("echo").await;
    let web = HttpBackend::start("web").await;
    let gone = refusing_addr().await;
    let sb = Switchboard::start(&format!(
        r#"
[[route]]
path_prefix = "/ws"
upstream = "chat"
[[route]]
path_prefix = "/gone"
upstream = "gone"
[[route]]
path_prefix = "/"
upstream = "web"
[upstream.chat]
servers = ["{}"]
[upstream.gone]
servers = ["{gone}"]
[upstream.web]
servers = ["{}"]
"#,
        echo.addr, web.addr
    ))
    .await;

    // Traffic, so that the labelled families have series: a plain request, a failed connect,
    // an unrouted request, a tunnel that relays and closes.
    assert_eq!(http_get(sb.addr, "/", &[]).await.status, 200);
    assert_eq!(http_get(sb.addr, "/gone", &[]).await.status, 502);
    let mut ws = ws_connect(&sb.ws_url("/ws")).await;
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
    assert!(matches!(echoed, Some(Ok(Message::Text(_)))));
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    drop(ws);
    let text = eventually("the tunnel's end counted", || async {
        let text = sb.scrape().await;
        (metric(&text, "switchboard_tunnels_closed_total", &[]) == 1.0).then_some(text)
    })
    .await;

    let table = readme_table();
    let scraped = scraped_types(&text);
    let registered: BTreeMap<String, String> = sb
        .metrics
        .families()
        .into_iter()
        .map(|(name, kind)| (name, kind.to_owned()))
        .collect();
    let mut wrong = differences("scraped", &scraped, &table);
    wrong.extend(differences("registered", &registered, &table));
    // The process collector reads /proc: Linux only.
    let optional = |name: &str| !cfg!(target_os = "linux") && name.starts_with("process_");
    wrong.extend(
        table
            .keys()
            .filter(|name| !registered.contains_key(*name) && !optional(name))
            .map(|name| format!("README.md's row {name} is not registered by switchboard")),
    );
    assert!(
        wrong.is_empty(),
        "README.md's metrics table and the code differ:\n  {}",
        wrong.join("\n  ")
    );
    // The scrape shows the families this test gave series, not only the plain ones.
    for name in [
        "switchboard_http_requests_total",
        "switchboard_backend_connect_errors_total",
        "switchboard_tunnels_closed_total",
        "switchboard_build_info",
        "process_resident_memory_bytes",
    ] {
        assert!(
            scraped.contains_key(name) || optional(name),
            "{name} not scraped"
        );
    }
    sb.stop().await;
}
