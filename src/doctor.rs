//! `cubbyhole doctor`: run with the operator's configuration and identity, it checks what the
//! operator needs and prints one line per check, with the fix for each failure. Exit status 0
//! when every check passed, 1 otherwise, 2 when the configuration cannot be read.
//!
//! Checks: Vault reachable (address, TLS), the login, every capability the operator's policy
//! must grant (`sys/capabilities-self`), every binding valid and its token role existing in
//! Vault and allowing what the binding asks, every Kubernetes permission of the shipped
//! ClusterRole (SelfSubjectAccessReview), the webhook configuration's `caBundle`.

use std::path::PathBuf;
use std::process::ExitCode;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::config::OperatorConfig;
use crate::core::spec::{parse_go_duration, validate};
use crate::crd::AgentSecretBinding;
use crate::vault::{TokenRole, VaultClient};

/// The ClusterRole the operator is installed with; every rule of it is checked.
const SHIPPED_ROLE: &str = include_str!("../config/rbac/role.yaml");

/// Flags of `cubbyhole doctor`.
#[derive(Clone, Debug, clap::Args)]
pub struct DoctorArgs {
    /// The operator's configuration file.
    #[arg(long, default_value = "/etc/cubbyhole/config.yaml")]
    pub config: PathBuf,
    /// The MutatingWebhookConfiguration whose `caBundle` is checked.
    #[arg(long, default_value = "cubbyhole-injector")]
    pub webhook_configuration: String,
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Passed.
    pub ok: bool,
    /// What was checked.
    pub check: String,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            check: check.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            ok: false,
            check: check.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// The line printed for it.
    pub fn line(&self) -> String {
        match &self.fix {
            None => format!("OK    {}: {}", self.check, self.detail),
            Some(fix) => format!("FAIL  {}: {} -> fix: {fix}", self.check, self.detail),
        }
    }
}

/// Runs every check, prints the lines, returns the exit status.
pub async fn run(args: DoctorArgs) -> ExitCode {
    let config = match OperatorConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            println!(
                "FAIL  configuration {}: {e} -> fix: the file the operator runs with",
                args.config.display()
            );
            return ExitCode::from(2);
        }
    };
    let mut findings = vec![Finding::ok(
        "configuration",
        format!("{} is valid", args.config.display()),
    )];
    let kube = Client::try_default().await;
    let bindings = match &kube {
        Ok(client) => {
            match Api::<AgentSecretBinding>::all(client.clone())
                .list(&ListParams::default())
                .await
            {
                Ok(list) => Some(list.items),
                Err(e) => {
                    findings.push(Finding::fail(
                        "bindings",
                        format!("cannot list AgentSecretBindings: {e}"),
                        "install the CRD (crds/) and the operator's RBAC (config/rbac/)",
                    ));
                    None
                }
            }
        }
        Err(e) => {
            findings.push(Finding::fail(
                "kubernetes",
                format!("no client: {e}"),
                "run in the operator's pod, or with KUBECONFIG for its service account",
            ));
            None
        }
    };
    findings.extend(vault_checks(&config, bindings.as_deref().unwrap_or_default()).await);
    if let Ok(client) = &kube {
        findings.extend(rbac_checks(client).await);
        findings.push(webhook_check(client, &args.webhook_configuration).await);
        findings.push(webhook_call_check(client, bindings.as_deref().unwrap_or_default()).await);
    }
    for f in &findings {
        println!("{}", f.line());
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    println!("{} checks, {} failed", findings.len(), failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Vault: reachable, login, capabilities, and each binding's role.
async fn vault_checks(config: &OperatorConfig, bindings: &[AgentSecretBinding]) -> Vec<Finding> {
    let address = config.vault.address.clone();
    let client = match config
        .vault_auth()
        .and_then(|auth| VaultClient::new(config.vault_endpoint(), Some(auth)))
    {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::fail(
                "vault",
                e,
                "fix vault.address, vault.caCert and vault.auth",
            )];
        }
    };
    if let Err(e) = client.health().await {
        return vec![Finding::fail(
            "vault reachable",
            format!("{address}: {e}"),
            "check vault.address, vault.caCert (TLS) and the network path from the operator's namespace",
        )];
    }
    let mut out = vec![Finding::ok(
        "vault reachable",
        format!("{address} is initialized and unsealed"),
    )];
    let roles: Vec<String> = {
        let mut r: Vec<String> = bindings
            .iter()
            .map(|b| b.spec.vault.token_role.clone())
            .collect();
        r.sort();
        r.dedup();
        r
    };
    let paths = required_paths(&roles);
    match client.capabilities_self(&paths).await {
        Err(e) => {
            out.push(Finding::fail(
                "vault login",
                e.to_string(),
                "check vault.auth (Kubernetes auth role, mount and jwtPath) and that the auth role binds the operator's service account (config/vault/setup.sh)",
            ));
            return out;
        }
        Ok(caps) => {
            out.push(Finding::ok("vault login", "the operator's login works"));
            let missing: Vec<String> = paths
                .iter()
                .filter(|p| {
                    let have = caps.get(*p).cloned().unwrap_or_default();
                    let need = if p.starts_with("auth/token/roles/") {
                        "read"
                    } else {
                        "update"
                    };
                    !have.iter().any(|c| c == need || c == "root")
                })
                .cloned()
                .collect();
            out.push(if missing.is_empty() {
                Finding::ok(
                    "vault capabilities",
                    format!("{} paths granted", paths.len()),
                )
            } else {
                Finding::fail(
                    "vault capabilities",
                    format!("the operator's policy does not grant: {}", missing.join(", ")),
                    "rerun config/vault/setup.sh with every role in ROLES, or add those paths to the operator's policy",
                )
            });
        }
    }
    for b in bindings {
        out.push(binding_check(&client, config, b).await);
    }
    out
}

