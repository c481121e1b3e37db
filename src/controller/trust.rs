//! Which per-pod records the operator may act on. Only a record whose signature verifies is
//! ever acted on (Vault lookups and revocations, writes, deletes). An unsigned record, written
//! by the version before records were signed, is adopted (signed as it stands) once Vault
//! confirms that what it names belongs to it; a forged one is reported once and left alone.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use tracing::{info, warn};

use crate::controller::context::{Context, Error, key};
use crate::crd::AgentSecretBinding;
use crate::record::seal::Authenticity;
use crate::record::writes::{self, ClaimError, Records};
use crate::record::{SecretsByName, WrapState};
use crate::vault::{SecretString, VaultError, WrapLookup};

/// Event reason for a record that is not the operator's.
pub const FORGED_REASON: &str = "ForgedRecord";
/// Policy Vault gives wrapping tokens.
const WRAPPING_POLICY: &str = "response-wrapping";
/// Data entries of an unsigned Secret tried as its wrapping token (the key is unknown when the
/// binding is gone).
const MAX_TOKEN_CANDIDATES: usize = 4;

/// What `auth/token/lookup-accessor` tells about a token (never the token itself).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TokenFacts {
    /// Token metadata.
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Path it was created at.
    #[serde(default)]
    pub path: String,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub creation_time: i64,
}

/// What Vault says about the accessors an unsigned record names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evidence {
    /// The token accessor's token; `None` when it is gone (or the record names none).
    pub token: Option<TokenFacts>,
    /// The wrap accessor's token; `None` when it is gone (or the record names none).
    pub wrap: Option<TokenFacts>,
    /// `sys/wrapping/lookup` of each valid wrapping token held in the Secret.
    pub wraps_in_secret: Vec<WrapLookup>,
}

/// The verdict on an unsigned record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// What it names is its own (or gone): sign it and treat it as ours.
    Adopt,
    /// It names something that is not its own: never act on it.
    Forged(&'static str),
}

/// The accessors an unsigned record names that Vault must be asked about: `(token, wrap)`.
/// Nothing when the record is forged on its face (a wrap accessor without a token accessor:
/// the operator always wrote both at once).
pub fn lookups_needed(wrap: &WrapState) -> (Option<&str>, Option<&str>) {
    if wrap.accessor.is_none() {
        return (None, None);
    }
    (wrap.accessor.as_deref(), wrap.wrap_accessor.as_deref())
}

/// Decides whether an unsigned record in `namespace` labelled with `binding` may be adopted.
///
/// - No accessor at all (Claimed, Failed): nothing to revoke; adopt.
/// - A wrap accessor without a token accessor: never written by the operator; forged.
/// - The token accessor: gone, or a token whose metadata `namespace`, `pod_uid` and `binding`
///   are the record's (the operator sets them at mint).
/// - The wrap accessor: gone, or a wrapping token that is the one held in this Secret (same
///   creation path and time): revoking it then harms nothing the Secret's writer could not.
pub fn adoption(namespace: &str, binding: &str, wrap: &WrapState, evidence: &Evidence) -> Adoption {
    if wrap.accessor.is_none() {
        return match wrap.wrap_accessor {
            None => Adoption::Adopt,
            Some(_) => Adoption::Forged("it names a wrap accessor without a token accessor"),
        };
    }
    if let Some(token) = &evidence.token {
        let meta = token.meta.clone().unwrap_or_default();
        let is = |k: &str, v: &str| meta.get(k).map(String::as_str) == Some(v);
        if !(is("namespace", namespace) && is("pod_uid", &wrap.pod_uid) && is("binding", binding)) {
            return Adoption::Forged("its token accessor names a token not minted for this pod");
        }
    }
    if wrap.wrap_accessor.is_some()
        && let Some(w) = &evidence.wrap
    {
        let same = |l: &WrapLookup| {
            l.creation_path == w.path
                && l.creation_time
                    .parse::<Timestamp>()
                    .is_ok_and(|t| (t.as_second() - w.creation_time).abs() <= 1)
        };
        if w.policies != [WRAPPING_POLICY] || !evidence.wraps_in_secret.iter().any(same) {
            return Adoption::Forged(
                "its wrap accessor names a token that is not the wrapping token in the Secret",
            );
        }
    }
    Adoption::Adopt
}

