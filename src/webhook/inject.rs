//! The pure patch builder: a pod, the one binding that selects it and the injector settings
//! give the JSON Patch that plumbs the pod's wrap into it, or a message saying why not.
//!
//! It only adds: a field the pod already has is never replaced, and a name the pod already
//! uses for a volume or container is refused.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::config::InjectorConfig;
use crate::core::pod::{PodView, is_valid_secret_name, secret_name};
use crate::crd::{AgentSecretBindingSpec, Delivery};
use crate::record::SECRET_NAME_ANNOTATION;
use crate::request::protocol::AUDIENCE;

/// Pod label that opts a pod in (the webhook configuration's `objectSelector`).
pub const INJECT_LABEL: &str = "cubbyhole.dev/inject";
/// Pod annotation set by the injection (value: the binding); a pod carrying it is left alone.
pub const INJECTED_ANNOTATION: &str = "cubbyhole.dev/injected";
/// Pod annotation naming the containers (comma-separated) that get the token mount.
pub const CONTAINERS_ANNOTATION: &str = "cubbyhole.dev/inject-containers";
/// Pod annotation choosing the directory where the token volume is mounted.
pub const TOKEN_PATH_ANNOTATION: &str = "cubbyhole.dev/token-path";
/// Volume holding the per-pod Secret (the wrapping token).
pub const WRAP_VOLUME: &str = "cubbyhole-wrap";
/// In-memory volume for the unwrapped token.
pub const TOKEN_VOLUME: &str = "cubbyhole-token";
/// Volume holding Vault's CA (when configured).
pub const CA_VOLUME: &str = "cubbyhole-vault-ca";
/// Where the init container sees the wrap.
pub const WRAP_DIR: &str = "/var/run/cubbyhole/wrap";
/// Where Vault's CA is mounted.
pub const CA_DIR: &str = "/var/run/cubbyhole/vault-ca";
/// Projected service-account token volume (audience `cubbyhole`) of request delivery.
pub const IDENTITY_VOLUME: &str = "cubbyhole-identity";
/// Where the init container sees its identity token.
pub const IDENTITY_DIR: &str = "/var/run/cubbyhole/identity";
/// Lifetime asked for the identity token (the API server's minimum; the kubelet refreshes it).
pub const IDENTITY_EXPIRY_SECONDS: i64 = 600;
/// Environment variable carrying the request endpoint's CA bundle (PEM) to the init container.
pub const REQUEST_CA_ENV: &str = "CUBBYHOLE_REQUEST_CA";
/// Name of the injected init container unless the binding's `agentContainer` names one the
/// pod does not have (then that name: its restarts are the pod's new starts).
pub const DEFAULT_INIT_NAME: &str = crate::core::pod::UNWRAP_CONTAINER;
/// Pod annotation: `"true"` when the pod's own code asks for its wrap (request delivery only):
/// the webhook then adds no init container, only the identity token and where to ask.
pub const SELF_BOOTSTRAP_ANNOTATION: &str = "cubbyhole.dev/self-bootstrap";
/// Environment variable naming the request endpoint's base URL, for agents that ask themselves.
pub const REQUEST_ENV: &str = "CUBBYHOLE_REQUEST";
/// Environment variable naming the identity token file, for agents that ask themselves.
pub const IDENTITY_TOKEN_ENV: &str = "CUBBYHOLE_IDENTITY_TOKEN";
/// Environment variable naming the only creation path a wrap may have, for agents that ask
/// themselves.
pub const EXPECT_PATH_ENV: &str = "CUBBYHOLE_EXPECT_PATH";
/// Shortest `--wait-for-fresh` given to a restartable agent.
pub const MIN_WAIT_FOR_FRESH: Duration = Duration::from_secs(90);

/// The binding an injection is for.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// Binding name.
    pub binding: &'a str,
    /// Its spec (already validated).
    pub spec: &'a AgentSecretBindingSpec,
    /// Its wrap TTL.
    pub wrap_ttl: Duration,
}

