//! Which per-pod records the operator may act on. Only a record whose signature verifies is
//! ever acted on (Vault lookups, renewals and revocations, writes). Any other record (unsigned,
//! forged, or signed with a record key this operator no longer has) is reported once and left
//! alone, with one exception that needs no Vault call: when its Secret is being deleted (its
//! pod is gone), its finalizer is released so nothing is stranded. Whatever token it named
//! ends by itself in Vault within the renewal window.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::controller::context::{Context, Error, key};
use crate::crd::AgentSecretBinding;
use crate::record::seal::Authenticity;
use crate::record::writes::{self, Records};
use crate::record::{SECRET_FINALIZER, SecretsByName, WrapState};

/// Event reason for a record that is not the operator's.
pub const FORGED_REASON: &str = "ForgedRecord";
/// Event reason for a record that no longer verifies, released at its deletion.
pub const RELEASED_REASON: &str = "UnverifiedRecordReleased";

/// A binding's records sorted by whether they may be acted on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vetted {
    /// Authentic records: the only ones acted on.
    pub trusted: Vec<WrapState>,
    /// Secret names of records never acted on: unsigned, forged, or signed with a lost key.
    pub untrusted: BTreeSet<String>,
}

/// Why a record that is not authentic is not acted on, for a person.
pub fn distrust_reason(authenticity: Authenticity) -> &'static str {
    match authenticity {
        Authenticity::Unsigned => {
            "it carries no signature (cubbyhole signs every record it writes)"
        }
        _ => {
            "its signature does not verify (altered, written by someone else, or signed with a record key this operator no longer has)"
        }
    }
}

/// Sorts `wraps` (one binding's records, read with `raw` their Secrets by name). A record
/// that is not authentic is reported (Event on `binding` when it exists, else on the Secret;
/// once per Secret version), or, when its Secret is being deleted, released. A failed release
/// is returned after the others were vetted (the next round tries again).
pub async fn vet(
    ctx: &Context,
    records: &Records<'_>,
    binding: Option<&AgentSecretBinding>,
    wraps: Vec<WrapState>,
    raw: &SecretsByName,
) -> (Vetted, Option<Error>) {
    let ns = records.sealer.namespace;
    let mut vetted = Vetted::default();
    let mut first_error = None;
    for wrap in wraps {
        if wrap.authenticity == Authenticity::Authentic {
            vetted.trusted.push(wrap);
            continue;
        }
        let secret = raw.get(&wrap.secret).map(AsRef::as_ref);
        let target = match binding {
            Some(b) => b.object_ref(&()),
            None => secret_ref(ns, &wrap.secret, secret),
        };
        let why = distrust_reason(wrap.authenticity);
        let held = secret.is_some_and(|s| s.finalizers().iter().any(|f| f == SECRET_FINALIZER));
        if wrap.deleting && held {
            match writes::remove(records.api, &wrap).await {
                Ok(true) => report_released(ctx, records.sealer.binding, &wrap, &target, why).await,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e.into());
                }
            }
        } else {
            report_forged(ctx, ns, records.sealer.binding, &wrap, &target, why).await;
        }
        vetted.untrusted.insert(wrap.secret);
    }
    (vetted, first_error)
}

/// Says that a record that does not verify was released at its Secret's deletion: a Warning
/// Event, the metric and a log line, naming the Secret and why, never what it says.
async fn report_released(
    ctx: &Context,
    binding: &str,
    wrap: &WrapState,
    target: &ObjectReference,
    why: &str,
) {
    let namespace = target.namespace.clone().unwrap_or_default();
    ctx.metrics.unverified_released(&namespace);
    warn!(namespace = %namespace, secret = %wrap.secret, binding = %binding, why,
        "released the finalizer of a record that does not verify; nothing it names was touched in Vault");
    let note = format!(
        "Secret {} (a record of binding {binding}) was being deleted but {why}: its finalizer was released without any Vault call. A token it named ends by itself within the renewal window. If the record key was lost or rotated, see README \"Record keys\".",
        wrap.secret
    );
    let event = Event {
        type_: EventType::Warning,
        reason: RELEASED_REASON.into(),
        note: Some(note),
        action: "Release".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, target).await {
        tracing::debug!(error = %e, "event not published");
    }
}

