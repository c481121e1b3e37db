//! `cubbyhole doctor`: run with the operator's configuration and identity, it checks what the
//! operator needs and prints one line per check, with the fix for each failure (or, with
//! `--output json`, one JSON document: every check and the overall result). Exit status 0
//! when no check failed, 1 otherwise, 2 when the configuration cannot be read.
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
use crate::core::spec::{parse_go_duration, validate_watched};
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
    /// `text`: one line per check; `json`: one JSON document (one line) with every check
    /// (`name`, `status`: ok, warn, fail or skipped, `message`, `fix`) and the overall `result`.
    /// The exit status is the same.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// What `cubbyhole doctor` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per check and a count.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Ok,
    /// Not run: this identity may not do what it takes (says why).
    Skipped,
    /// Passed, with something to look at; the exit status stays 0.
    Warn,
    /// Failed; the fix says what to do.
    Fail,
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How it came out.
    pub status: Status,
    /// What was checked.
    pub check: String,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            check: check.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn skipped(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Skipped,
            ..Self::ok(check, detail)
        }
    }

    fn warn(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Self::ok(check, detail)
        }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Self::ok(check, detail)
        }
    }

    /// The line printed for it: `FAIL` with its fix, else `OK` (warnings and skipped checks
    /// too: the text output predates them; `--output json` tells them apart).
    pub fn line(&self) -> String {
        match (&self.status, &self.fix) {
            (Status::Fail, Some(fix)) => {
                format!("FAIL  {}: {} -> fix: {fix}", self.check, self.detail)
            }
            (Status::Fail, None) => format!("FAIL  {}: {}", self.check, self.detail),
            _ => format!("OK    {}: {}", self.check, self.detail),
        }
    }
}

/// The exit status for `findings`: 1 when one failed, else 0.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.status == Status::Fail))
}

/// The `--output json` document: every check in order, the counts, the overall result (the
/// worst status: `fail`, else `warn`, else `ok`) and the exit status.
pub fn report(findings: &[Finding], exit_code: u8) -> serde_json::Value {
    let count = |s: Status| findings.iter().filter(|f| f.status == s).count();
    let result = if exit_code != 0 || count(Status::Fail) > 0 {
        "fail"
    } else if count(Status::Warn) > 0 {
        "warn"
    } else {
        "ok"
    };
    serde_json::json!({
        "version": crate::metrics::VERSION,
        "commit": crate::metrics::COMMIT,
        "result": result,
        "exitCode": exit_code,
        "summary": {
            "checks": findings.len(),
            "ok": count(Status::Ok),
            "warn": count(Status::Warn),
            "fail": count(Status::Fail),
            "skipped": count(Status::Skipped),
        },
        "checks": findings.iter().map(|f| {
            let mut check = serde_json::json!({
                "name": f.check,
                "status": f.status,
                "message": f.detail,
            });
            if let Some(fix) = &f.fix {
                check["fix"] = fix.as_str().into();
            }
            check
        }).collect::<Vec<_>>(),
    })
}