/// Checks a mount directory: absolute, no `..`, not `/`, not one of cubbyhole's own.
pub fn check_dir(dir: &str) -> Result<(), String> {
    let ok = dir.starts_with('/')
        && dir.len() > 1
        && dir.len() <= 1024
        && !dir.contains(':')
        && !dir.split('/').any(|p| p == ".." || p == ".")
        && !dir.chars().any(char::is_control);
    if !ok {
        return Err(format!(
            "{dir:?} is not an absolute directory path (like /var/run/cubbyhole/token)"
        ));
    }
    let trimmed = dir.trim_end_matches('/');
    for own in [WRAP_DIR, CA_DIR] {
        if trimmed == own || trimmed.starts_with(&format!("{own}/")) {
            return Err(format!("{dir:?} is cubbyhole's own mount {own}"));
        }
    }
    Ok(())
}

/// How a person recognises the pod: its name, or its `generateName` prefix.
pub fn describe_pod(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(n), _) if !n.is_empty() => format!("pod {n:?}"),
        (_, Some(g)) => format!("pod {:?} (generateName)", format!("{g}*")),
        _ => "pod (unnamed)".into(),
    }
}

/// Escapes a key for a JSON Pointer.
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The Secret name the pod will mount: its `cubbyhole.dev/secret-name` annotation if set, else
/// derived from its name, or for a `generateName` pod from the prefix plus `nonce`.
pub fn chosen_secret_name(pod: &Pod, binding: &str, nonce: &str) -> Result<String, String> {
    if let Some(name) = pod.annotations().get(SECRET_NAME_ANNOTATION) {
        // A pod made from a template (a generated name, or a controller's: ReplicaSet, Job,
        // StatefulSet) shares the annotation with every replica: one Secret for all of them.
        let templated = pod
            .metadata
            .generate_name
            .as_deref()
            .is_some_and(|g| !g.is_empty())
            || pod
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true));
        if templated {
            return Err(format!(
                "annotation {SECRET_NAME_ANNOTATION}={name:?} comes from a pod template: every replica would share that one Secret; remove it from the template (each pod then gets its own name)"
            ));
        }
        return if is_valid_secret_name(name) {
            Ok(name.clone())
        } else {
            Err(format!(
                "annotation {SECRET_NAME_ANNOTATION}={name:?} is not a valid Secret name (lowercase letters, digits, '-' and '.')"
            ))
        };
    }
    let base = match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(g)) if !g.is_empty() => format!("{g}{nonce}"),
        _ => format!("pod-{nonce}"),
    };
    let view = PodView {
        name: base,
        ..Default::default()
    };
    let name = secret_name(&view, binding);
    if is_valid_secret_name(&name) {
        Ok(name)
    } else {
        Err(format!("cannot derive a valid Secret name ({name:?})"))
    }
}

/// Which containers get the token mount: those named by the annotation (regular or init), else
/// every regular container. Returns (is_init, index) pairs.
fn targets(pod: &Pod, spec: &PodSpec) -> Result<Vec<(bool, usize)>, String> {
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let Some(list) = pod.annotations().get(CONTAINERS_ANNOTATION) else {
        return Ok((0..spec.containers.len()).map(|i| (false, i)).collect());
    };
    let mut out = vec![];
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let found = spec
            .containers
            .iter()
            .position(|c| c.name == name)
            .map(|i| (false, i))
            .or_else(|| inits.iter().position(|c| c.name == name).map(|i| (true, i)));
        match found {
            Some(t) if !out.contains(&t) => out.push(t),
            Some(_) => {}
            None => {
                let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
                return Err(format!(
                    "annotation {CONTAINERS_ANNOTATION} names {name:?}, which is not a container of this pod (containers: {})",
                    names.join(", ")
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(format!(
            "annotation {CONTAINERS_ANNOTATION} names no container"
        ));
    }
    Ok(out)
}

/// The mount of container `c` at directory `dir`, if it has one.
fn mounted_at<'a>(
    c: &'a Container,
    dir: &str,
) -> Option<&'a k8s_openapi::api::core::v1::VolumeMount> {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == dir)
}

/// Whether the pod asks for its own wrap ([`SELF_BOOTSTRAP_ANNOTATION`]).
fn self_bootstrap(pod: &Pod) -> Result<bool, String> {
    match pod
        .annotations()
        .get(SELF_BOOTSTRAP_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!(
            "annotation {SELF_BOOTSTRAP_ANNOTATION}={other:?} must be \"true\" or \"false\""
        )),
    }
}

