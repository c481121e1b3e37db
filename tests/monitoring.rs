//! The shipped alert rules and dashboard (`config/monitoring/`) name only metrics the operator
//! exports, and every alert is well formed: a rename in `metrics.rs` cannot silently blind them.
//! Every alert's `runbook_url` leads to a heading of README.md; the dashboard's `namespace` and
//! `binding` variables are defined and filter every panel whose metric carries those labels.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cubbyhole::core::status::is_ready;
use cubbyhole::crd::{AgentSecretBindingStatus, Condition};
use cubbyhole::metrics::{Metrics, RenewalResult, TokenKind, WebhookCertificate};
use cubbyhole::record::Phase;
use cubbyhole::request::serve::RequestMetrics;
use cubbyhole::webhook::AdmissionMetrics;

/// The exposition of every metric family the operator exports (one process registers all of
/// them), each given a sample so that it is printed with its labels.
fn exposition() -> String {
    let metrics = Metrics::new();
    let admission = AdmissionMetrics::new(&metrics);
    let requests = RequestMetrics::new(&metrics);
    let ms = Duration::from_millis(1);
    metrics.wrap_issued();
    metrics.transition(Phase::Tampered.as_str());
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
    metrics.set_leader(true);
    metrics.set_binding_ready("ns", "b", false);
    metrics.webhook_certificate_expires(WebhookCertificate::Serving, 1);
    admission.observe("error", ms);
    requests.observe("wrap", "served");
    metrics.encode()
}

/// The metric families the operator exports.
fn exported() -> BTreeSet<String> {
    exposition()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The family of a sample or selector name: the name without its sample suffix.
fn family(name: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The label names each exported family's samples carry.
fn exported_labels() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition().lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out
            .entry(family(&line[..name_end]).to_string())
            .or_default();
        let mut rest = line[name_end..].strip_prefix('{').unwrap_or_default();
        // name="value",...: a value ends at its first unescaped quote.
        while let Some(eq) = rest.find("=\"") {
            labels.insert(rest[..eq].trim_start_matches(',').to_string());
            let mut chars = rest[eq + 2..].char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        end = Some(eq + 2 + i + 1);
                        break;
                    }
                    _ => {}
                }
            }
            rest = &rest[end.expect("closed label value")..];
        }
    }
    // A histogram's bucket bound is no label of the family.
    out.values_mut().for_each(|l| {
        l.remove("le");
    });
    out
}

/// Every `cubbyhole_*` name in `text`, as families.
fn referenced(text: &str) -> BTreeSet<String> {
    selectors(text).into_iter().map(|(name, _)| name).collect()
}

