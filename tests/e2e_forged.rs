//! End-to-end: the operator trusts nothing in a Secret. A Secret made to look like a per-pod
//! record (or a real record altered, or signed with a key the operator lost) never makes the
//! operator revoke anything: it is reported once (Warning Event `ForgedRecord`,
//! `cubbyhole_forged_records_total`) and left alone, except that once its pod is gone and its
//! Secret is being deleted, its finalizer is released (`UnverifiedRecordReleased`) and Vault
//! ends what it named by its TTL.

// The shared harness exports more than this suite uses.
#[allow(unused_imports)]
use std::collections::BTreeMap;
use std::time::Duration;

use cubbyhole::record::seal::{Authenticity, Fields, RecordKeys};
use cubbyhole::record::signing_keys::{KEY_SECRET, keys_from_secret, new_key_secret};
use cubbyhole::record::{BINDING_LABEL, ann};
use cubbyhole_testkit::cluster::{self, Env, Options, ann, eventually, issued};
use cubbyhole_testkit::leaks;
use cubbyhole_testkit::openbao::{renewed_accessors, revoked_accessors};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const FORGED: &str = "ForgedRecord";

/// The Secret from the issue: labelled as a record of `binding`, naming `accessor` as an
/// unwrapped token of a pod that does not exist, without a signature.
fn forged_secret(ns: &str, name: &str, binding: &str, accessor: &str) -> Secret {
    let annotations = BTreeMap::from([
        ("cubbyhole.dev/pod", "ghost-pod"),
        (
            "cubbyhole.dev/pod-uid",
            "00000000-0000-0000-0000-00000000dead",
        ),
        ("cubbyhole.dev/start", "0"),
        ("cubbyhole.dev/phase", "Unwrapped"),
        ("cubbyhole.dev/accessor", accessor),
    ]);
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/managed-by": "cubbyhole",
                "cubbyhole.dev/binding": binding,
            },
            "annotations": annotations,
        },
        "type": "Opaque",
    }))
    .unwrap()
}

async fn create_forged(env: &Env, ns: &str, name: &str, binding: &str, accessor: &str) {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    api.create(
        &PostParams::default(),
        &forged_secret(ns, name, binding, accessor),
    )
    .await
    .expect("create forged Secret");
}

async fn secret_exists(env: &Env, ns: &str, name: &str) -> bool {
    let api: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    api.get_opt(name).await.expect("get Secret").is_some()
}

/// Warning Events with reason ForgedRecord in `ns`.
async fn forged_events(env: &Env, ns: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(FORGED) && e.type_.as_deref() == Some("Warning"))
        .collect()
}

/// `cubbyhole_forged_records_total` for `ns` on the operator's /metrics.
fn forged_metric(env: &Env, ns: &str) -> f64 {
    env.metric(&format!(
        "cubbyhole_forged_records_total{{namespace=\"{ns}\"}}"
    ))
}