/// The annotations the injection adds: the record's Secret name (unless the pod chose it) and
/// which binding injected the pod.
fn annotation_ops(pod: &Pod, secret: &str, binding: &str) -> Vec<Value> {
    let mut new_annotations = serde_json::Map::new();
    if !pod.annotations().contains_key(SECRET_NAME_ANNOTATION) {
        new_annotations.insert(SECRET_NAME_ANNOTATION.into(), json!(secret));
    }
    new_annotations.insert(INJECTED_ANNOTATION.into(), json!(binding));
    if pod.metadata.annotations.is_none() {
        return vec![
            json!({"op": "add", "path": "/metadata/annotations", "value": new_annotations}),
        ];
    }
    new_annotations
        .into_iter()
        .map(|(k, v)| json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_key(&k)), "value": v}))
        .collect()
}

/// Where Vault is, for every agent container (each keeps what it sets itself).
fn vault_env(cfg: &InjectorConfig) -> Vec<Value> {
    let vault_addr = cfg.vault_address.clone().unwrap_or_default();
    let mut env = vec![json!({"name": "VAULT_ADDR", "value": vault_addr})];
    if let Some(ns) = &cfg.vault_namespace {
        env.push(json!({"name": "VAULT_NAMESPACE", "value": ns}));
    }
    if let Some(ca) = &cfg.vault_ca_config_map {
        env.push(json!({"name": "VAULT_CACERT", "value": format!("{CA_DIR}/{}", ca.key)}));
    }
    env
}

