//! Checks a binding's spec beyond what the schema can: the selector, durations, the role
//! allowlist. The result says what a person should fix.

use std::time::Duration;

use kube::core::Selector;

use crate::config::{RoleRule, role_allowed};
use crate::core::reason::Reason;
use kube::ResourceExt;

use crate::crd::{
    AgentSecretBinding, AgentSecretBindingSpec, MAX_SELECTOR_TERMS, MAX_SELECTOR_VALUES,
};
use crate::vault::TokenRequest;

/// A spec the operator can act on.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    /// Parsed pod selector (never empty).
    pub selector: Selector,
    /// Wrap TTL.
    pub wrap_ttl: Duration,
}

/// Why a binding cannot be served. `reason` is a condition reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// `InvalidSpec`, `RoleNotAllowed` or `NamespaceNotWatched`.
    pub reason: Reason,
    /// What to fix.
    pub message: String,
}

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid {
        reason: Reason::InvalidSpec,
        message: message.into(),
    }
}

/// Validates `spec` as [`validate`] does, for an operator that watches only the namespaces
/// `watched` (`watchNamespaces`; empty: every namespace): a binding elsewhere cannot be served.
pub fn validate_watched(
    spec: &AgentSecretBindingSpec,
    namespace: &str,
    rules: &[RoleRule],
    watched: &[String],
) -> Result<ValidSpec, Invalid> {
    if !crate::config::watched(watched, namespace) {
        return Err(Invalid {
            reason: Reason::NamespaceNotWatched,
            message: format!(
                "this operator watches only the namespaces {watched:?} (watchNamespaces), not {namespace:?}: add it there (and grant the operator pods and Secrets in it), or move the binding"
            ),
        });
    }
    validate(spec, namespace, rules)
}

/// Validates `spec` for a binding in `namespace` under the operator's role rules.
pub fn validate(
    spec: &AgentSecretBindingSpec,
    namespace: &str,
    rules: &[RoleRule],
) -> Result<ValidSpec, Invalid> {
    let selector = pod_selector(spec)?;
    let wrap_ttl = parse_go_duration(&spec.vault.wrap_ttl).ok_or_else(|| {
        invalid(format!(
            "wrapTTL {:?} is not a duration like 60s or 5m",
            spec.vault.wrap_ttl
        ))
    })?;
    if !(Duration::from_secs(5)..=Duration::from_secs(3600)).contains(&wrap_ttl) {
        return Err(invalid("wrapTTL must be between 5s and 1h"));
    }
    if let Some(ttl) = &spec.vault.token_ttl {
        parse_go_duration(ttl)
            .ok_or_else(|| invalid(format!("tokenTTL {ttl:?} is not a duration like 30m or 1h")))?;
    }
    if spec.secret_key.is_empty()
        || spec.secret_key == "."
        || spec.secret_key == ".."
        || !spec
            .secret_key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err(invalid(format!(
            "secretKey {:?} is not a valid Secret key",
            spec.secret_key
        )));
    }
    check_bounds(spec)?;
    if !role_allowed(rules, namespace, &spec.vault.token_role) {
        return Err(Invalid {
            reason: Reason::RoleNotAllowed,
            message: format!(
                "token role {:?} is not allowed in namespace {namespace:?}; ask the cluster admin to add it to the operator's allowedRoles",
                spec.vault.token_role
            ),
        });
    }
    Ok(ValidSpec { selector, wrap_ttl })
}

