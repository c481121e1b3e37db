//! The pure admission decision: which binding a pod belongs to, whether it may be injected,
//! and a refusal a person can act on when not.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;

use crate::config::{InjectorConfig, RoleRule};
use crate::core::labels::Labels;
use crate::core::reason::Reason;
use crate::core::selection::{self, Selection};
use crate::core::spec::validate_watched;
use crate::crd::AgentSecretBinding;
use crate::webhook::inject::{INJECT_LABEL, INJECTED_ANNOTATION, Target, build, describe_pod};

/// What to answer for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Allowed unchanged; the word says why (`not-opted-in`, `already-injected`).
    Skip(&'static str),
    /// Allowed with this JSON Patch, for `binding`.
    Inject {
        /// The binding the wrap will come from.
        binding: String,
        /// JSON Patch operations.
        patch: Vec<Value>,
    },
    /// Denied.
    Refuse(Refusal),
}

/// A denial: the reason word, the message for the person creating the pod, and the bindings
/// that should get an Event.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// `NoBinding`, `Conflict`, `InvalidSpec`, `RoleNotAllowed` or `CannotInject`.
    pub reason: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// Bindings concerned (sorted).
    pub bindings: Vec<String>,
}

/// Decides for `pod` in `namespace` given every known binding (any namespace), the operator's
/// allowed roles and watched namespaces.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    bindings: &[std::sync::Arc<AgentSecretBinding>],
    rules: &[RoleRule],
    watched: &[String],
    cfg: &InjectorConfig,
    nonce: &str,
) -> Decision {
    if pod.labels().get(INJECT_LABEL).map(String::as_str) != Some("true") {
        return Decision::Skip("not-opted-in");
    }
    if pod.annotations().contains_key(INJECTED_ANNOTATION) {
        return Decision::Skip("already-injected");
    }
    let who = describe_pod(pod);
    let Selection {
        selecting,
        unreadable,
    } = selection::selecting(bindings, namespace, &Labels::from_map(pod.labels()));
    match selecting.as_slice() {
        [] => {
            let labels: Vec<String> = pod
                .labels()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut message = format!(
                "{who} asks for a cubbyhole token (label {INJECT_LABEL}=true) but no AgentSecretBinding in namespace {namespace:?} selects its labels [{}]: create one whose podSelector matches, or remove the label",
                labels.join(", ")
            );
            for (name, why) in &unreadable {
                message.push_str(&format!("; binding {name:?} cannot select anything: {why}"));
            }
            Decision::Refuse(Refusal {
                reason: "NoBinding",
                message,
                bindings: unreadable.into_iter().map(|(n, _)| n).collect(),
            })
        }
        [binding] => {
            let name = binding.name_any();
            let valid = match validate_watched(&binding.spec, namespace, rules, watched) {
                Ok(v) => v,
                Err(invalid) => {
                    return Decision::Refuse(Refusal {
                        reason: invalid.reason.as_str(),
                        message: format!(
                            "{who} is selected by AgentSecretBinding {name:?}, which is not valid ({}): {}",
                            invalid.reason, invalid.message
                        ),
                        bindings: vec![name],
                    });
                }
            };
            let target = Target {
                binding: &name,
                spec: &binding.spec,
                wrap_ttl: valid.wrap_ttl,
            };
            match build(pod, &target, cfg, nonce) {
                Ok(patch) => Decision::Inject {
                    binding: name,
                    patch,
                },
                Err(why) => Decision::Refuse(Refusal {
                    reason: "CannotInject",
                    message: format!(
                        "cubbyhole cannot inject {who} for AgentSecretBinding {name:?}: {why}"
                    ),
                    bindings: vec![name],
                }),
            }
        }
        many => {
            let names: Vec<String> = many.iter().map(|b| b.name_any()).collect();
            Decision::Refuse(Refusal {
                reason: Reason::Conflict.as_str(),
                message: format!(
                    "{who} is selected by {} AgentSecretBindings in namespace {namespace:?} ({}); neither would mint for it: narrow their podSelectors so that exactly one selects it",
                    names.len(),
                    names.join(", ")
                ),
                bindings: names,
            })
        }
    }
}