/// A binding's records sorted by whether they may be acted on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vetted {
    /// Authentic records (adopted ones with their new resourceVersion).
    pub trusted: Vec<WrapState>,
    /// Secret names of records never touched: forged, or unsigned and not adopted (yet).
    pub untrusted: BTreeSet<String>,
}

/// Sorts `wraps` (one binding's records, read with `raw` their Secrets by name): adopts
/// unsigned records Vault vouches for and reports forged ones (Event on `binding` when it
/// exists, else on the Secret; once per Secret version). An error (Vault or API server) keeps
/// that record untrusted for this round and is returned after the others were vetted.
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
    for mut wrap in wraps {
        let secret = raw.get(&wrap.secret).map(AsRef::as_ref);
        let why = match wrap.authenticity {
            Authenticity::Authentic => {
                vetted.trusted.push(wrap);
                continue;
            }
            Authenticity::Forged => {
                "its signature does not verify (altered, or not written by this operator)"
            }
            Authenticity::Unsigned if already_reported(ctx, ns, &wrap) => {
                vetted.untrusted.insert(wrap.secret);
                continue;
            }
            Authenticity::Unsigned => match adopt(ctx, records, &wrap, secret).await {
                Ok(Some(rv)) => {
                    info!(namespace = %ns, binding = %records.sealer.binding, secret = %wrap.secret,
                        "adopted an unsigned record of an earlier version: signed it");
                    wrap.resource_version = Some(rv);
                    wrap.authenticity = Authenticity::Authentic;
                    vetted.trusted.push(wrap);
                    continue;
                }
                Ok(None) => {
                    vetted.untrusted.insert(wrap.secret);
                    continue;
                }
                Err(Verdict::Forged(why)) => why,
                Err(Verdict::Failed(e)) => {
                    warn!(namespace = %ns, secret = %wrap.secret, error = %e,
                        "could not vet an unsigned record; left untouched, retrying");
                    first_error.get_or_insert(e);
                    vetted.untrusted.insert(wrap.secret);
                    continue;
                }
            },
        };
        let target = match binding {
            Some(b) => b.object_ref(&()),
            None => secret_ref(ns, &wrap.secret, secret),
        };
        report_forged(ctx, ns, records.sealer.binding, &wrap, &target, why).await;
        vetted.untrusted.insert(wrap.secret);
    }
    (vetted, first_error)
}

