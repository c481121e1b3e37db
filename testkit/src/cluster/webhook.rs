//! The admission webhook in the e2e harness: the operator serving it on 127.0.0.1, the shipped
//! `config/webhook/` configuration pointed at it by URL (the API server here cannot reach a
//! Service), and running an injected init container exactly as the stored pod says.

use std::process::Command;
use std::time::Duration;

use cubbyhole::agent::receipt::Receipt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Pod, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Env, LEADER_ARGS, OPERATOR_NS, OPERATOR_SA, Operator, eventually, free_port};

/// Name of the shipped MutatingWebhookConfiguration.
pub const CONFIGURATION: &str = "cubbyhole-injector";
/// Opt-in label.
pub const INJECT: &str = "cubbyhole.dev/inject";

/// Operator flags serving the webhook on `port`, plus `extra`.
pub fn webhook_args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--webhook-listen".to_string(), format!("127.0.0.1:{port}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// An AdmissionReview (v1) of creating `pod` (JSON) in `namespace`, as the API server sends
/// it, from the namespace's default service account.
pub fn pod_creation_review(namespace: &str, pod: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-00000000f100",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE", "namespace": namespace,
            "userInfo": {"username": format!("system:serviceaccount:{namespace}:default")},
            "object": pod,
        },
    })
}

/// A free port for a webhook.
pub fn webhook_port() -> u16 {
    free_port()
}

/// The result of running an injected init container.
pub struct AgentRun {
    /// Exit code.
    pub code: i32,
    /// Its receipt.
    pub receipt: Option<Receipt>,
    /// The arguments it ran with (after the two path substitutions).
    pub args: Vec<String>,
}

impl Env {
    /// Replaces the operator with one started with `args` (and `POD_NAME=name`), logging to
    /// `operator-<name>.log`; the leak scan reads its `/metrics` while it runs.
    pub fn operator_with(&self, name: &str, args: &[String]) -> Operator {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let operator = Operator::start_with(
            &self.identity.kubeconfig,
            &self.config,
            &self.dir.join(format!("operator-{name}.log")),
            &[("POD_NAME", name)],
            &args,
        );
        self.track(&operator);
        operator
    }

    /// Stops the harness's operator and starts one serving the webhook on `port` (`extra`
    /// flags added); it becomes `env.operator`.
    pub fn restart_with_webhook(&mut self, port: u16, extra: &[&str]) {
        if let Some(op) = self.operator.take() {
            op.kill();
        }
        self.operator = Some(self.operator_with("webhook", &webhook_args(port, extra)));
    }

    /// The file holding the bearer token the API server sends every webhook it calls
    /// (`e2e/controlplane/up.sh`); `None` on an external cluster.
    pub fn webhook_caller_token_file(&self) -> Option<std::path::PathBuf> {
        let file = self.cluster.dir.join("webhook-caller-token");
        (!self.external && file.exists()).then_some(file)
    }

    /// Leader-election flags plus the webhook on `port`.
    pub fn replica_args(port: u16) -> Vec<String> {
        webhook_args(port, &LEADER_ARGS)
    }