/// A reference to a Secret for Events.
pub fn secret_ref(namespace: &str, name: &str, secret: Option<&Secret>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid: secret.and_then(|s| s.uid()),
        resource_version: secret.and_then(|s| s.resource_version()),
        ..Default::default()
    }
}

/// How many forged records are remembered before those whose Secrets are gone are forgotten.
const PRUNE_FORGED_ABOVE: usize = 4096;

/// Notes that the record at `key` was seen at `version`; true the first time that version is
/// seen (a forged record is reported once per version, again whenever someone rewrites it).
fn first_sighting(
    seen: &mut HashMap<String, Option<String>>,
    key: String,
    version: &Option<String>,
) -> bool {
    if seen.get(&key) == Some(version) {
        return false;
    }
    seen.insert(key, version.clone());
    true
}

/// Reports a forged record once per Secret version: a Warning Event on `target`, the metric
/// and a log line. Names the Secret, never what its annotations say.
pub async fn report_forged(
    ctx: &Context,
    namespace: &str,
    binding: &str,
    wrap: &WrapState,
    target: &ObjectReference,
    why: &str,
) {
    let first = {
        let mut seen = ctx.forged.lock().expect("forged lock");
        if seen.len() >= PRUNE_FORGED_ABOVE {
            // Forget the Secrets that are gone (their reports were made; nothing is left).
            seen.retain(|k, _| {
                k.split_once('/')
                    .is_some_and(|(ns, name)| ctx.secrets.get(ns, name).is_some())
            });
        }
        first_sighting(
            &mut seen,
            key(namespace, &wrap.secret),
            &wrap.resource_version,
        )
    };
    if !first {
        return;
    }
    ctx.metrics.forged_record(namespace);
    warn!(namespace = %namespace, secret = %wrap.secret, binding = %binding, why,
        "forged record: left untouched, nothing it names was revoked");
    let note = format!(
        "Secret {} claims to be a record of binding {binding} but {why}: it was left untouched \
         and nothing it names was revoked. Find out who wrote it, then delete it (remove its \
         finalizer {} first).",
        wrap.secret,
        crate::record::SECRET_FINALIZER
    );
    // The forged Secret is the Event's related object, so each one is its own Event rather
    // than a count on one series per binding.
    let event = Event {
        type_: EventType::Warning,
        reason: FORGED_REASON.into(),
        note: Some(note),
        action: "Verify".into(),
        secondary: Some(secret_ref(namespace, &wrap.secret, None)),
    };
    if let Err(e) = ctx.recorder.publish(&event, target).await {
        tracing::debug!(error = %e, "event not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_record_is_reported_once_per_version() {
        let mut seen = HashMap::new();
        let v = |s: &str| Some(s.to_string());
        assert!(first_sighting(&mut seen, "ns/a".into(), &v("1")));
        assert!(!first_sighting(&mut seen, "ns/a".into(), &v("1")));
        assert!(
            first_sighting(&mut seen, "ns/b".into(), &v("1")),
            "another Secret"
        );
        assert!(
            first_sighting(&mut seen, "ns/a".into(), &v("2")),
            "rewritten"
        );
        assert!(!first_sighting(&mut seen, "ns/a".into(), &v("2")));
        assert!(first_sighting(&mut seen, "ns/c".into(), &None));
        assert!(!first_sighting(&mut seen, "ns/c".into(), &None));
    }

    #[test]
    fn an_event_names_the_secret_and_the_version_it_saw() {
        let bare = secret_ref("ns", "pod-a-wrap", None);
        assert_eq!(
            (bare.api_version.as_deref(), bare.kind.as_deref()),
            (Some("v1"), Some("Secret"))
        );
        assert_eq!(
            (bare.namespace.as_deref(), bare.name.as_deref()),
            (Some("ns"), Some("pod-a-wrap"))
        );
        assert_eq!((bare.uid, bare.resource_version), (None, None));
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                uid: Some("uid-s".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let seen = secret_ref("ns", "pod-a-wrap", Some(&secret));
        assert_eq!(
            (seen.uid.as_deref(), seen.resource_version.as_deref()),
            (Some("uid-s"), Some("7"))
        );
    }

    #[test]
    fn each_kind_of_distrust_says_why() {
        assert!(distrust_reason(Authenticity::Unsigned).contains("no signature"));
        assert!(distrust_reason(Authenticity::Forged).contains("record key"));
    }
}