/// What to mint for one start of `pod`: a token that dies by itself at wrapTTL + `grace`
/// unless renewed for the pod's agent, never living past the binding's tokenTTL
/// (`explicit_max_ttl`), whose metadata names the namespace, pod, pod uid and binding (what
/// the operator checks before it ever revokes it).
pub fn token_request(
    binding: &AgentSecretBinding,
    pod: &str,
    pod_uid: &str,
    wrap_ttl: Duration,
    grace: Duration,
) -> TokenRequest {
    let spec = &binding.spec.vault;
    let mut meta = spec.metadata.clone();
    meta.insert("namespace".into(), binding.namespace().unwrap_or_default());
    meta.insert("pod".into(), pod.to_string());
    meta.insert("pod_uid".into(), pod_uid.to_string());
    meta.insert("binding".into(), binding.name_any());
    TokenRequest {
        role: spec.token_role.clone(),
        policies: spec.policies.clone(),
        ttl: Some(format!("{}s", (wrap_ttl + grace).as_secs())),
        explicit_max_ttl: spec.token_ttl.clone(),
        num_uses: spec.num_uses,
        meta,
        wrap_ttl_secs: wrap_ttl.as_secs(),
    }
}

/// Most policies a binding may name, and their longest name.
pub const MAX_POLICIES: (usize, usize) = (64, 256);
/// Most metadata entries a binding may add, the longest key and the longest value.
pub const MAX_METADATA: (usize, usize, usize) = (32, 128, 512);

/// The CRD's bounds, checked again for objects stored before they existed: what a binding
/// asks for is copied into every token it mints.
fn check_bounds(spec: &AgentSecretBindingSpec) -> Result<(), Invalid> {
    let v = &spec.vault;
    let (most, longest) = MAX_POLICIES;
    if v.policies.len() > most || v.policies.iter().any(|p| p.is_empty() || p.len() > longest) {
        return Err(invalid(format!(
            "vault.policies: at most {most} policies of 1 to {longest} characters"
        )));
    }
    let (entries, key, value) = MAX_METADATA;
    if v.metadata.len() > entries
        || v.metadata
            .iter()
            .any(|(k, val)| k.len() > key || val.len() > value)
    {
        return Err(invalid(format!(
            "vault.metadata: at most {entries} entries, keys up to {key} and values up to {value} characters"
        )));
    }
    let selector = &spec.pod_selector;
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if selector.match_labels.as_ref().map_or(0, |l| l.len()) > MAX_SELECTOR_TERMS
        || expressions.len() > MAX_SELECTOR_TERMS
        || expressions
            .iter()
            .any(|e| e.values.as_ref().map_or(0, |v| v.len()) > MAX_SELECTOR_VALUES)
    {
        return Err(invalid(format!(
            "podSelector: at most {MAX_SELECTOR_TERMS} matchLabels and {MAX_SELECTOR_TERMS} matchExpressions of at most {MAX_SELECTOR_VALUES} values"
        )));
    }
    Ok(())
}

/// The binding's selector, refusing an empty one (it would select every pod).
pub fn pod_selector(spec: &AgentSecretBindingSpec) -> Result<Selector, Invalid> {
    let ls = &spec.pod_selector;
    for (k, v) in ls.match_labels.iter().flatten() {
        check_label(k, Some(v))?;
    }
    for req in ls.match_expressions.iter().flatten() {
        check_label(&req.key, None)?;
        if matches!(req.operator.as_str(), "In" | "NotIn")
            && req.values.as_ref().is_none_or(|v| v.is_empty())
        {
            return Err(invalid(format!(
                "podSelector: operator {} on {:?} needs values",
                req.operator, req.key
            )));
        }
        for v in req.values.iter().flatten() {
            check_label(&req.key, Some(v))?;
        }
    }
    let selector =
        Selector::try_from(ls.clone()).map_err(|e| invalid(format!("podSelector: {}", e.0)))?;
    if selector.selects_all() {
        return Err(invalid(
            "podSelector is empty: it would select every pod in the namespace",
        ));
    }
    Ok(selector)
}