/// Every `cubbyhole_*` metric selector in a PromQL `expr`: its family and its matchers (the
/// text between the braces, empty without).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = expr;
    while let Some(at) = rest.find("cubbyhole_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = family(&tail[..end]).to_string();
        let after = &tail[end..];
        let matchers = after
            .strip_prefix('{')
            .and_then(|m| m.split_once('}'))
            .map_or("", |(m, _)| m);
        out.push((name, matchers.to_string()));
        rest = after;
    }
    out
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, `-` and `_`
/// stay), each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of `markdown`'s headings (outside code blocks); a repeated one gets `-1`, `-2`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if fenced || !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_default();
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// Every alert rule of the shipped PrometheusRule, over all its groups.
fn alert_rules() -> Vec<serde_json::Value> {
    let text = repo_file("config/monitoring/prometheus-rule.yaml");
    let rule: serde_json::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn the_alert_rules_name_exported_metrics_and_are_complete() {
    let exported = exported();
    assert!(
        exported.contains("cubbyhole_wrap_transitions"),
        "{exported:?}"
    );
    let rules = alert_rules();
    assert!(rules.len() >= 16);
    let mut alerts = BTreeSet::new();
    let mut exprs = String::new();
    for r in &rules {
        let name = r["alert"].as_str().expect("alert name");
        assert!(alerts.insert(name.to_string()), "{name} twice");
        let expr = r["expr"].as_str().unwrap_or_default();
        assert!(expr.contains("cubbyhole_"), "{name}");
        exprs.push_str(expr);
        exprs.push('\n');
        assert!(r["labels"]["severity"].is_string(), "{name}: severity");
        assert!(r["annotations"]["summary"].is_string(), "{name}: summary");
    }
    let unknown: Vec<_> = referenced(&exprs).difference(&exported).cloned().collect();
    assert!(
        unknown.is_empty(),
        "rules name unknown metrics: {unknown:?}"
    );
}

#[test]
fn every_alert_has_a_runbook_url_leading_to_a_readme_heading() {
    let headings = anchors(&repo_file("README.md"));
    // Sanity: the slugs of a few known headings.
    for known in [
        "troubleshooting",
        "check-the-install-cubbyhole-doctor",
        "what-happens-when-something-is-down",
    ] {
        assert!(headings.contains(known), "{known} not in {headings:?}");
    }
    let base = format!("{}/blob/main/README.md#", env!("CARGO_PKG_REPOSITORY"));
    for r in alert_rules() {
        let name = r["alert"].as_str().unwrap();
        let url = r["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let anchor = url
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{name}: {url} is not under {base}"));
        assert!(
            headings.contains(anchor),
            "{name}: README.md has no heading #{anchor}"
        );
    }
}

#[test]
fn github_anchors_are_computed_like_github() {
    let md = "# cubbyhole\n## Try it (one command, no cluster needed)\n### Check the install: `cubbyhole doctor`\n```sh\n# not a heading\n```\n## The `AgentSecretBinding` reference\n## Metrics\n### Metrics\n#nospace\n";
    let got: Vec<String> = anchors(md).into_iter().collect();
    assert_eq!(
        got,
        [
            "check-the-install-cubbyhole-doctor",
            "cubbyhole",
            "metrics",
            "metrics-1",
            "the-agentsecretbinding-reference",
            "try-it-one-command-no-cluster-needed",
        ]
    );
}

/// The alerts on the operator itself, and what each must read.
#[test]
fn the_operator_health_alerts_watch_the_right_metrics() {
    let rules = alert_rules();
    let rule = |name: &str| {
        rules
            .iter()
            .find(|r| r["alert"] == name)
            .unwrap_or_else(|| panic!("no alert {name}"))
    };
    for (alert, metric, for_) in [
        ("CubbyholeAbsent", "cubbyhole_build_info", "5m"),
        ("CubbyholeNoLeader", "cubbyhole_leader", "2m"),
        (
            "CubbyholeWebhookCertificateExpiresSoon",
            "cubbyhole_webhook_certificate_expiry_timestamp_seconds",
            "15m",
        ),
        ("CubbyholeBindingNotReady", "cubbyhole_binding_ready", "10m"),
    ] {
        let r = rule(alert);
        assert_eq!(
            referenced(r["expr"].as_str().unwrap()),
            BTreeSet::from([metric.to_string()]),
            "{alert}"
        );
        assert_eq!(r["for"], for_, "{alert}");
    }
    assert!(
        rule("CubbyholeAbsent")["expr"]
            .as_str()
            .unwrap()
            .starts_with("absent(")
    );
    // The binding alert names the binding.
    assert!(
        rule("CubbyholeBindingNotReady")["expr"]
            .as_str()
            .unwrap()
            .contains("by (namespace, binding)")
    );
    // What `absent` and `sum < 1` rely on: a replica exports both from its start, before
    // anything is set (a standby says 0).
    let fresh = Metrics::new().encode();
    for line in ["cubbyhole_leader 0", "cubbyhole_build_info{version=\""] {
        assert!(
            fresh.lines().any(|l| l.starts_with(line)),
            "{line} not exported from the start:\n{fresh}"
        );
    }
    // The binding gauge's status reading: Ready=True is 1, anything else 0.
    let metrics = Metrics::new();
    let mut status = AgentSecretBindingStatus::default();
    status.conditions.push(Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "Ready".into(),
        message: String::new(),
        last_transition_time: "2026-12-02T00:00:00Z".into(),
        observed_generation: None,
    });
    metrics.set_binding_ready("a", "b", is_ready(&status));
    assert!(
        metrics
            .encode()
            .contains("cubbyhole_binding_ready{namespace=\"a\",binding=\"b\"} 1")
    );
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&repo_file("config/monitoring/grafana-dashboard.json")).expect("JSON")
}

