//! The Helm chart (`charts/cubbyhole`): `helm lint` passes, and with its default values it
//! renders exactly the objects `config/` ships (`kubectl kustomize`), so the two install paths
//! cannot drift. The chart may add labels and annotations; everything else must be equal.

use std::collections::BTreeMap;
use std::process::Command;

use cubbyhole_testkit::paths::{helm_bin, repo};
use serde_json::Value;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Objects of a multi-document YAML stream, by (kind, namespace, name).
fn objects(yaml: &str) -> BTreeMap<(String, String, String), Value> {
    yaml.split("\n---")
        .filter_map(|doc| serde_yaml_ng::from_str::<Value>(doc).ok())
        .filter(|v| v.is_object())
        .map(|v| {
            let key = (
                v["kind"].as_str().unwrap_or_default().to_string(),
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            (key, v)
        })
        .collect()
}

/// Removes from `chart` the labels and annotations `config` does not have (after checking
/// `config`'s are all there), and parses a ConfigMap's config.yaml so formatting is moot.
fn normalize(config: &mut Value, chart: &mut Value) {
    for pointer in ["/metadata", "/spec/template/metadata"] {
        for field in ["labels", "annotations"] {
            let theirs = config.pointer(&format!("{pointer}/{field}")).cloned();
            let Some(meta) = chart.pointer_mut(pointer).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(ours) = meta.get_mut(field).and_then(Value::as_object_mut) else {
                continue;
            };
            let theirs_map = theirs
                .as_ref()
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for (k, v) in &theirs_map {
                assert_eq!(ours.get(k), Some(v), "{pointer}/{field}/{k}");
            }
            ours.retain(|k, _| theirs_map.contains_key(k));
            if ours.is_empty() && theirs.is_none() {
                meta.remove(field);
            }
        }
    }
    for v in [config, chart] {
        if v["kind"] == "ConfigMap"
            && let Some(text) = v.pointer("/data/config.yaml").and_then(Value::as_str)
        {
            let parsed: Value = serde_yaml_ng::from_str(text).unwrap();
            v["data"]["config.yaml"] = parsed;
        }
    }
}

/// Integral floats as integers (kustomize writes `minimum: 0.0` as `0`).
fn canonical(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && n.is_f64()
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonical),
        Value::Object(map) => map.values_mut().for_each(canonical),
        _ => {}
    }
}

#[test]
fn helm_lint_passes() {
    let out = run(Command::new(helm_bin())
        .args(["lint", "--strict"])
        .arg(repo().join("charts/cubbyhole")));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn the_chart_with_default_values_renders_what_config_ships() {
    let chart = run(Command::new(helm_bin())
        .args([
            "template",
            "cubbyhole",
            "--namespace",
            "cubbyhole-system",
            "--include-crds",
        ])
        .arg(repo().join("charts/cubbyhole")));
    let kustomized = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("config")));
    let mut chart = objects(&chart);
    let mut config = objects(&kustomized);
    // Helm installs into a namespace it is given (--create-namespace); config/ makes its own.
    config.retain(|(kind, _, _), _| kind != "Namespace");
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        config.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, ours) in chart.iter_mut() {
        let theirs = config.get_mut(key).unwrap();
        normalize(theirs, ours);
        canonical(ours);
        canonical(theirs);
        assert_eq!(ours, theirs, "{key:?} differs");
    }
}

#[test]
fn the_chart_carries_the_generated_crd_and_the_shipped_alert_rules() {
    let same = |a: &str, b: &str| {
        assert_eq!(
            std::fs::read_to_string(repo().join(a)).unwrap(),
            std::fs::read_to_string(repo().join(b)).unwrap(),
            "{a} differs from {b}"
        );
    };
    same(
        "charts/cubbyhole/crds/agentsecretbinding.yaml",
        "crds/agentsecretbinding.yaml",
    );
    same(
        "charts/cubbyhole/files/prometheus-rule.yaml",
        "config/monitoring/prometheus-rule.yaml",
    );
}

#[test]
fn optional_objects_render_when_asked() {
    let out = run(Command::new(helm_bin())
        .args(["template", "x", "--namespace", "ops"])
        .args([
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "prometheusRule.enabled=true",
        ])
        .args([
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "webhook.certManager.enabled=true",
        ])
        .args(["--set", "webhook.certManager.issuer.name=ca"])
        .arg(repo().join("charts/cubbyhole")));
    let objects = objects(&out);
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "Certificate",
    ] {
        assert!(
            objects.keys().any(|(k, ns, _)| k == kind && ns == "ops"),
            "no {kind} in namespace ops"
        );
    }
    let hook = &objects[&(
        "MutatingWebhookConfiguration".to_string(),
        String::new(),
        "cubbyhole-injector".to_string(),
    )];
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "ops/cubbyhole-webhook"
    );
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["service"]["namespace"],
        "ops"
    );
}
