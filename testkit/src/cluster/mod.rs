//! End-to-end harness: a private local control plane (e2e/controlplane), a private OpenBao, the
//! CRD, a namespace, and the operator binary as a separate process. The test plays kubelet by
//! patching pod status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cubbyhole::agent::receipt::Receipt;
use cubbyhole::crd::{AgentSecretBinding, AgentSecretBindingStatus};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;

use cubbyhole::config::{AuthConfig, KubernetesAuth, OperatorConfig, RoleRule, VaultConfig};

use crate::openbao::Bao;
pub use crate::process::free_port;

mod forge;
mod identity;
mod leakscan;
pub mod node;
mod transcript;
pub mod webhook;
pub use identity::{OPERATOR_SA, OperatorIdentity};
use transcript::Transcript;

/// Namespace the e2e tests work in on a private control plane.
pub const NS: &str = "agents";

/// Set (with `KUBECONFIG`, `VAULT_ADDR` and an admin `VAULT_TOKEN`) to run the suite against an
/// existing cluster and Vault instead of private ones. Run it with `-j 1`: each test runs its
/// own operator, which watches every namespace.
pub const EXTERNAL_ENV: &str = "CUBBYHOLE_E2E_EXTERNAL";

/// A running local control plane, stopped on drop (or an external cluster, left alone).
pub struct Cluster {
    /// State directory (kubeconfig, logs).
    pub dir: PathBuf,
    /// Kubeconfig path.
    pub kubeconfig: PathBuf,
    /// An existing cluster that this harness did not start.
    pub external: bool,
    /// Set once [`Cluster::start_node`] started a node: its logs are then expected.
    node: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Starts etcd + the API server with `e2e/controlplane/up.sh`, with these `--feature-gates`
    /// (e.g. `WatchList=false`) if any.
    pub fn start_with(dir: &Path, feature_gates: Option<&str>) -> Cluster {
        // up.sh picks free ports, then binds them: another test may take one in between. A
        // first start that lost that race is wiped (nothing ran on it) and tried again.
        let fresh = !dir.join("ports.env").exists();
        let mut attempts = 0;
        let out = loop {
            attempts += 1;
            let mut up = Command::new(crate::paths::repo().join("e2e/controlplane/up.sh"));
            if let Some(gates) = feature_gates {
                up.env("CUBBYHOLE_APISERVER_FEATURE_GATES", gates);
            }
            let out = up.arg(dir).output().expect("run up.sh");
            let lost_a_port =
                String::from_utf8_lossy(&out.stderr).contains("address already in use");
            if out.status.success() || !fresh || !lost_a_port || attempts == 3 {
                break out;
            }
            eprintln!("up.sh lost a port to another process; starting again on new ports");
            let down = crate::paths::repo().join("e2e/controlplane/down.sh");
            let _ = Command::new(down)
                .env("CUBBYHOLE_WIPE", "1")
                .arg(dir)
                .output();
        };
        assert!(
            out.status.success(),
            "up.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            dir: dir.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
            external: false,
            node: false.into(),
        }
    }

    /// An existing cluster reached through `kubeconfig`.
    pub fn external(dir: &Path, kubeconfig: PathBuf) -> Cluster {
        Cluster {
            dir: dir.to_path_buf(),
            kubeconfig,
            external: true,
            node: false.into(),
        }
    }

    /// The API server's URL, from the kubeconfig.
    pub fn api_url(&self) -> String {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        kc.clusters
            .into_iter()
            .find_map(|c| c.cluster?.server)
            .expect("a server URL in the kubeconfig")
    }

    /// The private control plane's CA certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs/ca.crt")
    }

    /// A client for this cluster.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// Freezes the API server (SIGSTOP) and waits until the kernel reports it stopped.
    pub fn pause(&self) {
        let pid = std::fs::read_to_string(self.dir.join("apiserver.pid")).expect("apiserver.pid");
        signal(&self.dir.join("apiserver.pid"), "-STOP");
        let stat = format!("/proc/{}/stat", pid.trim());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            // "pid (comm) S ...": the state follows the last ')'.
            if state
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('T'))
                == Some(true)
            {
                return;
            }
            assert!(Instant::now() < deadline, "the API server did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Thaws it.
    pub fn resume(&self) {
        signal(&self.dir.join("apiserver.pid"), "-CONT");
    }
}