/// Every panel target's expression.
fn panel_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut out = vec![];
    for p in panels {
        let title = p["title"].as_str().expect("title").to_string();
        for t in p["targets"].as_array().expect("targets") {
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

#[test]
fn the_dashboard_queries_exported_metrics() {
    let exported = exported();
    let dashboard = dashboard();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8);
    let exprs: String = panel_exprs(&dashboard)
        .into_iter()
        .map(|(_, e)| e + "\n")
        .collect();
    let used = referenced(&exprs);
    let unknown: Vec<_> = used.difference(&exported).cloned().collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics: {unknown:?}"
    );
    // The wrap outcomes, tampering, Vault health, readiness and leadership are on it.
    for needed in [
        "cubbyhole_wrap_transitions",
        "cubbyhole_vault_errors",
        "cubbyhole_outstanding_wraps",
        "cubbyhole_binding_ready",
        "cubbyhole_leader",
    ] {
        assert!(used.contains(needed), "{needed} not on the dashboard");
    }
}

/// Template variables a text uses: `$name`, `${name}`, `${name:format}`, `[[name]]`.
fn variables_used(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut used = BTreeSet::new();
    for (i, _) in text.match_indices('$') {
        let after = &text[i + 1..];
        let name = ident(after.strip_prefix('{').unwrap_or(after));
        if !name.is_empty() {
            used.insert(name);
        }
    }
    for (i, _) in text.match_indices("[[") {
        let name = ident(&text[i + 2..]);
        if !name.is_empty() {
            used.insert(name);
        }
    }
    used
}

#[test]
fn the_dashboard_defines_every_variable_it_uses_and_filters_by_namespace_and_binding() {
    let dashboard = dashboard();
    let text = repo_file("config/monitoring/grafana-dashboard.json");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let defined: BTreeSet<String> = variables
        .iter()
        .map(|v| v["name"].as_str().expect("variable name").to_string())
        .collect();
    // Grafana's own start with `__` ($__rate_interval, $__all).
    let undefined: Vec<String> = variables_used(&text)
        .into_iter()
        .filter(|v| !v.starts_with("__") && !defined.contains(v))
        .collect();
    assert!(undefined.is_empty(), "used, not defined: {undefined:?}");

    // namespace and binding: label values of an exported metric carrying that label, every
    // value selectable at once.
    let labels = exported_labels();
    for name in ["namespace", "binding"] {
        let v = variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(v["type"], "query", "{name}");
        let query = v["query"]["query"].as_str().expect("query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(&format!(", {name})")))
            .unwrap_or_else(|| panic!("{name}: {query}"));
        let (metric, _) = selectors(inner).pop().expect("a cubbyhole metric");
        assert!(
            labels.get(&metric).is_some_and(|l| l.contains(name)),
            "{name}: {metric} has no label {name}"
        );
        assert_eq!(v["includeAll"], true, "{name}");
        assert_eq!(v["multi"], true, "{name}");
        assert_eq!(v["allValue"], ".*", "{name}");
    }

    // Every selector of a metric carrying those labels filters by them.
    let mut filtered = 0;
    for (title, expr) in panel_exprs(&dashboard) {
        for (metric, matchers) in selectors(&expr) {
            let carried = labels
                .get(&metric)
                .unwrap_or_else(|| panic!("{title}: {metric} not exported"));
            for name in ["namespace", "binding"] {
                if carried.contains(name) {
                    assert!(
                        matchers.contains(&format!("{name}=~\"${name}\"")),
                        "{title}: {metric} is not filtered by ${name}: {expr}"
                    );
                    filtered += 1;
                }
            }
        }
    }
    assert!(filtered >= 4, "{filtered}");
}

#[test]
fn the_dashboard_shows_readiness_per_binding_and_the_leader() {
    let exprs = panel_exprs(&dashboard());
    let (title, _) = exprs
        .iter()
        .find(|(_, e)| {
            e.contains("cubbyhole_binding_ready") && e.contains("by (namespace, binding)")
        })
        .expect("a readiness panel per binding");
    assert!(title.contains("ready"), "{title}");
    assert!(
        exprs.iter().any(|(_, e)| e.contains("cubbyhole_leader")),
        "no leader panel"
    );
}
