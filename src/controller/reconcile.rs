//! One round for one binding, read top to bottom: observe (records, vetted; pods; conflicts),
//! plan (pure, `core::plan`), execute (`controller::execute`), write the status (`core::status`).
//! A deleted binding's finalizer hands over to `controller::sweep`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::controller::context::{Context, Error, LastDone, Memory, key};
use crate::controller::effects;
use crate::controller::execute::{self, Executor};
use crate::controller::{sweep, trust};
use crate::core::labels::LabelQuery;
use crate::core::plan::{self, Settings};
use crate::core::pod::PodView;
use crate::core::spec;
use crate::core::status::{self, Problems, StatusInput};
use crate::crd::{AgentSecretBinding, Delivery};
use crate::record::seal::Authenticity;
use crate::record::writes::{Records, Sealer};
use crate::record::{BINDING_FINALIZER, SecretsByName, WrapState};

/// Field manager for everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "cubbyhole";
/// How often a pod whose Secret name another Secret holds is tried again.
pub const TAKEN_NAME_RETRY: Duration = Duration::from_secs(30);
/// How long a name found taken is remembered (each retry reads it before minting).
const TAKEN_NAME_FORGET: Duration = Duration::from_secs(3600);
/// How soon a round whose only actions were lookups over the global budget runs again.
const DEFERRED_LOOKUP_RETRY: Duration = Duration::from_secs(1);
/// Safety-net requeue when nothing is due.
const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// Longest wait for the record cache to show the previous round's own writes.
const OWN_WRITES_WAIT: Duration = Duration::from_secs(2);
/// The shortest wait for a status write the pacing held back.
const STATUS_RETRY_FLOOR: Duration = Duration::from_millis(100);
/// Longest wait between retries of a failing binding.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Reconciles one binding: finalizer first, then apply or clean up.
pub async fn reconcile(
    binding: Arc<AgentSecretBinding>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    let ns = binding.namespace().unwrap_or_default();
    let name = binding.name_any();
    // Never plan from a record cache that does not yet show the previous round's writes (a
    // record created but not yet watched reads as missing: its pod would be minted for again).
    // Waited for before taking a slot, so a lagging watch holds up no other binding.
    let unseen = ctx
        .unseen_writes
        .lock()
        .expect("unseen writes lock")
        .remove(&key(&ns, &name));
    if let Some(written) = unseen
        && !effects::until_cached(&ctx.secrets, &ns, &written, OWN_WRITES_WAIT).await
    {
        tracing::debug!(namespace = %ns, binding = %name, "the record cache lags behind the previous round's writes");
    }
    // A fair share of the slots: another namespace's backlog delays this round by at most
    // one round.
    let _slot = ctx.slots.acquire(&ns).await;
    let started = Instant::now();
    let api: Api<AgentSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, BINDING_FINALIZER, binding, |event| async {
        match event {
            Finalizer::Apply(b) => apply(&b, &ctx).await,
            Finalizer::Cleanup(b) => cleanup_binding(&b, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.reconciled(started.elapsed());
    ctx.readiness.reconciled(&key(&ns, &name));
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("failures lock")
            .remove(&key(&ns, &name));
    }
    result
}

/// Requeues a failed binding with exponential backoff (1 s doubling, at most 60 s), each delay
/// drawn from the upper half of that (`backoff::jittered`).
pub fn error_policy(binding: Arc<AgentSecretBinding>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_error(error.category());
    let k = key(
        &binding.namespace().unwrap_or_default(),
        &binding.name_any(),
    );
    let mut failures = ctx.failures.lock().expect("failures lock");
    let n = failures.entry(k.clone()).or_default();
    *n = n.saturating_add(1);
    let delay = crate::backoff::jittered(backoff_delay(*n));
    warn!(binding = %k, category = error.category(), error = %error, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

/// The ceiling of the requeue delay after `failures` consecutive failed reconciles (counting
/// this one): 1 s, doubling with each failure, at most 60 s.
pub fn backoff_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

/// One round for a live binding, read top to bottom: observe, plan (pure), execute, write
/// the status, and say when to look again.
async fn apply(b: &AgentSecretBinding, ctx: &Context) -> Result<Requeue, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let keys = ctx.record_keys.current();
    let records = Records {
        api: &secrets_api,
        sealer: Sealer {
            namespace: &ns,
            binding: &name,
            keys: &keys,
        },
    };
    let validity = spec::validate_watched(
        &b.spec,
        &ns,
        &ctx.config.allowed_roles,
        &ctx.config.watch_namespaces,
    );
    let settings = settings(b, ctx, &validity);
    let mut problems = Problems::default();
    let now = Timestamp::now();

    let mut observed = observe(ctx, b, &records, &validity).await?;
    // Names a Secret not of this binding was found holding lately: not minted for again yet.
    let (taken, retry_taken_at) = recently_taken(&ctx.memory, &ns, now);
    observed.untrusted.extend(taken);
    // Vetting makes no Vault call: its only errors are the API server's.
    let mut first_error = observed.vet_error.take();

    let plan = match &validity {
        Err(invalid) => {
            problems.invalid = Some(invalid.clone());
            // No minting, but the tokens of pods that are gone are still revoked, and those
            // pods' agents hold are still renewed.
            plan::upkeep(
                &settings,
                &observed.pods,
                &observed.records,
                &renewed(&ctx.memory, &ns, &observed.records),
                now,
            )
        }
        Ok(_) => plan::plan(&plan::Input {
            settings: &settings,
            pods: &observed.pods,
            conflicts: &observed.conflicts,
            wraps: &observed.records,
            untrusted: &observed.untrusted,
            last_lookup: &looked_up(&ctx.memory, &ns, &observed.records),
            last_renewal: &renewed(&ctx.memory, &ns, &observed.records),
            now,
        }),
    };
    problems.invalid_names = plan.invalid_names.clone();
    problems.names_taken = plan.names_taken.clone();
    let mut wake = plan::earliest(plan.next_round(), retry_taken_at);
    tracing::debug!(namespace = %ns, binding = %name, actions = plan.actions.len(), wake_at = ?plan.wake_at, "planned");

    if !plan.actions.is_empty() {
        let planned = plan.actions.len();
        let live = ctx.live_records(records);
        let executor = Executor {
            vault: &ctx.vault,
            records: &live,
            memory: &ctx.memory,
            lookups: &ctx.lookups,
            metrics: &ctx.metrics,
            binding: b,
            secrets: &observed.secrets,
            settings: &settings,
            token_grace: ctx.config.token_grace,
            routine_events: ctx.config.routine_events,
        };
        // Records are independent: their actions run side by side, each record's in order.
        let executed = execute::run_all(&executor, plan.actions, ctx.config.step_concurrency).await;
        // The next round plans from the cache: it waits until the cache shows these writes.
        let written = std::mem::take(&mut *live.written.lock().expect("written lock"));
        if !written.is_empty() {
            ctx.unseen_writes
                .lock()
                .expect("unseen writes lock")
                .entry(key(&ns, &name))
                .or_default()
                .extend(written);
        }
        let took_effect = planned - executed.names_taken.len() - executed.lookups_deferred;
        let deferred = executed.lookups_deferred > 0;
        problems.names_taken.extend(executed.names_taken);
        if let Some(v) = executed.vault_unavailable {
            problems.vault_unavailable.get_or_insert(v);
        }
        if let Some(e) = executed.error {
            first_error.get_or_insert(e);
        }
        // The status shows only our records; anything new and unsigned is vetted next round.
        observed.records = cached_records(ctx, &ns, &name, &b.spec.secret_key)
            .await
            .0
            .into_iter()
            .filter(|w| w.authenticity == Authenticity::Authentic)
            .collect();
        // Something changed: look again soon for follow-ups (e.g. the next round of a
        // recreated pod). Lookups over the global budget are tried again in a second. Claims
        // refused because another Secret holds the name changed nothing: those are tried
        // again at a calm pace (nothing watches a foreign Secret).
        let follow_up = if took_effect > 0 {
            now
        } else if deferred {
            add_duration(now, DEFERRED_LOOKUP_RETRY)
        } else {
            add_duration(now, TAKEN_NAME_RETRY)
        };
        wake = Some(wake.map_or(follow_up, |w: Timestamp| w.min(follow_up)));
    }

    let (pods, conflicts) = match validity {
        Ok(_) => (&observed.pods[..], &observed.conflicts),
        // An invalid binding selects nothing: its status counts no pods.
        Err(_) => (&[][..], &observed.conflicts),
    };
    let status_due = write_status(ctx, b, pods, &observed.records, conflicts, &problems).await?;
    if let Some(e) = first_error {
        return Err(e);
    }
    if let Some(message) = problems.vault_unavailable {
        return Err(Error::VaultUnavailable(message));
    }
    let delay = wake
        .map(|w| {
            let ms = w.as_millisecond() - Timestamp::now().as_millisecond();
            Duration::from_millis(ms.max(0) as u64)
        })
        .unwrap_or(IDLE_REQUEUE)
        .clamp(Duration::from_millis(500), IDLE_REQUEUE);
    // Counts held back by the status pacing are written when due.
    let delay = status_due.map_or(delay, |due| {
        delay.min(
            due.saturating_duration_since(Instant::now())
                .max(STATUS_RETRY_FLOOR),
        )
    });
    tracing::debug!(namespace = %ns, binding = %name, requeue_in = ?delay, "reconciled");
    Ok(Requeue::requeue(delay))
}

/// The planner's knobs for a binding (an invalid spec gets a default wrap TTL: it mints
/// nothing).
fn settings(
    b: &AgentSecretBinding,
    ctx: &Context,
    validity: &Result<spec::ValidSpec, spec::Invalid>,
) -> Settings {
    Settings {
        binding: b.name_any(),
        wrap_ttl: validity
            .as_ref()
            .map_or(Duration::from_secs(60), |v| v.wrap_ttl),
        lookup_period: ctx.config.lookup_period,
        agent_container: b.spec.agent_container.clone(),
        revoke_on_pod_deletion: b.spec.revoke_on_pod_deletion,
        renewal_window: ctx.config.renewal_window,
        on_request: b.spec.delivery == Delivery::Request,
    }
}

/// What a round sees of one binding.
struct Observed {
    /// Authentic records (adopted ones included): the only ones acted on.
    records: Vec<WrapState>,
    /// Secret names of records that are not ours (forged, or unsigned and not adopted).
    untrusted: BTreeSet<String>,
    /// The binding's Secrets by name (wrapping tokens are read from here for lookups).
    secrets: SecretsByName,
    /// The pods the binding selects; for an invalid binding, the records' pods that exist.
    pods: Vec<PodView>,
    /// Pod name -> other bindings selecting it too.
    conflicts: BTreeMap<String, Vec<String>>,
    /// Vetting an unsigned record failed (it stays untrusted this round).
    vet_error: Option<Error>,
}

/// Reads a binding's records (vetted: unsigned ones of an earlier version are adopted when
/// Vault vouches for them, forged ones reported and left alone) and its pods.
async fn observe(
    ctx: &Context,
    b: &AgentSecretBinding,
    records: &Records<'_>,
    validity: &Result<spec::ValidSpec, spec::Invalid>,
) -> Result<Observed, Error> {
    let ns = records.sealer.namespace;
    let (listed, secrets) =
        cached_records(ctx, ns, records.sealer.binding, &b.spec.secret_key).await;
    let (vetted, vet_error) = trust::vet(ctx, records, Some(b), listed, &secrets).await;
    let (pods, conflicts) = match validity {
        Ok(valid) => {
            let pods = selected_pods(ctx, ns, &valid.selector).await;
            let conflicts = find_conflicts(ctx, b, &pods);
            (pods, conflicts)
        }
        Err(_) => (
            existing_pods(ctx, ns, &vetted.trusted).await?,
            BTreeMap::new(),
        ),
    };
    Ok(Observed {
        records: vetted.trusted,
        untrusted: vetted.untrusted,
        secrets,
        pods,
        conflicts,
        vet_error,
    })
}

/// The pods of `records` that still exist (read from the API server: an invalid binding has
/// no selector to watch them by).
async fn existing_pods(
    ctx: &Context,
    ns: &str,
    records: &[WrapState],
) -> Result<Vec<PodView>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut alive = vec![];
    for wrap in records {
        if let Some(view) = pods
            .get_opt(&wrap.pod)
            .await?
            .as_ref()
            .and_then(PodView::from_pod)
        {
            alive.push(view);
        }
    }
    Ok(alive)
}

/// Secret names in `ns` found held by a Secret not of its binding less than
/// `TAKEN_NAME_RETRY` ago (older entries are forgotten).
/// Also says when the earliest of them is tried again.
pub(crate) fn recently_taken(
    memory: &Memory,
    ns: &str,
    now: Timestamp,
) -> (Vec<String>, Option<Timestamp>) {
    let mut taken = memory.names_taken.lock().expect("taken lock");
    // Forgotten after a while: a name never tried again (its pod went) does not stay forever.
    taken.retain(|_, at| add_duration(*at, TAKEN_NAME_FORGET) > now);
    let prefix = key(ns, "");
    let mut retry_at: Option<Timestamp> = None;
    let names = taken
        .iter()
        .filter_map(|(k, at)| {
            let name = k.strip_prefix(&prefix)?;
            let retry = add_duration(*at, TAKEN_NAME_RETRY);
            (retry > now).then(|| {
                retry_at = Some(retry_at.map_or(retry, |r| r.min(retry)));
                name.to_string()
            })
        })
        .collect();
    (names, retry_at)
}

/// When each record's current wrap was last looked up (a restart only makes the next lookup
/// early; a new start's wrap was never looked up).
pub(crate) fn looked_up(
    memory: &Memory,
    ns: &str,
    records: &[WrapState],
) -> HashMap<String, Timestamp> {
    remembered(&memory.last_lookup, ns, records, |w| {
        w.wrap_accessor.as_deref()
    })
}

/// When the token each record's pod's agent holds was last renewed (a restart only makes the
/// next renewal early; a new start's token was never renewed, whatever its Secret's previous
/// token was).
pub(crate) fn renewed(
    memory: &Memory,
    ns: &str,
    records: &[WrapState],
) -> HashMap<String, Timestamp> {
    remembered(&memory.last_renewal, ns, records, |w| w.accessor.as_deref())
}

/// Secret name -> when the step was last taken, for each record whose current wrap or token
/// (`of`) is the one it was taken on.
fn remembered(
    memory: &std::sync::Mutex<HashMap<String, LastDone>>,
    ns: &str,
    records: &[WrapState],
    of: fn(&WrapState) -> Option<&str>,
) -> HashMap<String, Timestamp> {
    let all = memory.lock().expect("memory lock");
    records
        .iter()
        .filter_map(|w| {
            let done = all.get(&key(ns, &w.secret))?;
            (of(w) == Some(done.accessor.as_str())).then(|| (w.secret.clone(), done.at))
        })
        .collect()
}

/// The pods `selector` picks in `ns`, from the shared pod cache (kept by the controller's pod
/// watch). Waits for the cache's first full list: an empty cache is never taken for "no pods".
async fn selected_pods(ctx: &Context, ns: &str, selector: &Selector) -> Vec<PodView> {
    let query = LabelQuery::from(selector.clone());
    ctx.pods.ready().await;
    ctx.pods
        .in_namespace(ns, |p| query.matches(&p.view.labels))
        .iter()
        .filter_map(|p| PodView::from_cached(p))
        .collect()
}

/// The binding's records from the shared cache (the controller's Secret watch), each with its
/// authenticity, and the Secrets by name (only for reading wrapping tokens). Waits for the
/// cache's first full list: an empty cache is never taken for "no records".
async fn cached_records(
    ctx: &Context,
    ns: &str,
    binding: &str,
    secret_key: &str,
) -> (Vec<WrapState>, SecretsByName) {
    ctx.secrets.ready().await;
    let keys = ctx.record_keys.current();
    let secrets: SecretsByName = ctx
        .secrets
        .in_group(ns, binding)
        .into_iter()
        .filter_map(|r| Some((r.name.to_string(), Arc::new(r.unpack()?))))
        .collect();
    let records = secrets
        .values()
        .filter_map(|s| WrapState::from_secret(s, Some(secret_key), &keys))
        .collect();
    (records, secrets)
}

/// Pod name -> the other bindings of the namespace (not being deleted) that select it too.
fn find_conflicts(
    ctx: &Context,
    me: &AgentSecretBinding,
    pods: &[PodView],
) -> BTreeMap<String, Vec<String>> {
    let mut conflicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if pods.is_empty() {
        return conflicts;
    }
    let ns = me.namespace().unwrap_or_default();
    let me = me.name_any();
    let others = ctx
        .bindings
        .in_namespace(&ns, |b| *b.name != *me && !b.deleting);
    for other in others {
        for pod in pods.iter().filter(|p| other.selects(&p.labels)) {
            conflicts
                .entry(pod.name.clone())
                .or_default()
                .push(other.name.to_string());
        }
    }
    conflicts
}

/// Writes the binding's status when `status::when_to_write` says so; returns when to come
/// back for a write it held back.
async fn write_status(
    ctx: &Context,
    b: &AgentSecretBinding,
    pods: &[PodView],
    wraps: &[WrapState],
    conflicts: &BTreeMap<String, Vec<String>>,
    problems: &Problems,
) -> Result<Option<Instant>, Error> {
    let ns = b.namespace().unwrap_or_default();
    let status = status::compute(&StatusInput {
        generation: b.metadata.generation,
        pods,
        wraps,
        conflicts,
        problems,
        previous: b.status.as_ref(),
        now: Timestamp::now(),
    });
    ctx.metrics
        .set_outstanding(&ns, &b.name_any(), status.pending);
    ctx.metrics
        .set_binding_ready(&ns, &b.name_any(), status::is_ready(&status));
    let k = key(&ns, &b.name_any());
    let written = ctx
        .statuses_written
        .lock()
        .expect("statuses lock")
        .get(&k)
        .copied();
    match status::when_to_write(b.status.as_ref(), &status, written, Instant::now()) {
        status::Write::Skip => return Ok(None),
        status::Write::At(due) => return Ok(Some(due)),
        status::Write::Now => {}
    }
    let api: Api<AgentSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": "cubbyhole.dev/v1alpha1",
        "kind": "AgentSecretBinding",
        "status": status,
    });
    api.patch_status(
        &b.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.statuses_written
        .lock()
        .expect("statuses lock")
        .insert(k, Instant::now());
    Ok(None)
}

async fn cleanup_binding(b: &AgentSecretBinding, ctx: &Context) -> Result<Requeue, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    // Never acted in (watchNamespaces): nothing to retire, and no access to look.
    let removed = if ctx.config.watches(&ns) {
        sweep::retire_records(ctx, &ns, &name, Some(b)).await?
    } else {
        0
    };
    ctx.metrics.forget_binding(&ns, &name);
    ctx.unseen_writes
        .lock()
        .expect("unseen writes lock")
        .remove(&key(&ns, &name));
    ctx.statuses_written
        .lock()
        .expect("statuses lock")
        .remove(&key(&ns, &name));
    info!(namespace = %ns, binding = %name, removed, "binding deleted: revoked and removed its records");
    Ok(Requeue::await_change())
}

