//! The shipped Prometheus rules (deploy/prometheus/alerts.yml) and Grafana dashboard
//! (deploy/grafana/switchboard.json) against a real Prometheus scraping a real switchboard
//! under a little load: every rule loads and evaluates without error, every dashboard query
//! (panels, variables, annotations) runs, the key series are there, every query whose metrics
//! the load produced returns data, and the alerts the load provokes (a dead backend, a failed
//! reload, a drain, tunnels at `max_tunnels`) have data while the others stay empty.
//!
//! Needs Debian's `prometheus` package (`.ci/run` installs it); without it the test fails
//! saying so.

mod support;

use std::collections::BTreeSet;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use support::backends::{EchoBackend, HttpBackend, refusing_addr};
use support::clients::{Ws, close_and_drop, http_get, ws_connect};
use support::dashboard::{DashboardQuery, dashboard_queries, metric_names};
use support::prometheus::{Prometheus, api, query};
use support::{Switchboard, metric};

/// Tunnels allowed in the test, all of them held at the end: the near-limit alert has data.
const MAX_TUNNELS: usize = 5;

/// Alerts that the load below must provoke (their expressions return data), and those that
/// must stay empty. SwitchboardUpgradeErrorRatioHigh is in neither: Prometheus sees no
/// increase in a counter series that first appears already counted, and a few seconds of
/// failed upgrades stay under its traffic floor; its unit tests cover it.
const PROVOKED: &[&str] = &[
    "SwitchboardBackendDown",
    "SwitchboardUpstreamAllBackendsDown",
    "SwitchboardReloadFailed",
    "SwitchboardDrainStuck",
    "SwitchboardTunnelsNearLimit",
];
const QUIET: &[&str] = &[
    "SwitchboardScrapeFailing",
    "SwitchboardConnectionsNearLimit",
    "SwitchboardCertificateExpiresSoon",
];

