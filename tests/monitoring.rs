//! The shipped alert rules and dashboard (`config/monitoring/`) name only metrics the operator
//! exports, and every alert is well formed: a rename in `metrics.rs` cannot silently blind them.

use std::collections::BTreeSet;
use std::time::Duration;

use cubbyhole::metrics::{Metrics, RenewalResult, TokenKind};
use cubbyhole::record::Phase;
use cubbyhole::request::serve::RequestMetrics;
use cubbyhole::webhook::AdmissionMetrics;

/// The metric families the operator exports (one process registers all of them), each given
/// a sample so that it is printed.
fn exported() -> BTreeSet<String> {
    let metrics = Metrics::new();
    let admission = AdmissionMetrics::new(&metrics);
    let requests = RequestMetrics::new(&metrics);
    let ms = Duration::from_millis(1);
    metrics.wrap_issued();
    metrics.transition(Phase::Tampered);
    metrics.revoked(TokenKind::Wrap);
    metrics.set_outstanding("ns", "b", 1);
    metrics.vault_error("create", "refused");
    metrics.vault_latency("create", ms);
    metrics.reconciled(ms);
    metrics.reconcile_error("vault");
    metrics.oversized_ignored("ns");
    metrics.oversized_pod("ns");
    metrics.lookup_deferred();
    metrics.forged_record("ns");
    metrics.renewal(RenewalResult::Gone);
    metrics.revocation_refused("ns");
    metrics.unverified_released("ns");
    admission.observe("error", ms);
    requests.observe("wrap", "served");
    metrics
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `cubbyhole_*` name in `text`, with the sample suffixes of its family removed.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cubbyhole_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_alert_rules_name_exported_metrics_and_are_complete() {
    let exported = exported();
    assert!(
        exported.contains("cubbyhole_wrap_transitions"),
        "{exported:?}"
    );
    let text = repo_file("config/monitoring/prometheus-rule.yaml");
    let rule: serde_json::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    let rules = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    assert!(rules.len() >= 5);
    let mut alerts = BTreeSet::new();
    for r in rules {
        let name = r["alert"].as_str().expect("alert name");
        assert!(alerts.insert(name.to_string()), "{name} twice");
        assert!(
            r["expr"].as_str().is_some_and(|e| e.contains("cubbyhole_")),
            "{name}"
        );
        assert!(r["labels"]["severity"].is_string(), "{name}: severity");
        assert!(r["annotations"]["summary"].is_string(), "{name}: summary");
    }
    let unknown: Vec<_> = referenced(&text).difference(&exported).cloned().collect();
    assert!(
        unknown.is_empty(),
        "rules name unknown metrics: {unknown:?}"
    );
}

#[test]
fn the_dashboard_queries_exported_metrics() {
    let exported = exported();
    let text = repo_file("config/monitoring/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let mut exprs = String::new();
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let used = referenced(&exprs);
    let unknown: Vec<_> = used.difference(&exported).cloned().collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics: {unknown:?}"
    );
    // The wrap outcomes, tampering and Vault health are on it.
    for needed in [
        "cubbyhole_wrap_transitions",
        "cubbyhole_vault_errors",
        "cubbyhole_outstanding_wraps",
    ] {
        assert!(used.contains(needed), "{needed} not on the dashboard");
    }
}