    /// Applies `config/webhook/mutating_webhook.yaml` as shipped, except that the API server
    /// reaches the webhook by URL on 127.0.0.1:`port` (no Service routing here), without a
    /// caBundle: the operator fills that in.
    pub async fn install_webhook_configuration(&self, port: u16) {
        let text = std::fs::read_to_string(
            crate::paths::repo().join("config/webhook/mutating_webhook.yaml"),
        )
        .unwrap();
        let mut config: MutatingWebhookConfiguration =
            serde_yaml_ng::from_str(&text).expect("shipped webhook configuration");
        for hook in config.webhooks.iter_mut().flatten() {
            hook.client_config = WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}/mutate-pods")),
                ..Default::default()
            };
        }
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let _ = api.delete(CONFIGURATION, &DeleteParams::default()).await;
        api.create(&PostParams::default(), &config)
            .await
            .expect("create MutatingWebhookConfiguration");
    }

    /// Waits until the API server reaches the webhook over TLS (a dry-run create is answered
    /// by it, injected or refused, instead of failing to call it).
    pub async fn wait_webhook_serving(&self) {
        eventually(
            "the API server calls the webhook",
            Duration::from_secs(60),
            || async {
                match self.dry_run_pod("probe", "nobody-selects-this").await {
                    Ok(_) => Some(()),
                    Err(e) if e.contains("denied the request") => Some(()),
                    Err(_) => None,
                }
            },
        )
        .await;
    }

    /// An opted-in pod labelled `app=<app>` (generateName `<prefix>-`), as the API server
    /// would store it, without storing it.
    pub async fn dry_run_pod(&self, prefix: &str, app: &str) -> Result<Pod, String> {
        self.dry_run(&agent_pod(prefix, app, true)).await
    }

    /// Waits until the webhook injects a pod selected by `binding` (whose selector is
    /// `app=<binding>`): it has seen the binding.
    pub async fn until_webhook_knows(&self, binding: &str) {
        eventually(
            &format!("the webhook knows binding {binding}"),
            Duration::from_secs(30),
            || async {
                self.dry_run_pod("probe", binding)
                    .await
                    .ok()
                    .filter(|p| is_injected(p, binding))
            },
        )
        .await;
    }

    /// `pod` as the API server (admission included) would store it, without storing it.
    pub async fn dry_run(&self, pod: &Pod) -> Result<Pod, String> {
        self.pods()
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                pod,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Creates an agent pod (generateName `<prefix>-`) labelled `app=<app>`, opted in or not.
    pub async fn create_agent_pod(
        &self,
        prefix: &str,
        app: &str,
        opt_in: bool,
    ) -> Result<Pod, String> {
        self.pods()
            .create(&PostParams::default(), &agent_pod(prefix, app, opt_in))
            .await
            .map_err(|e| e.to_string())
    }

    /// Runs the pod's injected init container `container` exactly as stored (its args and env),
    /// except that `--token-file` points at a local file holding the Secret's `token` and
    /// `--out` and the receipt go to local files. Remembers the unwrapped token.
    pub async fn run_injected(&self, pod: &str, container: &str, token: &str) -> AgentRun {
        self.run_init(pod, container, "--token-file", token).await
    }

    /// Runs the pod's injected init container of a request-delivery binding exactly as stored,
    /// except that `--identity-token` points at a local file holding `identity` (what the
    /// kubelet would project) and `--out` and the receipt go to local files.
    pub async fn run_injected_asking(
        &self,
        pod: &str,
        container: &str,
        identity: &str,
    ) -> AgentRun {
        self.run_init(pod, container, "--identity-token", identity)
            .await
    }

    /// Runs init container `container` of `pod` as stored, its file flag `flag` pointing at a
    /// local file holding `content`.
    async fn run_init(&self, pod: &str, container: &str, flag: &str, content: &str) -> AgentRun {
        let stored = self.pods().get(pod).await.expect("get pod");
        let init: Container = stored
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == container).cloned())
            .unwrap_or_else(|| panic!("{pod} has no init container {container}"));
        let dir = self.dir.join(format!("agent-{pod}"));
        std::fs::create_dir_all(&dir).unwrap();
        crate::process::write_private(&dir.join("wrap"), content);
        let mut args = vec![];
        for a in init.args.clone().unwrap_or_default() {
            if a.starts_with(&format!("{flag}=")) {
                args.push(format!("{flag}={}", dir.join("wrap").display()));
            } else if a.starts_with("--out=") {
                args.push(format!("--out={}", dir.join("token").display()));
            } else {
                args.push(a);
            }
        }
        args.push(format!("--receipt-file={}", dir.join("receipt").display()));
        let env: Vec<(String, String)> = init
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        let out = Command::new(crate::paths::cubbyhole_bin())
            .args(&args)
            .env_remove("VAULT_ADDR")
            .envs(env)
            .output()
            .expect("run the injected init container");
        let receipt = self.agent_finished(&dir, pod, &out);
        AgentRun {
            code: out.status.code().unwrap_or(-1),
            receipt,
            args,
        }
    }

    /// The identity token the kubelet would project into `pod` (of the test's namespace): a
    /// TokenRequest for the pod's service account, bound to the pod, for `audience`, valid 10
    /// minutes.
    pub async fn pod_identity_token(&self, pod: &str, audience: &str) -> String {
        self.token_for_pod_in(&self.ns, pod, audience).await
    }

    /// [`Env::pod_identity_token`] for a pod of namespace `ns`.
    pub async fn token_for_pod_in(&self, ns: &str, pod: &str, audience: &str) -> String {
        let stored = Api::<Pod>::namespaced(self.client.clone(), ns)
            .get(pod)
            .await
            .expect("get pod");
        let bound = BoundObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            uid: stored.uid(),
        };
        let account = stored
            .spec
            .and_then(|s| s.service_account_name)
            .unwrap_or_else(|| "default".into());
        self.token_request(ns, &account, audience, Some(bound))
            .await
    }

    /// A token of service account `account` for `audience`, bound to nothing.
    pub async fn unbound_token(&self, account: &str, audience: &str) -> String {
        self.token_request(&self.ns, account, audience, None).await
    }

    async fn token_request(
        &self,
        ns: &str,
        account: &str,
        audience: &str,
        bound: Option<BoundObjectReference>,
    ) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.into()],
                expiration_seconds: Some(600),
                bound_object_ref: bound,
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("token")
            .token
    }

    /// Plays kubelet: init container `container` of `pod` was restarted `restarts` times (a
    /// new run of the pod), and runs.
    pub async fn report_restarts_of(&self, pod: &str, container: &str, restarts: u32) {
        report_restarts(&self.pods(), pod, container, restarts).await;
    }

    /// Plays kubelet: init container `container` of `pod` terminated with `receipt`.
    pub async fn report_receipt_of(&self, pod: &str, container: &str, receipt: &Receipt) {
        let patch = json!({"status": {"phase": "Running", "initContainerStatuses": [{
            "name": container, "image": "cubbyhole", "imageID": "", "ready": true,
            "restartCount": 0,
            "state": {"terminated": {
                "exitCode": 0,
                "finishedAt": k8s_openapi::jiff::Timestamp::now().to_string(),
                "message": receipt.to_line(),
            }},
        }]}});
        self.pods()
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch pod status");
    }

    /// Sum of `cubbyhole_admission_requests_total` over results, from `op`'s /metrics.
    pub fn admission_requests(op: &Operator) -> u64 {
        Self::admission_requests_by(op, "")
    }

    /// `cubbyhole_admission_requests_total{result="<result>"}` (all results when empty).
    pub fn admission_requests_by(op: &Operator, result: &str) -> u64 {
        let (_, body) = op.get("/metrics").expect("metrics");
        let label = format!("result=\"{result}\"");
        body.lines()
            .filter(|l| l.starts_with("cubbyhole_admission_requests_total"))
            .filter(|l| result.is_empty() || l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// `kubectl auth can-i VERB RESOURCE` as the operator's service account.
    pub fn operator_can(&self, verb: &str, resource: &str) -> bool {
        let out = Command::new("kubectl")
            .args(["auth", "can-i", verb, resource])
            .arg(format!(
                "--as=system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
            ))
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .output()
            .expect("kubectl auth can-i");
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }

    /// Pods of the test namespace whose labels include `key=value`.
    pub async fn pods_labelled(&self, key: &str, value: &str) -> Vec<Pod> {
        self.pods()
            .list(&kube::api::ListParams::default().labels(&format!("{key}={value}")))
            .await
            .expect("list pods")
            .items
    }
}

/// An agent pod template's content: app label, opt-in label, a scheduling gate (no kubelet
/// here; keeps a real cluster's away too) and one container.
pub fn agent_pod(prefix: &str, app: &str, opt_in: bool) -> Pod {
    let mut labels = json!({"app": app});
    if opt_in {
        labels[INJECT] = json!("true");
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": format!("{prefix}-"), "labels": labels},
        "spec": {
            "schedulingGates": [{"name": "cubbyhole.dev/e2e-no-kubelet"}],
            "containers": [{"name": "agent", "image": "agent"}],
        }
    }))
    .unwrap()
}