fn check_label(key: &str, value: Option<&str>) -> Result<(), Invalid> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let ok_part = |s: &str, max: usize| {
        s.len() <= max
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    };
    if name.is_empty() || !ok_part(name, 63) || key.matches('/').count() > 1 {
        return Err(invalid(format!(
            "podSelector: {key:?} is not a valid label key"
        )));
    }
    if let Some(v) = value
        && !ok_part(v, 63)
    {
        return Err(invalid(format!(
            "podSelector: {v:?} is not a valid label value for {key:?}"
        )));
    }
    Ok(())
}

/// Parses Go-style durations made of `<n>h`, `<n>m`, `<n>s` parts (`90s`, `1h30m`).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut digits = String::new();
    if text.is_empty() {
        return None;
    }
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    digits.is_empty().then_some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::VaultTokenSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn spec(labels: &[(&str, &str)], role: &str, wrap: &str) -> AgentSecretBindingSpec {
        AgentSecretBindingSpec {
            pod_selector: LabelSelector {
                match_labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                match_expressions: None,
            },
            vault: VaultTokenSpec {
                token_role: role.into(),
                policies: vec![],
                token_ttl: None,
                num_uses: None,
                wrap_ttl: wrap.into(),
                metadata: Default::default(),
            },
            secret_key: "token".into(),
            agent_container: None,
            revoke_on_pod_deletion: true,
            delivery: Default::default(),
        }
    }

    fn rules() -> Vec<RoleRule> {
        vec![RoleRule {
            namespaces: vec!["*".into()],
            roles: vec!["agent".into()],
        }]
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn a_selector_past_the_crds_bounds_is_invalid_naming_them() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let keys: Vec<String> = (0..17).map(|i| format!("k{i}")).collect();
        let labels: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        assert!(validate(&spec(&labels[..16], "agent", "60s"), "ns", &rules()).is_ok());
        let e = validate(&spec(&labels, "agent", "60s"), "ns", &rules()).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert!(
            e.message.starts_with("podSelector: at most 16"),
            "{}",
            e.message
        );
        let expression = |values: usize| LabelSelectorRequirement {
            key: "app".into(),
            operator: "In".into(),
            values: Some((0..values).map(|v| v.to_string()).collect()),
        };
        let mut s = spec(&[("app", "a")], "agent", "60s");
        s.pod_selector.match_expressions = Some(vec![expression(64); 16]);
        assert!(validate(&s, "ns", &rules()).is_ok());
        s.pod_selector.match_expressions = Some(vec![expression(65)]);
        assert!(validate(&s, "ns", &rules()).is_err());
        s.pod_selector.match_expressions = Some(vec![expression(1); 17]);
        assert!(validate(&s, "ns", &rules()).is_err());
    }

    #[test]
    fn accepts_a_good_spec() {
        let v = validate(&spec(&[("app", "a")], "agent", "60s"), "ns", &rules()).unwrap();
        assert_eq!(v.wrap_ttl, Duration::from_secs(60));
    }

    #[test]
    fn refuses_what_the_schema_cannot_catch() {
        let empty = validate(&spec(&[], "agent", "60s"), "ns", &rules()).unwrap_err();
        assert_eq!(empty.reason.as_str(), "InvalidSpec");
        assert!(empty.message.contains("empty"));
        let bad_label = validate(&spec(&[("app", "a b")], "agent", "60s"), "ns", &rules());
        assert_eq!(bad_label.unwrap_err().reason.as_str(), "InvalidSpec");
        let scoped = ["team".to_string()];
        let ok = spec(&[("app", "a")], "agent", "60s");
        assert!(validate_watched(&ok, "ns", &rules(), &[]).is_ok());
        assert!(validate_watched(&ok, "ns", &rules(), &["ns".to_string()]).is_ok());
        let elsewhere = validate_watched(&ok, "ns", &rules(), &scoped).unwrap_err();
        assert_eq!(elsewhere.reason.as_str(), "NamespaceNotWatched");
        assert!(
            elsewhere.message.contains("[\"team\"]"),
            "{}",
            elsewhere.message
        );
        let role = validate(&spec(&[("app", "a")], "admin", "60s"), "ns", &rules()).unwrap_err();
        assert_eq!(role.reason.as_str(), "RoleNotAllowed");
        assert!(role.message.contains("admin"));
        let ttl = validate(&spec(&[("app", "a")], "agent", "2s"), "ns", &rules()).unwrap_err();
        assert!(ttl.message.contains("wrapTTL"));
        let mut s = spec(&[("app", "a")], "agent", "60s");
        s.pod_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "In".into(),
            values: Some(vec![]),
        }]);
        assert!(
            validate(&s, "ns", &rules())
                .unwrap_err()
                .message
                .contains("needs values")
        );
    }

    #[test]
    fn label_keys_and_values_follow_kubernetes_rules() {
        let long = "x".repeat(64);
        for (key, value, ok) in [
            ("app", "a", true),
            ("example.com/app", "a-b.c_d", true),
            ("app", "", true),
            ("", "a", false),
            ("example.com/", "a", false),
            ("a/b/c", "a", false),
            ("-app", "a", false),
            (long.as_str(), "a", false),
            ("app", "bad value", false),
            ("app", long.as_str(), false),
        ] {
            let result = validate(&spec(&[(key, value)], "agent", "60s"), "ns", &rules());
            assert_eq!(result.is_ok(), ok, "{key:?}={value:?}");
        }
    }

    #[test]
    fn only_in_and_not_in_need_values() {
        for (operator, values, ok) in [
            ("Exists", None, true),
            ("DoesNotExist", Some(vec![]), true),
            ("In", Some(vec!["a".to_string()]), true),
            ("NotIn", None, false),
        ] {
            let mut s = spec(&[], "agent", "60s");
            s.pod_selector.match_expressions = Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: operator.into(),
                values,
            }]);
            assert_eq!(validate(&s, "ns", &rules()).is_ok(), ok, "{operator}");
        }
    }

    #[test]
    fn secret_keys_must_be_non_empty_and_valid() {
        for (key, ok) in [
            ("token", true),
            ("a.b-c_1", true),
            ("", false),
            ("a/b", false),
            (".", false),
            ("..", false),
            ("..a", true),
        ] {
            let mut s = spec(&[("app", "a")], "agent", "60s");
            s.secret_key = key.into();
            let result = validate(&s, "ns", &rules());
            assert_eq!(result.is_ok(), ok, "secretKey {key:?}");
            if !ok {
                assert!(result.unwrap_err().message.contains("secretKey"));
            }
        }
    }

    #[test]
    fn what_is_copied_into_every_token_is_bounded() {
        let ok = spec(&[("app", "a")], "agent", "60s");
        assert!(validate(&ok, "ns", &rules()).is_ok());
        let mut many = ok.clone();
        many.vault.policies = (0..65).map(|i| format!("p{i}")).collect();
        let mut long = ok.clone();
        long.vault.policies = vec!["p".repeat(257)];
        let mut meta = ok.clone();
        meta.vault.metadata = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        let mut big_value = ok.clone();
        big_value.vault.metadata.insert("k".into(), "v".repeat(513));
        let mut big_key = ok.clone();
        big_key.vault.metadata.insert("k".repeat(129), "v".into());
        for s in [many, long, meta, big_value, big_key] {
            let e = validate(&s, "ns", &rules()).unwrap_err();
            assert_eq!(e.reason, Reason::InvalidSpec);
            assert!(e.message.contains("vault."), "{}", e.message);
        }
        let mut at_bounds = ok;
        at_bounds.vault.policies = (0..64)
            .map(|i| format!("{i:03}{}", "p".repeat(253)))
            .collect();
        at_bounds.vault.metadata = (0..32)
            .map(|i| (format!("{i:03}{}", "k".repeat(125)), "v".repeat(512)))
            .collect();
        assert!(validate(&at_bounds, "ns", &rules()).is_ok());
    }
}
