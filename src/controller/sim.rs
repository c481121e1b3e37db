//! A multi-round simulation of the controller: the real planner ([`crate::core::plan::plan`]) and
//! the real executor ([`crate::controller::execute`]) driven against a model of the API server
//! and of Vault, over seeded random schedules of pod events, agent behaviour, operator crashes
//! and faults. Pure and fast (test-only).
//!
//! **The models.** The API store holds pods (uid, labels, secret-name annotation, terminating,
//! finished, agent restart count, receipts of the current and the previous instance) and
//! Secrets (annotations, wrapping token, resourceVersion, owner uid, finalizer, deletion).
//! Creates fail with AlreadyExists, patches with a stale resourceVersion with Conflict, a
//! removed pod's Secrets are marked for deletion by the garbage collector. Vault holds wraps
//! (accessor, inner token accessor, expiry in simulated time; unwrap consumes; revoke by
//! accessor answers "existed" or "no token"; `sys/wrapping/lookup`; renewal; `lookup-accessor`
//! with the metadata every mint sets) and inner tokens (living the `ttl` the real request asks
//! for, wrapTTL + grace, unless renewed; a renewal by accessor is not capped at the request's
//! `explicit_max_ttl`, as OpenBao does not). Half the schedules' bindings set a tokenTTL.
//!
//! **The round** ([`World::reconcile`]) mirrors `reconcile::apply` (list, vet, plan with the
//! real memory helpers `recently_taken` and `remembered`) and `sweep::retire_records` (a
//! binding's finalizer and the sweep: listing and vetting modelled, the revocations and
//! removals by the real `sweep::retire_trusted` over [`SimOps`]), then hands the plan to the
//! **real executor**
//! (`execute::run_all` over `controller::effects`, implemented by [`SimOps`]): every Vault call
//! and record write it makes is one operation of the models, a crash may fall before any of
//! them (the round's future is then dropped where it stands, as a killed process would leave
//! it), and its memory (lookups, renewals, names found taken) is the replica's. The record
//! writes are modelled after `writes::{write_issue, settle, remove}`: which annotations each
//! write sets or removes, which resourceVersion guards it, what each error leads to;
//! `model_writes_match_the_record_builders` checks them against the real patch builders.
//!
//! **Schedules** (seeded xorshift, deterministic): pods created with and without the
//! `cubbyhole.dev/secret-name` annotation (some invalid, some colliding), agents restarting,
//! agents unwrapping (`cubbyhole unwrap` with its receipt, with and without `--wait-for-fresh`;
//! plain `bao unwrap` without a receipt; an unwrap whose token cannot be stored; a refusal of
//! a valid wrap, `unexpected-creation-path`), a thief
//! unwrapping first, pods deleted, removed and finishing, pods relabelled, a second binding
//! selecting some pods (created and deleted: its finalizer runs), foreign and forged Secrets
//! holding a pod's Secret name, records written with the leaked record key (under b, or
//! under c to be retired by its finalizer) naming another pod's token, time advancing. Faults: the operator crashing after any number
//! of operations of a round (its memory, the last-lookup times, is lost; the next round plans
//! from the stores only), lost Vault answers (Vault did the work; a lost mint may even be carried
//! out later, before Vault next answers), Vault refusing a mint, Vault down for a while, API
//! errors (the write has no effect), a second replica running a whole round in the middle
//! of another's (a deposed leader that has not noticed yet), and rounds that plan from a
//! records cache lagging a few operations behind the store (the controller's Secret watch;
//! the finalizer reads fresh, as `sweep::retire_records` does).
//!
//! **Invariants**, checked after every operation of the operator and every external event:
//! 1. never two live (unconsumed, unexpired, unrevoked) delivered wraps for one pod of one
//!    binding — so never two for one pod start. A lost mint's wrap, which no record ever
//!    carried, reaches nobody and is not counted (it expires by its TTL);
//! 4. a pod the planner was told is conflicted (selected by another binding too) never gets a
//!    new mint;
//!
//! and at the end of every schedule:
//! 3. liveness: after the faults stop (Vault up, no crashes, no lost answers, no API errors)
//!    and the rounds reach quiescence, every eligible pod (selected by exactly one binding, not
//!    terminating or finished, a valid Secret name that no other Secret holds) has a record for
//!    its current start that was delivered (phase past Claimed/Failed; an expired or refused
//!    wrap is replaced a few times, each replacement a wrap life of its own);
//! 2. then every pod is deleted and removed; at quiescence (time past every TTL and wait) no
//!    record is left and no wrap and no token minted for a pod is alive, tokens counted dead
//!    when revoked, when the operator asked Vault to revoke them (Vault may have ended them
//!    first) or looked them up to revoke them and Vault no longer knew them, or when Vault
//!    ended them by their TTL before their pod went (the model's tokens are minted for
//!    wrapTTL + grace and renewals extend them: `Action::Renew`). Exceptions, counted
//!    separately (`Stats::unlearned_tokens`): an inner token the operator lost before any record
//!    named it — a lost mint answer, a crash between Vault's answer and the delivery, a failed
//!    revocation after a failed delivery (nobody ever held its wrap, which is asserted dead;
//!    README "Known limits") —, consumed tokens of a binding with `revokeOnPodDeletion: false`
//!    (one alive when its record was removed must have been renewed to its tokenTTL, or past
//!    the renewal window without one), nothing else: a new start's previous token is revoked before its mint (`Executor::issue`),
//!    so a pod that goes before the new start was written still names it for its cleanup;
//! 6. renewal: once the faults stop, every token a running pod's agent holds (its record
//!    says Unwrapped) stays alive through twice the longest renewal window, the operator's
//!    rounds run when it asks for them (its next wake-up or the next renewal due), unless it
//!    reached its tokenTTL; and no renewal ever takes a token past its tokenTTL from the mint
//!    (within a second: the operator reads its clock before the call);
//! 5. in schedules without faults, Vault calls per wrap life of a pod start (binding, pod uid,
//!    start; a replacement is a life of its own; pods whose name a foreign Secret squatted are
//!    left out) are within the README's bound: 1 create, at most ⌈wrapTTL/lookupPeriod⌉
//!    lookups, at most 4 revocations (2 while tracking + 2 at deletion or at the next start),
//!    and a held token renewed at most once per half renewal window, and never again once a
//!    renewal found it gone.
//!    With faults each crash or lost answer may repeat a step, so no tighter bound is claimed
//!    there than invariant 1;
//! 7. what the executor tells people matches what the models saw it do: before its next
//!    operation it has published exactly the Events owed (README, Events: the reason of each
//!    settlement on the pod, and warnings on the binding too; `VaultError` for a failed mint;
//!    `TokenGone` for a held token Vault no longer knows; routine Events only with
//!    `routineEvents`, sent once; warnings kept and counted), none carrying a wrapping token;
//!    its metrics count the wraps delivered, the settlements and cleanups by phase, the
//!    revocations that found a live wrap or token and the renewals by result; its round's
//!    result reports every name found taken, Vault's unavailability, API errors and the
//!    lookups deferred as the metric counts them (a quarter of the schedules give each round a
//!    budget of two lookups or renewals; the round is then tried again a second later, as
//!    `reconcile` does);
//! 8. a token is revoked or renewed only for a record (or a new start) of the pod and binding
//!    it was minted for. In faulty schedules someone holding the record key writes valid
//!    records for pods of theirs naming other pods' live tokens, half of them as the record's
//!    pending wrap too: only Vault's word (`lookup-accessor`, `controller::vouch`) keeps those
//!    tokens alive and unrenewed. Such pods are left out of liveness and renewal (their own
//!    tenant lied about them);
//! 9. a replayed ask is never served while the pod's agent holds the token of the run its
//!    record was served for: someone holding a request pod's identity token asks again in the
//!    same run (no restart), and the endpoint must refuse it (`plan::ask_kind`,
//!    `plan::serve_same_run`). Mutant `ServeEveryAsk` must break it.
//!
//! **Guards it must catch** ([`Mutant`], one test each): the store's resourceVersion guard
//! removed (a deposed replica's stale takeover then hides a live wrap or token: invariant 1 or
//! 2); the planner's conflict check removed (invariant 4); the executor's revocations of a wrap
//! whose record write failed never reaching Vault (invariant 2); a record's finalizer released
//! without the resourceVersion guard (a round reading a lagging cache removes a record that a
//! new start took over: its token is never revoked, or its live wrap gets a second one:
//! invariant 2 or 1).
//!
//! **Request delivery.** A quarter of the schedules make binding `b` deliver on request: its
//! pods' agents ask (`endpoint_ask` mirrors `request::serve::Endpoint::ask`: the record read
//! fresh, the previous start's wrap and token revoked, a mint built by the real
//! `plan::asked`, one guarded write without data; `endpoint_report` mirrors the receipt) from
//! either replica, with crashes between its operations and answers that reach an agent that
//! died or restarted meanwhile; the planner only follows those records. At the end the kubelet
//! restarts every request pod's agent until it holds a token (`agents_ask_again`) before
//! liveness is checked. Mutant `NoRevokeBeforeAsk` (the endpoint keeps the previous start
//! alive) must break invariant 1 or 2.
//!
//! **Record key loss.** In faulty schedules the record key may be lost: every record written so
//! far stops verifying (the operator's later writes sign with a new key). Such records are never
//! acted on in Vault; once their Secret is being deleted they are released (`trust::vet`, from
//! a round or the sweep of a gone binding's records), and what they named ends by Vault's TTLs
//! within the renewal window (checked after time passes it). Mutant `NoUnverifiedRelease` must
//! leave a record stranded (invariant 2).
//!
//! `replay` (ignored) reruns one seed with its whole trace.
#![allow(clippy::too_many_lines)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::Event;

use crate::agent::receipt::{Receipt, result};
use crate::controller::budget::LookupBudget;
use crate::controller::context::Memory;
use crate::controller::effects::{Holder, RecordOps, VaultOps};
use crate::controller::execute::{self, Executor};
use crate::controller::reconcile::{looked_up, recently_taken, renewed};
use crate::controller::sweep;
use crate::controller::vouch::{self, Claim};
use crate::core::plan::{self, Action, Input, Issue, Revoke, Settings};
use crate::core::pod::{ObservedReceipt, PodView, secret_name};
use crate::crd::AgentSecretBinding;
use crate::metrics::Metrics;
use crate::record::seal::Authenticity;
use crate::record::writes::{
    self, Change, WrapData, deliver_changes, issue_changes, settle_changes,
};
use crate::record::{Phase, SecretsByName, WrapState, ann};
use crate::rng::Rng;
use crate::vault::{
    Renewed, Revoked, SecretString, TokenFacts, TokenRequest, VaultError, WrapInfo,
};

/// The agent container named in `Settings::agent_container`.
const AGENT: &str = crate::core::pod::UNWRAP_CONTAINER;
/// How long `--wait-for-fresh` waits (seconds).
const WAIT_FOR_FRESH: i64 = 90;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("in range")
}

fn secs(t: Timestamp) -> i64 {
    t.as_second() - 1_800_000_000
}

/// The monotonic instant of simulated second `secs`, for the lookup budget: a fixed origin plus
/// the simulated time. The origin is read from the wall clock once per process, only because
/// an `Instant` cannot be made otherwise; nothing depends on its value, only on differences.
fn instant(secs: i64) -> Instant {
    static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
    *ORIGIN + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// A guard removed on purpose, to see the simulation fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutant {
    /// Everything as built.
    None,
    /// The model API server ignores `resourceVersion` on patches.
    NoResourceVersionGuard,
    /// The planner is never told about conflicts.
    NoConflictCheck,
    /// The executor does not revoke a wrap whose delivery failed.
    NoRevokeOnDeliveryFailure,
    /// A record's finalizer is released without the resourceVersion guard.
    NoReleaseGuard,
    /// The request endpoint mints for a new ask without revoking the previous start's wrap and
    /// token.
    NoRevokeBeforeAsk,
    /// A record that no longer verifies (the record key lost) is never released.
    NoUnverifiedRelease,
    /// The request endpoint serves every ask, a run already served too.
    ServeEveryAsk,
}

/// Fault rates of a schedule (per mille, per operation or per round).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// A round gets a crash budget (it stops after a random number of operations).
    pub crash: u32,
    /// A Vault call is carried out but its answer is lost.
    pub lost: u32,
    /// A mint is refused by Vault.
    pub refuse: u32,
    /// An API call fails without effect.
    pub api: u32,
    /// Another replica runs a whole round between two operations.
    pub rival: u32,
    /// Vault goes down for a while (per schedule step).
    pub down: u32,
    /// A round reads the records from a cache lagging a few operations behind the API server
    /// (the controller's Secret watch), per round.
    pub stale: u32,
}

impl Faults {
    fn any(&self) -> bool {
        self.crash + self.lost + self.refuse + self.api + self.rival + self.down + self.stale > 0
    }
}

/// Which invariant broke, and the trace that led there.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Invariant number (see the module documentation).
    pub invariant: u8,
    /// What was seen.
    pub message: String,
}

enum Stop {
    Crash,
    Broken(Violation),
}

impl From<Violation> for Stop {
    fn from(v: Violation) -> Self {
        Stop::Broken(v)
    }
}

type Step<T> = Result<T, Stop>;

/// The operations a crash can fall between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    ListSecrets,
    ListPods,
    CreateSecret,
    GetSecret,
    PatchSecret,
    Unfinalize,
    DeleteSecret,
    Mint,
    Lookup,
    LookupAccessor,
    Revoke,
    Renew,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KubeErr {
    Conflict,
    NotFound,
    AlreadyExists,
    Failed,
}

/// Mirrors `vault::VaultError` as far as the executor cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VErr {
    Unreachable,
    NoAnswer,
    Refused,
}

