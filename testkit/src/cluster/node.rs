//! A node that really runs pods: `e2e/controlplane/node-up.sh` starts containerd, runc, the
//! scheduler and a kubelet beside the control plane, with images built from this checkout.
//! Pods here are run by the kubelet: init containers, Secret volumes, restarts and termination
//! messages are its own.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use super::webhook::{INJECT, webhook_port};
use super::{Cluster, Env, eventually};

/// The node's name.
pub const NODE: &str = "cubbyhole-node";
/// The cubbyhole image (this build's binary), imported by node-up.sh.
pub const CUBBYHOLE_IMAGE: &str = "127.0.0.1:5000/cubbyhole:dev";
/// A busybox image (Debian's busybox-static) for app containers.
pub const BUSYBOX_IMAGE: &str = "127.0.0.1:5000/busybox:e2e";
/// This machine's Python with the `cubbyhole_agent` client and its example agent
/// (`clients/python/examples/agent.py`) as entrypoint: see [`Cluster::load_python_image`].
pub const PYTHON_IMAGE: &str = "127.0.0.1:5000/python-agent:e2e";

/// What of the standard library an agent never needs: tests, bytecode (stale in an image whose
/// files all have one mtime; Python compiles what it imports), the GUI and the installers, the
/// static library for embedding, and the host's own third-party packages.
const PYTHON_SKIP: &[&str] = &[
    "test",
    "__pycache__",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "config-3.*",
    "_tkinter.*",
];

impl Cluster {
    /// Starts the node with node-up.sh; the cubbyhole image holds `crate::paths::cubbyhole_bin`.
    pub fn start_node(&self) {
        let up = crate::paths::repo().join("e2e/controlplane/node-up.sh");
        let out = Command::new(up)
            .arg(&self.dir)
            .env("CUBBYHOLE_BIN", crate::paths::cubbyhole_bin())
            .output()
            .expect("run node-up.sh");
        assert!(
            out.status.success(),
            "node-up.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.node.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True once [`Cluster::start_node`] started a node here.
    pub fn has_node(&self) -> bool {
        self.node.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Builds the cubbyhole image under another reference and imports it into the node's
    /// containerd now (an image that appears late, as after a slow pull).
    pub fn load_cubbyhole_image(&self, reference: &str) {
        self.load_cubbyhole_image_of(reference, &crate::paths::cubbyhole_bin());
    }

    /// The same, of the cubbyhole binary `bin` (e.g. a previous release's).
    pub fn load_cubbyhole_image_of(&self, reference: &str, bin: &std::path::Path) {
        self.load_image(
            reference,
            &[
                "--entrypoint".into(),
                "/usr/local/bin/cubbyhole".into(),
                "--user".into(),
                "65532:65532".into(),
                format!("--file={}=/usr/local/bin/cubbyhole", bin.display()),
                "--libs".into(),
                "--nonroot".into(),
            ],
        );
    }

    /// Builds image `reference` with `node/image.py` `args` and imports it into the node's
    /// containerd (`node/load.sh`).
    fn load_image(&self, reference: &str, args: &[String]) {
        let load = crate::paths::repo().join("e2e/controlplane/node/load.sh");
        let out = Command::new(load)
            .arg(&self.dir)
            .arg(reference)
            .args(args)
            .output()
            .expect("run load.sh");
        assert!(
            out.status.success(),
            "load.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Builds an image of this machine's Python (the `python3` on `PATH`: its real interpreter,
    /// standard library and lib-dynload at the same absolute paths as here, so it finds its
    /// prefix without `PYTHONHOME`, and every library they link), with the client package in
    /// its site-packages (`import cubbyhole_agent` needs no environment) and the example agent
    /// at `/app/agent.py` as entrypoint, user 65532; imports it into the node's containerd.
    pub fn load_python_image(&self, reference: &str) {
        // The interpreter, its standard library, lib-dynload (where its C modules are) and the
        // directory `site` puts on sys.path for packages, one a line.
        let script = "import sys, os, sysconfig; p = sysconfig.get_paths(); \
                      print(os.path.realpath(sys.executable), p['stdlib'], \
                      sysconfig.get_config_var('DESTSHARED'), p['purelib'], sep='\\n')";
        let out = Command::new("python3")
            .args(["-c", script])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python3 -c: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let found = String::from_utf8(out.stdout).unwrap();
        let [python, stdlib, dynload, purelib] = found.lines().collect::<Vec<_>>()[..] else {
            panic!("python3 -c printed {found:?}");
        };
        let repo = crate::paths::repo();
        let mut args = vec![
            "--entrypoint".to_string(),
            python.into(),
            "/app/agent.py".into(),
            "--user".into(),
            "65532:65532".into(),
            format!("--file={python}={python}"),
            format!("--tree={stdlib}={stdlib}"),
        ];
        assert!(dynload.starts_with('/'), "no lib-dynload found: {found:?}");
        // Debian's lib-dynload is inside its standard library; another build's may not be.
        if !std::path::Path::new(dynload).starts_with(stdlib) {
            args.push(format!("--tree={dynload}={dynload}"));
        }
        args.extend(PYTHON_SKIP.iter().map(|s| format!("--skip={s}")));
        args.push(format!(
            "--tree={}={purelib}/cubbyhole_agent",
            repo.join("clients/python/src/cubbyhole_agent").display()
        ));
        args.push(format!(
            "--file={}=/app/agent.py",
            repo.join("clients/python/examples/agent.py").display()
        ));
        args.extend(["--libs".into(), "--nonroot".into()]);
        self.load_image(reference, &args);
    }

    /// Where the kubelet writes container logs (`podLogsDir`).
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.join("node/pod-logs")
    }

    /// Everything the kubelet logged for `container` of pod `pod` (all its restarts, in order).
    pub fn container_log(&self, pod: &str, container: &str) -> String {
        let mut files = vec![];
        for dir in std::fs::read_dir(self.pod_logs_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            // <namespace>_<pod>_<uid>/<container>/<restart>.log
            let name = dir.file_name().to_string_lossy().to_string();
            if name.split('_').nth(1) != Some(pod) {
                continue;
            }
            for f in std::fs::read_dir(dir.path().join(container))
                .into_iter()
                .flatten()
                .flatten()
            {
                files.push(f.path());
            }
        }
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect()
    }
}

/// A Deployment of `replicas` opted-in pods labelled `app=<app>` that run on the node: the
/// app container (busybox, as the injected agent's user) looks its token up in OpenBao once
/// (`addr` is OpenBao's `host:port`), prints only the token's accessor, then sleeps. The
/// token never reaches an argument list: the request is written by the shell's own printf.
pub fn agent_deployment(name: &str, app: &str, replicas: i32, addr: &str) -> Deployment {
    let script = format!(
        r#"set -e
while [ ! -s /var/run/cubbyhole/token/token ]; do sleep 0.2; done
printf 'GET /v1/auth/token/lookup-self HTTP/1.0\r\nX-Vault-Token: %s\r\n\r\n' "$(cat /var/run/cubbyhole/token/token)" | nc {host} {port} > /tmp/self
head -1 /tmp/self
echo "token accessor: $(grep -o '"accessor":"[^"]*"' /tmp/self | cut -d'"' -f4)"
rm -f /tmp/self
exec sleep 3600
"#,
        host = addr.split(':').next().unwrap(),
        port = addr.rsplit(':').next().unwrap(),
    );
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app, INJECT: "true"}},
                "spec": {
                    "hostNetwork": true,
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
                    "containers": [{
                        "name": "agent",
                        "image": BUSYBOX_IMAGE,
                        "command": ["/bin/busybox", "sh", "-c", script],
                    }],
                },
            },
        },
    }))
    .unwrap()
}