/// The Vault paths the operator's token must be allowed, for `roles`.
pub fn required_paths(roles: &[String]) -> Vec<String> {
    let mut paths: Vec<String> = roles
        .iter()
        .flat_map(|r| {
            [
                format!("auth/token/create/{r}"),
                format!("auth/token/roles/{r}"),
            ]
        })
        .collect();
    paths.extend(
        [
            "auth/token/revoke-accessor",
            "auth/token/renew-accessor",
            "auth/token/lookup-accessor",
        ]
        .map(String::from),
    );
    paths
}

/// One binding: valid for its namespace, and its token role existing and allowing what it asks.
async fn binding_check(
    client: &VaultClient,
    config: &OperatorConfig,
    b: &AgentSecretBinding,
) -> Finding {
    let ns = b.namespace().unwrap_or_default();
    let check = format!("binding {ns}/{}", b.name_any());
    if let Err(invalid) = validate(&b.spec, &ns, &config.allowed_roles) {
        return Finding::fail(
            check,
            format!("{}: {}", invalid.reason, invalid.message),
            "fix the binding, or the operator's allowedRoles",
        );
    }
    let role = &b.spec.vault.token_role;
    match client.token_role(role).await {
        Err(e) => Finding::fail(
            check,
            format!("cannot read token role {role:?}: {e}"),
            "run config/vault/setup.sh with the role in ROLES: it creates the role and grants the operator its use",
        ),
        Ok(None) => Finding::fail(
            check,
            format!("token role {role:?} does not exist in Vault"),
            "create it (config/vault/setup.sh with ROLES) or fix spec.vault.tokenRole",
        ),
        Ok(Some(found)) => match role_problem(
            &b.spec.vault.policies,
            b.spec.vault.token_ttl.as_deref(),
            &found,
        ) {
            Some(problem) => Finding::fail(
                check,
                format!("token role {role:?}: {problem}"),
                "change the binding's policies/tokenTTL or the role's allowed_policies/token_explicit_max_ttl",
            ),
            None => Finding::ok(check, format!("token role {role:?} allows what it asks")),
        },
    }
}

/// Why `role` would refuse (or cut) what a binding asks, if it would.
pub fn role_problem(
    policies: &[String],
    token_ttl: Option<&str>,
    role: &TokenRole,
) -> Option<String> {
    if let Some(p) = policies
        .iter()
        .find(|p| role.disallowed_policies.contains(p))
    {
        return Some(format!("policy {p:?} is disallowed"));
    }
    if !role.allowed_policies.is_empty()
        && let Some(p) = policies
            .iter()
            .find(|p| !role.allowed_policies.contains(p) && p.as_str() != "default")
    {
        return Some(format!(
            "policy {p:?} is not among allowed_policies {:?}",
            role.allowed_policies
        ));
    }
    if role.token_explicit_max_ttl == 0 {
        // Vault caps a renewal by accessor at the role's explicit max, never at its
        // token_max_ttl: without one, nothing in Vault bounds how long renewals keep a token.
        return Some(
            "sets no token_explicit_max_ttl (its token_max_ttl does not bound renewals by accessor: set token_explicit_max_ttl)"
                .into(),
        );
    }
    let ttl = token_ttl.and_then(parse_go_duration)?;
    (ttl.as_secs() > role.token_explicit_max_ttl).then(|| {
        format!(
            "tokenTTL {}s exceeds the role's token_explicit_max_ttl {}s (tokens would be cut short)",
            ttl.as_secs(),
            role.token_explicit_max_ttl
        )
    })
}