#[tokio::test]
async fn a_forged_record_of_a_binding_that_does_not_exist_is_reported_not_acted_on() {
    let env = Env::start(Options::default()).await;
    let ns = format!("{}-forged", env.ns);
    cluster::create_namespace(&env.client, &ns).await;
    let accessor = env.bystander_token();
    create_forged(&env, &ns, "ghost-wrap", "ghost", &accessor).await;

    // The sweep (every 3 s here) finds a record of a binding that is gone; it reports it on the
    // Secret itself instead of revoking what it names and deleting it.
    let events = eventually("ForgedRecord Event on the Secret", T, || async {
        let e = forged_events(&env, &ns).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    let regarding = events[0].regarding.clone().unwrap_or_default();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Secret"), Some("ghost-wrap"))
    );
    assert!(
        !events[0]
            .note
            .clone()
            .unwrap_or_default()
            .contains(&accessor),
        "the Event names no accessor"
    );
    env.assert_bystander_live(&accessor).await;
    assert!(secret_exists(&env, &ns, "ghost-wrap").await);
    assert!(forged_metric(&env, &ns) > 0.0);
    // Reported once, not every sweep (the sweep runs every 3 s).
    cluster::holds_for("one ForgedRecord Event", Duration::from_secs(7), || async {
        forged_events(&env, &ns).await.len() == 1
    })
    .await;
    assert_eq!(forged_metric(&env, &ns), 1.0);
    env.assert_bystander_live(&accessor).await;
    assert!(secret_exists(&env, &ns, "ghost-wrap").await);

    env.assert_no_leaks().await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await.ok();
}

#[tokio::test]
async fn a_forged_record_next_to_a_live_binding_is_left_alone_and_real_pods_are_served() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("web", "60s")).await;
    let accessor = env.bystander_token();
    create_forged(&env, &env.ns, "forged-record", "b", &accessor).await;
    // Another one squats the Secret name a real pod will need.
    create_forged(&env, &env.ns, "squatted-b-wrap", "b", &accessor).await;

    env.create_pod("web-0", "web").await;
    let (real, token) = issued(&env, "b", "web-0").await;
    assert_ne!(real.name_any(), "forged-record");
    eventually("ForgedRecord Events on the binding", T, || async {
        let e = env.events_with_reason(FORGED).await;
        (e.len() >= 2).then_some(())
    })
    .await;
    assert!(forged_metric(&env, &env.ns) >= 2.0);

    // The pod whose Secret name is held by a forged record is reported, not served.
    env.create_pod("squatted", "web").await;
    eventually("SecretNameTaken", T, || async {
        let (s, r, m) = env.ready("b").await;
        (s == "False" && r == "SecretNameTaken" && m.contains("squatted-b-wrap")).then_some(())
    })
    .await;

    // The real pod's lifecycle is unchanged: unwrapped, then deleted -> revoked and removed.
    let (receipt, code) = env.run_agent(&token, "web-0");
    assert_eq!(code, 0, "{receipt:?}");
    let receipt = receipt.unwrap();
    env.report_receipt("web-0", Some(&receipt), 0).await;
    eventually("verified", T, || async {
        let s = env
            .records("b")
            .await
            .into_iter()
            .find(|s| s.name_any() == real.name_any())?;
        (ann(&s).get("verified").map(String::as_str) == Some("true")).then_some(())
    })
    .await;
    env.delete_pod("web-0").await;
    let root = env.bao.root_client();
    let real_accessor = receipt.accessor.unwrap();
    eventually("real record revoked and removed", T, || async {
        let gone = !secret_exists(&env, &env.ns, &real.name_any()).await;
        (gone && !root.accessor_is_live(&real_accessor).await.ok()?).then_some(())
    })
    .await;

    env.assert_bystander_live(&accessor).await;
    assert!(secret_exists(&env, &env.ns, "forged-record").await);
    assert!(secret_exists(&env, &env.ns, "squatted-b-wrap").await);
    let forged = env
        .secrets()
        .get("forged-record")
        .await
        .expect("forged Secret");
    assert!(
        !ann(&forged).contains_key("signature"),
        "the operator never signs or rewrites a forged record"
    );
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn an_altered_accessor_on_a_real_record_is_never_revoked() {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("web", "60s")).await;
    env.create_pod("web-0", "web").await;
    let (real, _token) = issued(&env, "b", "web-0").await;
    assert!(ann(&real).contains_key("signature"), "records are signed");
    let accessor = env.bystander_token();

    // Someone who can patch Secrets points the record at another token.
    let patch = json!({"metadata": {"annotations": {"cubbyhole.dev/accessor": accessor}}});
    env.secrets()
        .patch(
            &real.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("alter the record");
    eventually("ForgedRecord Event", T, || async {
        (!env.events_with_reason(FORGED).await.is_empty()).then_some(())
    })
    .await;
    assert!(forged_metric(&env, &env.ns) > 0.0);

    // The pod goes: nothing the altered record names is revoked.
    env.delete_pod("web-0").await;
    // A new pod served afterwards shows the operator has reconciled since the deletion.
    env.create_pod("web-1", "web").await;
    issued(&env, "b", "web-1").await;
    env.assert_bystander_live(&accessor).await;
    // Its pod is gone, so its Secret is released (nothing stranded), without any Vault call.
    eventually("the altered record released", T, || async {
        (!secret_exists(&env, &env.ns, &real.name_any()).await).then_some(())
    })
    .await;
    assert!(
        !env.events_with_reason("UnverifiedRecordReleased")
            .await
            .is_empty()
    );
    env.assert_bystander_live(&accessor).await;
    // Reported once per version of the Secret, not once per reconcile.
    let reports = forged_metric(&env, &env.ns);
    assert!((1.0..=2.0).contains(&reports), "{reports} reports");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn records_that_stop_verifying_are_never_acted_on_in_vault_and_never_stranded() {
    // Grace 5 s, window 20 s: what the records name ends in Vault by itself.
    let mut env = Env::start(Options {
        token_life: Some((Duration::from_secs(5), Duration::from_secs(20))),
        ..Options::default()
    })
    .await;
    env.apply_binding("b", Env::spec("old", "10s")).await;
    env.create_pod("old-0", "old").await;
    env.create_pod("old-1", "old").await;
    let (_, t0) = issued(&env, "b", "old-0").await;
    let (r1, _) = issued(&env, "b", "old-1").await;
    let (receipt, code) = env.run_agent(&t0, "old-0");
    assert_eq!(code, 0);
    let receipt = receipt.unwrap();
    let token0 = receipt.accessor.clone().unwrap();
    env.report_receipt("old-0", Some(&receipt), 0).await;
    eventually("old-0 verified", T, || async {
        let s = env
            .records("b")
            .await
            .into_iter()
            .find(|s| ann(s)["pod"] == "old-0")?;
        (ann(&s).get("verified").map(String::as_str) == Some("true")).then_some(())
    })
    .await;
    let token1 = ann(&r1)["accessor"].clone();
    // The record key is lost (or the records altered): with the operator stopped, every
    // signature is stripped, so nothing verifies any more.
    env.operator.take().unwrap().kill();
    let unsigned = json!({"metadata": {"annotations": {"cubbyhole.dev/signature": null}}});
    for r in env.records("b").await {
        env.secrets()
            .patch(
                &r.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&unsigned),
            )
            .await
            .expect("strip the signature");
    }
    env.restart_operator();
    eventually("both reported as not verifying", T, || async {
        (forged_metric(&env, &env.ns) >= 2.0).then_some(())
    })
    .await;
    // The pods go: the records are released (no finalizer stuck), nothing is revoked by the
    // operator, and Vault ends both tokens by their TTL.
    for p in ["old-0", "old-1"] {
        env.delete_pod(p).await;
    }
    eventually("records released and removed", T, || async {
        env.records("b").await.is_empty().then_some(())
    })
    .await;
    assert!(
        !env.events_with_reason("UnverifiedRecordReleased")
            .await
            .is_empty()
    );
    let metrics = env.op().get("/metrics").unwrap().1;
    assert!(
        metrics.contains(&format!(
            "cubbyhole_unverified_records_released_total{{namespace=\"{}\"}} 2",
            env.ns
        )),
        "{metrics}"
    );
    let root = env.bao.root_client();
    eventually(
        "Vault ended both tokens",
        Duration::from_secs(40),
        || async {
            let live = root.accessor_is_live(&token0).await.ok()?
                || root.accessor_is_live(&token1).await.ok()?;
            (!live).then_some(())
        },
    )
    .await;
    let revoked = revoked_accessors(&env.bao.audit_entries());
    assert!(
        !revoked.contains(&token0) && !revoked.contains(&token1),
        "the operator acted on records that do not verify: {revoked:?}"
    );
    env.assert_no_leaks().await;
}

