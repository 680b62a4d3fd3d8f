//! The Grafana dashboard and the alert rules the chart ships: promtool checks and unit-tests
//! the rules, the chart renders exactly those files, and every `batchguard_*` metric they
//! query is one the operator really exports.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/batchguard");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{CHART}/{path}")).unwrap()
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(format!("{CHART}/rules"))
        .output()
        .expect("promtool on PATH (tests/cluster/up puts it there)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let (ok, out) = promtool(&["check", "rules", "batchguard.rules.yaml"]);
    assert!(ok && out.contains("SUCCESS: 3 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "batchguard.rules.test.yaml"]);
    assert!(ok, "{out}");
}

/// The chart with both monitoring extras on, as a list of documents.
fn rendered() -> Vec<serde_yaml::Value> {
    let out = Command::new("helm")
        .args([
            "template",
            "bg",
            CHART,
            "--kube-version",
            "1.37.2",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
            "--set",
            "prometheusRule.enabled=true,dashboards.enabled=true",
        ])
        .output()
        .expect("helm on PATH");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

#[test]
fn the_chart_ships_the_checked_rules_and_dashboard() {
    let docs = rendered();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} rendered"))
    };
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("rules/batchguard.rules.yaml")).unwrap();
    assert_eq!(kind("PrometheusRule")["spec"]["groups"], rules["groups"]);
    let config_map = kind("ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value =
        serde_json::from_str(config_map["data"]["batchguard.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&read("dashboards/batchguard.json")).unwrap();
    assert_eq!(shipped, file);
}

/// Every `batchguard_…` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("batchguard_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The family a sample name belongs to, and the type it must have.
fn family_of(name: &str) -> (&str, &[&str]) {
    for (suffix, types) in [
        ("_total", &["counter"][..]),
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram"][..]),
        ("_count", &["histogram"][..]),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            return (base, types);
        }
    }
    (name, &["gauge"][..])
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_query_is_exported() {
    let setup = Setup::new("monitoring").await;
    let metrics = wait_for(
        "the operator's metrics",
        std::time::Duration::from_secs(30),
        || async {
            let text = setup.operator.metrics().await;
            text.contains("# TYPE").then_some(text)
        },
    )
    .await;
    let exported: BTreeSet<(String, String)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("dashboards/batchguard.json")).unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    let used = metric_names(&format!(
        "{}\n{}",
        queries.join("\n"),
        read("rules/batchguard.rules.yaml")
    ));
    assert!(used.len() >= 10, "the dashboard and rules use {used:?}");
    for name in &used {
        let (family, types) = family_of(name);
        assert!(
            types
                .iter()
                .any(|t| exported.contains(&(family.to_string(), t.to_string()))),
            "{name} is queried but the operator exports no {types:?} {family}; it exports {exported:?}"
        );
    }
}
