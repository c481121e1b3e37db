//! The pure decision of the request endpoint: may the pod a token is bound to be served, and
//! by which binding. Every refusal says what to fix.

use std::sync::Arc;

use kube::ResourceExt;

use crate::config::RoleRule;
use crate::core::pod::PodView;
use crate::core::selection::selecting;
use crate::core::spec::{ValidSpec, validate_watched};
use crate::crd::{AgentSecretBinding, Delivery};
use crate::request::identity::PodIdentity;
use crate::request::protocol::{Refusal, reason};

/// The binding that serves an ask.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// The binding.
    pub binding: Arc<AgentSecretBinding>,
    /// Its checked spec.
    pub valid: ValidSpec,
}

/// Decides for `pod` (as read just now; `None`: not found) asking as `who`, given every known
/// binding.
pub fn choose(
    who: &PodIdentity,
    pod: Option<&PodView>,
    bindings: &[Arc<AgentSecretBinding>],
    rules: &[RoleRule],
    watched: &[String],
) -> Result<Chosen, Refusal> {
    let name = format!("pod {}/{}", who.namespace, who.pod);
    let pod = pod.filter(|p| p.uid == who.pod_uid).ok_or_else(|| {
        Refusal::new(
            reason::POD_GONE,
            format!("{name} with uid {} no longer exists", who.pod_uid),
        )
    })?;
    if pod.terminating {
        return Err(Refusal::new(
            reason::POD_GONE,
            format!("{name} is terminating"),
        ));
    }
    if pod.finished {
        return Err(Refusal::new(
            reason::POD_GONE,
            format!("{name} has finished"),
        ));
    }
    let selection = selecting(bindings, &who.namespace, &pod.labels);
    let binding = match selection.selecting.as_slice() {
        [] => {
            return Err(Refusal::new(
                reason::NOT_SELECTED,
                format!(
                    "no AgentSecretBinding in namespace {:?} selects {name}: create one with delivery: Request whose podSelector matches its labels",
                    who.namespace
                ),
            ));
        }
        [one] => *one,
        many => {
            let names: Vec<String> = many.iter().map(|b| b.name_any()).collect();
            return Err(Refusal::new(
                reason::CONFLICT,
                format!(
                    "{name} is selected by {} AgentSecretBindings ({}); none serves it: narrow their podSelectors so that exactly one selects it",
                    names.len(),
                    names.join(", ")
                ),
            ));
        }
    };
    let binding_name = binding.name_any();
    if binding.spec.delivery != Delivery::Request {
        return Err(Refusal::new(
            reason::NOT_ON_REQUEST,
            format!(
                "AgentSecretBinding {binding_name:?} delivers wraps in the pod's Secret, not on request: set delivery: Request, or read the wrap from the Secret"
            ),
        ));
    }
    let valid =
        validate_watched(&binding.spec, &who.namespace, rules, watched).map_err(|invalid| {
            Refusal::new(
                reason::INVALID_BINDING,
                format!(
                    "AgentSecretBinding {binding_name:?} is not valid ({}): {}",
                    invalid.reason, invalid.message
                ),
            )
        })?;
    Ok(Chosen {
        binding: binding.clone(),
        valid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(
        name: &str,
        ns: &str,
        app: &str,
        delivery: &str,
        role: &str,
    ) -> Arc<AgentSecretBinding> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "cubbyhole.dev/v1alpha1",
                "kind": "AgentSecretBinding",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "podSelector": {"matchLabels": {"app": app}},
                    "vault": {"tokenRole": role},
                    "delivery": delivery,
                },
            }))
            .unwrap(),
        )
    }

    fn pod(uid: &str, app: &str) -> PodView {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "agents", "uid": uid, "labels": {"app": app}},
            "status": {"phase": "Pending"},
        }))
        .unwrap();
        PodView::from_pod(&pod).unwrap()
    }

    fn who() -> PodIdentity {
        PodIdentity {
            namespace: "agents".into(),
            service_account: "default".into(),
            pod: "web-1".into(),
            pod_uid: "u-1".into(),
        }
    }

    fn rules() -> Vec<RoleRule> {
        vec![RoleRule {
            namespaces: vec!["agents".into()],
            roles: vec!["agent".into()],
        }]
    }

    #[test]
    fn the_one_request_binding_selecting_the_live_pod_serves_it() {
        let bindings = [
            binding("b", "agents", "web", "Request", "agent"),
            binding("other-ns", "elsewhere", "web", "Request", "agent"),
            binding("other-app", "agents", "db", "Request", "agent"),
        ];
        let chosen = choose(&who(), Some(&pod("u-1", "web")), &bindings, &rules(), &[]).unwrap();
        assert_eq!(chosen.binding.name_any(), "b");
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let one = [binding("b", "agents", "web", "Request", "agent")];
        let refused = |pod: Option<PodView>, bindings: &[Arc<AgentSecretBinding>]| {
            choose(&who(), pod.as_ref(), bindings, &rules(), &[])
                .unwrap_err()
                .reason
        };
        assert_eq!(refused(None, &one), reason::POD_GONE);
        // Same name, another uid: a replaced pod's token.
        assert_eq!(refused(Some(pod("u-2", "web")), &one), reason::POD_GONE);
        let mut terminating = pod("u-1", "web");
        terminating.terminating = true;
        assert_eq!(refused(Some(terminating), &one), reason::POD_GONE);
        let mut finished = pod("u-1", "web");
        finished.finished = true;
        assert_eq!(refused(Some(finished), &one), reason::POD_GONE);
        assert_eq!(refused(Some(pod("u-1", "db")), &one), reason::NOT_SELECTED);
        let two = [
            binding("a", "agents", "web", "Request", "agent"),
            binding("b", "agents", "web", "Request", "agent"),
        ];
        assert_eq!(refused(Some(pod("u-1", "web")), &two), reason::CONFLICT);
        let secret = [binding("b", "agents", "web", "Secret", "agent")];
        assert_eq!(
            refused(Some(pod("u-1", "web")), &secret),
            reason::NOT_ON_REQUEST
        );
        let forbidden = [binding("b", "agents", "web", "Request", "admin")];
        assert_eq!(
            refused(Some(pod("u-1", "web")), &forbidden),
            reason::INVALID_BINDING
        );
    }
}