/// The identity token volume (audience `cubbyhole`) of request delivery.
fn identity_volume() -> Value {
    json!({"name": IDENTITY_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": AUDIENCE, "expirationSeconds": IDENTITY_EXPIRY_SECONDS, "path": "token"}}]}})
}

/// Vault's CA volume, when configured.
fn ca_volume(cfg: &InjectorConfig) -> Option<Value> {
    cfg.vault_ca_config_map.as_ref().map(|ca| {
        json!({"name": CA_VOLUME, "configMap": {"name": ca.name, "items": [{"key": ca.key, "path": ca.key}], "defaultMode": 0o444}})
    })
}

/// Refuses a pod that already has a volume named like one of `own` (what cubbyhole injects).
fn check_volume_names(spec: &PodSpec, own: &[&str]) -> Result<(), String> {
    match spec
        .volumes
        .iter()
        .flatten()
        .find(|v| own.contains(&v.name.as_str()))
    {
        Some(v) => Err(format!(
            "the pod already has a volume named {:?}; cubbyhole injects volumes {}: rename the pod's volume",
            v.name,
            own.join(", ")
        )),
        None => Ok(()),
    }
}

/// Plumbs agent container `c` (at JSON pointer `base`): `mount`, Vault's CA when configured
/// (unless the container names its own), and each variable of `env` it does not set itself.
fn plumb_container(
    ops: &mut Vec<Value>,
    c: &Container,
    base: &str,
    mount: Value,
    env: &[Value],
    cfg: &InjectorConfig,
) {
    let has_env = |name: &str| c.env.iter().flatten().any(|e| e.name == name);
    let mut mounts = vec![mount];
    if cfg.vault_ca_config_map.is_some() && !has_env("VAULT_CACERT") {
        mounts.push(json!({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": true}));
    }
    append(
        ops,
        &format!("{base}/volumeMounts"),
        c.volume_mounts.is_some(),
        mounts,
    );
    let missing: Vec<Value> = env
        .iter()
        .filter(|e| !has_env(e["name"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        append(ops, &format!("{base}/env"), c.env.is_some(), missing);
    }
}

/// The patch for a pod whose own code asks ([`SELF_BOOTSTRAP_ANNOTATION`]): the identity token
/// mounted read-only in the agent containers and the environment the client libraries read
/// (where to ask, the endpoint's CA, the identity token file, the creation path to accept,
/// Vault's address). No init container, no token volume: the agent keeps its token itself.
fn self_bootstrap_patch(
    pod: &Pod,
    target: &Target,
    cfg: &InjectorConfig,
    request: &crate::config::RequestEndpoint,
    secret: &str,
) -> Result<Vec<Value>, String> {
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let mut own_volumes = vec![IDENTITY_VOLUME];
    if cfg.vault_ca_config_map.is_some() {
        own_volumes.push(CA_VOLUME);
    }
    check_volume_names(spec, &own_volumes)?;
    let mut env = vault_env(cfg);
    env.extend([
        json!({"name": REQUEST_ENV, "value": request.url}),
        json!({"name": REQUEST_CA_ENV, "value": request.ca_pem}),
        json!({"name": IDENTITY_TOKEN_ENV, "value": format!("{IDENTITY_DIR}/token")}),
        json!({"name": EXPECT_PATH_ENV, "value": format!("auth/token/create/{}", target.spec.vault.token_role)}),
    ]);
    let mut ops = annotation_ops(pod, secret, target.binding);
    let volumes = [Some(identity_volume()), ca_volume(cfg)]
        .into_iter()
        .flatten()
        .collect();
    append(&mut ops, "/spec/volumes", spec.volumes.is_some(), volumes);
    for (init, i) in targets(pod, spec)? {
        let c = if init { &inits[i] } else { &spec.containers[i] };
        let base = format!(
            "/spec/{}/{i}",
            if init { "initContainers" } else { "containers" }
        );
        if let Some(m) = mounted_at(c, IDENTITY_DIR) {
            return Err(format!(
                "container {:?} already mounts volume {:?} at {IDENTITY_DIR}, where cubbyhole mounts the identity token",
                c.name, m.name
            ));
        }
        let mount = json!({"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true});
        plumb_container(&mut ops, c, &base, mount, &env, cfg);
    }
    Ok(ops)
}

/// Builds the JSON Patch for `pod`, or says why it cannot be injected.
pub fn build(
    pod: &Pod,
    target: &Target,
    cfg: &InjectorConfig,
    nonce: &str,
) -> Result<Vec<Value>, String> {
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let container_names: BTreeSet<&str> = inits
        .iter()
        .chain(spec.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    let on_request = target.spec.delivery == Delivery::Request;
    let request = match (&cfg.request, on_request) {
        (None, true) => {
            return Err(
                "the request endpoint's certificate is not loaded yet; retry in a few seconds"
                    .into(),
            );
        }
        (r, _) => r.as_ref().filter(|_| on_request),
    };
    if self_bootstrap(pod)? {
        let Some(request) = request else {
            return Err(format!(
                "annotation {SELF_BOOTSTRAP_ANNOTATION}=\"true\" needs a binding with delivery: Request; binding {:?} delivers by Secret",
                target.binding
            ));
        };
        let secret = chosen_secret_name(pod, target.binding, nonce)?;
        return self_bootstrap_patch(pod, target, cfg, request, &secret);
    }
    let init_name = match target.spec.agent_container.as_deref() {
        Some(agent) if !container_names.contains(agent) => agent,
        _ => DEFAULT_INIT_NAME,
    };
    if container_names.contains(init_name) {
        return Err(format!(
            "the pod already has a container named {init_name:?}, which cubbyhole injects: rename it"
        ));
    }
    let mut own_volumes = if on_request {
        vec![IDENTITY_VOLUME, TOKEN_VOLUME]
    } else {
        vec![WRAP_VOLUME, TOKEN_VOLUME]
    };
    if cfg.vault_ca_config_map.is_some() {
        own_volumes.push(CA_VOLUME);
    }
    check_volume_names(spec, &own_volumes)?;
    let token_dir = match pod.annotations().get(TOKEN_PATH_ANNOTATION) {
        Some(dir) => {
            check_dir(dir).map_err(|e| format!("annotation {TOKEN_PATH_ANNOTATION}: {e}"))?;
            dir.trim_end_matches('/').to_string()
        }
        None => cfg.token_path.trim_end_matches('/').to_string(),
    };
    let targets = targets(pod, spec)?;
    let secret = chosen_secret_name(pod, target.binding, nonce)?;
    let container = |(init, i): (bool, usize)| -> &Container {
        if init { &inits[i] } else { &spec.containers[i] }
    };
    for &t in &targets {
        let c = container(t);
        if let Some(m) = mounted_at(c, &token_dir) {
            return Err(format!(
                "container {:?} already mounts volume {:?} at {token_dir}, where cubbyhole mounts the token; choose another directory with annotation {TOKEN_PATH_ANNOTATION}",
                c.name, m.name
            ));
        }
    }

    // The user the init container runs as: the first agent's, else the pod's, else ours.
    let pod_sc = spec.security_context.as_ref();
    let agent_uid = targets
        .first()
        .and_then(|&t| container(t).security_context.as_ref()?.run_as_user);
    let pod_uid = pod_sc.and_then(|s| s.run_as_user);
    let init_uid = agent_uid.or(if pod_uid.is_some() {
        None
    } else {
        cfg.run_as_user
    });

    let agent_env = vault_env(cfg);
    let ca_mount = json!({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": true});

    let mut ops = vec![];
    // Annotations.
    ops.extend(annotation_ops(pod, &secret, target.binding));
    // Volumes.
    let delivery_volume = if on_request {
        identity_volume()
    } else {
        json!({"name": WRAP_VOLUME, "secret": {"secretName": secret, "defaultMode": 0o400}})
    };
    let mut volumes = vec![
        delivery_volume,
        json!({"name": TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ];
    volumes.extend(ca_volume(cfg));
    append(&mut ops, "/spec/volumes", spec.volumes.is_some(), volumes);
    // Agent containers: the token read-only, and Vault's address unless they set their own.
    // (Before the init container is prepended, so the indexes are the pod's own.)
    for &t in &targets {
        let c = container(t);
        let base = format!(
            "/spec/{}/{}",
            if t.0 { "initContainers" } else { "containers" },
            t.1
        );
        let mount = json!({"name": TOKEN_VOLUME, "mountPath": token_dir, "readOnly": true});
        plumb_container(&mut ops, c, &base, mount, &agent_env, cfg);
    }
    // The init container, first of all.
    let source = match request {
        Some(r) => vec![
            format!("--request={}", r.url),
            format!("--identity-token={IDENTITY_DIR}/token"),
        ],
        None => vec![format!(
            "--token-file={WRAP_DIR}/{}",
            target.spec.secret_key
        )],
    };
    let mut args = vec!["unwrap".to_string()];
    args.extend(source);
    args.extend([
        format!("--out={token_dir}/token"),
        format!(
            "--expect-path=auth/token/create/{}",
            target.spec.vault.token_role
        ),
    ]);
    if target.spec.agent_container.is_some() && !on_request {
        let wait = (target.wrap_ttl * 2).max(MIN_WAIT_FOR_FRESH);
        args.push(format!("--wait-for-fresh={}s", wait.as_secs()));
    }
    let mut security = json!({
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    if let Some(uid) = init_uid {
        security["runAsUser"] = json!(uid);
    }
    let mut mounts = vec![
        if on_request {
            json!({"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true})
        } else {
            json!({"name": WRAP_VOLUME, "mountPath": WRAP_DIR, "readOnly": true})
        },
        json!({"name": TOKEN_VOLUME, "mountPath": token_dir}),
    ];
    if cfg.vault_ca_config_map.is_some() {
        mounts.push(ca_mount);
    }
    let mut init_env = agent_env.clone();
    if let Some(r) = request {
        init_env.push(json!({"name": REQUEST_CA_ENV, "value": r.ca_pem}));
    }
    let mut init = json!({
        "name": init_name,
        "image": cfg.image,
        "args": args,
        "env": init_env,
        "resources": cfg.resources,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": security,
        "volumeMounts": mounts,
    });
    if let Some(policy) = &cfg.image_pull_policy {
        init["imagePullPolicy"] = json!(policy);
    }
    if inits.is_empty() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
    }
    // The pod's fsGroup makes the Secret volume readable by the init container's user (none
    // when no user is known: the platform assigns both).
    if pod_sc.and_then(|s| s.fs_group).is_none()
        && let Some(group) = init_uid.or(pod_uid).or(cfg.run_as_user)
    {
        if pod_sc.is_none() {
            ops.push(
                json!({"op": "add", "path": "/spec/securityContext", "value": {"fsGroup": group}}),
            );
        } else {
            ops.push(json!({"op": "add", "path": "/spec/securityContext/fsGroup", "value": group}));
        }
    }
    Ok(ops)
}

/// Appends `items` to the array at `path`, creating it when the pod has none.
fn append(ops: &mut Vec<Value>, path: &str, exists: bool, items: Vec<Value>) {
    if exists {
        for item in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    }
}
