//! What goes when a binding goes: its finalizer and the periodic sweep (records whose binding
//! vanished past its finalizer) both retire its records here, revoking what they name.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::context::{Context, Error};
use crate::controller::effects::{RecordOps, VaultOps};
use crate::controller::lists::paged;
use crate::controller::trust;
use crate::controller::vouch::{Claim, revoke_named};
use crate::core::plan;
use crate::core::pod::is_valid_secret_name;
use crate::crd::AgentSecretBinding;
use crate::metrics::Metrics;
use crate::record::writes::{Records, Sealer};
use crate::record::{BINDING_LABEL, SecretsByName, WrapState};

/// Every `sweep_period` (first after 5 s), once the operator is ready: retires the records of
/// bindings that are gone. Runs until `shutdown`.
pub async fn sweep_loop(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = ctx.config.sweep_period;
        if !ctx.readiness.is_ready() {
            continue;
        }
        match orphaned_bindings(&ctx).await {
            Ok(orphans) => {
                for (ns, binding) in orphans {
                    // Forged records of a gone binding are reported once and stay.
                    match retire_records(&ctx, &ns, &binding, None).await {
                        // Only forged records left (reported once): nothing to say.
                        Ok(0) => {}
                        Ok(n) => {
                            info!(namespace = %ns, binding = %binding, removed = n, "sweep: binding gone, records revoked and removed")
                        }
                        Err(e) => {
                            warn!(namespace = %ns, binding = %binding, error = %e, "sweep failed; retrying next round")
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "sweep list failed"),
        }
    }
}

/// `(namespace, binding)` pairs that own records but are gone. The owners come from the
/// records cache (no LIST of every record: at 10,000 pods that would be the operator's largest
/// allocation); that each binding is gone is checked against the API server, not the cache, so
/// a binding created a moment ago is never swept. A record the cache has not seen yet is
/// swept in a later round.
pub async fn orphaned_bindings(ctx: &Context) -> Result<Vec<(String, String)>, kube::Error> {
    let owners: BTreeSet<(String, String)> = ctx.secrets.groups().into_iter().collect();
    let mut orphans = vec![];
    for (ns, binding) in owners {
        // A label no binding could carry (e.g. empty) names nothing to retire, and must not
        // fail the lookup of every other binding.
        if !is_valid_secret_name(&binding) {
            continue;
        }
        let api: Api<AgentSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
        if api.get_opt(&binding).await?.is_none() {
            orphans.push((ns, binding));
        }
    }
    Ok(orphans)
}

/// Revokes everything a binding minted and deletes its records (finalizer and sweep). Only
/// authentic records are acted on: others are reported (Event on `on` when the binding still
/// exists, else on the Secret) and stay, unless their Secret is being deleted, when their
/// finalizer is released (`trust::vet`). Returns how many records were removed; an error after
/// the others were handled when a release failed (it is retried).
pub async fn retire_records(
    ctx: &Context,
    namespace: &str,
    binding: &str,
    on: Option<&AgentSecretBinding>,
) -> Result<usize, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let (listed, raw) = list_records(ctx, &secrets, binding, None).await?;
    let keys = ctx.record_keys.current();
    let writer = Records {
        api: &secrets,
        sealer: Sealer {
            namespace,
            binding,
            keys: &keys,
        },
    };
    let (vetted, vet_error) = trust::vet(ctx, &writer, on, listed, &raw).await;
    // A swept binding is gone: its wraps are vouched for as wraps of any token role.
    let claim = Claim {
        namespace,
        binding,
        role: on.map(|b| b.spec.vault.token_role.as_str()),
    };
    let records = ctx.live_records(writer);
    let (removed, changed) =
        retire_trusted(&ctx.vault, &records, &ctx.metrics, claim, &vetted.trusted).await?;
    if !vetted.untrusted.is_empty() {
        tracing::debug!(namespace = %namespace, binding = %binding, left = vetted.untrusted.len(),
            "records that are not ours were left untouched");
    }
    match (vet_error, changed) {
        (Some(e), _) => Err(e),
        (None, Some(secret)) => Err(Error::RecordChanged(secret)),
        (None, None) => Ok(removed),
    }
}

/// Retires a going binding's authentic records: revokes every token each names (Vault vouching
/// for each) and removes it. Returns how many were removed and the first that changed under us
/// (its removal lost the guard: retried). Stops at the first Vault or API error. The finalizer,
/// the sweep and the simulation's model of both run this.
pub async fn retire_trusted(
    vault: &impl VaultOps,
    records: &impl RecordOps,
    metrics: &Metrics,
    claim: Claim<'_>,
    trusted: &[WrapState],
) -> Result<(usize, Option<String>), Error> {
    let mut removed = 0;
    let mut changed = None;
    for wrap in trusted {
        // The binding is going: every token it minted goes with it.
        revoke_named(vault, metrics, claim, wrap, plan::revocations(wrap, true)).await?;
        if records.remove(wrap).await? {
            removed += 1;
        } else {
            changed.get_or_insert_with(|| wrap.secret.clone());
        }
    }
    Ok((removed, changed))
}

/// The binding's records listed from the API server (each with its authenticity), and the raw
/// Secrets by name. `secret_key` is the data key of the wrapping token, when known. For
/// retiring a binding's records, where only a fresh read will do.
async fn list_records(
    ctx: &Context,
    secrets: &Api<Secret>,
    binding: &str,
    secret_key: Option<&str>,
) -> Result<(Vec<WrapState>, SecretsByName), kube::Error> {
    let params = ListParams::default().labels(&format!("{BINDING_LABEL}={binding}"));
    let items = paged(&params, |page| async move { secrets.list(&page).await }).await?;
    let keys = ctx.record_keys.current();
    let wraps = items
        .iter()
        .filter_map(|s| WrapState::from_secret(s, secret_key, &keys))
        .collect();
    let raw = items
        .into_iter()
        .map(|s| (s.name_any(), Arc::new(s)))
        .collect();
    Ok((wraps, raw))
}