fn add_duration(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
        d.as_secs() as i64
    ))
    .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_one_second_doubles_and_stops_at_sixty() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff_delay(u32::MAX), Duration::from_secs(60));
        // Never called before a failure is counted, but must not panic either.
        assert_eq!(backoff_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn a_new_starts_token_and_wrap_count_as_never_renewed_or_looked_up() {
        let memory = Memory::default();
        let mut record = crate::core::plan::tests::issued("a", 0);
        let at = Timestamp::from_second(1_000).expect("in range");
        let done = |accessor: &str| LastDone {
            accessor: accessor.into(),
            at,
        };
        let k = key("ns", &record.secret);
        memory
            .last_renewal
            .lock()
            .expect("lock")
            .insert(k.clone(), done("acc"));
        memory
            .last_lookup
            .lock()
            .expect("lock")
            .insert(k, done("wacc"));
        let records = [record.clone()];
        assert_eq!(
            renewed(&memory, "ns", &records).get(&record.secret),
            Some(&at)
        );
        assert_eq!(
            looked_up(&memory, "ns", &records).get(&record.secret),
            Some(&at)
        );
        assert!(renewed(&memory, "other", &records).is_empty());
        // A new start took the Secret over: its token and wrap are other ones.
        record.accessor = Some("acc-2".into());
        record.wrap_accessor = Some("wacc-2".into());
        let records = [record];
        assert!(renewed(&memory, "ns", &records).is_empty());
        assert!(looked_up(&memory, "ns", &records).is_empty());
    }
}