/// The `cubbyhole.dev/*` annotations of a record, signature included.
fn record_annotations(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with("cubbyhole.dev/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test]
async fn a_signed_record_copied_to_another_name_or_put_back_in_an_older_version_revokes_nothing_foreign()
 {
    let env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("web", "60s")).await;
    env.create_pod("web-0", "web").await;
    let (first, token) = issued(&env, "b", "web-0").await;
    let older = record_annotations(&first);
    assert!(older.contains_key("cubbyhole.dev/signature"));
    let (receipt, code) = env.run_agent(&token, "web-0");
    assert_eq!(code, 0);
    let receipt = receipt.unwrap();
    let held = receipt.accessor.clone().unwrap();
    env.report_receipt("web-0", Some(&receipt), 0).await;
    let verified = eventually("web-0 verified", T, || async {
        let s = env.secrets().get_opt(&first.name_any()).await.ok()??;
        (ann(&s).get("verified").map(String::as_str) == Some("true")).then_some(s)
    })
    .await;

    // A copy of the signed, verified record under another name: the signature binds the name,
    // so it is a forgery, reported and left alone; nothing it names is revoked.
    let mut copy = forged_secret(&env.ns, "copied-b-wrap", "b", "unused");
    copy.metadata.annotations = Some(record_annotations(&verified));
    env.secrets()
        .create(&PostParams::default(), &copy)
        .await
        .expect("create the copy");
    eventually("ForgedRecord Event for the copy", T, || async {
        (!env.events_with_reason(FORGED).await.is_empty()).then_some(())
    })
    .await;
    env.secrets()
        .delete("copied-b-wrap", &DeleteParams::default())
        .await
        .expect("delete the copy");
    env.assert_bystander_live(&held).await;

    // The record put back as it was when issued (a valid signature of an earlier version):
    // it names only what was minted for this pod, so the agent's token is never revoked; the
    // operator sees the wrap consumed and, from the agent's receipt, verified again.
    let victim = env.bystander_token();
    let mut replay: BTreeMap<String, Option<String>> = record_annotations(&verified)
        .into_keys()
        .map(|k| (k, None))
        .collect();
    replay.extend(older.into_iter().map(|(k, v)| (k, Some(v))));
    let patch = json!({"metadata": {"annotations": replay}});
    env.secrets()
        .patch(
            &first.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("put the older version back");
    eventually("verified again after the replay", T, || async {
        let s = env.secrets().get_opt(&first.name_any()).await.ok()??;
        (ann(&s).get("phase").map(String::as_str) == Some("Unwrapped")
            && ann(&s).get("verified").map(String::as_str) == Some("true"))
        .then_some(())
    })
    .await;
    env.assert_bystander_live(&held).await;
    env.assert_bystander_live(&victim).await;
    let revoked = revoked_accessors(&env.bao.audit_entries());
    assert!(
        !revoked.contains(&held) && !revoked.contains(&victim),
        "revoked: {revoked:?}"
    );

    // The pod goes: its own token is revoked as usual, the bystander's never.
    env.delete_pod("web-0").await;
    let root = env.bao.root_client();
    eventually("web-0's token revoked", T, || async {
        (!root.accessor_is_live(&held).await.ok()?).then_some(())
    })
    .await;
    env.assert_bystander_live(&victim).await;
    env.assert_no_leaks().await;
}

/// Issue 33, item 1: a record signed with the REAL record key (as someone who leaked it would
/// sign) that names another pod's token or another pod's wrap gets the operator to act on
/// nothing it names. Vault has the last word before every renewal and revocation by accessor:
/// (a) an Unwrapped record naming a bystander's token is never renewed (its renewal comes due
/// every half `renewalWindow`) nor revoked at its pod's cleanup; (b) an Issued record whose
/// expiry passed, naming a bystander's token as its wrap, gets an expiry probe that leaves
/// the bystander alone; (c) an Issued record naming a real wrap made outside the binding's tokenRole is
/// not revoked at its pod's cleanup. Every refusal is counted
/// (`cubbyhole_token_renewals_total{result="refused"}`,
/// `cubbyhole_revocations_refused_total`) and the forged records are not reported as forged:
/// they verify.
#[tokio::test]
async fn a_record_signed_with_the_leaked_key_never_renews_or_revokes_what_another_pod_holds() {
    leaked_key_records_act_on_no_bystander(Ending::PodsDeleted).await;
}

/// The same forged records, cleaned up by the sweep instead: their binding is force-deleted
/// while the operator is down (its finalizer stripped), and the restarted operator sweeps
/// them. The sweep asks Vault before each revocation as the pod cleanup does.
#[tokio::test]
async fn a_swept_record_signed_with_the_leaked_key_revokes_nothing_another_pod_holds() {
    leaked_key_records_act_on_no_bystander(Ending::BindingSwept).await;
}

/// How the forged records end: with their pods, or swept with their force-deleted binding.
enum Ending {
    PodsDeleted,
    BindingSwept,
}

async fn leaked_key_records_act_on_no_bystander(ending: Ending) {
    // Grace 5 s, window 10 s: a held token's renewal comes due every 5 s.
    let mut env = Env::start(Options {
        token_life: Some((Duration::from_secs(5), Duration::from_secs(10))),
        ..Options::default()
    })
    .await;
    env.apply_binding("b", Env::spec("web", "60s")).await;
    for p in ["web-0", "web-1", "web-2"] {
        env.create_pod(p, "web").await;
    }
    let (r0, t0) = issued(&env, "b", "web-0").await;
    let (r1, _) = issued(&env, "b", "web-1").await;
    let (r2, _) = issued(&env, "b", "web-2").await;
    // web-0's agent takes its token: its record is Unwrapped and verified, a held token.
    let (receipt, code) = env.run_agent(&t0, "web-0");
    assert_eq!(code, 0, "{receipt:?}");
    env.report_receipt("web-0", receipt.as_ref(), 0).await;
    eventually("web-0 verified", T, || async {
        let s = env.secrets().get_opt(&r0.name_any()).await.ok()??;
        (ann(&s).get("phase").map(String::as_str) == Some("Unwrapped")
            && ann(&s).get("verified").map(String::as_str) == Some("true"))
        .then_some(())
    })
    .await;

    // Bystanders: two live tokens and a real wrap nobody's pod holds, all made with root;
    // the wrap at auth/token/create, not at the binding's tokenRole.
    let token_a = env.bystander_token();
    let token_b = env.bystander_token();
    let wrap_c = env.bystander_wrap();

    let keys = env.leaked_record_keys().await;
    // (a) web-0's record now names token_a as the token its agent holds.
    env.rewrite_signed(&keys, &r0.name_any(), &[(ann::ACCESSOR, token_a.clone())])
        .await;
    // (b) web-1's record names token_b as its wrap, whose expiry has passed.
    let expired = Timestamp::now()
        .checked_sub(SignedDuration::from_secs(60))
        .unwrap();
    env.rewrite_signed(
        &keys,
        &r1.name_any(),
        &[
            (ann::WRAP_ACCESSOR, token_b.clone()),
            (ann::EXPIRES_AT, expired.to_string()),
        ],
    )
    .await;
    // (c) web-2's record names the root-made wrap as its own.
    env.rewrite_signed(
        &keys,
        &r2.name_any(),
        &[(ann::WRAP_ACCESSOR, wrap_c.clone())],
    )
    .await;

    let renewals_refused = "cubbyhole_token_renewals_total{result=\"refused\"}";
    let revocations_refused = format!(
        "cubbyhole_revocations_refused_total{{namespace=\"{}\"}}",
        env.ns
    );
    let victims = [&token_a, &token_b, &wrap_c];
    let touched = |entries: &[serde_json::Value]| -> Vec<String> {
        let renewed = renewed_accessors(entries);
        let revoked = revoked_accessors(entries);
        victims
            .iter()
            .flat_map(|v| {
                let r = renewed.contains(v).then(|| format!("renewed {v}"));
                let k = revoked.contains(v).then(|| format!("revoked {v}"));
                r.into_iter().chain(k)
            })
            .collect()
    };
    // The renewal of web-0's token and the expiry probe of web-1's wrap come due at once:
    // both are refused (or, were Vault not asked first, carried out on the bystanders).
    eventually("web-0's renewal and web-1's expiry probe", T, || async {
        let done = touched(&env.bao.audit_entries());
        let refused =
            env.metric(renewals_refused) >= 1.0 && env.metric(&revocations_refused) >= 1.0;
        (refused || !done.is_empty()).then_some(())
    })
    .await;
    // More than one more half window: renewals keep coming due, nothing is done to a bystander.
    cluster::holds_for(
        "no bystander renewed or revoked",
        Duration::from_secs(6),
        || async {
            let done = touched(&env.bao.audit_entries());
            assert!(
                done.is_empty(),
                "the operator acted on bystanders: {done:?}"
            );
            true
        },
    )
    .await;
    assert_eq!(
        forged_metric(&env, &env.ns),
        0.0,
        "records signed with the real key verify"
    );

    match ending {
        // The pods go: their records are cleaned up, and what they name that is not theirs
        // stays.
        Ending::PodsDeleted => {
            for p in ["web-0", "web-1", "web-2"] {
                env.delete_pod(p).await;
            }
        }
        // The binding goes while nobody is there to clean up: the sweep retires its records.
        Ending::BindingSwept => {
            env.operator.take().unwrap().kill();
            env.force_delete_binding("b").await;
            env.restart_operator();
        }
    }
    eventually("records removed", T, || async {
        env.records("b").await.is_empty().then_some(())
    })
    .await;
    let done = touched(&env.bao.audit_entries());
    assert!(
        done.is_empty(),
        "the operator acted on bystanders: {done:?}"
    );
    for v in victims {
        env.assert_bystander_live(v).await;
    }
    if matches!(ending, Ending::PodsDeleted) {
        // (The restarted operator of the sweep renews nothing: its records' binding is gone.)
        assert!(
            env.metric(renewals_refused) >= 1.0,
            "renewal refusals not counted"
        );
    }
    // web-1's probe, web-0's token and web-2's wrap at cleanup; the restarted operator of the
    // sweep counts its own: web-0's token and web-2's wrap (web-1's wrap was probed before).
    let refused = env.metric(&revocations_refused);
    let least = match ending {
        Ending::PodsDeleted => 3.0,
        Ending::BindingSwept => 2.0,
    };
    assert!(refused >= least, "{refused} revocations refused");
    env.assert_no_leaks().await;
}

/// The record key Secret in the operator's namespace.
fn key_secrets(env: &Env) -> Api<Secret> {
    Api::namespaced(env.client.clone(), cluster::OPERATOR_NS)
}

/// The key Secret now (if any): its uid and keys by id.
async fn record_key_secret(env: &Env) -> Option<(String, BTreeMap<u32, Vec<u8>>)> {
    let secret = key_secrets(env).get_opt(KEY_SECRET).await.ok()??;
    let keys = keys_from_secret(&secret).ok()?;
    Some((secret.uid().unwrap_or_default(), keys.entries().clone()))
}

/// 32 fresh random bytes: a record key made by hand (or by another replica). Remembered (as
/// Secret data shows it) for the leak scan, whether or not it is still in the Secret at the end.
fn new_record_key(env: &Env) -> Vec<u8> {
    use std::io::Read;
    let mut key = vec![0; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .expect("read /dev/urandom");
    env.remember(&leaks::base64(&key));
    key
}

/// The ids of `keys`, for messages (never the bytes).
fn ids(keys: &BTreeMap<u32, Vec<u8>>) -> Vec<u32> {
    keys.keys().copied().collect()
}

/// Whether `record` verifies with `keys`, as the operator checks it.
fn verifies(env: &Env, keys: &BTreeMap<u32, Vec<u8>>, record: &Secret) -> Authenticity {
    let keys = RecordKeys::new(keys.clone()).expect("usable keys");
    let binding = record
        .labels()
        .get(BINDING_LABEL)
        .cloned()
        .unwrap_or_default();
    let fields = Fields {
        namespace: &env.ns,
        name: &record.name_any(),
        binding: &binding,
        annotations: record.annotations(),
    };
    keys.verify(
        &fields,
        record.annotations().get(ann::SIGNATURE).map(String::as_str),
    )
}

/// The record of `pod` (binding `b`) now.
async fn record_of(env: &Env, pod: &str) -> Secret {
    env.records("b")
        .await
        .into_iter()
        .find(|s| ann(s).get("pod").map(String::as_str) == Some(pod))
        .unwrap_or_else(|| panic!("no record of {pod}"))
}

/// Times `needle` occurs in the running operator's log.
fn log_count(env: &Env, needle: &str) -> usize {
    env.op().log_text().matches(needle).count()
}

/// Issue 33, item 5: the record keys rotated, the key Secret deleted, and a replica restarted
/// while it was gone (it makes a Secret of its own with a new `key-1`) treat no record as
/// forged and strand nothing. A running operator restores a deleted key Secret from the keys in
/// memory (same bytes), adopts a key added to it (new records are signed with `key-2`), and
/// writes its keys into a Secret someone else made anew (under higher ids); a fresh operator
/// process then loads the merged set: every record, whichever key signed it and whatever id
/// that key has now, verifies (no `ForgedRecord` Event, `cubbyhole_forged_records_total` 0), a
/// new pod is served, and deleting the pods removes every record and revokes the token held.
#[tokio::test]
async fn rotated_keys_and_a_replica_restarted_while_the_key_secret_was_gone_forge_nothing_and_strand_nothing()
 {
    // The operator reads the key Secret every 10 s (`KEY_RECHECK`).
    const RECHECK: Duration = Duration::from_secs(25);
    let mut env = Env::start(Options::default()).await;
    env.apply_binding("b", Env::spec("web", "60s")).await;
    env.create_pod("web-0", "web").await;
    let (r0, t0) = issued(&env, "b", "web-0").await;
    let (receipt, code) = env.run_agent(&t0, "web-0");
    assert_eq!(code, 0, "{receipt:?}");
    let receipt = receipt.unwrap();
    let held = receipt.accessor.clone().unwrap();
    env.report_receipt("web-0", Some(&receipt), 0).await;
    eventually("web-0 unwrapped and verified", T, || async {
        let s = env.secrets().get_opt(&r0.name_any()).await.ok()??;
        (ann(&s).get("phase").map(String::as_str) == Some("Unwrapped")
            && ann(&s).get("verified").map(String::as_str) == Some("true"))
        .then_some(())
    })
    .await;
    let (uid, original) = record_key_secret(&env)
        .await
        .expect("the record key Secret");
    assert_eq!(ids(&original), vec![1], "one key at start");
    let key1 = original[&1].clone();
    let signature = ann(&record_of(&env, "web-0").await)["signature"].clone();
    assert!(signature.starts_with("v2:1:"), "{signature}");

    // 1. The key Secret is deleted: the operator creates it again from the keys in memory.
    key_secrets(&env)
        .delete(KEY_SECRET, &DeleteParams::default())
        .await
        .expect("delete the key Secret");
    let (restored_uid, restored) = eventually("the key Secret restored", RECHECK, || async {
        record_key_secret(&env).await.filter(|(u, _)| *u != uid)
    })
    .await;
    assert!(
        restored == original,
        "restored with other keys: ids {:?}",
        ids(&restored)
    );

    // 2. Rotation: key-2 added to the (restored) Secret; new records are signed with it.
    let key2 = new_record_key(&env);
    let reloads = log_count(&env, "record keys reloaded");
    let rotate = json!({"data": {"key-2": k8s_openapi::ByteString(key2.clone())}});
    key_secrets(&env)
        .patch(KEY_SECRET, &PatchParams::default(), &Patch::Merge(&rotate))
        .await
        .expect("add key-2");
    eventually("key-2 adopted", RECHECK, || async {
        (log_count(&env, "record keys reloaded") > reloads).then_some(())
    })
    .await;
    env.create_pod("web-1", "web").await;
    let (r1, _) = issued(&env, "b", "web-1").await;
    let signature = ann(&r1)["signature"].clone();
    assert!(signature.starts_with("v2:2:"), "web-1 signed {signature}");
    let rotated = BTreeMap::from([(1, key1.clone()), (2, key2.clone())]);
    let (rotated_uid, found) = record_key_secret(&env).await.expect("the key Secret");
    assert!(
        rotated_uid == restored_uid && found == rotated,
        "the key Secret after rotation: ids {:?}",
        ids(&found)
    );
    for pod in ["web-0", "web-1"] {
        let record = record_of(&env, pod).await;
        assert_eq!(
            verifies(&env, &rotated, &record),
            Authenticity::Authentic,
            "{pod}"
        );
    }
    // A sweep (every 3 s) or two with the rotated keys: web-0's record, signed with key-1,
    // still verifies.
    cluster::holds_for("no ForgedRecord Event", Duration::from_secs(7), || async {
        env.events_with_reason(FORGED).await.is_empty()
    })
    .await;
    assert_eq!(forged_metric(&env, &env.ns), 0.0);

    // 3. A replica restarted while the Secret was gone: it finds none and creates one with a
    // key of its own. (Retried if the running operator restored the Secret in between.)
    let other = new_record_key(&env);
    let made = eventually("the key Secret made anew", T, || async {
        match key_secrets(&env)
            .delete(KEY_SECRET, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("delete the key Secret: {e}"),
        }
        let secret = new_key_secret(cluster::OPERATOR_NS, other.clone());
        match key_secrets(&env)
            .create(&PostParams::default(), &secret)
            .await
        {
            Ok(created) => Some(created.uid().unwrap_or_default()),
            Err(kube::Error::Api(s)) if s.code == 409 => None,
            Err(e) => panic!("create the key Secret: {e}"),
        }
    })
    .await;
    // The running operator writes its keys into it, under higher ids; key-1 stays the other's.
    let merged = eventually("the running operator's keys merged in", RECHECK, || async {
        let (u, keys) = record_key_secret(&env).await?;
        (u == made && keys.len() > 1).then_some(keys)
    })
    .await;
    assert!(
        merged.get(&1) == Some(&other)
            && merged.len() == 3
            && merged.values().any(|k| *k == key1)
            && merged.values().any(|k| *k == key2),
        "the merged key Secret: ids {:?}",
        ids(&merged)
    );
    for pod in ["web-0", "web-1"] {
        let record = record_of(&env, pod).await;
        assert_eq!(
            verifies(&env, &merged, &record),
            Authenticity::Authentic,
            "{pod}"
        );
    }

    // A fresh operator process loads the merged Secret: nothing it finds is forged, and a new
    // pod is signed with the highest key.
    env.operator.take().unwrap().kill();
    env.restart_operator();
    env.create_pod("web-2", "web").await;
    let (r2, _) = issued(&env, "b", "web-2").await;
    let signing = merged.keys().next_back().copied().unwrap();
    let signature = ann(&r2)["signature"].clone();
    assert!(
        signature.starts_with(&format!("v2:{signing}:")),
        "web-2 signed {signature}, not with key-{signing}"
    );
    cluster::holds_for(
        "no ForgedRecord Event after the restart",
        Duration::from_secs(7),
        || async { env.events_with_reason(FORGED).await.is_empty() },
    )
    .await;
    assert_eq!(forged_metric(&env, &env.ns), 0.0);
    let (_, now) = record_key_secret(&env).await.expect("the key Secret");
    assert!(now == merged, "the key Secret changed: ids {:?}", ids(&now));
    for pod in ["web-0", "web-1", "web-2"] {
        let record = record_of(&env, pod).await;
        assert_eq!(
            verifies(&env, &now, &record),
            Authenticity::Authentic,
            "{pod}"
        );
    }

    // 4. The pods go: every record is removed (no finalizer left behind), web-0's token is
    // revoked and no wrap minted is left live.
    for pod in ["web-0", "web-1", "web-2"] {
        env.delete_pod(pod).await;
    }
    eventually("every record removed", T, || async {
        env.records("b").await.is_empty().then_some(())
    })
    .await;
    let left: Vec<String> = env
        .secrets()
        .list(&ListParams::default())
        .await
        .expect("list Secrets")
        .items
        .iter()
        .filter(|s| !s.finalizers().is_empty())
        .map(|s| s.name_any())
        .collect();
    assert!(
        left.is_empty(),
        "Secrets stranded with a finalizer: {left:?}"
    );
    let root = env.bao.root_client();
    eventually("web-0's token revoked", T, || async {
        (!root.accessor_is_live(&held).await.ok()?).then_some(())
    })
    .await;
    let minted = env.minted_wraps().await;
    assert_eq!(minted.len(), 3, "one wrap per pod: {minted:?}");
    assert!(minted.iter().all(|(_, live)| !live), "{minted:?}");
    assert!(env.events_with_reason(FORGED).await.is_empty());
    assert!(
        env.events_with_reason("UnverifiedRecordReleased")
            .await
            .is_empty(),
        "a record was released unverified"
    );
    env.assert_no_leaks().await;
}