/// Mirrors `writes::WriteError`.
#[derive(Debug)]
enum WriteError {
    Taken,
    Lost,
    Kube,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Owner {
    binding: String,
    uid: String,
    start: u32,
}

#[derive(Clone, Debug)]
struct VWrap {
    inner: String,
    expires: i64,
    consumed: bool,
    revoked: bool,
    owner: Owner,
    /// A record write carrying it succeeded: someone can read it.
    delivered: bool,
    /// Its record stopped verifying (the record key was lost): only Vault ends it.
    unvouched: bool,
}

#[derive(Clone, Debug)]
struct VToken {
    revoked: bool,
    owner: Owner,
    /// Why the operator lost track of it before any record named it (a lost mint answer, a
    /// crash while holding it, a failed revocation after a failed delivery): nobody ever
    /// held its wrap, and Vault cannot find it without its accessor.
    lost: Option<&'static str>,
    /// Someone unwrapped it.
    consumed: bool,
    /// When Vault ends it by its TTL (minted for wrap TTL + grace; each renewal extends it).
    expires: i64,
    /// When it was minted.
    minted_at: i64,
    /// The longest life it may reach (its mint + the binding's tokenTTL).
    max_at: Option<i64>,
    /// The operator asked Vault to revoke it (perhaps after Vault had already ended it), or
    /// looked it up to revoke it and Vault knew it no more.
    revoke_asked: bool,
    /// A record named it when the record key was lost: the operator can no longer act on it,
    /// and only Vault ends it (within the renewal window).
    unvouched: bool,
}

/// The namespace of every binding, pod and Secret.
const NS: &str = "ns";

/// The longest renewal window a schedule draws.
const MAX_RENEWAL_WINDOW: i64 = 600;

/// The model's token grace past the wrap TTL (the operator's `tokenGrace`).
const GRACE: i64 = 30;

/// Vault's and OpenBao's default longest token life (`max_lease_ttl`, 768 h), seconds.
const VAULT_MAX_TTL: i64 = 768 * 3600;

/// The tokenTTL of the bindings of schedules that set one (seconds).
const TOKEN_TTL: i64 = 150;

/// What a mint asks Vault for, in seconds: the wrap's TTL, the token's (`ttl`) and its longest
/// life (`explicit_max_ttl`, the binding's tokenTTL).
#[derive(Clone, Copy, Debug)]
struct Life {
    wrap: i64,
    token: i64,
    max: Option<i64>,
}

impl Life {
    /// What the real request (`spec::token_request`) asks for.
    fn of(request: &TokenRequest) -> Self {
        let secs = |d: &Option<String>| {
            d.as_deref()
                .map(|d| humantime::parse_duration(d).expect("a duration").as_secs() as i64)
        };
        Self {
            wrap: request.wrap_ttl_secs as i64,
            token: secs(&request.ttl).expect("every mint sets ttl"),
            max: secs(&request.explicit_max_ttl),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Vault {
    down_until: i64,
    wraps: BTreeMap<String, VWrap>,
    tokens: BTreeMap<String, VToken>,
    by_token: HashMap<String, String>,
    /// Mints whose answer was lost before Vault carried them out.
    deferred: Vec<(Owner, Life)>,
    /// Wrap accessors that may still be live.
    maybe_live: Vec<String>,
    next: u64,
}

impl Vault {
    fn mint(
        &mut self,
        owner: Owner,
        life: Life,
        now: i64,
        lost: Option<&'static str>,
    ) -> (String, String, String) {
        self.next += 1;
        let n = self.next;
        let (token, wacc, tacc) = (format!("wt{n}"), format!("wa{n}"), format!("ta{n}"));
        self.wraps.insert(
            wacc.clone(),
            VWrap {
                inner: tacc.clone(),
                expires: now + life.wrap,
                consumed: false,
                revoked: false,
                owner: owner.clone(),
                delivered: false,
                unvouched: false,
            },
        );
        self.tokens.insert(
            tacc.clone(),
            VToken {
                revoked: false,
                owner,
                lost,
                consumed: false,
                expires: now + life.token,
                minted_at: now,
                max_at: life.max.map(|m| now + m),
                revoke_asked: false,
                unvouched: false,
            },
        );
        self.by_token.insert(token.clone(), wacc.clone());
        self.maybe_live.push(wacc.clone());
        (token, wacc, tacc)
    }

    fn live(&self, wacc: &str, now: i64) -> bool {
        self.wraps
            .get(wacc)
            .is_some_and(|w| !w.consumed && !w.revoked && now < w.expires)
    }

    /// `sys/wrapping/unwrap`: the inner token's accessor, once.
    fn unwrap(&mut self, token: &str, now: i64) -> Option<String> {
        let wacc = self.by_token.get(token)?.clone();
        if !self.live(&wacc, now) {
            return None;
        }
        let w = self.wraps.get_mut(&wacc).expect("known");
        w.consumed = true;
        let inner = w.inner.clone();
        self.tokens.get_mut(&inner).expect("known").consumed = true;
        Some(inner)
    }
}

/// The mutable facts of a pod.
#[derive(Clone, Debug)]
struct Pod {
    name: String,
    uid: String,
    labels: BTreeMap<String, String>,
    secret_name: Option<String>,
    terminating: bool,
    finished: bool,
    restarts: u32,
    current: Option<ObservedReceipt>,
    last: Option<ObservedReceipt>,
    /// The current instance made its attempt (or has a token).
    attempted: bool,
    /// `--wait-for-fresh`: since when the current instance waits for a fresh wrap.
    waiting_since: Option<i64>,
    wait_for_fresh: bool,
}

impl Pod {
    fn view(&self) -> PodView {
        PodView {
            name: self.name.clone(),
            uid: self.uid.clone(),
            labels: (&self.labels).into(),
            secret_name: self.secret_name.clone(),
            terminating: self.terminating,
            finished: self.finished,
            restart_counts: BTreeMap::from([(AGENT.to_string(), self.restarts)]),
            receipts: self.current.iter().chain(&self.last).cloned().collect(),
        }
    }
    fn running(&self) -> bool {
        !self.terminating && !self.finished
    }
}

/// A Secret in the model API server.
#[derive(Clone, Debug)]
struct Sec {
    uid: u64,
    rv: u64,
    /// Labelled `managed-by=cubbyhole` with this binding (`None`: someone else's Secret).
    binding: Option<String>,
    /// Its signature does not verify (a forged record).
    forged: bool,
    owner_uid: Option<String>,
    ann: BTreeMap<&'static str, String>,
    token: Option<String>,
    finalizer: bool,
    deleting: bool,
    /// The record as the operator reads it (cache; rebuilt after each write).
    view: Option<WrapState>,
}

/// What a patch does to the Secret's data.
#[derive(Clone, Debug, PartialEq)]
enum Data {
    Clear,
    Set(String),
    /// The data is left as it is (`writes::report_patch`).
    Keep,
}

/// The operator's reading of a record it wrote (signature verified): the real parser.
fn read_record(name: &str, s: &Sec) -> Option<WrapState> {
    let annotations: BTreeMap<String, String> = s
        .ann
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let has_token = s.token.as_ref().is_some_and(|t| !t.is_empty());
    let mut record = WrapState::from_annotations(
        name.to_string(),
        &annotations,
        has_token,
        Authenticity::Authentic,
    )?;
    record.resource_version = Some(s.rv.to_string());
    record.deleting = s.deleting;
    Some(record)
}

/// A binding as the simulation knows it.
#[derive(Clone, Debug)]
struct Binding {
    settings: Settings,
    /// Selector: this label key must have this value.
    selector: (&'static str, &'static str),
    deleting: bool,
    /// Its tokenTTL in seconds, if it sets one.
    token_ttl: Option<i64>,
}

impl Binding {
    fn selects(&self, pod: &Pod) -> bool {
        pod.labels.get(self.selector.0).map(String::as_str) == Some(self.selector.1)
    }

    /// The binding as the executor reads it (name, namespace, secret key, tokenTTL).
    fn resource(&self, name: &str) -> AgentSecretBinding {
        let mut vault = serde_json::json!({
            "tokenRole": "agent",
            "wrapTTL": format!("{}s", self.settings.wrap_ttl.as_secs()),
        });
        if let Some(ttl) = self.token_ttl {
            vault["tokenTTL"] = format!("{ttl}s").into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cubbyhole.dev/v1alpha1",
            "kind": "AgentSecretBinding",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
            "spec": {
                "podSelector": {"matchLabels": {self.selector.0: self.selector.1}},
                "vault": vault,
                "secretKey": SECRET_KEY,
            },
        }))
        .expect("a valid binding")
    }
}

/// The data key of the wrapping token in every record.
const SECRET_KEY: &str = "token";

/// A record's Secret as the executor reads a wrapping token from it.
fn wrap_secret(token: &str) -> Secret {
    Secret {
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_string(),
            k8s_openapi::ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replica {
    Main,
    Rival,
}

/// Calls to Vault for one pod start.
#[derive(Clone, Copy, Debug, Default)]
struct Calls {
    creates: u32,
    lookups: u32,
    revokes: u32,
    renews: u32,
    /// Planned renewals that came less than half a renewal window after the last one.
    early_renewals: u32,
    /// Planned renewals of a token a renewal had already found gone.
    renewals_after_gone: u32,
    /// Mints that replaced this start's wrap after it expired untaken.
    replacements: u32,
}

/// Counters that show the mechanisms ran.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Schedules run.
    pub schedules: u64,
    /// Operator operations (API and Vault calls) across all schedules.
    pub operations: u64,
    /// Rounds (reconciles) run.
    pub rounds: u64,
    /// Crashes, by the operation after which they happened.
    crashes_after: BTreeMap<String, u64>,
    /// Wraps minted.
    pub mints: u64,
    /// Mints whose answer was lost (of them, carried out later).
    pub lost_mints: u64,
    /// Lost mints carried out later than the request.
    pub deferred_mints: u64,
    /// Wraps replaced after expiring before their pod took them.
    pub replacements: u64,
    /// Claims or writes lost to another writer (resourceVersion conflicts, AlreadyExists).
    pub lost_races: u64,
    /// Rounds of a second replica interleaved with another's.
    pub rival_rounds: u64,
    /// Deliveries that failed after a mint (wrap and token revoked).
    pub delivery_failures: u64,
    /// Rounds where the planner was told of a conflict for a pod that has a record.
    pub conflicts_with_record: u64,
    /// Pods checked for liveness.
    pub eligible_checked: u64,
    /// Settles by phase.
    settles: BTreeMap<&'static str, u64>,
    /// Agent outcomes.
    agent: BTreeMap<&'static str, u64>,
    /// Lost mints' inner tokens left alive at the end (accessor never learned).
    unlearned_tokens: BTreeMap<&'static str, u64>,
    /// Pod starts whose Vault calls were checked against the bound.
    pub starts_bounded: u64,
    /// Most lookups seen for one start in a schedule without faults, and the bound then.
    pub max_lookups: (u32, u32),
    /// Asks of agents of request-delivery bindings (of them, answered with a wrap).
    pub asks: u64,
    /// Asks answered with a wrap.
    pub asks_served: u64,
    /// Asks refused because the pod's run was already served.
    pub asks_already_served: u64,
    /// Receipts reported to the endpoint and recorded.
    pub receipts_reported: u64,
    /// Record keys lost, and records released at deletion without verifying.
    pub key_losses: u64,
    /// Records that no longer verified, released at their deletion.
    pub unverified_released: u64,
    /// Faults injected, by kind (each kind a schedule may have must have happened).
    faults_seen: BTreeMap<&'static str, u64>,
    /// Tokens running pods' agents held that were kept alive through the renewal check.
    pub held_kept_alive: u64,
    /// Tokens kept past their pods (`revokeOnPodDeletion: false`) checked to live on.
    pub kept_released: u64,
    /// Lookups and renewals deferred because the round's budget was spent.
    pub lookups_deferred: u64,
}

impl Stats {
    fn merge(&mut self, o: &Stats) {
        self.schedules += o.schedules;
        self.operations += o.operations;
        self.rounds += o.rounds;
        for (k, v) in &o.crashes_after {
            *self.crashes_after.entry(k.clone()).or_default() += v;
        }
        self.mints += o.mints;
        self.lost_mints += o.lost_mints;
        self.deferred_mints += o.deferred_mints;
        self.replacements += o.replacements;
        self.lost_races += o.lost_races;
        self.rival_rounds += o.rival_rounds;
        self.delivery_failures += o.delivery_failures;
        self.conflicts_with_record += o.conflicts_with_record;
        self.eligible_checked += o.eligible_checked;
        for (k, v) in &o.settles {
            *self.settles.entry(k).or_default() += v;
        }
        for (k, v) in &o.agent {
            *self.agent.entry(k).or_default() += v;
        }
        for (k, v) in &o.unlearned_tokens {
            *self.unlearned_tokens.entry(k).or_default() += v;
        }
        self.starts_bounded += o.starts_bounded;
        self.asks += o.asks;
        self.asks_served += o.asks_served;
        self.asks_already_served += o.asks_already_served;
        self.receipts_reported += o.receipts_reported;
        self.key_losses += o.key_losses;
        self.unverified_released += o.unverified_released;
        self.held_kept_alive += o.held_kept_alive;
        self.kept_released += o.kept_released;
        self.lookups_deferred += o.lookups_deferred;
        for (k, v) in &o.faults_seen {
            *self.faults_seen.entry(k).or_default() += v;
        }
        if o.max_lookups.0 > self.max_lookups.0 {
            self.max_lookups = o.max_lookups;
        }
    }
}

/// A binding's records as listed: authentic ones, names of the others, wrapping tokens by name.
type Listing = (
    Vec<WrapState>,
    BTreeSet<String>,
    BTreeMap<String, Option<String>>,
);

/// What one round left for the driver.
#[derive(Clone, Copy, Debug, Default)]
struct RoundOutcome {
    wake_at: Option<i64>,
    /// When the next renewal of a held token is due (the real round requeues for it too).
    renew_at: Option<i64>,
    /// When a name found taken is tried again (the real round's requeue).
    retry_taken_at: Option<i64>,
}

/// The whole simulated world: API server, Vault, the operator's memory, faults.
struct World {
    rng: Rng,
    now: i64,
    pods: Vec<Pod>,
    secrets: BTreeMap<String, Sec>,
    next_uid: u64,
    next_rv: u64,
    bindings: BTreeMap<String, Binding>,
    vault: Vault,
    /// What each replica's executor remembers (`Context::memory`); lost on a crash.
    memory: [Memory; 2],
    /// The operator's metrics (the executor counts into them).
    metrics: Metrics,
    faults: Faults,
    mutant: Mutant,
    replica: Replica,
    /// Operations the current round of the main replica may still do.
    ops_left: Option<u32>,
    last_op: Option<Op>,
    /// External events may interleave with the operator's operations.
    interleave: bool,
    calls: BTreeMap<Owner, Calls>,
    /// The records cache: a copy of `secrets` taken at random operations, so it lags behind.
    cache: BTreeMap<String, Sec>,
    /// Pods that were relabelled, bindings that were deleted: leaving a binding ends a pod's
    /// stay, and the bound on Vault calls is per stay.
    relabelled: BTreeSet<String>,
    /// Pods whose Secret name a foreign Secret was found holding.
    squatted: BTreeSet<String>,
    /// Pods a record forged with the key was written for (what it says about them is a lie
    /// their own tenant told: left out of liveness and renewal).
    forged_for: BTreeSet<String>,
    /// Pod uid -> when the pod was removed.
    removed_at: HashMap<String, i64>,
    deleted_bindings: BTreeSet<String>,
    /// The record key was lost during the schedule.
    key_lost: bool,
    /// Lookups and renewals each round may make (`maxLookupsPerSecond`; 0: any).
    lookup_budget: u32,
    /// The operator publishes routine per-pod Events (`routineEvents`).
    routine_events: bool,
    /// What the executor did as the models saw it, counted as its metrics count it.
    counted: Counted,
    /// Token accessors each replica holds in memory, not yet in a record.
    in_hand: [Vec<String>; 2],
    /// Successful writes and Vault state changes (to tell a round that changed nothing).
    changes: u64,
    /// An ask is being answered (asks do not nest).
    asking: bool,
    /// Tokens kept past their pods (`revokeOnPodDeletion: false`), alive when the operator
    /// removed their records: (accessor, when).
    kept: Vec<(String, i64)>,
    /// Tokens a planned renewal found gone.
    gone: BTreeSet<String>,
    /// Token accessor -> when the operator last renewed it as planned (`Action::Renew`).
    renewed_at: HashMap<String, i64>,
    /// Every binding that existed: (revokeOnPodDeletion, wrap TTL, lookup period) in seconds.
    ever: BTreeMap<String, (bool, i64, i64)>,
    stats: Stats,
    trace: Vec<String>,
}

impl World {
    fn new(seed: u64, faults: Faults, mutant: Mutant) -> Self {
        let mut rng = Rng::new(seed);
        let settings = |rng: &mut Rng, name: &str| Settings {
            binding: name.to_string(),
            wrap_ttl: Duration::from_secs(*rng.pick(&[6, 20, 60]).expect("some")),
            lookup_period: Duration::from_secs(*rng.pick(&[1, 3, 10]).expect("some")),
            agent_container: (!rng.chance(150)).then(|| AGENT.to_string()),
            revoke_on_pod_deletion: !rng.chance(200),
            renewal_window: Duration::from_secs(
                *rng.pick(&[40, 120, MAX_RENEWAL_WINDOW as u64])
                    .expect("some"),
            ),
            on_request: false,
        };
        // Every other pair of seeds' bindings set a tokenTTL (kept apart from the draws).
        let token_ttl = ((seed >> 3) & 1 == 1).then_some(TOKEN_TTL);
        let mut b_settings = settings(&mut rng, "b");
        b_settings.on_request = rng.chance(250);
        let b = Binding {
            settings: b_settings,
            selector: ("app", "agent"),
            deleting: false,
            token_ttl,
        };
        let c = Binding {
            settings: settings(&mut rng, "c"),
            selector: ("team", "x"),
            deleting: false,
            token_ttl,
        };
        let mut bindings = BTreeMap::from([("b".to_string(), b)]);
        if rng.chance(300) {
            bindings.insert("c".to_string(), c);
        }
        Self {
            rng,
            now: 0,
            pods: vec![],
            secrets: BTreeMap::new(),
            next_uid: 0,
            next_rv: 0,
            bindings,
            vault: Vault::default(),
            memory: [Memory::default(), Memory::default()],
            metrics: Metrics::new(),
            faults,
            mutant,
            replica: Replica::Main,
            ops_left: None,
            last_op: None,
            interleave: true,
            calls: BTreeMap::new(),
            cache: BTreeMap::new(),
            ever: BTreeMap::new(),
            changes: 0,
            asking: false,
            in_hand: [vec![], vec![]],
            relabelled: BTreeSet::new(),
            removed_at: HashMap::new(),
            squatted: BTreeSet::new(),
            forged_for: BTreeSet::new(),
            deleted_bindings: BTreeSet::new(),
            key_lost: false,
            renewed_at: HashMap::new(),
            gone: BTreeSet::new(),
            kept: vec![],
            routine_events: (seed >> 2) & 1 == 0,
            lookup_budget: if (seed >> 4) & 3 == 0 { 2 } else { 0 },
            counted: Counted::default(),
            stats: Stats::default(),
            trace: vec![],
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() > 400 {
            self.trace.drain(..100);
        }
        self.trace.push(format!("[t={}] {line}", self.now));
    }

    fn violation(&self, invariant: u8, what: String) -> Violation {
        let keep = if std::env::var_os("SIM_FULL_TRACE").is_some() {
            usize::MAX
        } else {
            60
        };
        let tail = self.trace[self.trace.len().saturating_sub(keep)..].join("\n");
        let pods: Vec<String> = self
            .pods
            .iter()
            .map(|p| {
                format!(
                    "{} {} {:?} restarts {}",
                    p.name, p.uid, p.labels, p.restarts
                )
            })
            .collect();
        let bindings: Vec<&String> = self.bindings.keys().collect();
        Violation {
            invariant,
            message: format!(
                "invariant {invariant}: {what}\n--- last events:\n{tail}\n--- pods: {pods:#?}\n--- bindings: {bindings:?}"
            ),
        }
    }

    /// Remembers every binding's settings. A binding deleted and created again under the same
    /// name keeps consumed tokens if any of its incarnations did (`revokeOnPodDeletion: false`).
    fn record_bindings(&mut self) {
        for (name, b) in &self.bindings {
            let s = &b.settings;
            let revoke = s.revoke_on_pod_deletion
                && self.ever.get(name).is_none_or(|(revoke, _, _)| *revoke);
            self.ever.insert(
                name.clone(),
                (
                    revoke,
                    s.wrap_ttl.as_secs() as i64,
                    s.lookup_period.as_secs() as i64,
                ),
            );
        }
    }

    fn rv(&mut self) -> u64 {
        self.next_rv += 1;
        self.next_rv
    }

    // ---------------------------------------------------------------- operations and checks

    /// Every operator operation starts here: the crash budget, external events in between,
    /// and the invariants on the state the previous operation left.
    fn op(&mut self, op: Op) -> Step<()> {
        self.check()?;
        if self.replica == Replica::Main
            && let Some(left) = &mut self.ops_left
        {
            if *left == 0 {
                let after = self
                    .last_op
                    .map_or("round start".to_string(), |o| format!("{o:?}"));
                *self.stats.crashes_after.entry(after.clone()).or_default() += 1;
                self.note(format!("operator crashes after {after}"));
                return Err(Stop::Crash);
            }
            *left -= 1;
        }
        if self.interleave {
            self.external_between_ops()?;
        }
        self.stats.operations += 1;
        self.last_op = Some(op);
        if self.faults.stale > 0 && self.rng.chance(300) {
            self.cache = self.secrets.clone();
        }
        Ok(())
    }

    /// Invariant 1 (at most one live delivered wrap per pod of a binding).
    fn check(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let vault = &mut self.vault;
        vault.maybe_live.retain(|a| {
            vault
                .wraps
                .get(a)
                .is_some_and(|w| !w.consumed && !w.revoked && now < w.expires)
        });
        let delivered: Vec<&String> = vault
            .maybe_live
            .iter()
            .filter(|a| vault.wraps[*a].delivered)
            .collect();
        let mut seen: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        for a in delivered {
            let w = &vault.wraps[a];
            if let Some(other) = seen.insert((&w.owner.binding, &w.owner.uid), a) {
                let msg = format!(
                    "two live wraps for pod {} of binding {}: {other} and {a} ({:?})",
                    w.owner.uid, w.owner.binding, w.owner
                );
                return Err(self.violation(1, msg));
            }
        }
        Ok(())
    }

    fn api_fails(&mut self) -> bool {
        let fails = self.faults.api > 0 && self.rng.chance(self.faults.api);
        if fails {
            self.fault("API error");
        }
        fails
    }

    /// Counts an injected fault of `kind`.
    fn fault(&mut self, kind: &'static str) {
        *self.stats.faults_seen.entry(kind).or_default() += 1;
    }

    // ---------------------------------------------------------------- the model API server

    fn api_create(&mut self, name: &str, mut sec: Sec) -> Step<Result<u64, KubeErr>> {
        self.op(Op::CreateSecret)?;
        if self.api_fails() {
            return Ok(Err(KubeErr::Failed));
        }
        if self.secrets.contains_key(name) {
            return Ok(Err(KubeErr::AlreadyExists));
        }
        sec.rv = self.rv();
        sec.uid = sec.rv;
        sec.view = read_record(name, &sec);
        let rv = sec.rv;
        self.secrets.insert(name.to_string(), sec);
        self.changes += 1;
        Ok(Ok(rv))
    }

    /// `get_opt`: the Secret's binding label (`Some(None)`: exists, not a record).
    fn api_get(&mut self, name: &str) -> Step<Result<Option<Option<String>>, KubeErr>> {
        self.op(Op::GetSecret)?;
        if self.api_fails() {
            return Ok(Err(KubeErr::Failed));
        }
        Ok(Ok(self.secrets.get(name).map(|s| s.binding.clone())))
    }

    /// A JSON merge patch carrying `metadata.resourceVersion` = `rv`.
    fn api_patch(
        &mut self,
        name: &str,
        rv: Option<&str>,
        changes: &[Change],
        data: Data,
    ) -> Step<Result<u64, KubeErr>> {
        self.op(Op::PatchSecret)?;
        if self.api_fails() {
            return Ok(Err(KubeErr::Failed));
        }
        let guard = self.mutant != Mutant::NoResourceVersionGuard;
        let new_rv = self.next_rv + 1;
        let Some(sec) = self.secrets.get_mut(name) else {
            return Ok(Err(KubeErr::NotFound));
        };
        if guard && rv.is_some_and(|rv| rv != sec.rv.to_string()) {
            return Ok(Err(KubeErr::Conflict));
        }
        for (k, v) in changes {
            match v {
                Some(v) => sec.ann.insert(k, v.clone()),
                None => sec.ann.remove(k),
            };
        }
        match data {
            Data::Clear => sec.token = None,
            Data::Set(t) => sec.token = Some(t),
            Data::Keep => {}
        }
        sec.rv = new_rv;
        // Every write of the operator is signed with its current key.
        sec.forged = false;
        sec.view = read_record(name, sec);
        self.next_rv = new_rv;
        self.changes += 1;
        Ok(Ok(new_rv))
    }

    /// `{"metadata":{"resourceVersion": read_at, "finalizers":null}}` (`writes::release_patch`):
    /// the Secret's uid, NotFound, or Conflict when it changed since `read_at`.
    fn api_unfinalize(&mut self, name: &str, read_at: Option<&str>) -> Step<Result<u64, KubeErr>> {
        self.op(Op::Unfinalize)?;
        if self.api_fails() {
            return Ok(Err(KubeErr::Failed));
        }
        let guard = self.mutant != Mutant::NoReleaseGuard;
        let Some(current) = self.secrets.get(name).map(|s| s.rv) else {
            return Ok(Err(KubeErr::NotFound));
        };
        if guard && read_at.is_some_and(|rv| rv != current.to_string()) {
            return Ok(Err(KubeErr::Conflict));
        }
        let rv = self.rv();
        let sec = self.secrets.get_mut(name).expect("just read");
        sec.finalizer = false;
        sec.rv = rv;
        sec.view = read_record(name, sec);
        self.changes += 1;
        let uid = sec.uid;
        if sec.deleting {
            self.secrets.remove(name);
        }
        Ok(Ok(uid))
    }

    fn api_delete(&mut self, name: &str, uid: u64) -> Step<Result<(), KubeErr>> {
        self.op(Op::DeleteSecret)?;
        if self.api_fails() {
            return Ok(Err(KubeErr::Failed));
        }
        self.changes += 1;
        match self.secrets.get_mut(name) {
            None => Ok(Err(KubeErr::NotFound)),
            Some(s) if s.uid != uid => Ok(Err(KubeErr::Conflict)),
            Some(s) if s.finalizer => {
                s.deleting = true;
                s.view = read_record(name, s);
                Ok(Ok(()))
            }
            Some(_) => {
                self.secrets.remove(name);
                Ok(Ok(()))
            }
        }
    }

    /// The garbage collector after a pod is removed: its Secrets are deleted.
    fn collect_garbage(&mut self, uid: &str) {
        let names: Vec<String> = self
            .secrets
            .iter()
            .filter(|(_, s)| s.owner_uid.as_deref() == Some(uid))
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            let rv = self.rv();
            let s = self.secrets.get_mut(&n).expect("listed");
            if s.finalizer {
                s.deleting = true;
                s.rv = rv;
                s.view = read_record(&n, s);
            } else {
                self.secrets.remove(&n);
            }
        }
    }

    // ---------------------------------------------------------------- the model Vault

    /// Common to every Vault call: down, deferred mints carried out, a lost answer.
    fn vault_gate(&mut self) -> Result<bool, VErr> {
        if self.now < self.vault.down_until {
            return Err(VErr::Unreachable);
        }
        for (owner, life) in std::mem::take(&mut self.vault.deferred) {
            let now = self.now;
            let (_, wacc, _) = self.vault.mint(owner, life, now, Some("mint answer lost"));
            self.note(format!("Vault carries out a held mint: {wacc}"));
            self.stats.deferred_mints += 1;
        }
        Ok(self.faults.lost > 0 && self.rng.chance(self.faults.lost))
    }

    fn calls(&mut self, owner: &Owner) -> &mut Calls {
        self.calls.entry(owner.clone()).or_default()
    }

    fn v_create(
        &mut self,
        owner: Owner,
        life: Life,
    ) -> Step<Result<(String, String, String), VErr>> {
        self.op(Op::Mint)?;
        self.calls(&owner).creates += 1;
        let lost = match self.vault_gate() {
            Err(e) => return Ok(Err(e)),
            Ok(lost) => lost,
        };
        if !lost && self.faults.refuse > 0 && self.rng.chance(self.faults.refuse) {
            self.fault("refused mint");
            return Ok(Err(VErr::Refused));
        }
        self.stats.mints += 1;
        self.changes += 1;
        let now = self.now;
        if lost {
            self.stats.lost_mints += 1;
            if self.rng.chance(500) {
                self.note(format!(
                    "mint for {owner:?}: Vault holds the request, no answer"
                ));
                self.vault.deferred.push((owner, life));
            } else {
                let lost = Some("mint answer lost");
                let (_, wacc, _) = self.vault.mint(owner.clone(), life, now, lost);
                self.note(format!("mint for {owner:?}: {wacc} made, answer lost"));
            }
            return Ok(Err(VErr::NoAnswer));
        }
        let minted = self.vault.mint(owner.clone(), life, now, None);
        let m = usize::from(self.replica == Replica::Rival);
        self.in_hand[m].push(minted.2.clone());
        self.note(format!("mint for {owner:?}: {}", minted.1));
        Ok(Ok(minted))
    }

    fn v_lookup(&mut self, token: &str) -> Step<Result<bool, VErr>> {
        self.op(Op::Lookup)?;
        if let Some(owner) = self
            .vault
            .by_token
            .get(token)
            .map(|a| self.vault.wraps[a].owner.clone())
        {
            self.calls(&owner).lookups += 1;
        }
        let lost = match self.vault_gate() {
            Err(e) => return Ok(Err(e)),
            Ok(lost) => lost,
        };
        if lost {
            return Ok(Err(VErr::NoAnswer));
        }
        let live = self
            .vault
            .by_token
            .get(token)
            .is_some_and(|a| self.vault.live(a, self.now));
        Ok(Ok(live))
    }

    fn v_revoke(&mut self, accessor: &str) -> Step<Result<Revoked, VErr>> {
        self.op(Op::Revoke)?;
        let owner = self
            .vault
            .wraps
            .get(accessor)
            .map(|w| w.owner.clone())
            .or_else(|| self.vault.tokens.get(accessor).map(|t| t.owner.clone()));
        if let Some(owner) = &owner {
            self.calls(owner).revokes += 1;
        }
        let lost = match self.vault_gate() {
            Err(e) => return Ok(Err(e)),
            Ok(lost) => lost,
        };
        let now = self.now;
        if let Some(t) = self.vault.tokens.get_mut(accessor) {
            t.revoke_asked = true;
        }
        let existed = if self.vault.live(accessor, now) {
            self.vault.wraps.get_mut(accessor).expect("live").revoked = true;
            true
        } else if let Some(t) = self
            .vault
            .tokens
            .get_mut(accessor)
            .filter(|t| !t.revoked && now < t.expires)
        {
            t.revoked = true;
            true
        } else {
            false
        };
        self.note(format!("revoke {accessor}: existed={existed} lost={lost}"));
        self.changes += u64::from(existed);
        if lost {
            return Ok(Err(VErr::NoAnswer));
        }
        Ok(Ok(if existed {
            Revoked::Existed
        } else {
            Revoked::NotFound
        }))
    }

    /// `auth/token/renew-accessor`: extends a live token by `window`; false when it is gone.
    fn v_renew(&mut self, accessor: &str, window: i64) -> Step<Result<bool, VErr>> {
        self.op(Op::Renew)?;
        if let Some(owner) = self.vault.tokens.get(accessor).map(|t| t.owner.clone()) {
            self.calls(&owner).renews += 1;
        }
        let lost = match self.vault_gate() {
            Err(e) => return Ok(Err(e)),
            Ok(lost) => lost,
        };
        let now = self.now;
        // OpenBao does not cap a renewal by accessor at the token's explicit max: the operator
        // must (invariant 6; a second of slack for its clock read before the call).
        let live = match self.vault.tokens.get_mut(accessor) {
            Some(t) if !t.revoked && now < t.expires => {
                t.expires = now + window;
                if let Some(max) = t.max_at.filter(|m| t.expires > m + 1) {
                    let msg = format!(
                        "token {accessor} renewed to {} past its tokenTTL at {max}",
                        now + window
                    );
                    return Err(self.violation(6, msg).into());
                }
                true
            }
            _ => false,
        };
        self.note(format!("renew {accessor}: live={live} lost={lost}"));
        if lost {
            return Ok(Err(VErr::NoAnswer));
        }
        Ok(Ok(live))
    }

    /// Invariant 8: a token is revoked only for a record (or a new start) of the pod and the
    /// binding it was minted for.
    fn revoked_for(&self, accessor: &str, binding: &str, pod_uids: &[String]) -> Step<()> {
        let Some(owner) = self.vault.tokens.get(accessor).map(|t| &t.owner) else {
            return Ok(());
        };
        if owner.binding == binding && pod_uids.contains(&owner.uid) {
            return Ok(());
        }
        let msg = format!(
            "token {accessor} of {owner:?} revoked for a record of binding {binding}, pods {pod_uids:?}"
        );
        Err(self.violation(8, msg).into())
    }

    /// `auth/token/lookup-accessor`: what Vault says of a live wrap (policy and path) or token
    /// (the metadata set at its mint, its policy, path, creation and explicit max).
    fn v_facts(&mut self, accessor: &str) -> Step<Result<Option<TokenFacts>, VErr>> {
        self.op(Op::LookupAccessor)?;
        let lost = match self.vault_gate() {
            Err(e) => return Ok(Err(e)),
            Ok(lost) => lost,
        };
        if lost {
            return Ok(Err(VErr::NoAnswer));
        }
        let now = self.now;
        if let Some(t) = self.vault.tokens.get_mut(accessor)
            && (t.revoked || now >= t.expires)
        {
            t.revoke_asked = true;
        }
        let path = "auth/token/create/agent".to_string();
        if self.vault.live(accessor, now) {
            return Ok(Ok(Some(TokenFacts {
                policies: vec!["response-wrapping".into()],
                path,
                ..TokenFacts::default()
            })));
        }
        Ok(Ok(self
            .vault
            .tokens
            .get(accessor)
            .filter(|t| !t.revoked && now < t.expires)
            .map(|t| TokenFacts {
                meta: Some(BTreeMap::from([
                    ("namespace".to_string(), NS.to_string()),
                    ("pod_uid".to_string(), t.owner.uid.clone()),
                    ("binding".to_string(), t.owner.binding.clone()),
                ])),
                policies: vec!["agent".into()],
                path,
                creation_time: ts(t.minted_at).as_second(),
                explicit_max_ttl: t.max_at.map_or(0, |m| (m - t.minted_at) as u64),
            })))
    }

    // ---------------------------------------------------------------- the operator

    fn conflicts_of(&self, me: &str, pods: &[Pod]) -> BTreeMap<String, Vec<String>> {
        let mut conflicts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, other) in &self.bindings {
            if name == me || other.deleting {
                continue;
            }
            for p in pods.iter().filter(|p| other.selects(p)) {
                conflicts
                    .entry(p.name.clone())
                    .or_default()
                    .push(name.clone());
            }
        }
        conflicts
    }

    /// One reconcile of binding `name` by `replica` (mirrors `reconcile::reconcile`/`apply`).
    fn reconcile(&mut self, name: &str, replica: Replica) -> Step<RoundOutcome> {
        let Some(binding) = self.bindings.get(name).cloned() else {
            return Ok(RoundOutcome::default());
        };
        let outer = self.replica;
        self.replica = replica;
        if replica == Replica::Rival {
            self.memory[1] = Memory::default();
        }
        self.stats.rounds += 1;
        self.note(format!("round of {name} ({replica:?})"));
        let r = if binding.deleting {
            self.finalize(name).map(|_| RoundOutcome::default())
        } else {
            self.apply(name, &binding)
        };
        self.replica = outer;
        r
    }

    /// Lists the binding's records: (authentic records, untrusted names, raw tokens).
    /// From the cache (`reconcile::cached_records`, which may lag) or fresh from the API server
    /// (`sweep::list_records`, as the finalizer and sweep read).
    fn list_records(&mut self, name: &str, cached: bool) -> Step<Result<Listing, KubeErr>> {
        self.op(Op::ListSecrets)?;
        if self.api_fails() {
            return Ok(Err(KubeErr::Failed));
        }
        let mut wraps = vec![];
        let mut untrusted = BTreeSet::new();
        let mut raw = BTreeMap::new();
        let stale = cached && self.faults.stale > 0 && self.rng.chance(self.faults.stale);
        if stale {
            self.fault("stale read");
        }
        let source = if stale { &self.cache } else { &self.secrets };
        for (n, s) in source {
            if s.binding.as_deref() != Some(name) {
                continue;
            }
            raw.insert(n.clone(), s.token.clone());
            match (&s.view, s.forged) {
                (Some(w), false) => wraps.push(w.clone()),
                _ => {
                    untrusted.insert(n.clone());
                }
            }
        }
        Ok(Ok((wraps, untrusted, raw)))
    }

    fn apply(&mut self, name: &str, binding: &Binding) -> Step<RoundOutcome> {
        let Ok((wraps, mut untrusted, raw)) = self.list_records(name, true)? else {
            return Ok(RoundOutcome::default());
        };
        self.release_unverified(&untrusted)?;
        let m = usize::from(self.replica == Replica::Rival);
        let (taken, retry_taken_at) = recently_taken(&self.memory[m], NS, ts(self.now));
        untrusted.extend(taken);
        self.op(Op::ListPods)?;
        if self.api_fails() {
            return Ok(RoundOutcome::default());
        }
        let selected: Vec<Pod> = self
            .pods
            .iter()
            .filter(|p| binding.selects(p))
            .cloned()
            .collect();
        let views: Vec<PodView> = selected.iter().map(Pod::view).collect();
        let conflicts = self.conflicts_of(name, &selected);
        if conflicts
            .keys()
            .any(|p| wraps.iter().any(|w| &w.pod == p && !w.phase.is_settled()))
        {
            self.stats.conflicts_with_record += 1;
        }
        let no_conflicts = BTreeMap::new();
        let input = Input {
            settings: &binding.settings,
            pods: &views,
            conflicts: if self.mutant == Mutant::NoConflictCheck {
                &no_conflicts
            } else {
                &conflicts
            },
            wraps: &wraps,
            untrusted: &untrusted,
            last_lookup: &looked_up(&self.memory[m], NS, &wraps),
            last_renewal: &renewed(&self.memory[m], NS, &wraps),
            now: ts(self.now),
        };
        let planned = plan::plan(&input);
        for action in &planned.actions {
            self.note(format!("step: {}", describe(action)));
            if let Action::Issue(issue) = action
                && let Some(others) = conflicts.get(&issue.pod)
            {
                let msg = format!(
                    "planned a mint for pod {} ({}) although {others:?} select it too",
                    issue.pod, issue.pod_uid
                );
                return Err(self.violation(4, msg).into());
            }
        }
        let deferred = self.execute(name, binding, raw, planned.actions)?;
        // Lookups and renewals the budget deferred are tried again in a second.
        let retry = (deferred > 0).then_some(self.now + 1);
        Ok(RoundOutcome {
            wake_at: plan::earliest(planned.wake_at, retry.map(ts)).map(secs),
            renew_at: planned.renew_at.map(secs),
            retry_taken_at: retry_taken_at.map(secs),
        })
    }

    /// Runs a round's actions with the real executor (`execute::run_all`, one record at a
    /// time) over the models: every Vault call and record write is an operation a crash can
    /// fall before. The replica's memory is the executor's for the round. Returns how many lookups
    /// and renewals the budget deferred.
    fn execute(
        &mut self,
        name: &str,
        binding: &Binding,
        raw: BTreeMap<String, Option<String>>,
        actions: Vec<Action>,
    ) -> Step<usize> {
        if actions.is_empty() {
            return Ok(0);
        }
        let resource = binding.resource(name);
        let secrets: SecretsByName = raw
            .into_iter()
            .filter_map(|(n, token)| Some((n, Arc::new(wrap_secret(&token?)))))
            .collect();
        let starts = actions
            .iter()
            .filter_map(|a| match a {
                Action::Issue(i) => Some((i.pod_uid.clone(), (i.start, i.replaced))),
                _ => None,
            })
            .collect();
        let round = RoundPlan::of(&actions);
        let routine_events = self.routine_events;
        let m = usize::from(self.replica == Replica::Rival);
        let memory = std::mem::take(&mut self.memory[m]);
        let metrics = self.metrics.clone();
        // A fresh bucket: the round may make `lookup_budget` lookups and renewals (0: any). Its
        // clock stands at the round's simulated time, never the wall clock's, so a schedule
        // replays whatever the machine's speed.
        let budget = LookupBudget::stopped_at(self.lookup_budget, instant(self.now));
        let deferred_before = deferred_lookups(&self.metrics);
        let result = {
            let ops = SimOps::acting(self, name, starts, round);
            let executor = Executor {
                vault: &ops,
                records: &ops,
                memory: &memory,
                lookups: &budget,
                metrics: &metrics,
                binding: &resource,
                secrets: &secrets,
                settings: &binding.settings,
                token_grace: Duration::from_secs(GRACE as u64),
                routine_events,
            };
            let executed = drive(execute::run_all(&executor, actions, 1), &ops.stop);
            executed.and_then(|executed| ops.check_result(&executed).map(|()| executed))
        };
        self.memory[m] = memory;
        let executed = result?;
        // The status counts the lookups the budget deferred as the metric does.
        let deferred = deferred_lookups(&self.metrics) - deferred_before;
        self.stats.lookups_deferred += deferred;
        if executed.lookups_deferred as u64 != deferred {
            let msg = format!(
                "the round reported {} lookups deferred, the metric counted {deferred}",
                executed.lookups_deferred
            );
            return Err(self.violation(7, msg).into());
        }
        let told = Counted::from_metrics(&self.metrics);
        if told != self.counted {
            let msg = format!("metrics {told:?}, done {:?}", self.counted);
            return Err(self.violation(7, msg).into());
        }
        Ok(executed.lookups_deferred)
    }

    /// `writes::write_issue`: create the record, or take `issue.replaces` over (guarded).
    fn write_issue(
        &mut self,
        binding: &str,
        issue: &Issue,
        changes: &[Change],
        data: Data,
    ) -> Step<Result<u64, WriteError>> {
        let Some(old) = &issue.replaces else {
            let sec = Sec {
                uid: 0,
                rv: 0,
                binding: Some(binding.to_string()),
                forged: false,
                owner_uid: Some(issue.pod_uid.clone()),
                ann: changes
                    .iter()
                    .filter_map(|(k, v)| Some((*k, v.clone()?)))
                    .collect(),
                token: match data {
                    Data::Set(t) => Some(t),
                    _ => None,
                },
                finalizer: true,
                deleting: false,
                view: None,
            };
            return Ok(match self.api_create(&issue.secret, sec)? {
                Ok(rv) => Ok(rv),
                Err(KubeErr::AlreadyExists) => match self.api_get(&issue.secret)? {
                    // `writes::is_own_record`: a record of this binding that verifies.
                    Ok(Some(label))
                        if label.as_deref() == Some(binding)
                            && !self.secrets.get(&issue.secret).is_some_and(|s| s.forged) =>
                    {
                        self.stats.lost_races += 1;
                        Err(WriteError::Lost)
                    }
                    Ok(Some(_)) => {
                        // The bound on Vault calls is per stay of a pod whose name is its own
                        // (a squatted name costs a mint and its revocations, once per operator
                        // memory).
                        self.squatted.insert(issue.pod_uid.clone());
                        Err(WriteError::Taken)
                    }
                    Ok(None) => Err(WriteError::Lost),
                    Err(_) => Err(WriteError::Kube),
                },
                Err(_) => Err(WriteError::Kube),
            });
        };
        let rv = old.resource_version.clone();
        self.guarded_patch(&old.secret, rv.as_deref(), changes, data)
    }

    /// `writes::guarded_patch`.
    fn guarded_patch(
        &mut self,
        name: &str,
        rv: Option<&str>,
        changes: &[Change],
        data: Data,
    ) -> Step<Result<u64, WriteError>> {
        Ok(match self.api_patch(name, rv, changes, data)? {
            Ok(rv) => Ok(rv),
            Err(KubeErr::Conflict | KubeErr::NotFound) => {
                self.stats.lost_races += 1;
                Err(WriteError::Lost)
            }
            Err(_) => Err(WriteError::Kube),
        })
    }

    /// `writes::remove`: release the finalizer (guarded), delete with the uid as precondition;
    /// `false` when the record changed since it was read.
    fn remove(&mut self, wrap: &WrapState) -> Step<Result<bool, KubeErr>> {
        let name = wrap.secret.as_str();
        match self.api_unfinalize(name, wrap.resource_version.as_deref())? {
            Ok(uid) => match self.api_delete(name, uid)? {
                Ok(()) | Err(KubeErr::NotFound | KubeErr::Conflict) => Ok(Ok(true)),
                Err(e) => Ok(Err(e)),
            },
            Err(KubeErr::NotFound) => Ok(Ok(true)),
            Err(KubeErr::Conflict) => Ok(Ok(false)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// `trust::vet`: a record that does not verify is never acted on in Vault, but once its
    /// Secret is being deleted its finalizer is released (guarded), so it is never stranded.
    fn release_unverified(&mut self, untrusted: &BTreeSet<String>) -> Step<()> {
        if self.mutant == Mutant::NoUnverifiedRelease {
            return Ok(());
        }
        for n in untrusted {
            let Some(s) = self.secrets.get(n) else {
                continue;
            };
            if !(s.deleting && s.finalizer) {
                continue;
            }
            let rv = s.rv.to_string();
            if self.api_unfinalize(n, Some(&rv))?.is_ok() {
                self.stats.unverified_released += 1;
            }
        }
        Ok(())
    }

    /// The binding's finalizer (`sweep::retire_records`); the binding goes once it ran.
    fn finalize(&mut self, name: &str) -> Step<()> {
        if self.retire(name)? {
            self.note(format!("binding {name} is gone"));
            self.bindings.remove(name);
        }
        Ok(())
    }

    /// `sweep::sweep_loop`: the records of bindings that are gone are retired like their
    /// finalizer would (a record that stopped verifying is released once it is being deleted).
    fn sweep(&mut self) -> Step<()> {
        let gone: BTreeSet<String> = self
            .secrets
            .values()
            .filter_map(|s| s.binding.clone())
            .filter(|b| !self.bindings.contains_key(b))
            .collect();
        for name in gone {
            self.retire(&name)?;
        }
        Ok(())
    }

    /// `sweep::retire_records`: what the binding's records name revoked and the records
    /// removed by the real `sweep::retire_trusted` (Vault vouching for each); true when all of
    /// them were.
    fn retire(&mut self, name: &str) -> Step<bool> {
        let Ok((wraps, untrusted, _)) = self.list_records(name, false)? else {
            return Ok(false);
        };
        self.release_unverified(&untrusted)?;
        // The finalizer's binding is live (its role known); the sweep's is gone.
        let resource = self.bindings.get(name).map(|b| b.resource(name));
        let claim = resource.as_ref().map_or(
            Claim {
                namespace: NS,
                binding: name,
                role: None,
            },
            Claim::of,
        );
        let metrics = self.metrics.clone();
        let ops = SimOps::quietly(self, name, HashMap::new(), RoundPlan::naming(&wraps));
        let retired = drive(
            sweep::retire_trusted(&ops, &ops, &metrics, claim, &wraps),
            &ops.stop,
        );
        retired.map(|r| matches!(r, Ok((removed, None)) if removed == wraps.len()))
    }

    // ---------------------------------------------------------------- the world around it

    fn running_pods(&self) -> Vec<usize> {
        (0..self.pods.len())
            .filter(|&i| self.pods[i].running())
            .collect()
    }

    /// The Secret a pod mounts: its annotation, else `<pod>-<binding>-wrap` of the binding
    /// its spec was written for.
    fn mounted(&self, pod: &Pod) -> String {
        secret_name(&pod.view(), spec_binding(pod))
    }

    /// The current agent instance tries to unwrap (`cubbyhole unwrap`, or plain `bao unwrap`).
    fn agent_attempt(&mut self, i: usize, nested: bool) -> Step<()> {
        let pod = self.pods[i].clone();
        if pod.attempted || !pod.running() {
            return Ok(());
        }
        if self
            .bindings
            .get(spec_binding(&pod))
            .is_some_and(|b| b.settings.on_request)
        {
            return self.agent_asks(i, nested);
        }
        let token = self
            .secrets
            .get(&self.mounted(&pod))
            .and_then(|s| s.token.clone());
        let now = self.now;
        let plain = self.rng.chance(100);
        let receipt = match token {
            None if pod.wait_for_fresh => return Ok(()),
            None => {
                *self.stats.agent.entry("token-file-unreadable").or_default() += 1;
                Some(Receipt::failed(result::TOKEN_FILE_UNREADABLE))
            }
            Some(_) if now < self.vault.down_until => {
                Some(Receipt::failed(result::VAULT_UNREACHABLE))
            }
            Some(token) => {
                let valid = self
                    .vault
                    .by_token
                    .get(&token)
                    .is_some_and(|a| self.vault.live(a, now));
                if !valid && pod.wait_for_fresh {
                    let since = *self.pods[i].waiting_since.get_or_insert(now);
                    if now < since + WAIT_FOR_FRESH {
                        return Ok(());
                    }
                }
                if valid && self.rng.chance(15) {
                    // The agent expects another creation path (`--expect-path`): it refuses
                    // the wrap without taking it.
                    self.note(format!("pod {} refuses its wrap", pod.name));
                    *self.stats.agent.entry("refused").or_default() += 1;
                    let p = &mut self.pods[i];
                    p.attempted = true;
                    p.waiting_since = None;
                    p.current = Some(ObservedReceipt {
                        container: AGENT.to_string(),
                        receipt: Receipt::failed(result::UNEXPECTED_CREATION_PATH),
                        finished_at: Some(ts(now)),
                    });
                    return Ok(());
                }
                match self.vault.unwrap(&token, now) {
                    Some(inner) if plain => {
                        self.note(format!(
                            "pod {} unwraps {inner} (plain, no receipt)",
                            pod.name
                        ));
                        *self.stats.agent.entry("plain-unwrap").or_default() += 1;
                        None
                    }
                    Some(inner) if self.rng.chance(50) => {
                        self.note(format!("pod {} unwraps {inner}, cannot store it", pod.name));
                        *self.stats.agent.entry("write-failed").or_default() += 1;
                        Some(Receipt::failed(result::WRITE_FAILED))
                    }
                    Some(inner) => {
                        self.note(format!("pod {} unwraps {inner}", pod.name));
                        *self.stats.agent.entry("unwrapped").or_default() += 1;
                        Some(Receipt::unwrapped(inner))
                    }
                    None => {
                        self.note(format!("pod {} finds its wrap invalid", pod.name));
                        *self.stats.agent.entry("invalid").or_default() += 1;
                        Some(Receipt::failed(result::INVALID_WRAPPING_TOKEN))
                    }
                }
            }
        };
        let p = &mut self.pods[i];
        p.attempted = true;
        p.waiting_since = None;
        if let Some(receipt) = receipt {
            p.current = Some(ObservedReceipt {
                container: AGENT.to_string(),
                receipt,
                finished_at: Some(ts(now)),
            });
        }
        Ok(())
    }

    /// The current agent instance of a request-delivery pod asks the endpoint for its wrap
    /// (`cubbyhole unwrap --request`), unwraps what it gets and reports its receipt: to the
    /// endpoint (most of the time) and in its termination message. Asked between another
    /// round's operations, another replica's endpoint answers.
    fn agent_asks(&mut self, i: usize, nested: bool) -> Step<()> {
        if self.asking {
            return Ok(());
        }
        let pod = self.pods[i].clone();
        self.stats.asks += 1;
        let outer = self.replica;
        let replica = if nested {
            Replica::Rival
        } else {
            Replica::Main
        };
        self.replica = replica;
        self.asking = true;
        let answer = self.endpoint_ask(&pod);
        self.asking = false;
        self.replica = outer;
        let Some((token, binding, secret)) = answer? else {
            // Refused or no answer: the agent asks again later (its retry, or the kubelet's).
            return Ok(());
        };
        self.stats.asks_served += 1;
        // The pod may have gone, or its agent restarted, while the ask was answered: the
        // answer reaches nobody (the wrap expires, the planner's probe settles it).
        let Some(i) = self
            .pods
            .iter()
            .position(|p| p.uid == pod.uid && p.restarts == pod.restarts && p.running())
        else {
            return Ok(());
        };
        let now = self.now;
        if self.rng.chance(50) {
            self.note(format!("pod {} agent dies holding its answer", pod.name));
            self.restart(i);
            return Ok(());
        }
        let receipt = if now < self.vault.down_until {
            Receipt::failed(result::VAULT_UNREACHABLE)
        } else if let Some(inner) = self.vault.unwrap(&token, now) {
            self.note(format!("pod {} unwraps {inner} (asked for)", pod.name));
            *self.stats.agent.entry("unwrapped").or_default() += 1;
            Receipt::unwrapped(inner)
        } else {
            self.note(format!(
                "pod {} finds the wrap it asked for invalid",
                pod.name
            ));
            *self.stats.agent.entry("invalid").or_default() += 1;
            Receipt::failed(result::INVALID_WRAPPING_TOKEN)
        };
        let p = &mut self.pods[i];
        p.attempted = true;
        p.current = Some(ObservedReceipt {
            container: AGENT.to_string(),
            receipt: receipt.clone(),
            finished_at: Some(ts(now)),
        });
        if self.rng.chance(800) {
            self.replica = replica;
            self.asking = true;
            let reported = self.endpoint_report(&pod, &binding, &secret, &receipt);
            self.asking = false;
            self.replica = outer;
            reported?;
        }
        Ok(())
    }

    /// `request::serve::Endpoint::ask` for `pod` (its identity already reviewed): the one
    /// request-delivery binding selecting it, its record read fresh, the previous start's wrap
    /// and token revoked, a mint, the record written without data. The wrapping token, the
    /// binding and the record's name when it answers with a wrap.
    fn endpoint_ask(&mut self, pod: &Pod) -> Step<Option<(String, String, String)>> {
        let selecting: Vec<String> = self
            .bindings
            .iter()
            .filter(|(_, b)| !b.deleting && b.selects(pod))
            .map(|(n, _)| n.clone())
            .collect();
        let [name] = &selecting[..] else {
            return Ok(None);
        };
        let binding = self.bindings[name].clone();
        let secret = secret_name(&pod.view(), name);
        if !binding.settings.on_request || !crate::core::pod::is_valid_secret_name(&secret) {
            return Ok(None);
        }
        self.op(Op::GetSecret)?;
        if self.api_fails() || !self.pods.iter().any(|p| p.uid == pod.uid && p.running()) {
            return Ok(None);
        }
        let old = match self.secrets.get(&secret) {
            None => None,
            Some(s) if s.forged || s.binding.as_deref() != Some(name.as_str()) => {
                return Ok(None);
            }
            Some(s) => match &s.view {
                Some(w) if !w.deleting && w.pod_uid == pod.uid => Some(w.clone()),
                _ => return Ok(None),
            },
        };
        // A run already served is served again only while its wrap is pending (a lost answer);
        // the kubelet's report of a restart is immediate here.
        if let Some(o) = &old
            && plan::ask_kind(&pod.view(), Some(o)) == plan::AskKind::SameRun
            && self.mutant != Mutant::ServeEveryAsk
        {
            let pending = match &o.wrap_accessor {
                Some(accessor) if o.phase == Phase::Issued => match self.v_facts(accessor)? {
                    Ok(facts) => facts.is_some_and(|f| f.is_wrap_through(Some("agent"))),
                    Err(_) => return Ok(None),
                },
                _ => false,
            };
            if !plan::serve_same_run(o, pending) {
                self.note(format!(
                    "pod {} asks again in a run already served: refused",
                    pod.name
                ));
                self.stats.asks_already_served += 1;
                return Ok(None);
            }
        }
        if let Some(old) = old
            .as_ref()
            .filter(|_| self.mutant != Mutant::NoRevokeBeforeAsk)
        {
            let revoke = plan::revocations(old, binding.settings.revoke_on_pod_deletion);
            let resource = binding.resource(name);
            let metrics = self.metrics.clone();
            let revoked = {
                let round = RoundPlan::naming(std::slice::from_ref(old));
                let ops = SimOps::quietly(self, name, HashMap::new(), round);
                let claim = Claim::of(&resource);
                drive(
                    vouch::revoke_named(&ops, &metrics, claim, old, revoke),
                    &ops.stop,
                )
            };
            if revoked?.is_err() {
                return Ok(None);
            }
        }
        let issue = plan::asked(&pod.view(), secret.clone(), old);
        let resource = binding.resource(name);
        let request = crate::core::spec::token_request(
            &resource,
            &pod.name,
            &pod.uid,
            binding.settings.wrap_ttl,
            Duration::from_secs(GRACE as u64),
        );
        // The real mint: Vault, the record (no token in it), the discard of an unrecorded wrap.
        let metrics = self.metrics.clone();
        let minted = {
            let starts = HashMap::from([(pod.uid.clone(), (issue.start, issue.replaced))]);
            let ops = SimOps {
                asking: true,
                ..SimOps::quietly(self, name, starts, RoundPlan::default())
            };
            drive(
                execute::mint_and_record(&ops, &ops, &metrics, &issue, &request, None),
                &ops.stop,
            )
        };
        Ok(match minted? {
            execute::Minted::Delivered { wrap, .. } => {
                Some((wrap.token.expose().to_string(), name.clone(), secret))
            }
            _ => None,
        })
    }

    /// `request::serve::Endpoint::report`: the receipt recorded in the pod's current record
    /// (guarded), unless it is about the previous start's token.
    fn endpoint_report(
        &mut self,
        pod: &Pod,
        binding: &str,
        secret: &str,
        receipt: &Receipt,
    ) -> Step<()> {
        self.op(Op::GetSecret)?;
        if self.api_fails() || !self.pods.iter().any(|p| p.uid == pod.uid && p.running()) {
            return Ok(());
        }
        let Some(sec) = self.secrets.get(secret).cloned() else {
            return Ok(());
        };
        if sec.forged || sec.binding.as_deref() != Some(binding) {
            return Ok(());
        }
        let Some(w) = sec.view.filter(|w| w.pod_uid == pod.uid && !w.deleting) else {
            return Ok(());
        };
        if (receipt.accessor.is_some() && receipt.accessor == w.previous_accessor)
            || w.reported.as_ref() == Some(receipt)
        {
            return Ok(());
        }
        let changes = [(ann::RECEIPT, Some(receipt.to_line()))];
        let rv = w.resource_version.clone();
        if self
            .guarded_patch(secret, rv.as_deref(), &changes, Data::Keep)?
            .is_ok()
        {
            self.stats.receipts_reported += 1;
        }
        Ok(())
    }

    fn thief(&mut self) {
        let tokens: Vec<String> = self
            .secrets
            .values()
            .filter_map(|s| s.token.clone())
            .collect();
        if let Some(t) = self.rng.pick(&tokens).cloned()
            && let Some(inner) = self.vault.unwrap(&t, self.now)
        {
            self.note(format!("a thief unwraps {inner}"));
            self.fault("theft");
            *self.stats.agent.entry("stolen").or_default() += 1;
        }
    }

    /// Someone holding a request pod's identity token (valid ten minutes, mounted into every
    /// container) asks again while the pod's agent holds the token of its current run, the
    /// pod's record naming it: invariant 9.
    fn replayer(&mut self) -> Step<()> {
        if self.asking {
            return Ok(());
        }
        let holding: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.agent_holds_its_token(&self.pods[i]))
            .collect();
        let Some(&i) = self.rng.pick(&holding) else {
            return Ok(());
        };
        let pod = self.pods[i].clone();
        self.note(format!("someone replays pod {}'s identity token", pod.name));
        self.asking = true;
        let answer = self.endpoint_ask(&pod);
        self.asking = false;
        if answer?.is_some() {
            return Err(Stop::Broken(self.violation(
                9,
                format!(
                    "a replayed ask was served a wrap while pod {}'s agent held its token (run {})",
                    pod.name, pod.restarts
                ),
            )));
        }
        Ok(())
    }

    /// Whether `pod` is running with a request binding and its current agent instance unwrapped
    /// a live token that its authentic record names.
    fn agent_holds_its_token(&self, pod: &Pod) -> bool {
        let Some(held) = pod
            .current
            .as_ref()
            .filter(|r| r.receipt.is_unwrapped())
            .and_then(|r| r.receipt.accessor.clone())
        else {
            return false;
        };
        pod.running()
            && self
                .bindings
                .get(spec_binding(pod))
                .is_some_and(|b| b.settings.on_request)
            && self.secrets.get(&self.mounted(pod)).is_some_and(|s| {
                !s.forged
                    && s.view.as_ref().is_some_and(|w| {
                        w.pod_uid == pod.uid && !w.deleting && w.accessor.as_ref() == Some(&held)
                    })
            })
            && self
                .vault
                .tokens
                .get(&held)
                .is_some_and(|t| !t.revoked && self.now < t.expires)
    }

    fn restart(&mut self, i: usize) {
        let p = &mut self.pods[i];
        p.restarts += 1;
        p.last = p.current.take();
        p.attempted = false;
        p.waiting_since = None;
        let line = format!("pod {} agent restarts ({})", p.name, p.restarts);
        self.note(line);
    }

    fn create_pod(&mut self) {
        let name = format!("p{}", self.rng.below(5));
        if self.pods.iter().any(|p| p.name == name) {
            return;
        }
        self.next_uid += 1;
        let mut labels = BTreeMap::new();
        if !self.rng.chance(150) {
            labels.insert("app".to_string(), "agent".to_string());
        }
        if self.rng.chance(200) || labels.is_empty() {
            labels.insert("team".to_string(), "x".to_string());
        }
        let secret_name = match self.rng.below(10) {
            0 => Some("w0".to_string()),
            1 => Some("w1".to_string()),
            2 => Some("p0-b-wrap".to_string()),
            3 if self.rng.chance(300) => Some("Bad_Name".to_string()),
            _ => None,
        };
        let pod = Pod {
            name: name.clone(),
            uid: format!("{name}-u{}", self.next_uid),
            labels,
            secret_name,
            terminating: false,
            finished: false,
            restarts: 0,
            current: None,
            last: None,
            attempted: false,
            waiting_since: None,
            wait_for_fresh: self.rng.chance(500),
        };
        self.note(format!("pod created: {pod:?}"));
        self.pods.push(pod);
    }

    fn remove_pod(&mut self, i: usize) {
        let pod = self.pods.remove(i);
        self.note(format!("pod {} ({}) removed", pod.name, pod.uid));
        self.removed_at.insert(pod.uid.clone(), self.now);
        self.collect_garbage(&pod.uid);
    }

    /// A Secret that is not this operator's record, at a name some pod may want.
    fn foreign_secret(&mut self) {
        let name = self
            .rng
            .pick(&["w1", "p3-b-wrap", "p4-c-wrap"])
            .expect("some")
            .to_string();
        if self.secrets.contains_key(&name) {
            return;
        }
        let forged = self.rng.chance(500);
        let rv = self.rv();
        let mut ann = BTreeMap::new();
        ann.insert(ann::POD, "victim".to_string());
        ann.insert(ann::POD_UID, "victim-uid".to_string());
        ann.insert(ann::PHASE, "Issued".to_string());
        self.note(format!("foreign Secret {name} (forged record: {forged})"));
        self.fault(if forged {
            "forged record"
        } else {
            "foreign Secret"
        });
        self.secrets.insert(
            name,
            Sec {
                uid: rv,
                rv,
                binding: forged.then(|| "b".to_string()),
                forged,
                owner_uid: None,
                ann,
                token: None,
                finalizer: false,
                deleting: false,
                view: None,
            },
        );
    }

    /// Someone who holds the record key (a leaked key) writes a valid record for one pod that
    /// names another pod's live token (in half of them as its wrap too): Vault's answer says
    /// whose token it is and that it is no wrap, and the operator must never revoke or renew
    /// it for this record (invariant 8), nor the request endpoint at the pod's next ask.
    fn forge_with_the_key(&mut self) {
        let victims: Vec<(String, Sec)> = self
            .secrets
            .iter()
            .filter(|(_, s)| s.binding.as_deref() == Some("b") && !s.forged)
            // Its wrap already taken: what the forgery aims at is the token.
            .filter(|(_, s)| {
                let w = s.view.as_ref().filter(|w| w.phase == Phase::Unwrapped);
                let a = w.and_then(|w| w.accessor.as_ref());
                a.and_then(|a| self.vault.tokens.get(a))
                    .is_some_and(|t| !t.revoked && self.now < t.expires)
            })
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let Some((victim, mut sec)) = self.rng.pick(&victims).cloned() else {
            return;
        };
        // Under b, or (a third of them, while it lives) under c: c's finalizer or the sweep
        // then retires a record naming b's token.
        let under = match self.bindings.get("c") {
            Some(c) if !c.deleting && self.rng.chance(333) => "c",
            _ => "b",
        };
        let tenants: Vec<usize> = self
            .running_pods()
            .into_iter()
            .filter(|&i| self.bindings[under].selects(&self.pods[i]))
            .filter(|&i| {
                !self
                    .secrets
                    .contains_key(&secret_name(&self.pods[i].view(), under))
            })
            .collect();
        let Some(&i) = self.rng.pick(&tenants) else {
            return;
        };
        let pod = self.pods[i].clone();
        let name = secret_name(&pod.view(), under);
        sec.binding = Some(under.to_string());
        sec.ann.insert(ann::POD, pod.name.clone());
        sec.ann.insert(ann::POD_UID, pod.uid.clone());
        // Half the forgeries name the token as the record's wrap too, not yet taken: the
        // expiry probe or a cleanup then asks to revoke it as a wrap.
        let as_wrap = self.rng.chance(500);
        if as_wrap && let Some(a) = sec.ann.get(ann::ACCESSOR).cloned() {
            sec.ann.insert(ann::PHASE, "Issued".to_string());
            sec.ann.insert(ann::WRAP_ACCESSOR, a);
        }
        sec.owner_uid = Some(pod.uid.clone());
        sec.rv = self.rv();
        sec.uid = sec.rv;
        sec.deleting = false;
        sec.view = read_record(&name, &sec);
        self.note(format!(
            "a record of {under} for pod {} forged with the key, naming {victim}'s token{}",
            pod.name,
            if as_wrap { " as its wrap too" } else { "" }
        ));
        self.fault("record forged with the key");
        self.forged_for.insert(pod.uid.clone());
        self.secrets.insert(name, sec);
    }

    /// The record key is lost (its Secret deleted, the operator's namespace reinstalled): every
    /// record written so far stops verifying; the operator's next writes sign with a new key.
    fn lose_record_key(&mut self) {
        let mut named = vec![];
        for s in self.secrets.values_mut() {
            if s.binding.is_none() || s.forged || s.view.is_none() {
                continue;
            }
            s.forged = true;
            for k in [ann::ACCESSOR, ann::WRAP_ACCESSOR, ann::PREVIOUS_ACCESSOR] {
                named.extend(s.ann.get(k).cloned());
            }
        }
        for a in named {
            if let Some(t) = self.vault.tokens.get_mut(&a) {
                t.unvouched = true;
            }
            if let Some(w) = self.vault.wraps.get_mut(&a) {
                w.unvouched = true;
            }
        }
        self.key_lost = true;
        self.stats.key_losses += 1;
        self.note("the record key is lost: every record written so far stops verifying".into());
    }

    /// Events that may happen between two operations of the operator.
    fn external_between_ops(&mut self) -> Step<()> {
        match self.rng.below(1000) {
            0..40 => {
                if let Some(&i) = self.rng.pick(&self.running_pods()) {
                    self.agent_attempt(i, true)?;
                }
            }
            40..47 => self.thief(),
            47..50 => self.replayer()?,
            50..120 => self.now += 1,
            120..130 => {
                if let Some(&i) = self.rng.pick(&self.running_pods()) {
                    self.restart(i);
                }
            }
            _ => {}
        }
        if self.replica == Replica::Main
            && self.faults.rival > 0
            && self.rng.chance(self.faults.rival)
        {
            let names: Vec<String> = self.bindings.keys().cloned().collect();
            if let Some(name) = self.rng.pick(&names).cloned() {
                self.stats.rival_rounds += 1;
                match self.reconcile(&name, Replica::Rival) {
                    Ok(_) | Err(Stop::Crash) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.check()?;
        Ok(())
    }

    /// The main replica crashed: its memory is gone, and what it held is lost.
    fn crashed(&mut self) {
        self.memory[0] = Memory::default();
        self.ops_left = None;
        self.asking = false;
        for a in std::mem::take(&mut self.in_hand[0]) {
            if let Some(t) = self.vault.tokens.get_mut(&a) {
                t.lost = Some("operator crashed holding it");
            }
        }
    }

    /// One step of a random schedule.
    fn random_event(&mut self) -> Step<()> {
        let roll = self.rng.below(1000);
        match roll {
            0..300 => {
                let names: Vec<String> = self.bindings.keys().cloned().collect();
                let name = if names.len() > 1 && self.rng.chance(300) {
                    names[1].clone()
                } else {
                    names.first().cloned().unwrap_or_default()
                };
                if self.faults.crash > 0 && self.rng.chance(self.faults.crash) {
                    self.ops_left = Some(self.rng.below(12) as u32);
                }
                self.last_op = None;
                let outcome = self.reconcile(&name, Replica::Main);
                self.ops_left = None;
                match outcome {
                    Ok(_) => {}
                    Err(Stop::Crash) => self.crashed(),
                    Err(e) => return Err(e),
                }
            }
            300..450 => {
                let d = *self.rng.pick(&[1, 2, 5, 15, 40, 70]).expect("some");
                self.now += d;
            }
            450..600 => {
                if let Some(&i) = self.rng.pick(&self.running_pods()) {
                    if self.faults.crash > 0 && self.rng.chance(self.faults.crash) {
                        self.ops_left = Some(self.rng.below(8) as u32);
                    }
                    self.last_op = None;
                    let attempt = self.agent_attempt(i, false);
                    self.ops_left = None;
                    match attempt {
                        Ok(()) => {}
                        Err(Stop::Crash) => self.crashed(),
                        Err(e) => return Err(e),
                    }
                }
            }
            600..650 => {
                if let Some(&i) = self.rng.pick(&self.running_pods()) {
                    self.restart(i);
                }
            }
            650..740 => self.create_pod(),
            740..780 => {
                if let Some(&i) = self.rng.pick(&self.running_pods()) {
                    self.note(format!("pod {} deleted", self.pods[i].name));
                    self.pods[i].terminating = true;
                }
            }
            780..820 => {
                let gone: Vec<usize> = (0..self.pods.len())
                    .filter(|&i| self.pods[i].terminating)
                    .collect();
                if let Some(&i) = self.rng.pick(&gone) {
                    self.remove_pod(i);
                }
            }
            820..840 => {
                if let Some(&i) = self.rng.pick(&self.running_pods()) {
                    self.note(format!("pod {} finished", self.pods[i].name));
                    self.pods[i].finished = true;
                }
            }
            840..870 => self.thief(),
            870..900 => {
                if let Some(&i) = self.rng.pick(&self.running_pods()) {
                    let p = &mut self.pods[i];
                    let (k, v) = if p.labels.len() > 1 || self.rng.chance(500) {
                        ("team", "x")
                    } else {
                        ("app", "agent")
                    };
                    if p.labels.remove(k).is_none() {
                        p.labels.insert(k.to_string(), v.to_string());
                    }
                    let line = format!("pod {} relabelled: {:?}", p.name, p.labels);
                    self.relabelled.insert(p.uid.clone());
                    self.note(line);
                }
            }
            900..920 => {
                if let Some(c) = self.bindings.get_mut("c") {
                    if !c.deleting {
                        c.deleting = true;
                        self.deleted_bindings.insert("c".to_string());
                        self.note("binding c deleted".to_string());
                    }
                } else {
                    let mut settings = self.bindings["b"].settings.clone();
                    settings.binding = "c".to_string();
                    settings.wrap_ttl = Duration::from_secs(20);
                    self.bindings.insert(
                        "c".to_string(),
                        Binding {
                            settings,
                            selector: ("team", "x"),
                            deleting: false,
                            token_ttl: self.bindings["b"].token_ttl,
                        },
                    );
                    self.note("binding c created".to_string());
                }
            }
            920..940 if self.faults.down > 0 => {
                let d = *self.rng.pick(&[3, 20, 90]).expect("some");
                self.vault.down_until = self.now + d;
                self.note(format!("Vault down for {d} s"));
                self.fault("Vault outage");
            }
            940..950 => self.foreign_secret(),
            950..953 if self.faults.any() => self.lose_record_key(),
            953..990 if self.faults.any() => self.forge_with_the_key(),
            _ => {}
        }
        self.check()?;
        Ok(())
    }

    // ---------------------------------------------------------------- the end of a schedule

    /// Rounds of every binding until nothing is due (time jumps to the next wake-up).
    fn settle_down(&mut self, max_iterations: u32) -> Result<(), Violation> {
        // Taken names are retried for as long as they stay taken: one retry after the last
        // change is enough to see whether a freed name gets served.
        let mut retried = false;
        for _ in 0..max_iterations {
            let names: Vec<String> = self.bindings.keys().cloned().collect();
            let before = self.changes;
            let mut wake: Option<i64> = None;
            let mut retry: Option<i64> = None;
            for name in names {
                match self.reconcile(&name, Replica::Main) {
                    Ok(o) => {
                        if let Some(w) = o.wake_at {
                            wake = Some(wake.map_or(w, |x: i64| x.min(w)));
                        }
                        if let Some(w) = o.retry_taken_at {
                            retry = Some(retry.map_or(w, |x: i64| x.min(w)));
                        }
                    }
                    Err(Stop::Crash) => unreachable!("no crashes while settling"),
                    Err(Stop::Broken(v)) => return Err(v),
                }
            }
            match self.sweep() {
                Ok(()) => {}
                Err(Stop::Crash) => unreachable!("no crashes while settling"),
                Err(Stop::Broken(v)) => return Err(v),
            }
            // A round whose steps changed nothing (a claim of a name someone else holds is
            // retried at once by the operator) does not count as activity.
            let acted = self.changes > before || self.bindings.values().any(|b| b.deleting);
            if acted {
                retried = false;
                self.now += 1;
            } else if let Some(w) = wake {
                self.now = w.max(self.now + 1);
            } else if let Some(w) = retry.filter(|_| !retried) {
                retried = true;
                self.now = w.max(self.now + 1);
            } else {
                return Ok(());
            }
            self.check()?;
        }
        Err(self.violation(3, "no quiescence".to_string()))
    }

    /// The kubelet restarts the init container of a request-delivery pod until its agent holds
    /// a token: every running pod whose agent asks (its spec's binding delivers on request) and
    /// whose record is not an unwrapped wrap of its own gets a new agent instance that asks.
    fn agents_ask_again(&mut self) -> Result<(), Violation> {
        for _ in 0..5 {
            let waiting: Vec<String> = self
                .pods
                .iter()
                .filter(|p| p.running())
                .filter(|p| {
                    self.bindings
                        .get(spec_binding(p))
                        .is_some_and(|b| b.settings.on_request)
                })
                .filter(|p| {
                    let record = self.secrets.get(&self.mounted(p));
                    !record
                        .and_then(|s| s.view.as_ref())
                        .is_some_and(|w| w.pod_uid == p.uid && w.phase == Phase::Unwrapped)
                })
                .map(|p| p.uid.clone())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            for uid in waiting {
                let Some(i) = self.pods.iter().position(|p| p.uid == uid) else {
                    continue;
                };
                self.restart(i);
                match self.agent_attempt(i, false) {
                    Ok(()) => {}
                    Err(Stop::Crash) => unreachable!("no crashes once the faults stop"),
                    Err(Stop::Broken(v)) => return Err(v),
                }
            }
            self.settle_down(1500)?;
        }
        Ok(())
    }

    /// Invariant 3.
    fn check_liveness(&mut self) -> Result<(), Violation> {
        for pod in self.pods.clone() {
            if !pod.running() || self.forged_for.contains(&pod.uid) {
                continue;
            }
            let selecting: Vec<&String> = self
                .bindings
                .iter()
                .filter(|(_, b)| b.selects(&pod) && !b.deleting)
                .map(|(n, _)| n)
                .collect();
            let [binding] = selecting[..] else {
                continue;
            };
            let b = &self.bindings[binding];
            let name = secret_name(&pod.view(), binding);
            if !crate::core::pod::is_valid_secret_name(&name) {
                continue;
            }
            let record = self.secrets.get(&name);
            let held_by_other = record.is_some_and(|s| {
                s.binding.as_deref() != Some(binding.as_str())
                    || s.forged
                    || s.view.as_ref().is_none_or(|w| w.pod_uid != pod.uid)
            });
            if held_by_other {
                continue;
            }
            self.stats.eligible_checked += 1;
            let start = if b.settings.agent_container.is_some() {
                pod.restarts
            } else {
                0
            };
            // On request a start is an ask: the record of the pod's last one counts.
            let ok = record.and_then(|s| s.view.as_ref()).is_some_and(|w| {
                (b.settings.on_request || w.start == start)
                    && !matches!(w.phase, Phase::Claimed | Phase::Failed)
            });
            if !ok {
                let msg = format!(
                    "pod {} ({}) start {start} of binding {binding} has no delivered wrap: {:?}",
                    pod.name,
                    pod.uid,
                    record.and_then(|s| s.view.clone())
                );
                return Err(self.violation(3, msg));
            }
        }
        Ok(())
    }

    /// The token accessors running pods' agents hold: a record of the pod's current stay that
    /// says its agent took the token, which Vault still has alive.
    fn held_tokens(&self) -> Vec<(String, String)> {
        let mut held = vec![];
        for s in self.secrets.values() {
            let (Some(w), Some(binding)) = (s.view.as_ref(), s.binding.as_ref()) else {
                continue;
            };
            let selects = |p: &Pod| self.bindings.get(binding).is_some_and(|b| b.selects(p));
            let running = !s.forged
                && !self.forged_for.contains(&w.pod_uid)
                && self
                    .pods
                    .iter()
                    .any(|p| p.uid == w.pod_uid && p.running() && selects(p));
            let Some(a) = w.accessor.as_ref().filter(|_| w.phase == Phase::Unwrapped) else {
                continue;
            };
            let alive = self
                .vault
                .tokens
                .get(a)
                .is_some_and(|t| !t.revoked && self.now < t.expires);
            if running && alive {
                held.push((w.pod.clone(), a.clone()));
            }
        }
        held
    }

    /// Invariant 6: with the operator's rounds run when it asks for them (its next wake-up or
    /// the next renewal due), every token a running pod's agent holds stays alive for `span`
    /// seconds (renewed by accessor before it ends).
    fn check_held_tokens_live(&mut self, span: i64) -> Result<(), Violation> {
        let held = self.held_tokens();
        let until = self.now + span;
        while self.now < until {
            let before = self.changes;
            let mut next = until;
            let names: Vec<String> = self.bindings.keys().cloned().collect();
            for name in names {
                match self.reconcile(&name, Replica::Main) {
                    Ok(o) => {
                        for at in [o.wake_at, o.renew_at, o.retry_taken_at]
                            .into_iter()
                            .flatten()
                        {
                            next = next.min(at);
                        }
                    }
                    Err(Stop::Crash) => unreachable!("no crashes once the faults stop"),
                    Err(Stop::Broken(v)) => return Err(v),
                }
            }
            self.now = if self.changes > before {
                self.now + 1
            } else {
                next.max(self.now + 1)
            };
            self.check()?;
            for (pod, a) in &held {
                let t = &self.vault.tokens[a];
                // Renewed to its tokenTTL (within the operator's clock reads), it ends there.
                let at_token_ttl = t.max_at.is_some_and(|m| t.expires + 3 >= m);
                if (t.revoked || self.now >= t.expires) && !at_token_ttl {
                    let msg = format!(
                        "token {a} that pod {pod}'s agent holds ended while the pod runs ({t:?})"
                    );
                    return Err(self.violation(6, msg));
                }
            }
        }
        self.stats.held_kept_alive += held.len() as u64;
        Ok(())
    }

    /// Invariant 2, once every pod is gone and the rounds reached quiescence.
    fn check_nothing_left(&mut self) -> Result<(), Violation> {
        if let Some((n, _)) = self
            .secrets
            .iter()
            .find(|(_, s)| s.binding.is_some() && !s.forged)
        {
            let msg = format!("record {n} left after every pod is gone");
            return Err(self.violation(2, msg));
        }
        if let Some((n, _)) = self
            .secrets
            .iter()
            .find(|(_, s)| s.owner_uid.is_some() && s.deleting && s.finalizer)
        {
            let msg = format!("record {n} stranded: being deleted, its finalizer never released");
            return Err(self.violation(2, msg));
        }
        let now = self.now;
        for (a, w) in &self.vault.wraps {
            if !w.consumed && !w.revoked && now < w.expires {
                let msg = format!("wrap {a} of {:?} alive after its pod is gone", w.owner);
                return Err(self.violation(2, msg));
            }
        }
        // A kept token lives on past its pod: renewed once to its tokenTTL (or, without one,
        // to Vault's default longest life; a role's max would cap it there), never left to end
        // with the renewal window.
        for (a, removed) in &self.kept {
            let t = &self.vault.tokens[a];
            let due = t.max_at.unwrap_or(removed + VAULT_MAX_TTL);
            if t.revoked || t.expires + 3 < due {
                let msg = format!(
                    "kept token {a} of a pod removed at {removed} ends at {} ({t:?})",
                    t.expires
                );
                return Err(self.violation(2, msg));
            }
            self.stats.kept_released += 1;
        }
        let mut unlearned = BTreeMap::new();
        for (a, t) in &self.vault.tokens {
            // Vault holds the line (every token ends by its TTL), but the operator still does
            // its part: a token alive when its pod went was revoked, or at least asked to be
            // (Vault may have ended it first), unless kept or lost (below).
            let died_first = |removed: &i64| t.expires <= *removed;
            if t.revoked
                || t.revoke_asked
                || (now >= t.expires && self.removed_at.get(&t.owner.uid).is_some_and(died_first))
                // After a key loss only Vault ends it: by now (past every renewal window).
                || (t.unvouched && now >= t.expires)
            {
                continue;
            }
            if let Some(why) = t.lost {
                *unlearned.entry(why).or_insert(0) += 1;
                continue;
            }
            let keep = self
                .ever
                .get(&t.owner.binding)
                .is_some_and(|(revoke, _, _)| !revoke);
            // A kept token (`revokeOnPodDeletion: false`) stays with whoever took it; one the
            // operator took for consumed (a lookup cannot tell an expired wrap from a consumed
            // one) still ends by itself within the renewal window.
            if keep && (t.consumed || t.expires <= now + MAX_RENEWAL_WINDOW) {
                continue;
            }
            let msg = format!(
                "token {a} of {:?} alive after its pod is gone ({t:?})",
                t.owner
            );
            return Err(self.violation(2, msg));
        }
        for (why, n) in unlearned {
            *self.stats.unlearned_tokens.entry(why).or_default() += n;
        }
        Ok(())
    }

    /// Invariant 2's wrap half, before time passes any TTL: a delivered wrap of a pod removed
    /// since `since` (faults stopped) was taken, revoked, or had expired by the time its pod
    /// went. Exempt: wraps whose record stopped verifying (a key loss), counted.
    fn check_wraps_retired(&mut self, since: i64) -> Result<(), Violation> {
        let mut exempt = 0;
        let mut left = None;
        for (a, w) in &self.vault.wraps {
            let Some(&removed) = self.removed_at.get(&w.owner.uid) else {
                continue;
            };
            if removed < since || !w.delivered || w.consumed || w.revoked || w.expires <= removed {
                continue;
            }
            if w.unvouched {
                exempt += 1;
                continue;
            }
            left = Some(format!(
                "delivered wrap {a} of {:?} neither taken nor revoked when its pod went",
                w.owner
            ));
            break;
        }
        if let Some(msg) = left {
            return Err(self.violation(2, msg));
        }
        *self
            .stats
            .faults_seen
            .entry("unvouched wrap left to Vault")
            .or_default() += exempt;
        Ok(())
    }

    /// Invariant 5, for schedules without faults.
    fn check_bounds(&mut self) -> Result<(), Violation> {
        for (owner, c) in self.calls.clone() {
            let Some(&(_, ttl, period)) = self.ever.get(&owner.binding) else {
                continue;
            };
            if self.relabelled.contains(&owner.uid)
                || self.squatted.contains(&owner.uid)
                || self.deleted_bindings.contains(&owner.binding)
            {
                continue;
            }
            let lookups = ((ttl + period - 1) / period) as u32;
            self.stats.starts_bounded += 1;
            if c.lookups > self.stats.max_lookups.0 {
                self.stats.max_lookups = (c.lookups, lookups);
            }
            // Each replacement of an expired wrap is a whole wrap life again.
            let lives = 1 + c.replacements;
            if c.creates > lives
                || c.lookups > lookups * lives
                || c.revokes > 4 * lives
                || c.early_renewals > 0
                || c.renewals_after_gone > 0
            {
                let msg = format!("Vault calls for {owner:?}: {c:?} (lookups allowed: {lookups})");
                return Err(self.violation(5, msg));
            }
        }
        Ok(())
    }
}

/// What a round's plan tells about the calls its actions make (which pod a mint, a renewal
/// or a name is for; what a cleanup revokes).
#[derive(Default)]
struct RoundPlan {
    /// Secret name -> (pod, pod uid) of the round's mints.
    issues: HashMap<String, (String, String)>,
    /// Token accessor -> (pod, pod uid) of the round's renewals, in plan order (records forged
    /// with the key may name one token twice).
    renewals: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Secret name -> what the round's cleanup of it revokes.
    cleanups: HashMap<String, Revoke>,
    /// Token accessors the round's cleanups may renew once, to their tokenTTL: kept tokens
    /// (not revoked, their pod's agent took them: `Unwrapped`).
    /// (Token accessor -> the pod uids of the records whose cleanup may renew it.)
    keepers: BTreeMap<String, Vec<String>>,
    /// Token accessor -> the pod uids of the round's records (or new starts) that name it.
    namers: HashMap<String, Vec<String>>,
}

impl RoundPlan {
    /// Revocations only, of what `records` name: each record's pod may have its own token
    /// revoked, nobody else's (invariant 8).
    fn naming(records: &[WrapState]) -> Self {
        let mut round = Self::default();
        for w in records {
            if let Some(accessor) = &w.accessor {
                let namers = round.namers.entry(accessor.clone()).or_default();
                namers.push(w.pod_uid.clone());
            }
        }
        round
    }

    fn of(actions: &[Action]) -> Self {
        let mut round = Self::default();
        for a in actions {
            // Who may revoke a token: a renewal never does.
            let named = match a {
                Action::Issue(i) => i.revoke_previous.clone().map(|p| (p, i.pod_uid.clone())),
                Action::Renew { .. } => None,
                other => other
                    .record()
                    .and_then(|w| Some((w.accessor.clone()?, w.pod_uid.clone()))),
            };
            if let Some((accessor, uid)) = named {
                round.namers.entry(accessor).or_default().push(uid);
            }
            match a {
                Action::Issue(i) => {
                    let pod = (i.pod.clone(), i.pod_uid.clone());
                    round.issues.insert(i.secret.clone(), pod);
                }
                Action::Renew { wrap } => {
                    if let Some(acc) = &wrap.accessor {
                        let pod = (wrap.pod.clone(), wrap.pod_uid.clone());
                        let renewals = round.renewals.get_mut().expect("renewals lock");
                        renewals.entry(acc.clone()).or_default().push(pod);
                    }
                }
                Action::Cleanup { wrap, revoke } => {
                    round.cleanups.insert(wrap.secret.clone(), *revoke);
                    if let Some(a) = wrap
                        .accessor
                        .as_ref()
                        .filter(|_| !revoke.token() && wrap.phase == Phase::Unwrapped)
                    {
                        let uids = round.keepers.entry(a.clone()).or_default();
                        uids.push(wrap.pod_uid.clone());
                    }
                }
                _ => {}
            }
        }
        round
    }
}

/// One Event, reduced to what the checks compare.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Told {
    /// `Pod <name> <uid>` or `AgentSecretBinding <name>`.
    on: String,
    warning: bool,
    reason: String,
    /// Kept and counted when it repeats (warnings, and everything on the binding), sent once
    /// otherwise (routine pod Events).
    repeats: bool,
}

impl Told {
    fn on_pod((pod, uid): &(String, String), warning: bool, reason: &str) -> Self {
        Self {
            on: format!("v1 Pod {pod} {uid}"),
            warning,
            reason: reason.into(),
            repeats: warning,
        }
    }

    fn on_binding(binding: &str, warning: bool, reason: &str) -> Self {
        Self {
            on: format!("AgentSecretBinding {binding}"),
            warning,
            reason: reason.into(),
            repeats: true,
        }
    }
}

/// What the executor owes people for what the models saw it do in one round: the Events due
/// before its next operation, and what its result (`execute::Executed`) must say.
#[derive(Default)]
struct Owed {
    /// Events due, in order.
    events: Vec<Told>,
    /// Events published since the executor's last operation.
    published: Vec<Told>,
    /// A mint failed (`Some(unavailable)`): its failure record is written next.
    mint_failed: Option<bool>,
    /// Pods whose Secret name a Secret not of the binding holds: pod -> Secret name.
    names_taken: BTreeMap<String, String>,
    /// Vault was unavailable (or its answer lost) for a step that reports it.
    vault_unavailable: bool,
    /// An API call failed.
    api_error: bool,
}

/// What the executor did as the models saw it, counted as its metrics count it (and read back
/// from the metrics' text exposition).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counted {
    /// `cubbyhole_wraps_issued_total`: wraps minted and delivered.
    issued: u64,
    /// `cubbyhole_wrap_transitions_total` by phase.
    transitions: BTreeMap<String, u64>,
    /// `cubbyhole_revocations_total` of wraps and of tokens that were alive.
    revoked: (u64, u64),
    /// `cubbyhole_token_renewals_total`: renewed, gone.
    renewals: (u64, u64),
}

impl Counted {
    fn from_metrics(metrics: &Metrics) -> Self {
        let text = metrics.encode();
        let value = |series: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .map_or(0, |v| v as u64)
        };
        let transitions = Phase::ALL
            .iter()
            .map(|p| {
                let series = format!(
                    "cubbyhole_wrap_transitions_total{{phase=\"{}\"}}",
                    p.as_str()
                );
                (p.as_str().to_string(), value(&series))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        Self {
            issued: value("cubbyhole_wraps_issued_total"),
            transitions,
            revoked: (
                value("cubbyhole_revocations_total{kind=\"wrap\"}"),
                value("cubbyhole_revocations_total{kind=\"token\"}"),
            ),
            renewals: (
                value("cubbyhole_token_renewals_total{result=\"renewed\"}"),
                value("cubbyhole_token_renewals_total{result=\"gone\"}"),
            ),
        }
    }

    fn transition(&mut self, phase: Phase) {
        *self
            .transitions
            .entry(phase.as_str().to_string())
            .or_default() += 1;
    }
}

/// `cubbyhole_lookups_deferred_total`.
fn deferred_lookups(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| {
            l.strip_prefix("cubbyhole_lookups_deferred_total ")?
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |v| v as u64)
}

/// The Event reason of a settlement to `phase`, and whether it is a warning (README, Events).
fn settle_reason(phase: Phase) -> (bool, &'static str) {
    match phase {
        Phase::Tampered => (true, "WrapTampered"),
        Phase::Expired => (true, "WrapExpired"),
        Phase::Failed => (true, "WrapRefused"),
        Phase::Revoked => (false, "WrapRevoked"),
        _ => (false, "WrapUnwrapped"),
    }
}

/// The models as the executor meets them (`controller::effects`): each call is one operation
/// of the world; once the world stops the round (a crash, a broken invariant) the call never
/// answers and [`drive`] drops the round where it stands.
struct SimOps<'w> {
    world: Mutex<&'w mut World>,
    /// The round's binding.
    binding: String,
    /// Pod uid -> (start, replacements) of the round's planned mints (Vault's model counts
    /// calls per pod start).
    starts: HashMap<String, (u32, u32)>,
    /// (wrap, token) accessors of a mint whose record write failed, until both revocations
    /// were tried.
    discarding: Mutex<Option<(String, String)>>,
    /// Why the round stopped.
    stop: Mutex<Option<Stop>>,
    /// Which pod each planned call is for.
    round: RoundPlan,
    /// What the executor owes for what it did so far.
    owed: Mutex<Owed>,
    /// An ask of the request endpoint: the wrap goes back to the asker, never into the record.
    asking: bool,
    /// The act publishes routine Events (a round, when the schedule has them on; a retirement
    /// or an ask publishes none of its own).
    routine: bool,
}

impl<'w> SimOps<'w> {
    /// The operations of a round of `binding` on `world`.
    fn acting(
        world: &'w mut World,
        binding: &str,
        starts: HashMap<String, (u32, u32)>,
        round: RoundPlan,
    ) -> Self {
        let routine = world.routine_events;
        SimOps {
            routine,
            world: Mutex::new(world),
            binding: binding.to_string(),
            starts,
            discarding: Mutex::new(None),
            stop: Mutex::new(None),
            round,
            owed: Mutex::new(Owed::default()),
            asking: false,
        }
    }

    /// The operations of an act outside a round (a retirement, an ask): no Event of its own.
    fn quietly(
        world: &'w mut World,
        binding: &str,
        starts: HashMap<String, (u32, u32)>,
        round: RoundPlan,
    ) -> Self {
        Self {
            routine: false,
            ..Self::acting(world, binding, starts, round)
        }
    }

    /// Runs one operation on the world; `None` once the round stopped. The Events owed for
    /// the operations before it must have been published by now (invariant 7).
    fn with<T>(&self, f: impl FnOnce(&mut World) -> Step<T>) -> Option<T> {
        if self.stop.lock().expect("stop lock").is_some() {
            return None;
        }
        let mut world = self.world.lock().expect("world lock");
        if let Err(v) = self.events_told(&world) {
            *self.stop.lock().expect("stop lock") = Some(v.into());
            return None;
        }
        match f(&mut world) {
            Ok(t) => Some(t),
            Err(stop) => {
                *self.stop.lock().expect("stop lock") = Some(stop);
                None
            }
        }
    }

    /// The answer to a call, or a call that never answers once the round stopped.
    async fn answer<T>(answer: Option<T>) -> T {
        match answer {
            Some(t) => t,
            None => std::future::pending().await,
        }
    }

    fn replica(&self) -> usize {
        let world = self.world.lock().expect("world lock");
        usize::from(world.replica == Replica::Rival)
    }

    /// A Vault answer as the executor gets it; an outage or a lost answer is owed a report.
    fn vault_answer<T>(&self, answer: Result<T, VErr>) -> Result<T, VaultError> {
        if let Err(VErr::Unreachable | VErr::NoAnswer) = answer {
            self.owe(|o| o.vault_unavailable = true);
        }
        answer.map_err(vault_error)
    }

    /// Counts a planned renewal that came less than half a renewal window after the last one
    /// (invariant 5).
    fn note_renewal(&self, accessor: &str) {
        let mut world = self.world.lock().expect("world lock");
        let w = &mut **world;
        let half = w
            .bindings
            .get(&self.binding)
            .map_or(0, |b| b.settings.renewal_window.as_secs() as i64 / 2);
        let last = w.renewed_at.insert(accessor.to_string(), w.now);
        let owner = w.vault.tokens.get(accessor).map(|t| t.owner.clone());
        if let Some(owner) = &owner
            && w.gone.contains(accessor)
        {
            w.calls(owner).renewals_after_gone += 1;
        }
        if let (Some(last), Some(owner)) = (last, owner)
            && w.now - last < half
        {
            w.calls(&owner).early_renewals += 1;
        }
    }

    /// Notes a removed record's token that its binding keeps past the pod (its agent took it,
    /// and it is alive): it must live on to its tokenTTL (checked at the end). A record forged
    /// with the key naming another pod's token keeps nothing: Vault does not vouch for it.
    fn note_kept(&self, wrap: &WrapState) {
        let mut world = self.world.lock().expect("world lock");
        let w = &mut **world;
        let Some(settings) = w.bindings.get(&self.binding).map(|b| &b.settings) else {
            return;
        };
        if settings.revoke_on_pod_deletion || wrap.phase != Phase::Unwrapped {
            return;
        }
        let Some(a) = &wrap.accessor else { return };
        if w.vault
            .tokens
            .get(a)
            .is_some_and(|t| !t.revoked && w.now < t.expires && t.owner.uid == wrap.pod_uid)
        {
            w.kept.push((a.clone(), w.now));
        }
    }

    /// A revocation that found its wrap (`wa…`) or token (`ta…`) alive is counted.
    fn count_revoked(&self, accessor: &str, revoked: Revoked) {
        if revoked == Revoked::Existed {
            self.count(|c| match accessor.starts_with("wa") {
                true => c.revoked.0 += 1,
                false => c.revoked.1 += 1,
            });
        }
    }

    fn owe(&self, f: impl FnOnce(&mut Owed)) {
        f(&mut self.owed.lock().expect("owed lock"));
    }

    fn count(&self, f: impl FnOnce(&mut Counted)) {
        f(&mut self.world.lock().expect("world lock").counted);
    }

    fn routine(&self) -> bool {
        self.routine
    }

    /// Invariant 7, Events: exactly the Events owed so far were published, in order.
    fn events_told(&self, world: &World) -> Result<(), Violation> {
        let mut owed = self.owed.lock().expect("owed lock");
        if owed.events != owed.published {
            let msg = format!(
                "Events owed {:?}, published {:?}",
                owed.events, owed.published
            );
            return Err(world.violation(7, msg));
        }
        owed.events.clear();
        owed.published.clear();
        Ok(())
    }

    /// Invariant 7, the round's result: its Events were published, and it reports every name
    /// found taken, Vault's unavailability and API errors as the models answered them.
    fn check_result(&self, executed: &execute::Executed) -> Step<()> {
        let world = self.world.lock().expect("world lock");
        self.events_told(&world)?;
        let owed = self.owed.lock().expect("owed lock");
        let reported = (
            &executed.names_taken,
            executed.vault_unavailable.is_some(),
            executed.error.is_some(),
        );
        if reported != (&owed.names_taken, owed.vault_unavailable, owed.api_error) {
            let msg = format!(
                "the round reported (names taken, Vault unavailable, error) {reported:?}, the models answered {:?}",
                (&owed.names_taken, owed.vault_unavailable, owed.api_error)
            );
            return Err(world.violation(7, msg).into());
        }
        Ok(())
    }
}

/// `VaultError` for a model error.
fn vault_error(e: VErr) -> VaultError {
    let op = "simulated";
    match e {
        VErr::Unreachable => VaultError::Unreachable {
            op,
            detail: "down".into(),
        },
        VErr::NoAnswer => VaultError::NoAnswer {
            op,
            detail: "answer lost".into(),
        },
        VErr::Refused => VaultError::Refused {
            op,
            status: 400,
            message: "refused".into(),
        },
    }
}

/// `kube::Error` for a model API error.
fn kube_error(e: KubeErr) -> kube::Error {
    let code = match e {
        KubeErr::Conflict | KubeErr::AlreadyExists => 409,
        KubeErr::NotFound => 404,
        KubeErr::Failed => 500,
    };
    kube::Error::Api(
        serde_json::from_value(serde_json::json!({
            "status": "Failure", "message": format!("{e:?}"), "reason": format!("{e:?}"), "code": code,
        }))
        .expect("a status"),
    )
}

fn write_error(e: WriteError) -> writes::WriteError {
    match e {
        WriteError::Taken => writes::WriteError::Taken,
        WriteError::Lost => writes::WriteError::Lost,
        WriteError::Kube => writes::WriteError::Kube(kube_error(KubeErr::Failed)),
    }
}

impl VaultOps for SimOps<'_> {
    async fn create_wrapped_token(&self, request: &TokenRequest) -> Result<WrapInfo, VaultError> {
        let uid = request.meta.get("pod_uid").cloned().unwrap_or_default();
        let (start, replaced) = *self.starts.get(&uid).expect("a mint the round planned");
        let owner = Owner {
            binding: self.binding.clone(),
            uid,
            start,
        };
        let life = Life::of(request);
        let minted = self.with(|w| {
            if replaced > 0 {
                w.calls(&owner).replacements += 1;
                w.stats.replacements += 1;
            }
            w.v_create(owner, life)
        });
        let minted = Self::answer(minted).await;
        if let Err(e) = minted {
            // A refusal or an outage is recorded (and reported); a lost answer only reported.
            self.owe(|o| match e {
                VErr::NoAnswer => o.vault_unavailable = true,
                _ => o.mint_failed = Some(e == VErr::Unreachable),
            });
        }
        let (token, accessor, wrapped_accessor) = minted.map_err(vault_error)?;
        Ok(WrapInfo {
            token: SecretString::new(token),
            accessor,
            wrapped_accessor,
            ttl: life.wrap as u64,
            creation_path: "auth/token/create/agent".into(),
        })
    }

    async fn wrap_is_live(&self, token: &SecretString) -> Result<bool, VaultError> {
        let live = self.with(|w| w.v_lookup(token.expose()));
        self.vault_answer(Self::answer(live).await)
    }

    async fn revoke_accessor(&self, accessor: &str) -> Result<Revoked, VaultError> {
        let discarding = self.discarding.lock().expect("discard lock").clone();
        let Some((_, tacc)) = discarding.filter(|(w, t)| w == accessor || t == accessor) else {
            let namers = self.round.namers.get(accessor).cloned().unwrap_or_default();
            let revoked = self.with(|w| {
                w.revoked_for(accessor, &self.binding, &namers)?;
                w.v_revoke(accessor)
            });
            let revoked = self.vault_answer(Self::answer(revoked).await)?;
            self.count_revoked(accessor, revoked);
            return Ok(revoked);
        };
        // The revocations of a mint whose record write failed.
        let m = self.replica();
        let revoked = self.with(|w| {
            let revoked = if w.mutant == Mutant::NoRevokeOnDeliveryFailure {
                Ok(Revoked::NotFound)
            } else {
                w.v_revoke(accessor)?
            };
            if revoked.is_err()
                && let Some(t) = w.vault.tokens.get_mut(&tacc)
            {
                t.lost = Some("revocation after a failed delivery failed");
            }
            if accessor == tacc {
                w.in_hand[m].clear();
            }
            Ok(revoked)
        });
        if accessor == tacc {
            *self.discarding.lock().expect("discard lock") = None;
        }
        // The executor gives up on a failed one here: nothing to report.
        let revoked = Self::answer(revoked).await.map_err(vault_error)?;
        self.count_revoked(accessor, revoked);
        Ok(revoked)
    }

    async fn renew_accessor(
        &self,
        accessor: &str,
        increment_secs: u64,
    ) -> Result<Renewed, VaultError> {
        // Invariant 8: a token is renewed only for a record of the pod it was minted for (a
        // record forged with the key may name another pod's token).
        // (A renewal of a token Vault no longer knows keeps nothing alive.)
        let owner = {
            let world = self.world.lock().expect("world lock");
            let now = world.now;
            let live = |t: &&VToken| !t.revoked && now < t.expires;
            world
                .vault
                .tokens
                .get(accessor)
                .filter(live)
                .map(|t| t.owner.uid.clone())
        };
        let (planned, foreign) = {
            let mut renewals = self.round.renewals.lock().expect("renewals lock");
            let pods = renewals.get_mut(accessor).filter(|p| !p.is_empty());
            match pods {
                Some(p) => match p.iter().position(|(_, uid)| Some(uid) == owner.as_ref()) {
                    Some(i) => (Some(p.remove(i)), false),
                    // A kept token's one renewal at its own record's cleanup.
                    None if owner.as_ref().is_some_and(|o| {
                        self.round
                            .keepers
                            .get(accessor)
                            .is_some_and(|k| k.contains(o))
                    }) =>
                    {
                        (None, false)
                    }
                    None if owner.is_some() => (None, true),
                    None => (Some(p.remove(0)), false),
                },
                None => (None, false),
            }
        };
        let renewed = self.with(|w| {
            if foreign {
                let msg = format!("token {accessor} renewed for a record of another pod");
                return Err(w.violation(8, msg).into());
            }
            // Besides planned renewals, only a kept token is renewed (once, at its cleanup).
            let keeps = w
                .bindings
                .get(&self.binding)
                .is_some_and(|b| !b.settings.revoke_on_pod_deletion);
            let kept_by = self.round.keepers.get(accessor);
            if planned.is_none() && !(keeps && kept_by.is_some()) {
                let msg = format!("renewed {accessor}, neither planned nor a kept token");
                return Err(w.violation(5, msg).into());
            }
            w.v_renew(accessor, increment_secs as i64)
        });
        let live = self.vault_answer(Self::answer(renewed).await)?;
        // A planned renewal is counted, and a token found gone is a warning on its pod; the
        // one renewal of a token kept past its pod is neither.
        if let Some(pod) = &planned {
            self.note_renewal(accessor);
            self.count(|c| match live {
                true => c.renewals.0 += 1,
                false => c.renewals.1 += 1,
            });
            if !live {
                let mut world = self.world.lock().expect("world lock");
                world.gone.insert(accessor.to_string());
                drop(world);
                self.owe(|o| o.events.push(Told::on_pod(pod, true, "TokenGone")));
            }
        }
        match live {
            true => Ok(Renewed::For(increment_secs)),
            false => Ok(Renewed::NotFound),
        }
    }

    async fn role_explicit_max(&self, _role: &str) -> Result<Option<u64>, VaultError> {
        // The model's role sets no explicit max: a binding's tokenTTL is a token's only bound.
        Ok(None)
    }

    async fn token_facts(&self, accessor: &str) -> Result<Option<TokenFacts>, VaultError> {
        let facts = self.with(|w| w.v_facts(accessor));
        self.vault_answer(Self::answer(facts).await)
    }
}

impl RecordOps for SimOps<'_> {
    fn now(&self) -> Timestamp {
        ts(self.world.lock().expect("world lock").now)
    }

    async fn write_issue(
        &self,
        issue: &Issue,
        changes: &[Change],
        data: WrapData<'_>,
    ) -> Result<(), writes::WriteError> {
        let token = data.map(|(_, t)| t.expose().to_string());
        // The wrap this write delivers: in the Secret, or (an ask) the one its record names.
        let delivered = if self.asking {
            // The last change of a key wins (a takeover clears it first).
            changes
                .iter()
                .rev()
                .find(|(k, _)| *k == ann::WRAP_ACCESSOR)
                .and_then(|(_, v)| v.clone())
        } else {
            None
        };
        let delivers = token.is_some() || delivered.is_some();
        let m = self.replica();
        let written = self.with(|w| {
            let sent = match &token {
                Some(t) => Data::Set(t.clone()),
                None => Data::Clear,
            };
            let written = w.write_issue(&self.binding, issue, changes, sent)?;
            let wacc = match &token {
                Some(t) => Some(w.vault.by_token[t].clone()),
                None => delivered.clone(),
            };
            if let Some(wacc) = wacc {
                if written.is_ok() {
                    w.vault.wraps.get_mut(&wacc).expect("minted").delivered = true;
                    w.in_hand[m].clear();
                } else {
                    w.stats.delivery_failures += 1;
                    let tacc = w.vault.wraps[&wacc].inner.clone();
                    *self.discarding.lock().expect("discard lock") = Some((wacc, tacc));
                }
            }
            Ok(written)
        });
        let written = Self::answer(written).await;
        let pod = (issue.pod.clone(), issue.pod_uid.clone());
        let mint_failed = self.owed.lock().expect("owed lock").mint_failed.take();
        match (&written, delivers, mint_failed) {
            (Ok(_), true, _) => {
                self.count(|c| c.issued += 1);
                if self.routine() {
                    self.owe(|o| o.events.push(Told::on_pod(&pod, false, "WrapIssued")));
                }
            }
            // The failure record of a mint Vault refused (or could not answer).
            (Ok(_) | Err(WriteError::Lost), false, Some(unavailable)) => {
                self.count(|c| c.transition(Phase::Failed));
                self.owe(|o| {
                    o.events
                        .push(Told::on_binding(&self.binding, true, "VaultError"));
                    o.vault_unavailable |= unavailable;
                });
            }
            (Err(WriteError::Taken), _, _) => self.owe(|o| {
                o.names_taken
                    .insert(issue.pod.clone(), issue.secret.clone());
            }),
            (Err(WriteError::Kube), _, _) => self.owe(|o| o.api_error = true),
            _ => {}
        }
        written.map(drop).map_err(write_error)
    }

    async fn settle(
        &self,
        wrap: &WrapState,
        phase: Phase,
        verified: bool,
        message: &str,
        start: u32,
    ) -> Result<(), writes::WriteError> {
        let changes = settle_changes(phase, verified, message, start);
        let rv = wrap.resource_version.clone();
        let settled = self.with(|w| {
            let done = w.guarded_patch(&wrap.secret, rv.as_deref(), &changes, Data::Clear)?;
            if done.is_ok() {
                *w.stats.settles.entry(phase.as_str()).or_default() += 1;
            }
            Ok(done)
        });
        let settled = Self::answer(settled).await;
        match &settled {
            Ok(_) => {
                self.count(|c| c.transition(phase));
                let (warning, reason) = settle_reason(phase);
                let pod = (wrap.pod.clone(), wrap.pod_uid.clone());
                let routine = self.routine();
                self.owe(|o| {
                    // Warnings reach the binding too; routine settlements only the pod.
                    if warning {
                        o.events.push(Told::on_binding(&self.binding, true, reason));
                    }
                    if warning || routine {
                        o.events.push(Told::on_pod(&pod, warning, reason));
                    }
                });
            }
            Err(WriteError::Kube) => self.owe(|o| o.api_error = true),
            Err(_) => {}
        }
        settled.map(drop).map_err(write_error)
    }

    async fn remove(&self, wrap: &WrapState) -> Result<bool, kube::Error> {
        let removed = self.with(|w| w.remove(wrap));
        let removed = Self::answer(removed).await;
        match removed {
            Ok(true) => {
                self.note_kept(wrap);
                let revoke = self.round.cleanups.get(&wrap.secret).copied();
                if revoke.is_some_and(|r| r != Revoke::Nothing) {
                    self.count(|c| c.transition(Phase::Revoked));
                }
                if self.routine() {
                    let told = Told::on_binding(&self.binding, false, "WrapRevoked");
                    self.owe(|o| o.events.push(told));
                }
            }
            Ok(false) => {}
            Err(_) => self.owe(|o| o.api_error = true),
        }
        removed.map_err(kube_error)
    }

    async fn holder(&self, secret: &str) -> Result<Holder, kube::Error> {
        let holder = self.with(|w| w.api_get(secret));
        let holder = Self::answer(holder).await;
        match &holder {
            Ok(Some(label)) if label.as_deref() != Some(self.binding.as_str()) => {
                let pod = self.round.issues.get(secret).map(|(p, _)| p.clone());
                self.owe(|o| {
                    o.names_taken
                        .insert(pod.unwrap_or_default(), secret.to_string());
                });
            }
            Ok(_) => {}
            Err(_) => self.owe(|o| o.api_error = true),
        }
        holder.map_err(kube_error)
    }

    /// Keeps the Event for [`SimOps::events_told`]; a note carrying a wrapping token breaks
    /// invariant 7 at once.
    async fn publish(&self, reference: ObjectReference, event: Event, repeats: bool) {
        let on = match (reference.kind.as_deref(), reference.namespace.as_deref()) {
            (Some("Pod"), Some(NS)) => format!(
                "{} Pod {} {}",
                reference.api_version.unwrap_or_default(),
                reference.name.unwrap_or_default(),
                reference.uid.unwrap_or_default()
            ),
            (Some(kind), Some(NS)) => format!("{kind} {}", reference.name.unwrap_or_default()),
            _ => format!("{reference:?}"),
        };
        let note = event.note.unwrap_or_default();
        let leak = {
            let world = self.world.lock().expect("world lock");
            let leaked = world
                .vault
                .by_token
                .keys()
                .find(|t| note.contains(t.as_str()));
            leaked.map(|t| {
                world.violation(7, format!("Event note {note:?} carries wrapping token {t}"))
            })
        };
        if let Some(v) = leak {
            *self.stop.lock().expect("stop lock") = Some(v.into());
        }
        let told = Told {
            on,
            warning: event.type_ == kube::runtime::events::EventType::Warning,
            reason: event.reason,
            repeats,
        };
        self.owe(|o| o.published.push(told));
    }
}

/// Runs a round's future to its end: every model call answers at once, so it finishes unless
/// the world stopped it (a crash, a broken invariant), in which case it is dropped mid-way.
fn drive<F: Future>(round: F, stop: &Mutex<Option<Stop>>) -> Step<F::Output> {
    let mut round = std::pin::pin!(round);
    let mut cx = std::task::Context::from_waker(Waker::noop());
    for _ in 0..100_000 {
        if let Poll::Ready(out) = round.as_mut().poll(&mut cx) {
            return Ok(out);
        }
        if let Some(stop) = stop.lock().expect("stop lock").take() {
            return Err(stop);
        }
    }
    panic!("the executor waits for something no model answers");
}

/// The binding a pod's spec was written for (the one whose Secret it mounts, or whose
/// endpoint its agent asks).
fn spec_binding(pod: &Pod) -> &'static str {
    if pod.labels.contains_key("app") {
        "b"
    } else {
        "c"
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Issue(i) => format!(
            "issue {} start {} replacing {:?}",
            i.secret,
            i.start,
            i.replaces.as_ref().map(|w| w.phase)
        ),
        Action::Lookup { wrap, if_consumed } => format!("lookup {} ({if_consumed:?})", wrap.secret),
        Action::ProbeExpiry { wrap } => format!("probe {}", wrap.secret),
        Action::Settle {
            wrap,
            outcome,
            start,
        } => format!("settle {} as {outcome:?} (start {start})", wrap.secret),
        Action::Renew { wrap } => format!("renew {}", wrap.secret),
        Action::Cleanup { wrap, revoke } => format!(
            "cleanup {} ({revoke:?}, {:?}, uid {})",
            wrap.secret, wrap.phase, wrap.pod_uid
        ),
    }
}

/// The profile of schedule `seed`: faults, and how long it runs.
fn profile(seed: u64) -> (Faults, usize) {
    let mut rng = Rng::new(seed ^ 0xDEAD_BEEF);
    let steps = 40 + rng.below(80) as usize;
    let faults = match seed % 4 {
        0 => Faults::default(),
        _ => Faults {
            crash: [0, 100, 300][rng.below(3) as usize],
            lost: [0, 20, 60][rng.below(3) as usize],
            refuse: [0, 30][rng.below(2) as usize],
            api: [0, 20, 60][rng.below(3) as usize],
            rival: [0, 5, 20][rng.below(3) as usize],
            down: [0, 1][rng.below(2) as usize],
            stale: [0, 300, 700][rng.below(3) as usize],
        },
    };
    (faults, steps)
}

/// Runs schedule `seed`: random events with faults, then liveness, then every pod removed.
pub fn run_schedule(seed: u64, mutant: Mutant) -> Result<Stats, Violation> {
    let (faults, steps) = profile(seed);
    let mut w = World::new(seed, faults, mutant);
    let mut r = || -> Result<(), Violation> {
        for _ in 0..steps {
            w.record_bindings();
            match w.random_event() {
                Ok(()) | Err(Stop::Crash) => {}
                Err(Stop::Broken(v)) => return Err(v),
            }
        }
        // The faults stop; Vault is up; agents idle.
        w.note("--- faults stop".to_string());
        let faulty = faults.any() || w.stats.rival_rounds > 0 || w.key_lost;
        w.faults = Faults::default();
        w.interleave = false;
        w.ops_left = None;
        w.vault.down_until = w.now;
        w.record_bindings();
        w.settle_down(1500)?;
        w.agents_ask_again()?;
        w.check_liveness()?;
        w.check_held_tokens_live(2 * MAX_RENEWAL_WINDOW)?;
        if !faulty {
            w.check_bounds()?;
        }
        // Every pod goes.
        w.note("--- every pod is deleted".to_string());
        for p in &mut w.pods {
            p.terminating = true;
        }
        w.settle_down(1500)?;
        let last_removals = w.now;
        while !w.pods.is_empty() {
            w.remove_pod(0);
        }
        w.settle_down(1500)?;
        w.check_wraps_retired(last_removals)?;
        let longest = w.ever.values().map(|(_, ttl, _)| *ttl).max().unwrap_or(60);
        w.now += longest + 10 + 1;
        if w.key_lost {
            // What only Vault can end now ends within the renewal window.
            w.now += MAX_RENEWAL_WINDOW + GRACE + 1;
        }
        w.settle_down(1500)?;
        w.check()?;
        w.check_nothing_left()
    };
    r()?;
    w.stats.schedules = 1;
    Ok(w.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schedules in the main test.
    const SCHEDULES: u64 = 2_000;

    fn run_all(range: std::ops::Range<u64>) -> Stats {
        let mut total = Stats::default();
        for seed in range {
            match run_schedule(seed, Mutant::None) {
                Ok(s) => total.merge(&s),
                Err(v) => panic!("schedule {seed}: {}", v.message),
            }
        }
        total
    }

    #[test]
    fn simulation_keeps_every_invariant() {
        let started = std::time::Instant::now();
        let stats = run_all(0..SCHEDULES);
        eprintln!(
            "{stats:#?}\n{:?} for {SCHEDULES} schedules",
            started.elapsed()
        );
        // The mechanisms the invariants are about did run.
        assert!(
            stats.lost_mints > 0 && stats.deferred_mints > 0,
            "{stats:?}"
        );
        assert!(stats.lost_races > 0 && stats.rival_rounds > 0, "{stats:?}");
        assert!(stats.delivery_failures > 0, "{stats:?}");
        assert!(stats.replacements > 0, "{stats:?}");
        // Record keys were lost, and records that stopped verifying were released.
        assert!(
            stats.key_losses > 0 && stats.unverified_released > 0,
            "{stats:?}"
        );
        // Request delivery: agents asked, were served, and reported receipts.
        assert!(
            stats.asks_served > 0 && stats.asks > stats.asks_served && stats.receipts_reported > 0,
            "{stats:?}"
        );
        // Replayed identity tokens asked, and were refused.
        assert!(stats.asks_already_served > 0, "{stats:?}");
        assert!(stats.conflicts_with_record > 0, "{stats:?}");
        // Every kind of fault the schedules inject was injected.
        for kind in [
            "API error",
            "refused mint",
            "stale read",
            "theft",
            "forged record",
            "foreign Secret",
            "Vault outage",
            "record forged with the key",
        ] {
            assert!(
                stats.faults_seen.get(kind).is_some_and(|n| *n > 0),
                "never injected: {kind}: {:?}",
                stats.faults_seen
            );
        }
        assert!(
            stats.eligible_checked > 0
                && stats.starts_bounded > 0
                && stats.held_kept_alive > 0
                && stats.kept_released > 0
                && stats.lookups_deferred > 0,
            "{stats:?}"
        );
        for phase in ["Unwrapped", "Expired", "Tampered", "Revoked", "Failed"] {
            assert!(stats.settles.contains_key(phase), "never settled {phase}");
        }
        // A crash fell after every kind of operation.
        for op in [
            "round start",
            "ListSecrets",
            "ListPods",
            "CreateSecret",
            "PatchSecret",
            "Unfinalize",
            "DeleteSecret",
            "Mint",
            "Lookup",
            "LookupAccessor",
            "Revoke",
            "Renew",
        ] {
            assert!(
                stats.crashes_after.contains_key(op),
                "no crash after {op}: {:?}",
                stats.crashes_after
            );
        }
    }

    /// Runs schedules with `mutant` until one breaks an invariant; returns it.
    fn first_violation(mutant: Mutant) -> Violation {
        for seed in 0..SCHEDULES {
            if let Err(v) = run_schedule(seed, mutant) {
                return v;
            }
        }
        panic!("{mutant:?} survived {SCHEDULES} schedules");
    }

    /// Replays one schedule with its whole trace: `SEED=n [MUTANT=rv|conflict|deliver|release|ask|key|replay]
    /// SIM_FULL_TRACE=1 cargo test --lib sim::tests::replay -- --ignored`.
    #[test]
    #[ignore]
    fn replay() {
        let seed = std::env::var("SEED").map_or(0, |s| s.parse().expect("SEED is a number"));
        let mutant = match std::env::var("MUTANT").as_deref() {
            Ok("rv") => Mutant::NoResourceVersionGuard,
            Ok("conflict") => Mutant::NoConflictCheck,
            Ok("deliver") => Mutant::NoRevokeOnDeliveryFailure,
            Ok("release") => Mutant::NoReleaseGuard,
            Ok("ask") => Mutant::NoRevokeBeforeAsk,
            Ok("key") => Mutant::NoUnverifiedRelease,
            Ok("replay") => Mutant::ServeEveryAsk,
            _ => Mutant::None,
        };
        if let Err(v) = run_schedule(seed, mutant) {
            panic!("{}", v.message);
        }
    }

    /// Applies the annotation part of a real merge patch to `ann` (null removes).
    fn apply_real(ann: &mut BTreeMap<String, String>, patch: &serde_json::Value) {
        let fields = patch
            .pointer("/metadata/annotations")
            .and_then(|v| v.as_object())
            .expect("annotations");
        for (k, v) in fields {
            match v.as_str() {
                Some(v) => ann.insert(k.clone(), v.to_string()),
                None => ann.remove(k),
            };
        }
        ann.remove(ann::SIGNATURE);
    }

    fn apply_model(ann: &mut BTreeMap<String, String>, changes: &[Change]) {
        for (k, v) in changes {
            match v {
                Some(v) => ann.insert(k.to_string(), v.clone()),
                None => ann.remove(*k),
            };
        }
    }

    fn sec(ann: &BTreeMap<String, String>, rv: u64, token: Option<&str>) -> Sec {
        let key = |k: &str| {
            *ann::SIGNED
                .iter()
                .chain([&ann::MESSAGE])
                .find(|s| **s == k)
                .expect("known key")
        };
        Sec {
            uid: 1,
            rv,
            binding: Some("b".into()),
            forged: false,
            owner_uid: Some("uid-p".into()),
            ann: ann.iter().map(|(k, v)| (key(k), v.clone())).collect(),
            token: token.map(str::to_string),
            finalizer: true,
            deleting: false,
            view: None,
        }
    }

    /// The model's writes change the same annotations, the same way, as the real patch
    /// builders of `record::writes`, guard on the same resourceVersion, and set or clear the data
    /// alike.
    #[test]
    fn model_writes_match_the_record_builders() {
        use crate::record::writes::{self, Sealer};
        use crate::vault::SecretString;
        let keys =
            crate::record::seal::RecordKeys::new(BTreeMap::from([(1, vec![7; 32])])).expect("key");
        let sealer = Sealer {
            namespace: "ns",
            binding: "b",
            keys: &keys,
        };
        let issue = |start, replaces: Option<WrapState>, after: Option<i64>| Issue {
            pod: "p".into(),
            pod_uid: "uid-p".into(),
            secret: "p-b-wrap".into(),
            start,
            replaces,
            revoke_previous: None,
            receipts_after: after.map(ts),
            replaced: 0,
        };
        let token = SecretString::new("wt1");
        // A pod start in one create: the record with its wrap.
        let first = issue(0, None, Some(3));
        let changes = issue_changes(&first, deliver_changes("wa1", "ta1", ts(6), ts(66)));
        let secret = writes::issue_secret(&sealer, &first, &changes, Some(("token", &token)));
        assert!(
            secret
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key("token"))
        );
        let mut real = secret.metadata.annotations.clone().expect("annotations");
        real.remove(ann::SIGNATURE);
        let mut model = BTreeMap::new();
        apply_model(&mut model, &changes);
        assert_eq!(real, model);
        let issued = read_record("p-b-wrap", &sec(&model, 2, Some("wt1"))).expect("record");
        assert_eq!((issued.phase, issued.has_token), (Phase::Issued, true));
        // Settle (verified or not).
        for verified in [true, false] {
            let patch = writes::settle_patch(&sealer, &issued, Phase::Unwrapped, verified, "x", 0);
            assert_eq!(
                patch.pointer("/metadata/resourceVersion"),
                Some(&"2".into())
            );
            assert!(patch.get("data").is_some_and(serde_json::Value::is_null));
            let (mut r, mut m) = (real.clone(), model.clone());
            apply_real(&mut r, &patch);
            apply_model(&mut m, &settle_changes(Phase::Unwrapped, verified, "x", 0));
            assert_eq!(r, m);
        }
        apply_real(
            &mut real,
            &writes::settle_patch(&sealer, &issued, Phase::Unwrapped, true, "ok", 0),
        );
        apply_model(&mut model, &settle_changes(Phase::Unwrapped, true, "ok", 0));
        let settled = read_record("p-b-wrap", &sec(&model, 3, None)).expect("record");
        // A new start taking the record over, delivered or failed, for the same start and a new
        // one (with and without receipts_after).
        for (start, after) in [(0, None), (1, Some(9)), (1, None)] {
            let i = issue(start, Some(settled.clone()), after);
            for (ending, data) in [
                (
                    deliver_changes("wa2", "ta2", ts(10), ts(70)),
                    Some(("token", &token)),
                ),
                (writes::failure_changes("refused", ts(10), 2), None),
            ] {
                let changes = issue_changes(&i, ending);
                let patch = writes::issue_patch(&sealer, &settled, &changes, data);
                assert_eq!(
                    patch.pointer("/metadata/resourceVersion"),
                    Some(&"3".into())
                );
                assert_eq!(
                    patch.get("data").is_some_and(serde_json::Value::is_null),
                    data.is_none()
                );
                let (mut r, mut m) = (real.clone(), model.clone());
                apply_real(&mut r, &patch);
                apply_model(&mut m, &changes);
                assert_eq!(r, m, "takeover to start {start}");
            }
        }
    }

    #[test]
    fn without_the_resource_version_guard_it_fails() {
        // A deposed replica's stale takeover hides a live wrap (1) or token (2).
        let v = first_violation(Mutant::NoResourceVersionGuard);
        assert!(matches!(v.invariant, 1 | 2), "{}", v.message);
    }

    #[test]
    fn serving_a_run_already_served_breaks_invariant_9() {
        let v = first_violation(Mutant::ServeEveryAsk);
        assert_eq!(v.invariant, 9, "{}", v.message);
    }

    #[test]
    fn without_the_conflict_check_it_fails() {
        let v = first_violation(Mutant::NoConflictCheck);
        assert_eq!(v.invariant, 4, "{}", v.message);
    }

    #[test]
    fn without_the_release_guard_a_stale_read_removes_a_record_naming_a_live_token() {
        // The removed record named a live token (2), or a live wrap that the pod's next round
        // then mints beside (1).
        let v = first_violation(Mutant::NoReleaseGuard);
        assert!(matches!(v.invariant, 1 | 2), "{}", v.message);
    }

    #[test]
    fn records_stranded_after_a_record_key_loss_are_caught() {
        // The record key is lost; without the release, a gone pod's record keeps its
        // finalizer forever.
        let v = first_violation(Mutant::NoUnverifiedRelease);
        assert_eq!(v.invariant, 2, "{}", v.message);
        assert!(v.message.contains("stranded"), "{}", v.message);
    }

    #[test]
    fn an_endpoint_that_keeps_the_previous_start_alive_fails() {
        // The previous ask's wrap, still unconsumed, lives beside the new one (1), or the
        // previous token outlives its record (2).
        let v = first_violation(Mutant::NoRevokeBeforeAsk);
        assert!(matches!(v.invariant, 1 | 2), "{}", v.message);
    }

    #[test]
    fn without_revoking_an_undelivered_wrap_it_fails() {
        let v = first_violation(Mutant::NoRevokeOnDeliveryFailure);
        assert_eq!(v.invariant, 2, "{}", v.message);
    }
}