/// Why an unsigned record was not adopted.
enum Verdict {
    Forged(&'static str),
    Failed(Error),
}

/// Asks Vault about an unsigned record and signs it when it may be adopted. `Ok(None)`: it
/// changed meanwhile (the next round looks again).
async fn adopt(
    ctx: &Context,
    records: &Records<'_>,
    wrap: &WrapState,
    secret: Option<&Secret>,
) -> Result<Option<String>, Verdict> {
    let evidence = gather(ctx, wrap, secret)
        .await
        .map_err(|e| Verdict::Failed(e.into()))?;
    let sealer = &records.sealer;
    match adoption(sealer.namespace, sealer.binding, wrap, &evidence) {
        Adoption::Forged(why) => Err(Verdict::Forged(why)),
        Adoption::Adopt => match writes::adopt(records, wrap).await {
            Ok(rv) => Ok(Some(rv)),
            Err(ClaimError::Kube(e)) => Err(Verdict::Failed(e.into())),
            Err(_) => Ok(None),
        },
    }
}

/// Looks up what an unsigned record names.
async fn gather(
    ctx: &Context,
    wrap: &WrapState,
    secret: Option<&Secret>,
) -> Result<Evidence, VaultError> {
    let (token, wrap_accessor) = lookups_needed(wrap);
    let mut evidence = Evidence::default();
    if let Some(a) = token {
        evidence.token = ctx.vault.lookup_accessor(a).await?;
    }
    if let Some(a) = wrap_accessor {
        evidence.wrap = ctx.vault.lookup_accessor(a).await?;
    }
    if evidence.wrap.is_some() {
        for candidate in token_candidates(secret) {
            if let Some(l) = ctx.vault.lookup_wrap(&candidate).await? {
                evidence.wraps_in_secret.push(l);
            }
        }
    }
    Ok(evidence)
}

/// The Secret's data values that could be a wrapping token (short text).
fn token_candidates(secret: Option<&Secret>) -> Vec<SecretString> {
    secret
        .and_then(|s| s.data.as_ref())
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.0.is_empty() && v.0.len() <= 512)
        .filter_map(|(_, v)| String::from_utf8(v.0.clone()).ok())
        .map(|t| SecretString::new(t.trim()))
        .take(MAX_TOKEN_CANDIDATES)
        .collect()
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

fn already_reported(ctx: &Context, ns: &str, wrap: &WrapState) -> bool {
    ctx.forged
        .lock()
        .expect("forged lock")
        .get(&key(ns, &wrap.secret))
        .is_some_and(|rv| *rv == wrap.resource_version)
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
    {
        let mut seen = ctx.forged.lock().expect("forged lock");
        let k = key(namespace, &wrap.secret);
        if seen.get(&k) == Some(&wrap.resource_version) {
            return;
        }
        seen.insert(k, wrap.resource_version.clone());
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
        secondary: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(wrap.secret.clone()),
            namespace: Some(namespace.into()),
            ..Default::default()
        }),
    };
    if let Err(e) = ctx.recorder.publish(&event, target).await {
        tracing::debug!(error = %e, "event not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Phase;

    fn unsigned(phase: Phase, wrap_accessor: Option<&str>, accessor: Option<&str>) -> WrapState {
        WrapState {
            secret: "p-b-wrap".into(),
            resource_version: Some("7".into()),
            pod: "p".into(),
            pod_uid: "uid-p".into(),
            start: 0,
            phase,
            claimed_at: None,
            vault_seen_at: None,
            wrap_accessor: wrap_accessor.map(str::to_string),
            accessor: accessor.map(str::to_string),
            previous_accessor: None,
            issued_at: None,
            expires_at: None,
            verified: false,
            message: None,
            receipts_after: None,
            has_token: false,
            deleting: false,
            authenticity: Authenticity::Unsigned,
            annotations: BTreeMap::new(),
        }
    }

    fn minted(ns: &str, uid: &str, binding: &str) -> TokenFacts {
        TokenFacts {
            meta: Some(BTreeMap::from([
                ("namespace".to_string(), ns.to_string()),
                ("pod".to_string(), "p".to_string()),
                ("pod_uid".to_string(), uid.to_string()),
                ("binding".to_string(), binding.to_string()),
            ])),
            policies: vec!["agent".into()],
            path: "auth/token/create/cubbyhole-agent".into(),
            creation_time: 1_796_002_529,
        }
    }

    fn wrapping(creation_time: i64) -> TokenFacts {
        TokenFacts {
            meta: None,
            policies: vec![WRAPPING_POLICY.into()],
            path: "auth/token/create/cubbyhole-agent".into(),
            creation_time,
        }
    }

    fn in_secret(time: &str) -> WrapLookup {
        WrapLookup {
            creation_path: "auth/token/create/cubbyhole-agent".into(),
            creation_time: time.into(),
            creation_ttl: 60,
        }
    }

    #[test]
    fn records_without_accessors_are_adopted_without_asking_vault() {
        for phase in [Phase::Claimed, Phase::Failed] {
            let w = unsigned(phase, None, None);
            assert_eq!(lookups_needed(&w), (None, None));
            assert_eq!(
                adoption("ns", "b", &w, &Evidence::default()),
                Adoption::Adopt
            );
        }
    }

    #[test]
    fn a_wrap_accessor_alone_is_forged_on_its_face() {
        let w = unsigned(Phase::Issued, Some("victim-wrap"), None);
        assert_eq!(lookups_needed(&w), (None, None));
        assert!(matches!(
            adoption("ns", "b", &w, &Evidence::default()),
            Adoption::Forged(_)
        ));
    }

    #[test]
    fn a_token_minted_for_the_record_is_adopted() {
        let w = unsigned(Phase::Unwrapped, None, Some("acc"));
        assert_eq!(lookups_needed(&w), (Some("acc"), None));
        let evidence = Evidence {
            token: Some(minted("ns", "uid-p", "b")),
            ..Default::default()
        };
        assert_eq!(adoption("ns", "b", &w, &evidence), Adoption::Adopt);
    }

    #[test]
    fn a_token_that_is_gone_is_adopted() {
        let w = unsigned(Phase::Unwrapped, None, Some("acc"));
        assert_eq!(
            adoption("ns", "b", &w, &Evidence::default()),
            Adoption::Adopt
        );
    }

    #[test]
    fn a_token_minted_for_someone_else_is_forged() {
        let w = unsigned(Phase::Unwrapped, None, Some("victim"));
        let forged = |token: TokenFacts| {
            let evidence = Evidence {
                token: Some(token),
                ..Default::default()
            };
            matches!(adoption("ns", "b", &w, &evidence), Adoption::Forged(_))
        };
        // The case: an unrelated token with no metadata at all.
        assert!(forged(TokenFacts::default()));
        assert!(forged(minted("other-ns", "uid-p", "b")));
        assert!(forged(minted("ns", "uid-other", "b")));
        assert!(forged(minted("ns", "uid-p", "ghost")));
        let mut partial = minted("ns", "uid-p", "b");
        partial.meta.as_mut().unwrap().remove("binding");
        assert!(forged(partial));
    }

    #[test]
    fn a_live_wrap_must_be_the_one_in_the_secret() {
        let w = unsigned(Phase::Issued, Some("wacc"), Some("acc"));
        assert_eq!(lookups_needed(&w), (Some("acc"), Some("wacc")));
        let base = Evidence {
            token: Some(minted("ns", "uid-p", "b")),
            wrap: Some(wrapping(1_796_002_529)),
            wraps_in_secret: vec![in_secret("2026-11-30T01:35:29.593122682Z")],
        };
        assert_eq!(adoption("ns", "b", &w, &base), Adoption::Adopt);
        // The wrap is gone: nothing to revoke.
        let gone = Evidence {
            wrap: None,
            wraps_in_secret: vec![],
            ..base.clone()
        };
        assert_eq!(adoption("ns", "b", &w, &gone), Adoption::Adopt);
        // Someone else's live wrap: not in this Secret, or no wrapping token at all.
        for bad in [
            Evidence {
                wraps_in_secret: vec![],
                ..base.clone()
            },
            Evidence {
                wraps_in_secret: vec![in_secret("2026-11-30T01:40:00Z")],
                ..base.clone()
            },
            Evidence {
                wraps_in_secret: vec![WrapLookup {
                    creation_path: "auth/token/create/other".into(),
                    ..in_secret("2026-11-30T01:35:29Z")
                }],
                ..base.clone()
            },
            Evidence {
                wrap: Some(minted("ns", "uid-p", "b")),
                ..base.clone()
            },
        ] {
            assert!(
                matches!(adoption("ns", "b", &w, &bad), Adoption::Forged(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn candidates_are_short_text_values_only() {
        use k8s_openapi::ByteString;
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("token".to_string(), ByteString(b"s.wrap\n".to_vec())),
                ("empty".to_string(), ByteString(vec![])),
                ("binary".to_string(), ByteString(vec![0xff, 0xfe])),
                ("big".to_string(), ByteString(vec![b'a'; 600])),
            ])),
            ..Default::default()
        };
        let c = token_candidates(Some(&secret));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].expose(), "s.wrap");
        assert!(token_candidates(None).is_empty());
    }
}
