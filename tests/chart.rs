//! The Helm chart (`charts/cubbyhole`): `helm lint` passes, and with its default values it
//! renders exactly the objects `config/` ships (`kubectl kustomize`), so the two install paths
//! cannot drift. The chart may add labels and annotations; everything else must be equal.
//! `values.schema.json` refuses typos and takes exactly the operator's configuration keys;
//! the optional values render where they belong; the `helm test` hook runs the doctor as the
//! operator; NOTES.txt names the real Deployment.

use std::collections::BTreeMap;
use std::process::Command;

use cubbyhole::config::OperatorConfig;
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
            // The `helm test` pod is the chart's own (tests below).
            "--skip-tests",
        ])
        .arg(repo().join("charts/cubbyhole")));
    let kustomized = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("config")));
    let mut chart = objects(&chart);
    // The pre-delete hook is config/uninstall's (the test below).
    chart.retain(|_, o| o["metadata"]["annotations"]["helm.sh/hook"].is_null());
    let mut config = objects(&kustomized);
    // Helm installs into a namespace it is given (--create-namespace); config/ makes its own.
    config.retain(|(kind, _, _), _| kind != "Namespace");
    same_objects(chart, config);
}

/// `chart` and `config` hold the same objects, alike but for the chart's extra labels and
/// annotations.
fn same_objects(
    mut chart: BTreeMap<(String, String, String), Value>,
    mut config: BTreeMap<(String, String, String), Value>,
) {
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
fn the_uninstall_hook_is_what_config_uninstall_ships_and_runs_before_anything_goes() {
    let mut chart = objects(&template(&["--namespace", "cubbyhole-system"], None).unwrap());
    chart.retain(|_, o| o["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete");
    assert_eq!(chart.len(), 3, "a Role, its RoleBinding and the Job");
    for (key, o) in &chart {
        let annotations = &o["metadata"]["annotations"];
        assert_eq!(
            annotations["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded",
            "{key:?}"
        );
    }
    // Its RBAC exists before the Job runs.
    let weight = |kind: &str| {
        chart[&(
            kind.into(),
            "cubbyhole-system".into(),
            "cubbyhole-uninstall".into(),
        )]["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .unwrap_or("0")
            .parse::<i32>()
            .unwrap()
    };
    assert!(weight("Role") < weight("Job") && weight("RoleBinding") < weight("Job"));
    let job = &chart[&(
        "Job".into(),
        "cubbyhole-system".into(),
        "cubbyhole-uninstall".into(),
    )]["spec"]["template"]["spec"];
    let args = job["containers"][0]["args"].as_array().unwrap();
    assert_eq!(args[0], "uninstall");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--deployment" && w[1] == "cubbyhole-operator"),
        "{args:?}"
    );
    let kustomized = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("config/uninstall")));
    same_objects(chart, objects(&kustomized));
    // Off: nothing of it renders.
    let off = objects(
        &template(
            &[],
            Some(&serde_json::json!({"uninstall": {"enabled": false}})),
        )
        .unwrap(),
    );
    assert!(!off.keys().any(|(_, _, name)| name == "cubbyhole-uninstall"));
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
fn watch_namespaces_grant_pods_and_secrets_only_there_and_scope_the_webhook() {
    let scoped = serde_json::json!({"config": {"watchNamespaces": ["team-a", "team-b"]}});
    let objects = objects(&template(&[], Some(&scoped)).unwrap());
    let resources = |rules: &Value| -> Vec<String> {
        rules
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["resources"].as_array().unwrap().clone())
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    let cluster = resources(&objects[&cluster_key("ClusterRole", "cubbyhole-operator")]["rules"]);
    assert!(
        !cluster.contains(&"secrets".into()) && !cluster.contains(&"pods".into()),
        "{cluster:?}"
    );
    let role = |ns: &str| {
        let k = (
            "Role".to_string(),
            ns.to_string(),
            "cubbyhole-operator".to_string(),
        );
        resources(&objects[&k]["rules"])
    };
    assert_eq!(role("team-a"), ["pods", "secrets"]);
    assert_eq!(role("team-b"), ["pods", "secrets"]);
    // The release namespace: its record key and webhook certificate.
    assert_eq!(role("ops"), ["secrets"]);
    for ns in ["team-a", "team-b", "ops"] {
        let k = (
            "RoleBinding".to_string(),
            ns.to_string(),
            "cubbyhole-operator".to_string(),
        );
        assert_eq!(objects[&k]["subjects"][0]["namespace"], "ops");
        assert_eq!(objects[&k]["roleRef"]["name"], "cubbyhole-operator");
    }
    let webhook = &objects[&(
        "MutatingWebhookConfiguration".to_string(),
        String::new(),
        "cubbyhole-injector".to_string(),
    )]["webhooks"][0];
    let selector = webhook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap();
    assert!(
        selector.iter().any(
            |e| e["operator"] == "In" && e["values"] == serde_json::json!(["team-a", "team-b"])
        ),
        "{selector:?}"
    );
    assert_eq!(
        rendered_config(&objects).watch_namespaces,
        ["team-a", "team-b"]
    );
    // Not a namespace name: refused by the schema, before anything is installed.
    let bad = serde_json::json!({"config": {"watchNamespaces": ["team-*"]}});
    assert!(template(&[], Some(&bad)).is_err());
    // Unset: the ClusterRole grants them, and there is no Role of the operator.
    let default = objects_default();
    assert!(
        resources(&default[&cluster_key("ClusterRole", "cubbyhole-operator")]["rules"])
            .contains(&"secrets".into())
    );
    assert!(
        !default
            .keys()
            .any(|(kind, _, name)| kind == "Role" && name == "cubbyhole-operator")
    );
}

fn cluster_key(kind: &str, name: &str) -> (String, String, String) {
    (kind.into(), String::new(), name.into())
}

fn objects_default() -> BTreeMap<(String, String, String), Value> {
    objects(&template(&[], None).unwrap())
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

/// `helm template` of the chart as release `rel` in namespace `ops` with `args` and, when
/// given, a values file holding `values`: the rendered stream, or helm's error output.
fn template(args: &[&str], values: Option<&Value>) -> Result<String, String> {
    let mut cmd = Command::new(helm_bin());
    cmd.args(["template", "rel", "--namespace", "ops"])
        .args(args);
    if let Some(values) = values {
        cmd.arg("--values").arg(scratch_file(
            "values.yaml",
            &serde_yaml_ng::to_string(values).unwrap(),
        ));
    }
    let out = cmd
        .arg(repo().join("charts/cubbyhole"))
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A fresh file under target/ (tests run in parallel, checkouts share nothing here).
fn scratch_file(name: &str, text: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = cubbyhole_testkit::paths::target_dir().join(format!(
        "chart-tests/{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn key(kind: &str, name: &str) -> (String, String, String) {
    (kind.into(), "ops".into(), name.into())
}

/// The operator's configuration file as the chart renders it, parsed by the operator.
fn rendered_config(objects: &BTreeMap<(String, String, String), Value>) -> OperatorConfig {
    let text = objects[&key("ConfigMap", "cubbyhole-config")]["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    OperatorConfig::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn the_schema_refuses_a_typo_at_the_top_and_in_the_operator_config() {
    // Each typo next to its correct spelling: the correct one renders, the typo fails naming
    // the key and where it is.
    for (good, bad, at) in [
        (
            "replicas=3",
            "replica=3",
            "at '': additional properties 'replica' not allowed",
        ),
        (
            "config.renewalWindow=10m",
            "config.renewalWindw=10m",
            "at '/config': additional properties 'renewalWindw' not allowed",
        ),
        (
            "config.listener.maxInFlight=4",
            "config.listener.maxInFlihgt=4",
            "at '/config/listener': additional properties 'maxInFlihgt' not allowed",
        ),
        (
            "config.injector.vaultAddress=https://v:8200",
            "config.injector.vaultAdress=https://v:8200",
            "at '/config/injector': additional properties 'vaultAdress' not allowed",
        ),
        (
            "serviceMonitor.labels.release=kps",
            "serviceMonitor.label.release=kps",
            "at '/serviceMonitor': additional properties 'label' not allowed",
        ),
        // Wrong types and values the operator would refuse at start.
        (
            "config.lookupPeriod=10s",
            "config.lookupPeriod=10",
            "at '/config/lookupPeriod'",
        ),
        (
            "config.stepConcurrency=2",
            "config.stepConcurrency=0",
            "at '/config/stepConcurrency'",
        ),
        (
            "webhook.failurePolicy=Ignore",
            "webhook.failurePolicy=fail",
            "at '/webhook/failurePolicy'",
        ),
    ] {
        template(&["--set", good], None).unwrap_or_else(|e| panic!("{good}: {e}"));
        let err = template(&["--set", bad], None)
            .err()
            .unwrap_or_else(|| panic!("{bad}: rendered, the schema let it through"));
        assert!(
            err.contains("values don't meet the specifications of the schema") && err.contains(at),
            "{bad}: {err}"
        );
    }
    // Exactly one Vault login method, as the operator demands.
    let Err(err) = template(&["--set", "config.vault.auth.tokenFile=/t"], None) else {
        panic!("two login methods rendered");
    };
    assert!(
        err.contains("at '/config/vault/auth': 'oneOf' failed"),
        "{err}"
    );
    template(
        &["--set", "config.vault.auth.tokenFile=/t"],
        Some(&serde_json::json!({"config": {"vault": {"auth": {"kubernetes": null}}}})),
    )
    .expect("tokenFile alone");
}

/// Every key of every section of `value` (the operator's serialized configuration) is a
/// property of `schema`, and every property of a section the operator owns is one of its
/// keys; sections are closed (`additionalProperties: false`). Adds the sections compared to
/// `checked`.
fn same_keys(root: &Value, schema: &Value, value: &Value, path: &str, checked: &mut Vec<String>) {
    let schema = resolve(root, schema);
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            same_keys(
                root,
                &schema["items"],
                item,
                &format!("{path}/{i}"),
                checked,
            );
        }
        return;
    }
    let Some(value) = value.as_object() else {
        return;
    };
    let props = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{path}: the schema has no properties"));
    assert_eq!(
        schema["additionalProperties"], false,
        "{path}: the schema lets any key through"
    );
    let ours: std::collections::BTreeSet<&String> = value.keys().collect();
    let schemas: std::collections::BTreeSet<&String> = props.keys().collect();
    // injector.resources is Kubernetes' ResourceRequirements (quantities below it): the
    // schema may name more of it (claims) than a serialized value shows.
    if path == "/injector/resources" {
        assert!(ours.is_subset(&schemas), "{path}: {ours:?} vs {schemas:?}");
        return;
    }
    assert_eq!(ours, schemas, "{path}: operator keys vs schema properties");
    checked.push(path.to_string());
    for (k, v) in value {
        same_keys(root, &props[k], v, &format!("{path}/{k}"), checked);
    }
}

/// Follows a `$ref` into `#/definitions`.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => root
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{r}")),
        None => schema,
    }
}

/// The keys of sections of `value` without which the operator cannot read it.
fn required_keys(value: &Value, path: &str, out: &mut BTreeMap<String, Vec<String>>) {
    let Some(section) = value.pointer(path).and_then(Value::as_object) else {
        return;
    };
    if path == "/injector/resources" {
        return;
    }
    let mut required = vec![];
    for k in section.keys() {
        let mut without = value.clone();
        without
            .pointer_mut(path)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(k);
        if let Err(e) = serde_json::from_value::<OperatorConfig>(without)
            && e.to_string().contains("missing field")
        {
            required.push(k.clone());
        }
        required_keys(value, &format!("{path}/{k}"), out);
    }
    out.insert(path.to_string(), required);
}

#[test]
fn the_schema_of_config_is_exactly_what_the_operator_reads() {
    // Every option of the operator set (Options to a value), as the operator writes it back.
    let full = OperatorConfig::parse(
        r#"
vault:
  address: https://vault.example:8200
  caCert: /etc/cubbyhole-vault-ca/ca.crt
  namespace: team-a
  allowPlainHttp: true
  auth:
    kubernetes: {role: op, mount: k8s, jwtPath: /var/run/jwt}
allowedRoles: [{namespaces: ["a-*"], roles: [r]}]
lookupPeriod: 15s
sweepPeriod: 10m
injector:
  image: registry.example/cubbyhole:1
  imagePullPolicy: IfNotPresent
  vaultAddress: https://vault.example:8200
  vaultNamespace: team-a
  vaultCaConfigMap: {name: vault-ca, key: bundle.pem}
  resources: {requests: {cpu: 20m, memory: 16Mi}, limits: {memory: 64Mi}}
  tokenPath: /var/run/agent/token
  runAsUser: 1000
stepConcurrency: 4
reconcileConcurrency: 2
maxLookupsPerSecond: 0
tokenGrace: 90s
renewalWindow: 150m
routineEvents: true
requestLimits: {podBurst: 2, podRefill: 20s, namespaceBurst: 10, namespacePerSecond: 5}
listener: {maxConnections: 100, maxConnectionsPerSource: 10, headerReadTimeout: 5s,
           maxInFlight: 9, maxInFlightPerSource: 3, reviewBurstPerSource: 7,
           reviewsPerSecondPerSource: 2}
"#,
    )
    .unwrap();
    let value = serde_json::to_value(&full).unwrap();
    let root: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/cubbyhole/values.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(root["$schema"], "http://json-schema.org/draft-07/schema#");
    let config = &root["properties"]["config"];
    let mut checked = vec![];
    same_keys(&root, config, &value, "", &mut checked);
    assert_eq!(
        checked,
        [
            "",
            "/allowedRoles/0",
            "/injector",
            "/injector/vaultCaConfigMap",
            "/listener",
            "/requestLimits",
            "/vault",
            "/vault/auth",
            "/vault/auth/kubernetes"
        ],
        "every section compared"
    );

    // The schema's `required` is what the operator cannot do without.
    let mut required = BTreeMap::new();
    required_keys(&value, "", &mut required);
    for (path, keys) in &required {
        let schema = resolve(&root, config);
        let schema = path
            .split('/')
            .skip(1)
            .fold(schema, |s, k| resolve(&root, &s["properties"][k]));
        let mut listed: Vec<String> = schema["required"]
            .as_array()
            .map(|r| r.iter().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        listed.sort();
        assert_eq!(&listed, keys, "required keys of {path:?}");
    }

    // The schema takes the operator's own spelling of every value (durations as `2h 30m`,
    // nulls), the chart renders it unchanged, and the operator reads back the same config.
    let objects = objects(
        &template(&[], Some(&serde_json::json!({"config": value})))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(rendered_config(&objects), full);
}

#[test]
fn the_default_config_is_one_the_operator_starts_with_and_runas_null_survives_helm() {
    let defaults = rendered_config(&objects(&template(&[], None).unwrap()));
    let chart: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("charts/cubbyhole/Chart.yaml")).unwrap(),
    )
    .unwrap();
    // The injected init container is the operator's own image, at the chart's appVersion.
    assert_eq!(
        defaults.injector.image,
        format!(
            "ghcr.io/cubbyhole-dev/cubbyhole:{}",
            chart["appVersion"].as_str().unwrap()
        )
    );
    assert_eq!(defaults.injector.run_as_user, Some(65532));
    // OpenShift: `runAsUser: null` in a values file. Helm drops a null over a default; the
    // chart must still hand the operator a null (no user), not let it fall back to 65532.
    let openshift = serde_json::json!({"config": {"injector": {"runAsUser": null}}});
    let config = rendered_config(&objects(&template(&[], Some(&openshift)).unwrap()));
    assert_eq!(config.injector.run_as_user, None);
}

/// Every new value at once (also linted below).
/// The pod-spec fields of the operator's pods that come from values of the same name.
const PLACEMENT_FIELDS: [&str; 5] = [
    "imagePullSecrets",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
];

fn every_option() -> Value {
    serde_json::json!({
        "image": {"digest": format!("sha256:{}", "ab".repeat(32))},
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"node-role.kubernetes.io/system": ""},
        "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "pool", "operator": "In", "values": ["system"]}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"team.example/owner": "platform", "prometheus.io/scrape": "false"},
        "podLabels": {"team": "platform", "app.kubernetes.io/name": "not-the-selector"},
        "extraVolumes": [{"name": "vault-ca", "configMap": {"name": "vault-ca"}}],
        "extraVolumeMounts": [{"name": "vault-ca", "mountPath": "/etc/cubbyhole-vault-ca", "readOnly": true}],
        "serviceMonitor": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
        "config": {"vault": {"caCert": "/etc/cubbyhole-vault-ca/ca.crt"}},
    })
}

#[test]
fn new_values_render_where_they_belong() {
    let values = every_option();
    let defaults = objects(&template(&[], None).unwrap());
    let objects = objects(&template(&[], Some(&values)).unwrap_or_else(|e| panic!("{e}")));
    let deploy = &objects[&key("Deployment", "cubbyhole-operator")];
    let pod = &deploy["spec"]["template"];
    let spec = &pod["spec"];
    for field in PLACEMENT_FIELDS {
        assert_eq!(spec[field], values[field], "Deployment pod spec {field}");
    }
    let digest = values["image"]["digest"].as_str().unwrap();
    let image = format!("ghcr.io/cubbyhole-dev/cubbyhole@{digest}");
    assert_eq!(spec["containers"][0]["image"], image.as_str());
    // The init container it injects is pinned by the same digest.
    assert_eq!(rendered_config(&objects).injector.image, image);

    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["team.example/owner"], "platform");
    assert_eq!(
        annotations["prometheus.io/scrape"], "false",
        "podAnnotations win over the chart's hints"
    );
    assert!(annotations["checksum/config"].is_string(), "{annotations}");
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["team"], "platform");
    // podLabels cannot move the pods out of the Deployment's selector (or the Service's).
    assert_eq!(labels["app.kubernetes.io/name"], "cubbyhole");
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "cubbyhole"
    );

    let volumes = spec["volumes"].as_array().unwrap();
    assert!(volumes.contains(&values["extraVolumes"][0]), "{volumes:?}");
    let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.contains(&values["extraVolumeMounts"][0]),
        "{mounts:?}"
    );

    // kube-prometheus-stack finds both by its release label; the chart's own label stays.
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let labels = &objects[&key(kind, "cubbyhole")]["metadata"]["labels"];
        assert_eq!(
            labels["release"], "kube-prometheus-stack",
            "{kind}: {labels}"
        );
        assert_eq!(
            labels["app.kubernetes.io/name"], "cubbyhole",
            "{kind}: {labels}"
        );
    }

    // With the defaults none of it is there.
    let spec = &defaults[&key("Deployment", "cubbyhole-operator")]["spec"]["template"]["spec"];
    for field in PLACEMENT_FIELDS {
        assert!(
            spec.get(field).is_none(),
            "{field} rendered by default: {spec}"
        );
    }
}

