//! The queries of the shipped Grafana dashboard (deploy/grafana/switchboard.json), read from
//! its JSON the way Grafana would send them, for `tests/prometheus_e2e.rs`.

use std::collections::BTreeSet;

use serde_json::Value;

/// A file of the repository.
pub fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One query of the dashboard.
pub struct DashboardQuery {
    /// Where it is, for messages.
    pub what: String,
    /// PromQL, variables substituted.
    pub expr: String,
    /// For a variable: the label its values come from.
    pub label: Option<String>,
    /// Panels and variables show what exists; annotations only mark events (a reload).
    pub shows_data: bool,
}

/// Every PromQL query of the dashboard, with Grafana's variables replaced by what "All" and
/// a 1 s scrape interval give; `label_values(SELECTOR, LABEL)` variables become `SELECTOR`
/// with the label that must be on its series.
pub fn dashboard_queries() -> Vec<DashboardQuery> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/switchboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let substitute = |expr: &str| {
        expr.replace("$__rate_interval", "30s")
            .replace("$__interval", "15s")
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$upstream", ".*")
    };
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let what = format!("panel {:?} {}", panel["title"], target["refId"]);
            queries.push(DashboardQuery {
                what,
                expr: substitute(target["expr"].as_str().unwrap()),
                label: None,
                shows_data: true,
            });
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(definition) = variable["query"]["query"].as_str() else {
            continue;
        };
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {definition:?} is not label_values(…)"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let what = format!("variable ${}", variable["name"].as_str().unwrap());
        queries.push(DashboardQuery {
            what,
            expr: substitute(selector),
            label: Some(label.trim().to_owned()),
            shows_data: true,
        });
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = annotation["expr"].as_str() {
            let what = format!("annotation {:?}", annotation["name"]);
            queries.push(DashboardQuery {
                what,
                expr: substitute(expr),
                label: None,
                shows_data: false,
            });
        }
    }
    assert!(queries.len() > 30, "the dashboard's queries were not found");
    queries
}

/// The metric names a query reads.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in expr.match_indices(['s', 'p']) {
        let rest = &expr[start..];
        let boundary = start == 0 || !expr.as_bytes()[start - 1].is_ascii_alphanumeric();
        if boundary && (rest.starts_with("switchboard_") || rest.starts_with("process_")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_owned());
        }
    }
    names
}