/// Runs every check, prints the lines (or the JSON document), returns the exit status.
pub async fn run(args: DoctorArgs) -> ExitCode {
    let config = match OperatorConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            const FIX: &str = "the file the operator runs with";
            match args.output {
                Output::Text => println!(
                    "FAIL  configuration {}: {e} -> fix: {FIX}",
                    args.config.display()
                ),
                Output::Json => {
                    let finding = Finding::fail(
                        "configuration",
                        format!("{}: {e}", args.config.display()),
                        FIX,
                    );
                    println!("{}", report(&[finding], 2));
                }
            }
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
        findings.push(crd_finding(client).await);
        findings.extend(rbac_checks(client, &config.watch_namespaces).await);
        findings.push(webhook_check(client, &args.webhook_configuration).await);
        findings.push(webhook_call_check(client, bindings.as_deref().unwrap_or_default()).await);
    }
    let code = exit_code(&findings);
    match args.output {
        Output::Text => {
            for f in &findings {
                println!("{}", f.line());
            }
            let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
            println!("{} checks, {} failed", findings.len(), failed);
        }
        Output::Json => println!("{}", report(&findings, code)),
    }
    ExitCode::from(code)
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
    if let Err(invalid) = validate_watched(
        &b.spec,
        &ns,
        &config.allowed_roles,
        &config.watch_namespaces,
    ) {
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

/// Whether the installed CRD has every field this version writes (`crd_check`).
async fn crd_finding(client: &Client) -> Finding {
    use crate::crd_check::{APPLY_CRD, Found, check};
    match check(client).await {
        Ok(Found::Compatible) => {
            Finding::ok("crd", "the installed CRD has every field of this version")
        }
        Ok(Found::Incompatible(why)) => Finding::fail("crd", why, APPLY_CRD),
        Ok(Found::Unreadable) => Finding::warn(
            "crd",
            "may not read the AgentSecretBinding CRD",
            "apply config/rbac/ (the ClusterRole may get customresourcedefinitions/agentsecretbindings.cubbyhole.dev)",
        ),
        Err(e) => Finding::fail(
            "crd",
            format!("cannot read it: {e}"),
            "check the API server",
        ),
    }
}

/// The resources granted only in the watched namespaces when `watchNamespaces` is set.
const WATCHED_ONLY: [&str; 2] = ["pods", "secrets"];

/// Asks the API server, for each permission of the shipped ClusterRole, whether this identity
/// has it: everywhere, or, with `watched` namespaces, pods and Secrets in each of them (and
/// warns when it may list Secrets everywhere anyway).
async fn rbac_checks(client: &Client, watched: &[String]) -> Vec<Finding> {
    let mut missing = vec![];
    let required = required_access();
    let mut checked = 0;
    for (group, resource, verb, name) in &required {
        let scopes: Vec<Option<&str>> =
            if watched.is_empty() || !WATCHED_ONLY.contains(&resource.as_str()) {
                vec![None]
            } else {
                watched.iter().map(|ns| Some(ns.as_str())).collect()
            };
        for namespace in scopes {
            checked += 1;
            if !allowed(client, group, resource, verb, name.as_deref(), namespace).await {
                let at = namespace.map_or(String::new(), |ns| format!(" in {ns}"));
                missing.push(format!("{verb} {resource}{at}"));
            }
        }
    }
    let mut findings = vec![if missing.is_empty() {
        Finding::ok(
            "kubernetes permissions",
            format!("all {checked} the operator needs"),
        )
    } else {
        Finding::fail(
            "kubernetes permissions",
            format!("missing: {}", missing.join(", ")),
            if watched.is_empty() {
                "apply config/rbac/ (ClusterRole cubbyhole-operator bound to the operator's service account)"
            } else {
                "install with the chart's config.watchNamespaces (a Role for pods and Secrets in each watched namespace)"
            },
        )
    }];
    if !watched.is_empty() {
        findings.push(
            if allowed(client, "", "secrets", "list", None, None).await {
                Finding::warn(
                    "namespace scope",
                    format!(
                        "watchNamespaces is {watched:?}, yet this identity may list Secrets in every namespace"
                    ),
                    "grant Secrets only in the watched namespaces (the chart does with config.watchNamespaces)",
                )
            } else {
                Finding::ok(
                    "namespace scope",
                    format!("pods and Secrets only in {watched:?}"),
                )
            },
        );
    }
    findings
}

/// Whether this identity may `verb` `resource` (`resource/subresource` allowed) of `group`,
/// named `name`, in `namespace` (`None`: in every namespace, or cluster-scoped).
async fn allowed(
    client: &Client,
    group: &str,
    resource: &str,
    verb: &str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                verb: Some(verb.into()),
                name: name.map(String::from),
                namespace: namespace.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
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
        Ok(None) => Finding::warn(
            "webhook",
            format!(
                "MutatingWebhookConfiguration {name} is not installed: no injection (pods plumb their wrap themselves)"
            ),
            "if pods should be injected, install config/webhook/ (the chart installs it)",
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
            Finding::skipped(
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
    fn the_json_report_lists_every_check_with_its_status_and_the_result() {
        let findings = vec![
            Finding::ok("configuration", "/etc/cubbyhole/config.yaml is valid"),
            Finding::skipped(
                "webhook call",
                "not checked: this identity may not create pods",
            ),
            Finding::warn("webhook", "not installed", "install config/webhook/"),
            Finding::fail("binding ns/b", "RoleNotAllowed: no", "fix the binding"),
        ];
        let code = exit_code(&findings);
        assert_eq!(code, 1);
        let doc = report(&findings, code);
        // One line of JSON, read back the same.
        let text = doc.to_string();
        assert!(!text.contains('\n'));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            doc
        );
        assert_eq!(
            doc,
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "commit": env!("CUBBYHOLE_COMMIT"),
                "result": "fail",
                "exitCode": 1,
                "summary": {"checks": 4, "ok": 1, "warn": 1, "fail": 1, "skipped": 1},
                "checks": [
                    {"name": "configuration", "status": "ok",
                     "message": "/etc/cubbyhole/config.yaml is valid"},
                    {"name": "webhook call", "status": "skipped",
                     "message": "not checked: this identity may not create pods"},
                    {"name": "webhook", "status": "warn", "message": "not installed",
                     "fix": "install config/webhook/"},
                    {"name": "binding ns/b", "status": "fail", "message": "RoleNotAllowed: no",
                     "fix": "fix the binding"},
                ],
            })
        );
        // The worst status decides; warnings and skipped checks keep the exit status 0.
        let passing = &findings[..3];
        assert_eq!(exit_code(passing), 0);
        assert_eq!(report(passing, 0)["result"], "warn");
        assert_eq!(report(&findings[..2], 0)["result"], "ok");
        // An unreadable configuration (exit 2) fails whatever was found.
        assert_eq!(report(&[], 2)["result"], "fail");
    }

    #[test]
    fn the_text_lines_are_as_before_warnings_and_skips_print_ok() {
        assert_eq!(
            Finding::ok("vault login", "works").line(),
            "OK    vault login: works"
        );
        assert_eq!(
            Finding::skipped("webhook call", "not checked: x").line(),
            "OK    webhook call: not checked: x"
        );
        assert_eq!(
            Finding::warn("webhook", "w is not installed: no injection", "install it").line(),
            "OK    webhook: w is not installed: no injection"
        );
        assert_eq!(
            Finding::fail("vault", "down", "start it").line(),
            "FAIL  vault: down -> fix: start it"
        );
    }

    #[test]
    fn output_is_text_unless_asked() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            doctor: DoctorArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("doctor").chain(args.iter().copied()))
                .map(|c| c.doctor.output)
        };
        assert_eq!(parse(&[]).unwrap(), Output::Text);
        assert_eq!(parse(&["--output", "json"]).unwrap(), Output::Json);
        assert_eq!(parse(&["--output", "text"]).unwrap(), Output::Text);
        assert!(parse(&["--output", "yaml"]).is_err());
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