impl Env {
    /// Starts the node, an operator serving the webhook (injecting [`CUBBYHOLE_IMAGE`]) and
    /// the shipped webhook configuration pointed at it.
    pub async fn start_node_and_webhook(&mut self) {
        self.start_node_and_webhook_with_image(CUBBYHOLE_IMAGE)
            .await;
    }

    /// The same, injecting `image` (which may not be on the node yet).
    pub async fn start_node_and_webhook_with_image(&mut self, image: &str) {
        self.start_node_and_webhook_with(image, false).await;
    }

    /// The same; with `request`, the operator also serves the request endpoint on the
    /// webhook's listener and injects its URL (`--request-endpoint`).
    pub async fn start_node_and_webhook_with(&mut self, image: &str, request: bool) {
        self.cluster.start_node();
        let mut config: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap();
        config["injector"]["image"] = image.into();
        config["injector"]["imagePullPolicy"] = "IfNotPresent".into();
        std::fs::write(&self.config, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
        let port = webhook_port();
        let endpoint = format!("--request-endpoint=https://127.0.0.1:{port}");
        let extra: &[&str] = if request { &[&endpoint] } else { &[] };
        self.restart_with_webhook(port, extra);
        self.install_webhook_configuration(port).await;
        self.wait_webhook_serving().await;
    }

    /// OpenBao's `host:port`.
    pub fn bao_host_port(&self) -> String {
        self.bao
            .addr
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string()
    }

    /// Creates a Deployment (see [`agent_deployment`]).
    pub async fn create_deployment(&self, name: &str, app: &str, replicas: i32) {
        let api: kube::Api<Deployment> = kube::Api::namespaced(self.client.clone(), &self.ns);
        api.create(
            &PostParams::default(),
            &agent_deployment(name, app, replicas, &self.bao_host_port()),
        )
        .await
        .expect("create Deployment");
    }

    /// Waits until `n` pods labelled `app=<app>` run with every container ready, and returns them.
    pub async fn running_pods(&self, app: &str, n: usize, within: Duration) -> Vec<Pod> {
        eventually(&format!("{n} running pods of {app}"), within, || async {
            let pods = self
                .pods()
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?
                .items;
            let running: Vec<Pod> = pods
                .into_iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                        && p.status
                            .as_ref()
                            .and_then(|s| s.container_statuses.as_ref())
                            .is_some_and(|cs| cs.iter().all(|c| c.ready))
                })
                .collect();
            (running.len() == n).then_some(running)
        })
        .await
    }
}
