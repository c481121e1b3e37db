//! End-to-end: `cubbyhole doctor`, run with the operator's configuration and service account
//! against the real API server and OpenBao, is green on a correct install and names each of a
//! few broken setups precisely; `--output json` says the same as one JSON document.

use std::process::Command;
use std::time::Duration;

use cubbyhole_testkit::cluster::webhook::webhook_port;
use cubbyhole_testkit::cluster::{Env, Options, eventually};
use cubbyhole_testkit::openbao::ROLE;

/// Runs the doctor as the operator with `config`; its exit code and output.
fn doctor(env: &Env, config: &std::path::Path) -> (i32, String) {
    doctor_as(env, config, &env.identity.kubeconfig)
}

/// Runs the doctor with `config` as whoever `kubeconfig` names.
fn doctor_as(env: &Env, config: &std::path::Path, kubeconfig: &std::path::Path) -> (i32, String) {
    let out = Command::new(cubbyhole_testkit::paths::cubbyhole_bin())
        .args(["doctor", "--config"])
        .arg(config)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("VAULT_ADDR")
        .output()
        .expect("run cubbyhole doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(env.dir.join("doctor.log"), &text).ok();
    (out.status.code().unwrap_or(-1), text)
}

/// Runs the doctor as the operator with `config` and `--output json`: its exit code and the
/// document, which must be all of its standard output.
fn doctor_json(env: &Env, config: &std::path::Path) -> (i32, serde_json::Value) {
    let out = Command::new(cubbyhole_testkit::paths::cubbyhole_bin())
        .args(["doctor", "--output", "json", "--config"])
        .arg(config)
        .env("KUBECONFIG", &env.identity.kubeconfig)
        .env_remove("VAULT_ADDR")
        .output()
        .expect("run cubbyhole doctor --output json");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    std::fs::write(env.dir.join("doctor.json"), &stdout).ok();
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(doc["exitCode"], code, "{doc}");
    for check in doc["checks"].as_array().expect("checks") {
        assert!(check["name"].is_string(), "{check}");
        assert!(check["message"].is_string(), "{check}");
        let status = check["status"].as_str().expect("status");
        assert!(
            ["ok", "warn", "fail", "skipped"].contains(&status),
            "{check}"
        );
        assert_eq!(
            check["fix"].is_string(),
            status == "fail" || status == "warn",
            "{check}"
        );
    }
    (code, doc)
}

/// The check of `doc` named `name`.
fn check<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {doc}"))
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

#[tokio::test]
async fn doctor_is_green_on_a_correct_install_and_names_what_is_broken() {
    let mut env = Env::start(Options {
        allowed_roles: vec![ROLE, "never-created"],
        ..Options::default()
    })
    .await;
    if env.skip_external("OpenBao's operator policy to break") {
        return;
    }
    let port = webhook_port();
    env.restart_with_webhook(port, &[]);
    env.install_webhook_configuration(port).await;
    env.wait_webhook_serving().await;
    env.apply_binding("fine", Env::spec("fine", "60s")).await;
    let ns = env.ns.clone();

    // The operator the doctor checks says on /metrics that it leads, what it is and when the
    // certificate it serves (and its CA) expire.
    let metrics = eventually(
        "the operator's /metrics shows it leading",
        Duration::from_secs(30),
        || async {
            let (_, body) = env.op().get("/metrics")?;
            body.lines()
                .any(|l| l == "cubbyhole_leader 1")
                .then_some(body)
        },
    )
    .await;
    assert!(
        metrics.lines().any(|l| l.starts_with(&format!(
            "cubbyhole_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )) && l.ends_with("} 1")),
        "{metrics}"
    );
    // The binding's readiness, as the leader last wrote it.
    let ready = format!("cubbyhole_binding_ready{{namespace=\"{ns}\",binding=\"fine\"}} 1");
    eventually(
        "the binding's readiness on /metrics",
        Duration::from_secs(30),
        || async {
            let (_, body) = env.op().get("/metrics")?;
            body.lines().any(|l| l == ready).then_some(())
        },
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for which in ["serving", "ca"] {
        let prefix = format!(
            "cubbyhole_webhook_certificate_expiry_timestamp_seconds{{certificate=\"{which}\"}} "
        );
        let expiry: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix}in:\n{metrics}"))
            .parse()
            .unwrap();
        assert!(expiry > now + 3600, "{which}: {expiry}");
    }

    let (code, text) = doctor(&env, &env.config);
    assert_eq!(code, 0, "{text}");
    for expected in [
        "OK    vault reachable",
        "OK    vault login",
        "OK    vault capabilities",
        &format!("OK    binding {ns}/fine: token role \"{ROLE}\" allows"),
        "OK    kubernetes permissions: all",
        "OK    webhook: cubbyhole-injector: caBundle set",
        // The operator may not create pods, so it cannot dry-run one.
        "OK    webhook call: not checked",
    ] {
        line(&text, expected);
    }
    // The same checks, in the same order, as JSON: all ok but the dry run this identity may
    // not make.
    let (json_code, doc) = doctor_json(&env, &env.config);
    assert_eq!(json_code, 0, "{doc}");
    assert_eq!(doc["result"], "ok", "{doc}");
    let names_in_text: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("OK    "))
        .filter_map(|l| l.split_once(": ").map(|(name, _)| name))
        .collect();
    let names_in_json: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names_in_json, names_in_text);
    for c in doc["checks"].as_array().unwrap() {
        let expected = if c["name"] == "webhook call" {
            "skipped"
        } else {
            "ok"
        };
        assert_eq!(c["status"], expected, "{c}");
    }
    assert_eq!(doc["summary"]["checks"], names_in_text.len(), "{doc}");
    // An admin can: the API server calls the webhook, which injects the dry-run pod.
    let (code, text) = doctor_as(&env, &env.config, &env.cluster.kubeconfig);
    assert_eq!(code, 0, "{text}");
    assert!(
        line(&text, "OK    webhook call: the API server called it")
            .contains(&format!("in {ns} was injected for binding fine")),
        "{text}"
    );

    // A binding whose role the namespace may not use, and one whose role Vault does not have.
    let mut forbidden = Env::spec("x", "60s");
    forbidden["vault"]["tokenRole"] = serde_json::json!("admin");
    env.apply_binding("forbidden", forbidden).await;
    let mut missing = Env::spec("y", "60s");
    missing["vault"]["tokenRole"] = serde_json::json!("never-created");
    env.apply_binding("missing", missing).await;
    let (code, text) = doctor(&env, &env.config);
    assert_eq!(code, 1, "{text}");
    assert!(
        line(&text, &format!("FAIL  binding {ns}/forbidden")).contains("RoleNotAllowed"),
        "{text}"
    );
    assert!(
        line(&text, &format!("FAIL  binding {ns}/missing")).contains("\"never-created\""),
        "{text}"
    );
    line(&text, &format!("OK    binding {ns}/fine"));
    // The operator's policy lacks the role the second binding asks for.
    assert!(
        line(&text, "FAIL  vault capabilities").contains("auth/token/create/never-created"),
        "{text}"
    );
    // As JSON: the same exit status, the failures with their fixes.
    let (json_code, doc) = doctor_json(&env, &env.config);
    assert_eq!(json_code, 1, "{doc}");
    assert_eq!(doc["result"], "fail", "{doc}");
    let forbidden = check(&doc, &format!("binding {ns}/forbidden"));
    assert_eq!(forbidden["status"], "fail", "{doc}");
    assert!(
        forbidden["message"]
            .as_str()
            .unwrap()
            .contains("RoleNotAllowed"),
        "{doc}"
    );
    assert_eq!(
        check(&doc, &format!("binding {ns}/missing"))["status"],
        "fail"
    );
    assert_eq!(check(&doc, &format!("binding {ns}/fine"))["status"], "ok");
    assert_eq!(doc["summary"]["fail"], 3, "{doc}");
    // A configuration that cannot be read: exit 2, and still one document.
    let (json_code, doc) = doctor_json(&env, &env.dir.join("no-such-config.yaml"));
    assert_eq!(json_code, 2, "{doc}");
    assert_eq!(doc["result"], "fail", "{doc}");
    assert_eq!(check(&doc, "configuration")["status"], "fail", "{doc}");

    // The operator's policy loses renewals.
    let policy = env.bao.cli(
        &env.bao.root_token,
        &["policy", "read", "cubbyhole-operator"],
    );
    let text_policy = String::from_utf8_lossy(&policy.stdout).to_string();
    let start = text_policy
        .find("path \"auth/token/renew-accessor\"")
        .expect("renew-accessor in the policy");
    let end = start + text_policy[start..].find('}').unwrap() + 1;
    let cut = format!("{}{}", &text_policy[..start], &text_policy[end..]);
    let file = env.dir.join("policy-without-renew.hcl");
    std::fs::write(&file, cut).unwrap();
    let out = env.bao.cli(
        &env.bao.root_token,
        &[
            "policy",
            "write",
            "cubbyhole-operator",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = eventually(
        "the doctor sees the policy change",
        Duration::from_secs(30),
        || async {
            let (_, text) = doctor(&env, &env.config);
            text.lines()
                .any(|l| {
                    l.starts_with("FAIL  vault capabilities")
                        && l.contains("auth/token/renew-accessor")
                })
                .then_some(text)
        },
    )
    .await;
    assert!(
        !line(&text, "FAIL  vault capabilities").contains("revoke-accessor"),
        "{text}"
    );

    // Vault unreachable: the configuration names a closed port.
    let config = std::fs::read_to_string(&env.config).unwrap();
    let closed = format!("http://127.0.0.1:{}", webhook_port());
    let broken = config.replace(&env.bao.addr, &closed);
    assert_ne!(broken, config);
    let broken_path = env.dir.join("operator-unreachable.yaml");
    std::fs::write(&broken_path, broken).unwrap();
    let (code, text) = doctor(&env, &broken_path);
    assert_eq!(code, 1, "{text}");
    assert!(
        line(&text, "FAIL  vault reachable").contains(&closed),
        "{text}"
    );
    // No operator serving the webhook: the API server's call fails, and the doctor says so.
    if let Some(op) = env.operator.take() {
        op.kill();
    }
    let (code, text) = doctor_as(&env, &env.config, &env.cluster.kubeconfig);
    assert_eq!(code, 1, "{text}");
    assert!(
        line(&text, "FAIL  webhook call: the API server cannot call it").contains("fix:"),
        "{text}"
    );
    env.assert_no_leaks().await;
}

/// Helm never upgrades a chart's CRD: an upgraded operator meeting an older CRD refuses to
/// start, naming each missing field and the command that fixes it (the API server would drop
/// what it writes), and the doctor says the same; with the CRD applied it starts.
#[tokio::test]
async fn an_older_crd_is_refused_at_start_and_by_the_doctor_then_applied_it_starts() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let mut env = Env::start(Options::default()).await;
    env.operator.take().unwrap().kill();
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(env.client.clone());
    let name = "agentsecretbindings.cubbyhole.dev";
    let status = "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties";
    let older: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "remove", "path": format!("{status}/tampered")},
    ]))
    .unwrap();
    crds.patch(name, &PatchParams::default(), &Patch::<()>::Json(older))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(cubbyhole_testkit::paths::cubbyhole_bin())
        .args(["operator", "--config"])
        .arg(&env.config)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", cubbyhole_testkit::cluster::free_port()),
        ])
        .env("KUBECONFIG", &env.identity.kubeconfig)
        .output()
        .expect("run the operator");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(env.dir.join("operator-older-crd.log"), &said).unwrap();
    assert!(!out.status.success(), "{said}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        said.contains("the installed AgentSecretBinding CRD is older than this operator: it lacks status.tampered")
            && said.contains("kubectl apply --server-side -f charts/cubbyhole/crds/"),
        "{said}"
    );
    let (code, doctor_said) = doctor(&env, &env.config);
    assert_ne!(code, 0);
    assert!(
        doctor_said.contains("FAIL  crd: the installed AgentSecretBinding CRD is older than this operator: it lacks status.tampered"),
        "{doctor_said}"
    );
    // The fix it names.
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(&cubbyhole::crd::crd_yaml()).unwrap();
    crds.patch(
        name,
        &PatchParams::apply("upgrade").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    env.restart_operator();
    let (_, doctor_said) = doctor(&env, &env.config);
    assert!(
        doctor_said.contains("OK    crd: the installed CRD has every field of this version"),
        "{doctor_said}"
    );
}