/// Plays kubelet through `pods`: init container `container` of `pod` was restarted `restarts`
/// times (a new run of the pod), and runs.
pub async fn report_restarts(pods: &Api<Pod>, pod: &str, container: &str, restarts: u32) {
    let patch = json!({"status": {"phase": "Running", "initContainerStatuses": [{
        "name": container, "image": "cubbyhole", "imageID": "", "ready": false,
        "restartCount": restarts,
        "state": {"running": {"startedAt": k8s_openapi::jiff::Timestamp::now().to_string()}},
    }]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch pod status");
}

/// The request endpoint's CA the webhook gave the pod's init container
/// (`CUBBYHOLE_REQUEST_CA`). Panics when it has none.
pub fn injected_ca(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.name == cubbyhole::core::pod::UNWRAP_CONTAINER)
        })
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == "CUBBYHOLE_REQUEST_CA"))
        .and_then(|e| e.value.clone())
        .expect("the init container carries the endpoint's CA")
}

/// True when `pod` carries everything the webhook injects for `binding` (either delivery).
pub fn is_injected(pod: &Pod, binding: &str) -> bool {
    let ann = pod.annotations();
    let Some(secret) = ann.get("cubbyhole.dev/secret-name") else {
        return false;
    };
    let Some(spec) = &pod.spec else {
        return false;
    };
    ann.get("cubbyhole.dev/injected").map(String::as_str) == Some(binding)
        && spec.volumes.iter().flatten().any(|v| {
            // The wrap's Secret, or (request delivery) the projected identity token.
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret.as_str())
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources.iter().flatten().any(|s| {
                        s.service_account_token
                            .as_ref()
                            .is_some_and(|t| t.audience.as_deref() == Some("cubbyhole"))
                    })
                })
        })
        && spec
            .init_containers
            .iter()
            .flatten()
            .next()
            .and_then(|c| c.args.as_ref())
            .is_some_and(|a| a.first().map(String::as_str) == Some("unwrap"))
        && spec.containers.iter().all(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "cubbyhole-token" && m.read_only == Some(true))
        })
}

/// p-th percentile (0..=100) of `values`, nearest rank.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}