#[test]
fn helm_lint_strict_passes_with_every_option_set() {
    let values = scratch_file(
        "values.yaml",
        &serde_yaml_ng::to_string(&every_option()).unwrap(),
    );
    let out = run(Command::new(helm_bin())
        .args(["lint", "--strict", "--values"])
        .arg(values)
        .arg(repo().join("charts/cubbyhole")));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn helm_test_runs_the_doctor_as_the_operator() {
    let objects = objects(&template(&[], Some(&every_option())).unwrap());
    let deploy = &objects[&key("Deployment", "cubbyhole-operator")]["spec"]["template"]["spec"];
    let tests: Vec<&Value> = objects
        .values()
        .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .collect();
    assert_eq!(tests.len(), 1, "one helm test hook");
    let pod = tests[0];
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["namespace"], "ops");
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    // The operator's identity, image, configuration file and Vault login token.
    assert_eq!(spec["serviceAccountName"], deploy["serviceAccountName"]);
    assert_eq!(spec["imagePullSecrets"], deploy["imagePullSecrets"]);
    let container = &spec["containers"][0];
    assert_eq!(container["image"], deploy["containers"][0]["image"]);
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "doctor", "{args:?}");
    let flag = |args: &[&str], name: &str| {
        let i = args
            .iter()
            .position(|a| *a == name)
            .unwrap_or_else(|| panic!("{name} in {args:?}"));
        args[i + 1].to_string()
    };
    let operator_args: Vec<&str> = deploy["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(flag(&args, "--config"), flag(&operator_args, "--config"));
    let webhook = &objects[&(
        "MutatingWebhookConfiguration".to_string(),
        String::new(),
        "cubbyhole-injector".to_string(),
    )];
    assert_eq!(
        flag(&args, "--webhook-configuration"),
        webhook["metadata"]["name"].as_str().unwrap()
    );
    // Every mount of the operator's container (config, Vault token, extras) at the same path
    // from the same source.
    let volume = |spec: &Value, name: &str| {
        let mut v = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
            .clone();
        v.as_object_mut().unwrap().remove("name");
        v
    };
    for mount in deploy["containers"][0]["volumeMounts"].as_array().unwrap() {
        let name = mount["name"].as_str().unwrap();
        assert!(
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .contains(mount),
            "the doctor lacks the mount {mount}"
        );
        assert_eq!(volume(spec, name), volume(deploy, name), "volume {name}");
    }
    // Never an endpoint of the webhook Service.
    let selector = &objects[&key("Service", "cubbyhole-webhook")]["spec"]["selector"];
    let labels = &pod["metadata"]["labels"];
    assert!(
        selector
            .as_object()
            .unwrap()
            .iter()
            .any(|(k, v)| &labels[k] != v),
        "the Service {selector} selects the test pod {labels}"
    );
    // The real CLI takes these flags (clap parses them all before acting on --help).
    let out = Command::new(env!("CARGO_BIN_EXE_cubbyhole"))
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cubbyhole {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn notes_name_the_real_deployment_and_the_test() {
    // helm template does not render NOTES.txt: render it as a template of a copy of the chart.
    let chart = repo().join("charts/cubbyhole");
    let copy = scratch_file(
        "Chart.yaml",
        &std::fs::read_to_string(chart.join("Chart.yaml")).unwrap(),
    );
    let copy = copy.parent().unwrap();
    for dir in ["templates", "crds", "files"] {
        for entry in std::fs::read_dir(chart.join(dir)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() && entry.file_name() != "NOTES.txt" {
                std::fs::create_dir_all(copy.join(dir)).unwrap();
                std::fs::copy(entry.path(), copy.join(dir).join(entry.file_name())).unwrap();
            }
        }
    }
    std::fs::copy(chart.join("values.yaml"), copy.join("values.yaml")).unwrap();
    std::fs::copy(
        chart.join("values.schema.json"),
        copy.join("values.schema.json"),
    )
    .unwrap();
    let notes = std::fs::read_to_string(chart.join("templates/NOTES.txt")).unwrap();
    std::fs::write(
        copy.join("templates/_notes.tpl"),
        format!("{{{{- define \"notes\" -}}}}{notes}{{{{- end -}}}}"),
    )
    .unwrap();
    std::fs::write(
        copy.join("templates/notes.yaml"),
        "notes: {{ include \"notes\" . | toJson }}\n",
    )
    .unwrap();
    let out = run(Command::new(helm_bin())
        .args(["template", "rel", "--namespace", "ops"])
        .arg(copy));
    let objects = objects(&out);
    let notes = objects
        .values()
        .find_map(|o| o["notes"].as_str())
        .expect("notes rendered")
        .to_string();
    let deployment = objects
        .keys()
        .find(|(kind, _, _)| kind == "Deployment")
        .map(|(_, _, name)| name.clone())
        .unwrap();
    for line in [
        format!("kubectl -n ops get deploy {deployment}"),
        "helm test rel -n ops".to_string(),
        format!("kubectl -n ops exec deploy/{deployment} -- cubbyhole doctor"),
        "kind: AgentSecretBinding".to_string(),
    ] {
        assert!(notes.contains(&line), "NOTES lack {line:?}:\n{notes}");
    }
}

#[test]
fn values_and_schema_name_the_same_top_level_values() {
    let values: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("charts/cubbyhole/values.yaml")).unwrap(),
    )
    .unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/cubbyhole/values.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(schema["additionalProperties"], false);
    let values: Vec<&String> = values.as_object().unwrap().keys().collect();
    let properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let mut a = values.clone();
    let mut b = properties.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "values.yaml vs values.schema.json");
}
