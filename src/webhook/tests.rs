//! Unit tests of the pure admission decision and patch builder.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::config::RoleRule;
use crate::crd::AgentSecretBinding;
use crate::webhook::admit::{Decision, Refusal, decide};
use crate::webhook::inject::{CONTAINERS_ANNOTATION, INJECTED_ANNOTATION, TOKEN_PATH_ANNOTATION};
use crate::webhook::settings::InjectorConfig;

const NS: &str = "team";

fn rules() -> Vec<RoleRule> {
    vec![RoleRule {
        namespaces: vec!["*".into()],
        roles: vec!["agent".into()],
    }]
}

fn cfg() -> InjectorConfig {
    InjectorConfig {
        vault_address: Some("https://vault.vault.svc:8200".into()),
        ..Default::default()
    }
}

fn binding(name: &str, ns: &str, app: &str, extra: Value) -> Arc<AgentSecretBinding> {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": app}},
        "vault": {"tokenRole": "agent", "wrapTTL": "60s"},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "cubbyhole.dev/v1alpha1",
            "kind": "AgentSecretBinding",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
            "spec": spec,
        }))
        .unwrap(),
    )
}

/// A Deployment-style pod: `generateName`, opted in, `app=web`, with `spec`.
fn pod(meta: Value, spec: Value) -> Pod {
    let mut metadata = json!({
        "generateName": "web-7d9f8c-",
        "namespace": NS,
        "labels": {"app": "web", "cubbyhole.dev/inject": "true"},
    });
    for (k, v) in meta.as_object().unwrap() {
        metadata[k] = v.clone();
    }
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}),
    )
    .unwrap()
}

fn agent_spec() -> Value {
    json!({"containers": [{"name": "agent", "image": "agent:1"}]})
}

fn run(pod: &Pod, bindings: &[Arc<AgentSecretBinding>]) -> Decision {
    decide(pod, NS, bindings, &rules(), &[], &cfg(), "x7k2p9qb")
}

/// Applies an Inject decision's patch one operation at a time, checking that no operation
/// replaces what the pod had or what an earlier operation added.
fn injected(pod: &Pod, decision: Decision) -> (Value, Vec<Value>) {
    let Decision::Inject { patch, .. } = decision else {
        panic!("expected an injection, got {decision:?}");
    };
    let mut doc = serde_json::to_value(pod).unwrap();
    for op in &patch {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().unwrap();
        let appends = path.ends_with("/-") || path.ends_with("/initContainers/0");
        assert!(
            appends || doc.pointer(path).is_none(),
            "{path} would overwrite a field the pod or the patch already has"
        );
        let one: json_patch::Patch = serde_json::from_value(json!([op])).unwrap();
        json_patch::patch(&mut doc, &one).unwrap();
    }
    // Still a valid Pod.
    let _: Pod = serde_json::from_value(doc.clone()).unwrap();
    (doc, patch)
}