/// Every (group, resource, verb, name) the shipped ClusterRole grants.
pub fn required_access() -> Vec<(String, String, String, Option<String>)> {
    let role: serde_json::Value =
        serde_yaml_ng::from_str(SHIPPED_ROLE).expect("the shipped ClusterRole is YAML");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = vec![];
    for rule in role["rules"].as_array().into_iter().flatten() {
        let names = strings(&rule["resourceNames"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    if names.is_empty() {
                        out.push((group.clone(), resource.clone(), verb.clone(), None));
                    }
                    for n in &names {
                        out.push((
                            group.clone(),
                            resource.clone(),
                            verb.clone(),
                            Some(n.clone()),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Asks the API server, for each permission of the shipped ClusterRole, whether this identity
/// has it.
async fn rbac_checks(client: &Client) -> Vec<Finding> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = vec![];
    let required = required_access();
    for (group, resource, verb, name) in &required {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (resource.clone(), None),
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.clone()),
                    resource: Some(resource.clone()),
                    subresource: subresource.clone(),
                    verb: Some(verb.clone()),
                    name: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed = api
            .create(&PostParams::default(), &review)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.allowed);
        if !allowed {
            let what = subresource.map_or(resource.clone(), |s| format!("{resource}/{s}"));
            missing.push(format!("{verb} {what}"));
        }
    }
    vec![if missing.is_empty() {
        Finding::ok(
            "kubernetes permissions",
            format!("all {} of the shipped ClusterRole", required.len()),
        )
    } else {
        Finding::fail(
            "kubernetes permissions",
            format!("missing: {}", missing.join(", ")),
            "apply config/rbac/ (ClusterRole cubbyhole-operator bound to the operator's service account)",
        )
    }]
}

/// The webhook configuration: installed, and every webhook of it with a `caBundle`.
async fn webhook_check(client: &Client, name: &str) -> Finding {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match api.get_opt(name).await {
        Err(e) => Finding::fail(
            "webhook",
            format!("cannot read MutatingWebhookConfiguration {name}: {e}"),
            "grant get on it (config/rbac/)",
        ),
        Ok(None) => Finding::ok(
            "webhook",
            format!(
                "MutatingWebhookConfiguration {name} is not installed: no injection (pods plumb their wrap themselves)"
            ),
        ),
        Ok(Some(config)) => {
            let hooks = config.webhooks.unwrap_or_default();
            let without: Vec<String> = hooks
                .iter()
                .filter(|h| {
                    h.client_config
                        .ca_bundle
                        .as_ref()
                        .is_none_or(|b| b.0.is_empty())
                })
                .map(|h| h.name.clone())
                .collect();
            if without.is_empty() {
                Finding::ok(
                    "webhook",
                    format!("{name}: caBundle set on {} webhook(s)", hooks.len()),
                )
            } else {
                Finding::fail(
                    "webhook",
                    format!("{name}: no caBundle on {}", without.join(", ")),
                    "start the operator with --webhook-listen (it fills the caBundle), or let cert-manager's CA injector do it",
                )
            }
        }
    }
}

/// Whether the API server can call the webhook: a server-side dry run of an opted-in pod,
/// labelled like the first binding's selector asks, in that binding's namespace. An answer from
/// the webhook (injected, or a refusal in its words) passes; a failed call fails. The
/// operator's own identity may not create pods: then the check is skipped, saying so.
async fn webhook_call_check(client: &Client, bindings: &[AgentSecretBinding]) -> Finding {
    const CHECK: &str = "webhook call";
    let binding = bindings.iter().find(|b| b.namespace().is_some());
    let namespace = binding
        .and_then(|b| b.namespace())
        .unwrap_or_else(|| "default".into());
    let mut labels: std::collections::BTreeMap<String, String> = binding
        .and_then(|b| b.spec.pod_selector.match_labels.clone())
        .unwrap_or_default();
    labels.insert("cubbyhole.dev/inject".into(), "true".into());
    let pod: k8s_openapi::api::core::v1::Pod = match serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "cubbyhole-doctor-", "labels": labels},
        "spec": {"containers": [{"name": "agent", "image": "cubbyhole-doctor-probe"}]},
    })) {
        Ok(pod) => pod,
        Err(e) => return Finding::fail(CHECK, format!("probe pod: {e}"), "report this"),
    };
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&params, &pod).await {
        Ok(created) => {
            let injected = created.annotations().get("cubbyhole.dev/injected").cloned();
            match injected {
                Some(b) => Finding::ok(
                    CHECK,
                    format!(
                        "the API server called it: a dry-run pod in {namespace} was injected for binding {b}"
                    ),
                ),
                None => Finding::fail(
                    CHECK,
                    format!("a dry-run opted-in pod in {namespace} was admitted without injection"),
                    "check the webhook configuration's objectSelector and namespaceSelector (the label cubbyhole.dev/inject: \"true\" must reach it)",
                ),
            }
        }
        Err(kube::Error::Api(e)) if e.code == 403 && !e.message.contains("admission webhook") => {
            Finding::ok(
                CHECK,
                "not checked: this identity may not create pods (run the doctor with an admin's KUBECONFIG to check it)",
            )
        }
        Err(kube::Error::Api(e)) if e.message.contains("failed calling webhook") => Finding::fail(
            CHECK,
            format!("the API server cannot call it: {}", e.message),
            "check that an operator replica is ready, the Service cubbyhole-webhook has endpoints, the caBundle matches its certificate, and no NetworkPolicy blocks the API server",
        ),
        Err(kube::Error::Api(e)) if e.message.contains("denied the request") => Finding::ok(
            CHECK,
            format!(
                "the API server called it; it refused the dry-run pod in {namespace}: {}",
                e.message
            ),
        ),
        Err(e) => Finding::fail(
            CHECK,
            format!("dry-run pod in {namespace}: {e}"),
            "check the API server and the webhook configuration",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_of_the_shipped_role_is_checked() {
        let access = required_access();
        assert!(access.contains(&("".into(), "secrets".into(), "create".into(), None)));
        assert!(access.contains(&(
            "authentication.k8s.io".into(),
            "tokenreviews".into(),
            "create".into(),
            None
        )));
        assert!(access.contains(&(
            "admissionregistration.k8s.io".into(),
            "mutatingwebhookconfigurations".into(),
            "patch".into(),
            Some("cubbyhole-injector".into())
        )));
        assert!(access.len() > 15, "{access:?}");
    }

    #[test]
    fn a_role_that_would_refuse_or_cut_a_binding_is_named() {
        let role = TokenRole {
            allowed_policies: vec!["agent".into()],
            disallowed_policies: vec!["root".into()],
            token_explicit_max_ttl: 3600,
            token_period: 0,
        };
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(role_problem(&p(&["agent"]), Some("1h"), &role), None);
        assert_eq!(role_problem(&[], None, &role), None);
        assert!(
            role_problem(&p(&["root"]), None, &role)
                .unwrap()
                .contains("disallowed")
        );
        assert!(
            role_problem(&p(&["admin"]), None, &role)
                .unwrap()
                .contains("allowed_policies")
        );
        assert!(
            role_problem(&p(&["agent"]), Some("2h"), &role)
                .unwrap()
                .contains("cut short")
        );
        // Without an explicit max nothing in Vault bounds renewals by accessor.
        let unbounded = TokenRole {
            token_explicit_max_ttl: 0,
            ..role
        };
        assert!(
            role_problem(&p(&["agent"]), None, &unbounded)
                .unwrap()
                .contains("token_explicit_max_ttl")
        );
    }

    #[test]
    fn the_paths_cover_every_call_the_operator_makes() {
        let paths = required_paths(&["a".into()]);
        for p in [
            "auth/token/create/a",
            "auth/token/roles/a",
            "auth/token/revoke-accessor",
            "auth/token/renew-accessor",
            "auth/token/lookup-accessor",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p}");
        }
    }
}