fn signal(pidfile: &Path, sig: &str) {
    let Ok(pid) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let _ = Command::new("kill").args([sig, pid.trim()]).status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.external {
            return;
        }
        self.resume();
        let down = crate::paths::repo().join("e2e/controlplane/down.sh");
        let _ = Command::new(down)
            .arg(&self.dir)
            .env("CUBBYHOLE_WIPE", "1")
            .stdout(Stdio::null())
            .output();
    }
}

/// The operator as a child process, its output in a log file.
pub struct Operator {
    child: Child,
    /// Log file (stdout + stderr).
    pub log: PathBuf,
    /// Port of /metrics, /healthz, /readyz.
    pub port: u16,
}

impl Operator {
    /// Starts `cubbyhole operator` and waits for /readyz.
    pub fn start(kubeconfig: &Path, config: &Path, log: &Path) -> Operator {
        Self::start_with(kubeconfig, config, log, &[], &[])
    }

    /// Same, with extra environment variables and arguments.
    pub fn start_with(
        kubeconfig: &Path,
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Operator {
        // A free port can be taken by someone else before the operator binds it: then the
        // operator exits at once and is started again on another port.
        for attempt in 1.. {
            let port = free_port();
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("operator log");
            let child = Command::new(crate::paths::cubbyhole_bin())
                .args(["operator", "--config"])
                .arg(config)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .arg("--json-logs")
                .env(
                    "RUST_LOG",
                    "trace,h2=info,hyper=info,hyper_util=info,rustls=info,tower=info,mio=info,want=info",
                )
                .envs(env.iter().copied())
                .stdout(out.try_clone().expect("log"))
                .stderr(out)
                .spawn()
                .expect("start operator");
            let mut op = Operator {
                child,
                log: log.to_path_buf(),
                port,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while http_get(port, "/readyz").map(|(c, _)| c) != Some(200) {
                if op.child.try_wait().expect("wait").is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "operator not ready:\n{}",
                    op.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            if op.child.try_wait().expect("wait").is_none() {
                return op;
            }
            let port_taken = op.log_text().contains("in use");
            if port_taken && attempt < 3 {
                continue;
            }
            // An operator armed with a failpoint may reach it before it is ready.
            assert!(
                env.iter().any(|(k, _)| *k == "CUBBYHOLE_FAILPOINT"),
                "operator exited before it was ready:\n{}",
                op.log_text()
            );
            return op;
        }
        unreachable!("the loop returns or panics")
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the operator printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs a path of the operator's HTTP endpoint.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// Waits until the process aborted at `failpoint`: it exited by SIGABRT and its log says
    /// it reached that failpoint (an exit for any other reason fails the test).
    pub fn wait_abort_at(mut self, failpoint: &str, timeout: Duration) {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "operator did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            status.signal(),
            Some(6),
            "the operator exited by {status}, not by the failpoint's abort"
        );
        let line = format!("failpoint {failpoint}: aborting");
        assert!(
            self.log_text().contains(&line),
            "the operator's log does not show {line:?}"
        );
    }

    /// The exit status if the process has exited on its own by now (does not wait).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// SIGKILL, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "operator ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Namespace of the operator's service account and Lease (`config/rbac/`).
pub const OPERATOR_NS: &str = "cubbyhole-system";

/// Operator flags for leader-election tests: a 6 s lease in the operator's namespace.
pub const LEADER_ARGS: [&str; 5] = [
    "--leader-election",
    "--lease-namespace",
    OPERATOR_NS,
    "--lease-duration",
    "6s",
];

/// Options for an e2e environment.
pub struct Options {
    /// Operator lookup period.
    pub lookup_period: Duration,
    /// Roles allowed in [`NS`].
    pub allowed_roles: Vec<&'static str>,
    /// The API server's `--feature-gates` (a private control plane only).
    pub apiserver_feature_gates: Option<&'static str>,
    /// Operator `tokenGrace` and `renewalWindow` (`None`: the operator's defaults).
    pub token_life: Option<(Duration, Duration)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lookup_period: Duration::from_secs(1),
            allowed_roles: vec![crate::openbao::ROLE],
            apiserver_feature_gates: None,
            token_life: None,
        }
    }
}

/// Everything one e2e test needs. Field order is drop order: the operator stops first, then
/// the control plane (down.sh), then OpenBao (which removes the scratch directory).
pub struct Env {
    /// The operator (None while stopped).
    pub operator: Option<Operator>,
    /// The control plane.
    pub cluster: Cluster,
    /// Kubernetes client (admin).
    pub client: Client,
    /// The operator's service account identity.
    pub identity: OperatorIdentity,
    /// Operator config file.
    pub config: PathBuf,
    /// Scratch dir.
    pub dir: PathBuf,
    /// Every token the test saw (checked against all output at the end).
    pub seen_tokens: Mutex<Vec<String>>,
    /// What the cluster showed over time (for the leak scan).
    transcript: Transcript,
    /// (port, process id) of every other operator process started (replicas, webhook
    /// operators): the `/metrics` of each one still running are scanned too.
    replicas: Mutex<Vec<(u16, u32)>>,
    /// Names of the agent logs written (each must be in the leak scan, and not empty).
    agent_logs: Mutex<std::collections::BTreeSet<String>>,
    /// A random string made for this Env, planted in every source the leak scan reads: the
    /// scan must find it there, or it reads nothing of that source.
    canary: String,
    /// The test's namespace.
    pub ns: String,
    /// Running against an existing cluster and Vault (see [`EXTERNAL_ENV`]).
    pub external: bool,
    /// OpenBao.
    pub bao: Bao,
}

impl Env {
    /// Starts the control plane, OpenBao (with an audit log), installs the CRD, creates the
    /// namespace and starts the operator.
    pub async fn start(options: Options) -> Env {
        let external = std::env::var_os(EXTERNAL_ENV).is_some();
        let bao = if external {
            let var =
                |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{EXTERNAL_ENV} needs {k}"));
            Bao::external(&var("VAULT_ADDR"), &var("VAULT_TOKEN"))
        } else {
            Bao::start()
        };
        let dir = bao.dir.join("e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let (cluster, ns) = if external {
            let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG");
            let ns = format!(
                "e2e-{}",
                &bao.dir.file_name().unwrap().to_string_lossy()[4..]
            );
            (Cluster::external(&dir, kubeconfig.into()), ns)
        } else {
            let gates = options.apiserver_feature_gates;
            (
                Cluster::start_with(&dir.join("cluster"), gates),
                NS.to_string(),
            )
        };
        let client = cluster.client().await;
        install_crd(&client).await;
        create_namespace(&client, &ns).await;
        let identity = OperatorIdentity::provision(&cluster, &dir);
        let auth = if external {
            AuthConfig {
                kubernetes: None,
                token_file: Some(bao.operator_token_file.clone()),
            }
        } else {
            // The operator logs in to OpenBao with its service account token, which OpenBao
            // checks with a TokenReview against this API server.
            let ca = cluster.ca_file();
            let out = bao.setup_with(&[
                ("KUBERNETES_HOST", &cluster.api_url()),
                ("KUBERNETES_CA_CERT", ca.to_str().unwrap()),
                (
                    "TOKEN_REVIEWER_JWT_FILE",
                    identity.api_jwt.to_str().unwrap(),
                ),
            ]);
            assert!(
                out.status.success(),
                "setup.sh (kubernetes auth) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            AuthConfig {
                kubernetes: Some(KubernetesAuth {
                    role: "cubbyhole-operator".into(),
                    mount: "kubernetes".into(),
                    jwt_path: identity.jwt.clone(),
                }),
                token_file: None,
            }
        };
        let defaults = OperatorConfig::with_vault(VaultConfig {
            address: String::new(),
            ca_cert: None,
            namespace: None,
            auth: auth.clone(),
            allow_plain_http: false,
        });
        let operator_config = OperatorConfig {
            allowed_roles: vec![RoleRule {
                namespaces: vec![ns.clone(), format!("{ns}-*")],
                roles: options
                    .allowed_roles
                    .iter()
                    .map(|r| r.to_string())
                    .collect(),
            }],
            lookup_period: options.lookup_period,
            sweep_period: Duration::from_secs(3),
            token_grace: options.token_life.map_or(defaults.token_grace, |(g, _)| g),
            renewal_window: options
                .token_life
                .map_or(defaults.renewal_window, |(_, w)| w),
            // The suite checks the routine Events too (off by default in the shipped config).
            routine_events: true,
            ..OperatorConfig::with_vault(VaultConfig {
                address: bao.addr.clone(),
                ca_cert: None,
                namespace: None,
                auth,
                allow_plain_http: false,
            })
        };
        let config = dir.join("operator.yaml");
        std::fs::write(
            &config,
            serde_yaml_ng::to_string(&operator_config).expect("config to YAML"),
        )
        .unwrap();
        let transcript = Transcript::start(&cluster.kubeconfig, &dir);
        let operator = Operator::start(&identity.kubeconfig, &config, &dir.join("operator.log"));
        Env {
            operator: Some(operator),
            identity,
            bao,
            client,
            config,
            dir,
            seen_tokens: Mutex::new(vec![]),
            transcript,
            replicas: Mutex::new(vec![]),
            agent_logs: Mutex::default(),
            canary: format!("canary-{}", crate::process::random_hex(8)),
            ns,
            external,
            cluster,
        }
    }

    /// True (and says so) when running against an existing cluster, for tests that need what
    /// only private servers offer (OpenBao's audit log, pausing a server, a free Lease).
    pub fn skip_external(&self, needs: &str) -> bool {
        if self.external {
            println!("skipped on an existing cluster: needs {needs}");
        }
        self.external
    }

    /// The running operator.
    pub fn op(&self) -> &Operator {
        self.operator.as_ref().expect("operator running")
    }

    /// A series' value on the operator's /metrics (0 when absent), e.g.
    /// `cubbyhole_token_renewals_total{result="refused"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let metrics = self
            .op()
            .get("/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let prefix = format!("{series} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Starts the operator again (after a kill or stop).
    pub fn restart_operator(&mut self) {
        self.operator = Some(Operator::start(
            &self.identity.kubeconfig,
            &self.config,
            &self.dir.join("operator.log"),
        ));
    }

    /// Starts another replica with leader election on (as the first one, when `leader` is set).
    pub fn start_replica(&self, n: u32) -> Operator {
        let replica = Operator::start_with(
            &self.identity.kubeconfig,
            &self.config,
            &self.dir.join(format!("operator-{n}.log")),
            &[],
            &LEADER_ARGS,
        );
        self.track(&replica);
        replica
    }

    /// Starts another replica with leader election on, armed with `failpoint`.
    pub fn start_replica_with_failpoint(&self, n: u32, failpoint: &str) -> Operator {
        let replica = Operator::start_with(
            &self.identity.kubeconfig,
            &self.config,
            &self.dir.join(format!("operator-{n}.log")),
            &[("CUBBYHOLE_FAILPOINT", failpoint)],
            &LEADER_ARGS,
        );
        self.track(&replica);
        replica
    }

    /// Remembers another operator process, whose `/metrics` the leak scan reads while it runs.
    fn track(&self, operator: &Operator) {
        let mut replicas = self.replicas.lock().unwrap();
        replicas.push((operator.port, operator.pid()));
    }

    /// Replaces the operator with one that aborts at `failpoint` (see `src/failpoint.rs`).
    pub fn start_operator_with_failpoint(&mut self, failpoint: &str) -> Operator {
        if let Some(op) = self.operator.take() {
            op.kill();
        }
        Operator::start_with(
            &self.identity.kubeconfig,
            &self.config,
            &self.dir.join("operator.log"),
            &[("CUBBYHOLE_FAILPOINT", failpoint)],
            &[],
        )
    }

    /// Typed APIs.
    pub fn bindings(&self) -> Api<AgentSecretBinding> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    /// Pods in [`NS`].
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    /// Secrets in [`NS`].
    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies a binding from JSON `spec`.
    pub async fn apply_binding(&self, name: &str, spec: serde_json::Value) {
        let b = json!({
            "apiVersion": "cubbyhole.dev/v1alpha1",
            "kind": "AgentSecretBinding",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec,
        });
        self.bindings()
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&b))
            .await
            .expect("apply binding");
    }

    /// Deletes binding `name` past its finalizers (stripped first), as someone would while the
    /// operator is down: nothing cleans up after it but the sweep.
    pub async fn force_delete_binding(&self, name: &str) {
        let bindings = self.bindings();
        bindings
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
        bindings
            .delete(name, &kube::api::DeleteParams::default())
            .await
            .unwrap();
    }

    /// Deletes binding `name` and panics unless it is gone within 10 s: no finalizer of an
    /// operator holds it (e.g. after `cubbyhole uninstall`).
    pub async fn delete_binding_at_once(&self, name: &str) {
        let bindings = self.bindings();
        assert!(
            bindings.get(name).await.unwrap().finalizers().is_empty(),
            "binding {name} still has finalizers"
        );
        bindings
            .delete(name, &kube::api::DeleteParams::default())
            .await
            .unwrap();
        eventually(
            "the binding is deleted",
            Duration::from_secs(10),
            || async { bindings.get_opt(name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }

    /// The usual binding spec selecting `app=<app>`.
    pub fn spec(app: &str, wrap_ttl: &str) -> serde_json::Value {
        json!({
            "podSelector": {"matchLabels": {"app": app}},
            "vault": {"tokenRole": crate::openbao::ROLE, "wrapTTL": wrap_ttl, "tokenTTL": "1h"},
            "agentContainer": "unwrap",
        })
    }

    /// A binding spec selecting `app=<app>` that delivers on request (`delivery: Request`, no
    /// `agentContainer`).
    pub fn request_spec(app: &str, wrap_ttl: &str) -> serde_json::Value {
        let mut spec = Self::spec(app, wrap_ttl);
        spec.as_object_mut().unwrap().remove("agentContainer");
        spec["delivery"] = json!("Request");
        spec
    }

    /// Creates a pod labelled `app=<app>`.
    pub async fn create_pod(&self, name: &str, app: &str) -> Pod {
        let pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns, "labels": {"app": app}},
            "spec": {
                // Keeps a real cluster's scheduler and kubelet away: the test plays kubelet.
                "schedulingGates": [{"name": "cubbyhole.dev/e2e-no-kubelet"}],
                "initContainers": [{"name": "unwrap", "image": "cubbyhole"}],
                "containers": [{"name": "agent", "image": "agent"}],
            }
        }))
        .unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    /// Deletes a pod (there is no kubelet: it goes at once).
    pub async fn delete_pod(&self, name: &str) {
        self.pods()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete pod");
    }

    /// Plays kubelet: the unwrap init container terminated with `receipt`, restart count `restarts`.
    pub async fn report_receipt(&self, pod: &str, receipt: Option<&Receipt>, restarts: u32) {
        let terminated = json!({
            "exitCode": 0,
            "finishedAt": k8s_openapi::jiff::Timestamp::now().to_string(),
            "message": receipt.map(|r| r.to_line()).unwrap_or_default(),
        });
        let patch = json!({"status": {"phase": "Running", "initContainerStatuses": [{
            "name": "unwrap", "image": "cubbyhole", "imageID": "", "ready": true,
            "restartCount": restarts,
            "state": {"terminated": terminated},
        }]}});
        self.pods()
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch pod status");
    }

    /// Sets a pod's phase (e.g. Succeeded).
    pub async fn set_pod_phase(&self, pod: &str, phase: &str) {
        let patch = json!({"status": {"phase": phase}});
        self.pods()
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch pod status");
    }

    /// The binding's status.
    pub async fn status(&self, binding: &str) -> AgentSecretBindingStatus {
        self.bindings()
            .get(binding)
            .await
            .expect("get binding")
            .status
            .unwrap_or_default()
    }

    /// Ready condition (status, reason, message).
    pub async fn ready(&self, binding: &str) -> (String, String, String) {
        condition(&self.status(binding).await, "Ready")
    }

    /// Secrets managed for `binding`.
    pub async fn records(&self, binding: &str) -> Vec<Secret> {
        self.secrets()
            .list(&ListParams::default().labels(&format!("cubbyhole.dev/binding={binding}")))
            .await
            .expect("list secrets")
            .items
    }

    /// The wrapping token in a Secret, remembered for the leak scan.
    pub fn token_of(&self, secret: &Secret) -> Option<String> {
        let bytes = secret.data.as_ref()?.get("token")?;
        let token = String::from_utf8(bytes.0.clone()).ok()?;
        self.remember(&token);
        Some(token)
    }

    /// Remembers a secret value for the leak scan.
    pub fn remember(&self, token: &str) {
        self.seen_tokens.lock().unwrap().push(token.to_string());
    }

    /// Runs the real `cubbyhole unwrap` as the pod's init container would, with the token from
    /// the pod's Secret; returns the receipt and exit code; remembers the unwrapped token.
    pub fn run_agent(&self, token: &str, name: &str) -> (Option<Receipt>, i32) {
        let dir = self.dir.join(format!("agent-{name}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        crate::process::write_private(&dir.join("wrap"), token);
        let out = Command::new(crate::paths::cubbyhole_bin())
            .args(["unwrap", "--vault-addr", &self.bao.addr, "--retries", "1"])
            .arg("--token-file")
            .arg(dir.join("wrap"))
            .arg("--out")
            .arg(dir.join("token"))
            .arg("--receipt-file")
            .arg(dir.join("receipt"))
            .args(["--expect-path", crate::openbao::ROLE_PATH])
            .output()
            .expect("run agent");
        let receipt = self.agent_finished(&dir, name, &out);
        (receipt, out.status.code().unwrap_or(-1))
    }

    /// After an agent ran in `dir`: remembers the token it stored (for the leak scan), adds
    /// its output to `agent-<name>.log` (a second run of the same name keeps the first's) and
    /// reads its receipt.
    pub fn agent_finished(
        &self,
        dir: &Path,
        name: &str,
        out: &std::process::Output,
    ) -> Option<Receipt> {
        if let Ok(t) = std::fs::read_to_string(dir.join("token")) {
            self.remember(t.trim());
        }
        let mut log = String::from_utf8_lossy(&out.stdout).to_string();
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        let file = format!("agent-{name}.log");
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(&file))
            .expect("agent log");
        std::io::Write::write_all(&mut out, log.as_bytes()).unwrap();
        self.agent_logs.lock().unwrap().insert(file);
        std::fs::read_to_string(dir.join("receipt"))
            .ok()
            .and_then(|r| Receipt::parse(&r))
    }

    /// Accessors of every wrap Vault created (from the audit log) and whether each is alive.
    pub async fn minted_wraps(&self) -> Vec<(String, bool)> {
        let root = self.bao.root_client();
        let mut out = vec![];
        for (acc, _) in self.bao.minted_accessors() {
            let live = root.accessor_is_live(&acc).await.expect("lookup accessor");
            out.push((acc, live));
        }
        out
    }

    /// Every wrap Vault created (from the raw audit log): the pod it was minted for, its
    /// accessor, and whether it is still live.
    pub async fn minted_wraps_by_pod(&self) -> Vec<(String, String, bool)> {
        let root = self.bao.root_client();
        let mut out = vec![];
        for e in self.bao.audit_entries() {
            let path = e["request"]["path"].as_str().unwrap_or("");
            if e["type"] != "response" || !path.starts_with("auth/token/create/") {
                continue;
            }
            let (Some(pod), Some(acc)) = (
                e["request"]["data"]["meta"]["pod"].as_str(),
                e["response"]["wrap_info"]["accessor"].as_str(),
            ) else {
                continue;
            };
            let live = root.accessor_is_live(acc).await.expect("lookup accessor");
            out.push((pod.to_string(), acc.to_string(), live));
        }
        out
    }

    /// Names of the per-pod records that carried `annotation` at any time during the test
    /// (from the watch of Secret metadata), e.g. to prove a mechanism ran.
    pub fn records_that_ever_had(&self, annotation: &str) -> std::collections::BTreeSet<String> {
        self.transcript
            .secrets()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|s| !s["metadata"]["annotations"][annotation].is_null())
            .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Token creates per pod (the `pod` of the mint's metadata) in the audit log, so far.
    pub fn creates_by_pod(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for e in self.bao.audit_entries() {
            let path = e["request"]["path"].as_str().unwrap_or("");
            if e["type"] != "request" || !path.starts_with("auth/token/create/") {
                continue;
            }
            let pod = e["request"]["data"]["meta"]["pod"].as_str().unwrap_or("");
            *out.entry(pod.to_string()).or_insert(0) += 1;
        }
        out
    }

    /// Number of requests to `path_prefix` in the audit log.
    pub fn audit_requests(&self, path_prefix: &str) -> usize {
        let audit = std::fs::read_to_string(self.bao.dir.join("audit.log")).unwrap_or_default();
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "request")
            .filter(|v| {
                v["request"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(path_prefix))
            })
            .count()
    }

    /// Events (events.k8s.io) with `reason`.
    pub async fn events_with_reason(
        &self,
        reason: &str,
    ) -> Vec<k8s_openapi::api::events::v1::Event> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(op) = self.operator.take() {
            op.kill();
        }
        if !self.external {
            return;
        }
        // Leave the existing cluster as found: release our finalizers, drop the namespace.
        let kubectl = |args: &[&str]| {
            let _ = Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", &self.cluster.kubeconfig)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        let unfinalize = r#"{"metadata":{"finalizers":null}}"#;
        for kind in ["agentsecretbindings.cubbyhole.dev", "secrets"] {
            kubectl(&[
                "patch",
                kind,
                "--all",
                "-n",
                &self.ns,
                "--type=merge",
                "-p",
                unfinalize,
            ]);
        }
        kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
    }
}

/// (status, reason, message) of a condition.
pub fn condition(status: &AgentSecretBindingStatus, type_: &str) -> (String, String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Waits until `pod` has an Issued record of `binding` and returns (Secret, wrapping token),
/// remembering the token for the leak scan.
pub async fn issued(env: &Env, binding: &str, pod: &str) -> (Secret, String) {
    eventually(
        &format!("wrap for {pod}"),
        Duration::from_secs(30),
        || async {
            let s = env
                .records(binding)
                .await
                .into_iter()
                .find(|s| ann(s).get("pod").map(String::as_str) == Some(pod))?;
            (ann(&s).get("phase")? == "Issued").then_some(())?;
            let token = env.token_of(&s)?;
            Some((s, token))
        },
    )
    .await
}

/// Polls `check` every 200 ms for the whole of `window` and fails as soon as it is false: for
/// "nothing happens" assertions, which no single look can prove.
pub async fn holds_for<F, Fut>(what: &str, window: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(check().await, "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` every 200 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates namespace `name` (one left by an earlier run is fine) and waits until pods may be
/// created there (its `default` service account exists).
pub async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .expect("a namespace");
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
    wait_for_default_service_account(client, name).await;
}

/// Waits for the service account controller to create `default` in `ns`: until then the
/// ServiceAccount admission plugin refuses pods there, as on every real cluster.
pub async fn wait_for_default_service_account(client: &Client, ns: &str) {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), ns);
    eventually(
        "default service account",
        Duration::from_secs(30),
        || async { accounts.get_opt("default").await.ok()?.map(|_| ()) },
    )
    .await;
}

async fn install_crd(client: &Client) {
    let text =
        std::fs::read_to_string(crate::paths::repo().join("crds/agentsecretbinding.yaml")).unwrap();
    let doc = text.split("---").nth(1).expect("CRD document");
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(doc).expect("CRD yaml");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &crd.name_any(),
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("install CRD");
    eventually("CRD established", Duration::from_secs(20), || async {
        let c = api.get(&crd.name_any()).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    // The first write to a new CRD may be delayed; wait until listing works.
    let bindings: Api<AgentSecretBinding> = Api::namespaced(client.clone(), "default");
    eventually("bindings listable", Duration::from_secs(20), || async {
        bindings.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;
}

fn rand_suffix() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string()
}

/// Labels of a Secret's annotations by short key (`phase`, `wrap-accessor`, ...).
pub fn ann(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .annotations()
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("cubbyhole.dev/")
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect()
}