fn config(
    a: &EchoBackend,
    b: &EchoBackend,
    web: &HttpBackend,
    gone: std::net::SocketAddr,
) -> String {
    format!(
        "[limits]\nmax_tunnels = {MAX_TUNNELS}\n[drain]\ntimeout = \"10m\"\n\
         [[route]]\npath_prefix = \"/ws\"\nupstream = \"chat\"\n\
         [[route]]\npath_prefix = \"/gone\"\nupstream = \"gone\"\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"web\"\n\
         [upstream.chat]\nbalance = \"sticky-hash\"\nhash_key = \"query:room\"\nservers = [\"{}\", \"{}\"]\n\
         [upstream.gone]\nservers = [\"{gone}\"]\n\
         [upstream.web]\nservers = [\"{}\"]\n",
        a.addr, b.addr, web.addr
    )
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(back))) => assert_eq!(back.as_str(), text),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// Metric names Prometheus holds now.
async fn stored_names(prometheus: &Prometheus) -> BTreeSet<String> {
    let names = api(prometheus.addr, "/api/v1/label/__name__/values").await;
    let list = names["data"].as_array().unwrap().iter();
    list.map(|n| n.as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_runs_every_shipped_rule_and_dashboard_query() {
    let (a, b) = (EchoBackend::start("a").await, EchoBackend::start("b").await);
    let web = HttpBackend::start("web").await;
    let gone = refusing_addr().await;
    let (sb, file) = Switchboard::start_file(&config(&a, &b, &web, gone)).await;
    let rules = support::dashboard::repo_file("deploy/prometheus/alerts.yml");
    let mut prometheus = Prometheus::start(sb.admin, &rules).await;
    let addr = prometheus.addr;
    prometheus
        .wait_for("the first successful scrape", || async move {
            let up = query(addr, "up{job=\"switchboard\"} == 1").await.ok()?;
            (!up.is_empty()).then_some(())
        })
        .await;

    // The load: plain requests, tunnels opened, echoed and closed, a dead backend, a refused
    // upgrade, a failed reload (after the first scrape saw its counter at 0), tunnels held
    // up to the limit, one backend drained under them.
    for _ in 0..10 {
        assert_eq!(http_get(sb.addr, "/", &[]).await.status, 200);
    }
    assert_eq!(http_get(sb.addr, "/gone/", &[]).await.status, 502);
    for room in ["x", "y"] {
        let mut ws = ws_connect(&sb.ws_url(&format!("/ws?room={room}"))).await;
        echo(&mut ws, "hello").await;
        close_and_drop(ws).await;
    }
    assert!(
        tokio_tungstenite::connect_async(sb.ws_url("/gone/ws"))
            .await
            .is_err()
    );
    let mut held = Vec::new();
    for room in 0..MAX_TUNNELS {
        let mut ws = ws_connect(&sb.ws_url(&format!("/ws?room={room}"))).await;
        echo(&mut ws, &format!("room {room}")).await;
        held.push(ws);
    }
    assert!(
        tokio_tungstenite::connect_async(sb.ws_url("/ws?room=over"))
            .await
            .is_err()
    );
    file.write_raw("listen = \"127.0.0.1:0\"\n[[route]]\nupstream = \"ghost\"\n");
    assert_eq!(sb.admin_post("/admin/reload", &[]).await.status, 400);
    let upstreams = sb.upstreams().await;
    let chat = upstreams["upstreams"].as_array().unwrap().iter();
    let chat = chat.into_iter().find(|u| u["name"] == "chat").unwrap();
    let busy = chat["backends"].as_array().unwrap().iter();
    let busy = busy
        .into_iter()
        .find(|b| b["tunnels"].as_u64() > Some(0))
        .unwrap();
    let drain = format!(
        "/admin/upstreams/chat/backends/{}/drain",
        busy["addr"].as_str().unwrap()
    );
    assert_eq!(sb.admin_post(&drain, &[]).await.status, 200);
    let text = sb.scrape().await;
    assert_eq!(
        metric(&text, "switchboard_tunnels_limit", &[]),
        MAX_TUNNELS as f64
    );

    // The key series, as Prometheus stored them.
    prometheus
        .wait_for("the load's last effects in Prometheus", || async move {
            let reload_error = query(
                addr,
                "switchboard_config_reloads_total{result=\"error\"} == 1",
            );
            let draining = query(addr, "switchboard_tunnels_draining > 0");
            let held = format!("sum(switchboard_tunnels_active) == {MAX_TUNNELS}");
            let all = [reload_error.await, draining.await, query(addr, &held).await];
            all.iter()
                .all(|r| matches!(r, Ok(s) if !s.is_empty()))
                .then_some(())
        })
        .await;
    let stored = stored_names(&prometheus).await;
    for name in [
        "switchboard_build_info",
        "switchboard_connections_active",
        "switchboard_tunnels_active",
        "switchboard_tunnels_limit",
        "switchboard_upgrades_total",
        "switchboard_upgrade_duration_seconds_bucket",
        "switchboard_tunnel_bytes_total",
        "switchboard_tunnels_closed_total",
        "switchboard_http_requests_total",
        "switchboard_backend_up",
        "switchboard_backend_state",
        "switchboard_config_reloads_total",
        "switchboard_tunnels_draining",
        "process_open_fds",
    ] {
        assert!(
            stored.contains(name),
            "Prometheus has no {name}; it has {stored:?}"
        );
    }

    // Every rule loaded, and each evaluated without error.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let in_file = rules_text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let loaded = prometheus
        .wait_for("every rule evaluated", || async move {
            let answer = api(addr, "/api/v1/rules").await;
            let groups = answer["data"]["groups"].as_array()?.clone();
            let rules: Vec<Value> = groups
                .iter()
                .flat_map(|g| g["rules"].as_array().unwrap().clone())
                .collect();
            rules
                .iter()
                .all(|r| r["health"] != "unknown")
                .then_some(rules)
        })
        .await;
    assert_eq!(
        loaded.len(),
        in_file,
        "rules in alerts.yml vs loaded by Prometheus"
    );
    for rule in &loaded {
        assert_eq!(
            rule["health"], "ok",
            "rule {} failed: {}",
            rule["name"], rule["lastError"]
        );
    }
    for rule in &loaded {
        let (name, expr) = (
            rule["name"].as_str().unwrap(),
            rule["query"].as_str().unwrap(),
        );
        let series = query(addr, expr)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if PROVOKED.contains(&name) {
            assert!(
                !series.is_empty(),
                "{name} has no data under the load: {expr}"
            );
        } else if QUIET.contains(&name) {
            assert!(
                series.is_empty(),
                "{name} has data, but nothing provoked it: {series:?}"
            );
        }
    }

    // Every dashboard query runs; those whose metrics Prometheus holds return data.
    let queries = dashboard_queries();
    let stored = stored_names(&prometheus).await;
    let mut failures = Vec::new();
    let mut with_data = 0;
    for DashboardQuery {
        what,
        expr,
        label,
        shows_data,
    } in &queries
    {
        let expected = *shows_data && metric_names(expr).is_subset(&stored);
        let result = prometheus
            .wait_for(&format!("{what} to answer"), || async move {
                let result = query(addr, expr).await;
                // rate() needs two samples in its window: give it a few scrapes.
                let empty = matches!(&result, Ok(s) if s.is_empty());
                (!(expected && empty)).then_some(result)
            })
            .await;
        match result {
            Err(e) => failures.push(format!("{what}: {expr}: {e}")),
            Ok(series) if expected => {
                with_data += 1;
                if let Some(label) = label {
                    let labelled = series
                        .iter()
                        .all(|s| s["metric"][label.as_str()].is_string());
                    assert!(labelled, "{what}: series without `{label}`: {series:?}");
                }
            }
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries failed:\n{}",
        failures.join("\n")
    );
    assert!(
        with_data * 4 >= queries.len() * 3,
        "only {with_data} of {} queries had data",
        queries.len()
    );

    drop(prometheus);
    for ws in held {
        close_and_drop(ws).await;
    }
    sb.stop().await;
}