fn refusal(decision: Decision) -> Refusal {
    match decision {
        Decision::Refuse(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn deployment_pod_gets_everything_and_a_second_call_changes_nothing() {
    let b = binding("web-agents", NS, "web", json!({"agentContainer": "unwrap"}));
    let p = pod(json!({}), agent_spec());
    let (doc, _) = injected(&p, run(&p, std::slice::from_ref(&b)));
    let ann = &doc["metadata"]["annotations"];
    let secret = ann["cubbyhole.dev/secret-name"].as_str().unwrap();
    assert_eq!(secret, "web-7d9f8c-x7k2p9qb-web-agents-wrap");
    assert_eq!(ann[INJECTED_ANNOTATION], "web-agents");
    let volumes = doc["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["secret"]["secretName"], secret);
    assert_eq!(volumes[0]["secret"]["defaultMode"], 0o400);
    assert_eq!(volumes[1]["emptyDir"]["medium"], "Memory");
    let init = &doc["spec"]["initContainers"][0];
    // The binding's agentContainer names no container of the pod: it is the injected one.
    assert_eq!(init["name"], "unwrap");
    assert_eq!(init["image"], cfg().image);
    assert_eq!(
        init["args"],
        json!([
            "unwrap",
            "--token-file=/var/run/cubbyhole/wrap/token",
            "--out=/var/run/cubbyhole/token/token",
            "--expect-path=auth/token/create/agent",
            "--wait-for-fresh=120s"
        ])
    );
    assert_eq!(init["terminationMessagePolicy"], "File");
    assert_eq!(
        init["env"][0],
        json!({"name": "VAULT_ADDR", "value": "https://vault.vault.svc:8200"})
    );
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(init["resources"]["limits"]["memory"], "32Mi");
    assert_eq!(init["volumeMounts"][0]["readOnly"], true);
    let agent = &doc["spec"]["containers"][0];
    assert_eq!(
        agent["volumeMounts"],
        json!([{"name": "cubbyhole-token", "mountPath": "/var/run/cubbyhole/token", "readOnly": true}])
    );
    assert_eq!(agent["env"][0]["name"], "VAULT_ADDR");
    assert_eq!(doc["spec"]["securityContext"]["fsGroup"], 65532);

    // Reinvocation: the marker makes it a no-op.
    let again: Pod = serde_json::from_value(doc).unwrap();
    assert_eq!(run(&again, &[b]), Decision::Skip("already-injected"));
}

#[test]
fn without_a_configured_user_no_uid_or_fs_group_is_fixed() {
    // OpenShift's restricted SCC refuses a fixed UID outside the namespace's range: with
    // `runAsUser: null` the webhook sets neither, and the platform assigns both.
    let b = binding("b", NS, "web", json!({}));
    let p = pod(json!({}), agent_spec());
    let cfg = InjectorConfig {
        run_as_user: None,
        ..cfg()
    };
    let decision = decide(&p, NS, &[b], &rules(), &[], &cfg, "x7k2p9qb");
    let (doc, _) = injected(&p, decision);
    let init = &doc["spec"]["initContainers"][0];
    assert!(init["securityContext"].get("runAsUser").is_none(), "{init}");
    assert_eq!(init["securityContext"]["runAsNonRoot"], true);
    assert!(
        doc["spec"].get("securityContext").is_none(),
        "{}",
        doc["spec"]
    );
    // The file form: `runAsUser: null`.
    let parsed: InjectorConfig = serde_yaml_ng::from_str("runAsUser: null").unwrap();
    assert_eq!(parsed.run_as_user, None);
    let default: InjectorConfig = serde_yaml_ng::from_str("{}").unwrap();
    assert_eq!(default.run_as_user, Some(65532));
}

#[test]
fn multi_container_pod_with_init_containers_and_annotations() {
    let b = binding("b", NS, "web", json!({}));
    let p = pod(
        json!({
            "name": "web-0",
            "annotations": {CONTAINERS_ANNOTATION: "a, b", "keep": "me"},
        }),
        json!({
            "initContainers": [{"name": "setup", "image": "setup"}],
            "containers": [
                {"name": "a", "image": "a", "env": [{"name": "VAULT_ADDR", "value": "https://mine:8200"}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "image": "b"},
                {"name": "sidecar", "image": "s"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
        }),
    );
    let (doc, _) = injected(&p, run(&p, &[b]));
    let ann = &doc["metadata"]["annotations"];
    assert_eq!(ann["keep"], "me");
    assert_eq!(ann["cubbyhole.dev/secret-name"], "web-0-b-wrap");
    let inits = doc["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    assert_eq!(inits[0]["name"], "cubbyhole-unwrap", "prepended");
    assert_eq!(inits[1]["name"], "setup");
    assert!(inits[1].get("volumeMounts").is_none());
    // No agentContainer: one wrap per pod, nothing to wait for.
    assert!(
        !inits[0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("--wait-for-fresh"))
    );
    // The pod names a user: the init container inherits it, the pod's fsGroup stays.
    assert!(inits[0]["securityContext"].get("runAsUser").is_none());
    assert_eq!(doc["spec"]["securityContext"]["fsGroup"], 2000);
    let containers = doc["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers[0]["volumeMounts"].as_array().unwrap().len(), 2);
    assert_eq!(
        containers[0]["env"],
        json!([{"name": "VAULT_ADDR", "value": "https://mine:8200"}])
    );
    assert_eq!(containers[1]["volumeMounts"][0]["name"], "cubbyhole-token");
    assert_eq!(
        containers[1]["env"][0]["value"],
        "https://vault.vault.svc:8200"
    );
    assert!(
        containers[2].get("volumeMounts").is_none(),
        "sidecar not chosen"
    );
    let volumes = doc["spec"]["volumes"].as_array().unwrap();
    assert_eq!(
        volumes
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["data", "cubbyhole-wrap", "cubbyhole-token"]
    );
}

#[test]
fn agent_user_and_overrides() {
    let b = binding(
        "b",
        NS,
        "web",
        json!({"secretKey": "wrap", "vault": {"tokenRole": "agent", "wrapTTL": "10s"}, "agentContainer": "agent"}),
    );
    let p = pod(
        json!({"name": "web-0", "generateName": null, "annotations": {"cubbyhole.dev/secret-name": "chosen-by-me", TOKEN_PATH_ANNOTATION: "/etc/vault-token/"}}),
        json!({"containers": [{"name": "agent", "image": "a", "securityContext": {"runAsUser": 1001}}]}),
    );
    let (doc, patch) = injected(&p, run(&p, &[b]));
    assert_eq!(
        doc["metadata"]["annotations"]["cubbyhole.dev/secret-name"],
        "chosen-by-me"
    );
    assert!(
        !patch
            .iter()
            .any(|op| op["path"].as_str().unwrap().contains("secret-name"))
    );
    assert_eq!(
        doc["spec"]["volumes"][0]["secret"]["secretName"],
        "chosen-by-me"
    );
    let init = &doc["spec"]["initContainers"][0];
    // agentContainer names an existing container: the injected one keeps its own name.
    assert_eq!(init["name"], "cubbyhole-unwrap");
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--token-file=/var/run/cubbyhole/wrap/wrap"));
    assert!(args.contains(&"--out=/etc/vault-token/token"));
    assert!(args.contains(&"--wait-for-fresh=90s"), "{args:?}");
    assert_eq!(init["securityContext"]["runAsUser"], 1001);
    assert_eq!(doc["spec"]["securityContext"]["fsGroup"], 1001);
    assert_eq!(
        doc["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/etc/vault-token"
    );
}

#[test]
fn the_pods_own_names_are_never_overwritten() {
    let b = || vec![binding("b", NS, "web", json!({}))];
    let cases = [
        (
            json!({}),
            json!({"containers": [{"name": "agent", "image": "a"}], "volumes": [{"name": "cubbyhole-token", "emptyDir": {}}]}),
            "volume named \"cubbyhole-token\"",
        ),
        (
            json!({}),
            json!({"containers": [{"name": "agent", "image": "a"}, {"name": "cubbyhole-unwrap", "image": "x"}]}),
            "container named \"cubbyhole-unwrap\"",
        ),
        (
            json!({}),
            json!({"containers": [{"name": "agent", "image": "a", "volumeMounts": [{"name": "x", "mountPath": "/var/run/cubbyhole/token"}]}], "volumes": [{"name": "x", "emptyDir": {}}]}),
            "already mounts volume \"x\"",
        ),
        (
            json!({"annotations": {CONTAINERS_ANNOTATION: "nope"}}),
            agent_spec(),
            "names \"nope\", which is not a container",
        ),
        (
            json!({"annotations": {TOKEN_PATH_ANNOTATION: "relative/dir"}}),
            agent_spec(),
            "not an absolute directory",
        ),
        (
            json!({"annotations": {TOKEN_PATH_ANNOTATION: "/var/run/cubbyhole/wrap"}}),
            agent_spec(),
            "cubbyhole's own mount",
        ),
        (
            json!({"name": "web-0", "generateName": null, "annotations": {"cubbyhole.dev/secret-name": "Bad_Name"}}),
            agent_spec(),
            "not a valid Secret name",
        ),
        (
            // A template's fixed name would be every replica's.
            json!({"annotations": {"cubbyhole.dev/secret-name": "shared-wrap"}}),
            agent_spec(),
            "every replica would share that one Secret",
        ),
        (
            json!({"name": "db-0", "generateName": null, "annotations": {"cubbyhole.dev/secret-name": "shared-wrap"},
                   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]}),
            agent_spec(),
            "every replica would share that one Secret",
        ),
    ];
    for (meta, spec, expected) in cases {
        let named = meta.get("name").and_then(Value::as_str).map(str::to_string);
        let r = refusal(run(&pod(meta, spec), &b()));
        assert_eq!(r.reason, "CannotInject");
        assert!(r.message.contains(expected), "{}", r.message);
        let who = named.map_or("\"web-7d9f8c-*\" (generateName)".to_string(), |n| {
            format!("{n:?}")
        });
        assert!(r.message.contains(&who), "{}", r.message);
        assert_eq!(r.bindings, ["b"]);
    }
}

#[test]
fn refusals_name_the_bindings_and_the_reason() {
    let p = pod(json!({}), agent_spec());
    // Not opted in: untouched.
    let mut plain = p.clone();
    plain
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("cubbyhole.dev/inject");
    assert_eq!(
        run(&plain, &[binding("b", NS, "web", json!({}))]),
        Decision::Skip("not-opted-in")
    );
    // Nothing selects it (a binding elsewhere, or going away, does not count).
    let mut leaving = (*binding("leaving", NS, "web", json!({}))).clone();
    leaving.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let r = refusal(run(
        &p,
        &[
            binding("b", "other", "web", json!({})),
            binding("c", NS, "db", json!({})),
            Arc::new(leaving),
        ],
    ));
    assert_eq!(r.reason, "NoBinding");
    assert!(r.message.contains("no AgentSecretBinding in namespace \"team\" selects its labels [app=web, cubbyhole.dev/inject=true]"), "{}", r.message);
    assert!(r.bindings.is_empty());
    // Two select it.
    let r = refusal(run(
        &p,
        &[
            binding("zeta", NS, "web", json!({})),
            binding("alpha", NS, "web", json!({})),
        ],
    ));
    assert_eq!(r.reason, "Conflict");
    assert!(
        r.message
            .contains("selected by 2 AgentSecretBindings in namespace \"team\" (alpha, zeta)"),
        "{}",
        r.message
    );
    assert_eq!(r.bindings, ["alpha", "zeta"]);
    // One that is not valid.
    let r = refusal(run(
        &p,
        &[binding(
            "admin",
            NS,
            "web",
            json!({"vault": {"tokenRole": "root-maker", "wrapTTL": "60s"}}),
        )],
    ));
    assert_eq!(r.reason, "RoleNotAllowed");
    assert!(
        r.message
            .contains("AgentSecretBinding \"admin\", which is not valid (RoleNotAllowed)"),
        "{}",
        r.message
    );
    assert!(r.message.contains("root-maker"), "{}", r.message);
    // In a namespace the operator does not watch (watchNamespaces).
    let r = refusal(decide(
        &p,
        NS,
        &[binding("b", NS, "web", json!({}))],
        &rules(),
        &["elsewhere".to_string()],
        &cfg(),
        "x7k2p9qb",
    ));
    assert_eq!(r.reason, "NamespaceNotWatched");
    assert!(r.message.contains("watchNamespaces"), "{}", r.message);
    let r = refusal(run(
        &p,
        &[binding(
            "short",
            NS,
            "web",
            json!({"vault": {"tokenRole": "agent", "wrapTTL": "2s"}}),
        )],
    ));
    assert_eq!(
        (r.reason, r.bindings.as_slice()),
        ("InvalidSpec", ["short".to_string()].as_slice())
    );
    assert!(r.message.contains("wrapTTL"), "{}", r.message);
    // A selector that cannot be read is named when nothing else selects the pod.
    let bad = binding(
        "bad",
        NS,
        "web",
        json!({"podSelector": {"matchLabels": {"app": "a b"}}}),
    );
    let r = refusal(run(&p, &[bad]));
    assert_eq!(r.reason, "NoBinding");
    assert!(
        r.message.contains("binding \"bad\" cannot select anything"),
        "{}",
        r.message
    );
    assert_eq!(r.bindings, ["bad"]);
}

#[test]
fn vault_namespace_and_ca_reach_the_pod() {
    let mut c = cfg();
    c.vault_namespace = Some("team-a".into());
    c.vault_ca_config_map = Some(crate::webhook::settings::ConfigMapKey {
        name: "vault-ca".into(),
        key: "ca.crt".into(),
    });
    let p = pod(json!({}), agent_spec());
    let d = decide(
        &p,
        NS,
        &[binding("b", NS, "web", json!({}))],
        &rules(),
        &[],
        &c,
        "n0nce",
    );
    let (doc, _) = injected(&p, d);
    let init = &doc["spec"]["initContainers"][0];
    let env: Vec<&str> = init["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["VAULT_ADDR", "VAULT_NAMESPACE", "VAULT_CACERT"]);
    assert_eq!(doc["spec"]["volumes"][2]["configMap"]["name"], "vault-ca");
    assert_eq!(
        doc["spec"]["containers"][0]["volumeMounts"][1]["name"],
        "cubbyhole-vault-ca"
    );
}

#[test]
fn a_mount_directory_is_an_absolute_plain_path_of_at_most_1024_bytes() {
    use crate::webhook::inject::check_dir;
    assert!(check_dir("/var/run/agent/token").is_ok());
    assert!(
        check_dir(&format!("/{}", "a".repeat(1023))).is_ok(),
        "1024 bytes"
    );
    assert!(
        check_dir(&format!("/{}", "a".repeat(1024))).is_err(),
        "1025 bytes"
    );
    for bad in [
        "/",
        "",
        "relative/dir",
        "/a/../b",
        "/a/./b",
        "/a:b",
        "/a\nb",
    ] {
        assert!(check_dir(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_pod_is_described_by_its_name_or_else_its_generate_name() {
    use crate::webhook::inject::describe_pod;
    assert_eq!(
        describe_pod(&meta_pod(Some("a-1"), Some("a-"))),
        "pod \"a-1\""
    );
    assert_eq!(
        describe_pod(&meta_pod(Some(""), Some("a-"))),
        "pod \"a-*\" (generateName)"
    );
    assert_eq!(describe_pod(&meta_pod(None, None)), "pod (unnamed)");
}

#[test]
fn a_derived_secret_name_comes_from_the_name_else_the_generate_name_else_the_nonce() {
    use crate::webhook::inject::chosen_secret_name;
    let chosen = |p: &Pod| chosen_secret_name(p, "b", "x7k2q").unwrap();
    assert_eq!(chosen(&meta_pod(Some("a-1"), Some("a-"))), "a-1-b-wrap");
    assert_eq!(chosen(&meta_pod(Some(""), Some("a-"))), "a-x7k2q-b-wrap");
    assert_eq!(chosen(&meta_pod(Some(""), Some(""))), "pod-x7k2q-b-wrap");
    assert_eq!(chosen(&meta_pod(None, None)), "pod-x7k2q-b-wrap");
}

/// A [`pod`] with only this name and `generateName` (`None`: absent).
fn meta_pod(name: Option<&str>, generate: Option<&str>) -> Pod {
    pod(json!({"name": name, "generateName": generate}), json!({}))
}

#[test]
fn a_named_init_container_is_found_by_its_name_and_a_container_named_twice_is_mounted_once() {
    let b = binding("b", NS, "web", json!({}));
    let p = pod(
        json!({"annotations": {CONTAINERS_ANNOTATION: "late, a, a, late"}}),
        json!({
            "initContainers": [{"name": "early", "image": "e"}, {"name": "late", "image": "l"}],
            "containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}],
        }),
    );
    let (doc, _) = injected(&p, run(&p, &[b]));
    let token_mounts = |c: &Value| {
        c.get("volumeMounts").map_or(0, |m| {
            m.as_array()
                .unwrap()
                .iter()
                .filter(|m| m["name"] == "cubbyhole-token")
                .count()
        })
    };
    let inits = doc["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cubbyhole-unwrap", "early", "late"]);
    assert_eq!(token_mounts(&inits[1]), 0, "early is not named");
    assert_eq!(token_mounts(&inits[2]), 1, "late is named (twice)");
    let containers = doc["spec"]["containers"].as_array().unwrap();
    assert_eq!(token_mounts(&containers[0]), 1, "a is named (twice)");
    assert_eq!(token_mounts(&containers[1]), 0, "b is not named");
    let vault_addrs = containers[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "VAULT_ADDR")
        .count();
    assert_eq!(vault_addrs, 1);
}

#[test]
fn a_self_bootstrapping_pod_gets_its_identity_and_where_to_ask_and_no_init_container() {
    let mut cfg = cfg();
    cfg.request = Some(crate::webhook::settings::RequestEndpoint {
        url: "https://cubbyhole.cubbyhole-system.svc:443".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
    });
    let on_request = binding("b", NS, "web", json!({"delivery": "Request"}));
    let asks = pod(
        json!({"annotations": {"cubbyhole.dev/self-bootstrap": "true"}}),
        json!({"containers": [
            {"name": "agent", "image": "python:3", "env": [{"name": "VAULT_ADDR", "value": "https://mine"}]},
            {"name": "sidecar", "image": "s:1"},
        ]}),
    );
    let decide_with = |p: &Pod, b: &Arc<AgentSecretBinding>| {
        decide(
            p,
            NS,
            std::slice::from_ref(b),
            &rules(),
            &[],
            &cfg,
            "x7k2p9qb",
        )
    };
    let (doc, _) = injected(&asks, decide_with(&asks, &on_request));
    assert!(
        doc["spec"].get("initContainers").is_none(),
        "the pod's own code asks: no init container"
    );
    let volumes: Vec<&str> = doc["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["cubbyhole-identity"], "no token volume either");
    assert_eq!(
        doc["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "cubbyhole"
    );
    for c in doc["spec"]["containers"].as_array().unwrap() {
        let env: std::collections::BTreeMap<&str, &str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(
            env["CUBBYHOLE_REQUEST"],
            "https://cubbyhole.cubbyhole-system.svc:443"
        );
        assert!(env["CUBBYHOLE_REQUEST_CA"].contains("BEGIN CERTIFICATE"));
        assert_eq!(
            env["CUBBYHOLE_IDENTITY_TOKEN"],
            "/var/run/cubbyhole/identity/token"
        );
        assert_eq!(env["CUBBYHOLE_EXPECT_PATH"], "auth/token/create/agent");
        let mount = &c["volumeMounts"][0];
        assert_eq!(mount["mountPath"], "/var/run/cubbyhole/identity");
        assert_eq!(mount["readOnly"], true);
    }
    let agent_env = doc["spec"]["containers"][0]["env"].as_array().unwrap();
    let addrs: Vec<&Value> = agent_env
        .iter()
        .filter(|e| e["name"] == "VAULT_ADDR")
        .collect();
    assert_eq!(addrs.len(), 1, "the container's own VAULT_ADDR is kept");
    assert_eq!(addrs[0]["value"], "https://mine");
    assert_eq!(
        doc["metadata"]["annotations"][INJECTED_ANNOTATION], "b",
        "a second admission leaves it alone"
    );

    // A Secret-delivery binding cannot serve a pod that asks: refused, saying why.
    let by_secret = binding("s", NS, "web", json!({}));
    let r = refusal(decide_with(&asks, &by_secret));
    assert!(
        r.message.contains("self-bootstrap") && r.message.contains("delivery: Request"),
        "{}",
        r.message
    );
    // Anything but true or false is a mistake, not a silent default.
    let typo = pod(
        json!({"annotations": {"cubbyhole.dev/self-bootstrap": "yes"}}),
        agent_spec(),
    );
    let r = refusal(decide_with(&typo, &on_request));
    assert!(r.message.contains("must be"), "{}", r.message);
    // "false" is the init container, as without the annotation.
    let init = pod(
        json!({"annotations": {"cubbyhole.dev/self-bootstrap": "false"}}),
        agent_spec(),
    );
    let (doc, _) = injected(&init, decide_with(&init, &on_request));
    assert_eq!(doc["spec"]["initContainers"][0]["name"], "cubbyhole-unwrap");
}
