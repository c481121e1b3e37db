//! Every write to a per-pod record, checked on the wire against a mocked API server
//! (`tower-test`): the verb, the path, the content type, the `resourceVersion` guard, what the
//! body sets and removes, and how each answer (201, 409, 404, 500) is read. A regression in a
//! write's shape fails here in milliseconds; the e2e suite proves the same on a real server.

use std::collections::BTreeMap;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::core::plan::Issue;
use crate::record::seal::{Authenticity, RecordKeys};
use crate::record::writes::{self, Records, Sealer, WriteError};
use crate::record::{Phase, SECRET_FINALIZER, WrapState, ann};
use crate::vault::SecretString;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const SECRETS: &str = "/api/v1/namespaces/ns/secrets";
const RECORD: &str = "/api/v1/namespaces/ns/secrets/p-b-wrap";
const MERGE_PATCH: &str = "application/merge-patch+json";

fn keys() -> RecordKeys {
    RecordKeys::new(BTreeMap::from([(1, vec![7; 32])])).unwrap()
}

fn mocked() -> (Api<Secret>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "ns");
    (Api::namespaced(client, "ns"), handle)
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn issue(replaces: Option<WrapState>) -> Issue {
    Issue {
        pod: "p".into(),
        pod_uid: "uid-p".into(),
        secret: "p-b-wrap".into(),
        start: 0,
        replaces,
        revoke_previous: None,
        receipts_after: None,
        replaced: 0,
    }
}

/// A record as read back: Issued, resourceVersion 5, signed with `keys`.
fn issued_record(keys: &RecordKeys) -> WrapState {
    let sealer = Sealer {
        namespace: "ns",
        binding: "b",
        keys,
    };
    let (_, annotations) = sealer.patch(
        "p-b-wrap",
        &BTreeMap::new(),
        &[
            (ann::POD, Some("p".into())),
            (ann::POD_UID, Some("uid-p".into())),
            (ann::PHASE, Some(Phase::Issued.as_str().into())),
            (ann::WRAP_ACCESSOR, Some("wacc".into())),
            (ann::ACCESSOR, Some("acc".into())),
        ],
    );
    let mut w = WrapState::from_annotations(
        "p-b-wrap".into(),
        &annotations,
        true,
        Authenticity::Authentic,
    )
    .unwrap();
    w.resource_version = Some("5".into());
    w
}

fn secret_json(name: &str, rv: &str, binding: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": name, "namespace": "ns", "resourceVersion": rv, "uid": "uid-secret",
            "labels": { "cubbyhole.dev/binding": binding },
        },
    })
}

fn status_json(code: u16, reason: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": reason, "reason": reason, "code": code,
    })
}

/// A request the client sent: its method, path, content type and body.
struct Seen {
    method: Method,
    path: String,
    content_type: Option<String>,
    body: Value,
}

/// Takes the next request and answers it with `status` and `answer`.
async fn answer(handle: &mut Handle, status: u16, answer: Value) -> Seen {
    let (request, send) = handle.next_request().await.expect("a request");
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    Seen {
        method,
        path,
        content_type,
        body,
    }
}

/// Answers the next patch with the record at resourceVersion 6, the one after with 409.
fn patched_then_conflict(mut handle: Handle) -> tokio::task::JoinHandle<(Seen, Seen)> {
    tokio::spawn(async move {
        let ok = answer(&mut handle, 200, secret_json("p-b-wrap", "6", "b")).await;
        let conflict = answer(&mut handle, 409, status_json(409, "Conflict")).await;
        (ok, conflict)
    })
}

fn records<'a>(api: &'a Api<Secret>, keys: &'a RecordKeys) -> Records<'a> {
    Records {
        api,
        sealer: Sealer {
            namespace: "ns",
            binding: "b",
            keys,
        },
    }
}

/// The changes of a delivered mint (wrap accessor `wacc`, token accessor `acc`).
fn delivered(i: &Issue) -> Vec<writes::Change> {
    writes::issue_changes(i, writes::deliver_changes("wacc", "acc", t(0), t(60)))
}

#[tokio::test]
async fn a_pod_start_is_one_create_owned_by_the_pod_with_a_finalizer_and_the_wrap() {
    let keys = keys();
    let (api, mut handle) = mocked();
    let server =
        tokio::spawn(
            async move { answer(&mut handle, 201, secret_json("p-b-wrap", "7", "b")).await },
        );
    let token = SecretString::new("s.wrapping");
    let i = issue(None);
    let rv = writes::write_issue(
        &records(&api, &keys),
        &i,
        &delivered(&i),
        Some(("vault-token", &token)),
    )
    .await
    .unwrap();
    let seen = server.await.unwrap();
    assert_eq!((seen.method, seen.path.as_str()), (Method::POST, SECRETS));
    let meta = &seen.body["metadata"];
    assert_eq!(meta["name"], "p-b-wrap");
    assert_eq!(meta["labels"]["cubbyhole.dev/binding"], "b");
    assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "cubbyhole");
    assert_eq!(meta["finalizers"], json!([SECRET_FINALIZER]));
    assert_eq!(meta["ownerReferences"][0]["uid"], "uid-p");
    assert_eq!(meta["ownerReferences"][0]["kind"], "Pod");
    assert_eq!(meta["annotations"][ann::PHASE], "Issued");
    assert_eq!(meta["annotations"][ann::WRAP_ACCESSOR], "wacc");
    assert_eq!(meta["annotations"][ann::ACCESSOR], "acc");
    assert!(meta["annotations"][ann::SIGNATURE].is_string());
    // base64("s.wrapping")
    assert_eq!(seen.body["data"]["vault-token"], "cy53cmFwcGluZw==");
    assert_eq!(rv, "7");
}

#[tokio::test]
async fn a_create_losing_the_race_reads_who_won() {
    let keys = keys();
    // The winner's record of this binding, as the operator signs it.
    let signed = {
        let mut s = secret_json("p-b-wrap", "3", "b");
        s["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("cubbyhole");
        let sealer = Sealer {
            namespace: "ns",
            binding: "b",
            keys: &keys,
        };
        let (patch, _) = sealer.patch(
            "p-b-wrap",
            &BTreeMap::new(),
            &[
                (ann::POD, Some("p".into())),
                (ann::POD_UID, Some("uid-p".into())),
            ],
        );
        // As a create carries it: removals (nulls) are not annotations.
        s["metadata"]["annotations"] =
            Value::Object(patch.into_iter().filter(|(_, v)| !v.is_null()).collect());
        s
    };
    let unsigned = {
        let mut s = signed.clone();
        s["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(ann::SIGNATURE);
        s
    };
    for (holder, secret, expected) in [
        ("b", signed, "Lost"),
        ("b, unsigned", unsigned, "Taken"),
        (
            "someone-else",
            secret_json("p-b-wrap", "3", "someone-else"),
            "Taken",
        ),
        ("b, unlabelled", secret_json("p-b-wrap", "3", "b"), "Taken"),
    ] {
        let (api, mut handle) = mocked();
        let server = tokio::spawn(async move {
            let create = answer(&mut handle, 409, status_json(409, "AlreadyExists")).await;
            let get = answer(&mut handle, 200, secret).await;
            (create, get)
        });
        let token = SecretString::new("s.wrapping");
        let i = issue(None);
        let result = writes::write_issue(
            &records(&api, &keys),
            &i,
            &delivered(&i),
            Some(("token", &token)),
        )
        .await;
        let (create, get) = server.await.unwrap();
        assert_eq!(create.method, Method::POST);
        assert_eq!((get.method, get.path.as_str()), (Method::GET, RECORD));
        let got = match result {
            Err(WriteError::Lost) => "Lost",
            Err(WriteError::Taken) => "Taken",
            other => panic!("{holder}: {other:?}"),
        };
        assert_eq!(got, expected, "record held by {holder}");
    }
}

#[tokio::test]
async fn a_new_start_takes_the_record_over_in_one_patch_guarded_by_the_old_version() {
    let keys = keys();
    let old = issued_record(&keys);
    let (api, handle) = mocked();
    let server = patched_then_conflict(handle);
    let token = SecretString::new("s.wrapping");
    let i = issue(Some(old));
    let r = records(&api, &keys);
    let rv = writes::write_issue(&r, &i, &delivered(&i), Some(("token", &token)))
        .await
        .unwrap();
    let lost = writes::write_issue(&r, &i, &delivered(&i), Some(("token", &token))).await;
    let (seen, _) = server.await.unwrap();
    assert_eq!(rv, "6");
    assert!(matches!(lost, Err(WriteError::Lost)), "{lost:?}");
    assert_eq!((seen.method, seen.path.as_str()), (Method::PATCH, RECORD));
    assert_eq!(seen.content_type.as_deref(), Some(MERGE_PATCH));
    assert_eq!(seen.body["metadata"]["resourceVersion"], "5");
    assert_eq!(seen.body["data"]["token"], "cy53cmFwcGluZw==");
    let annotations = &seen.body["metadata"]["annotations"];
    assert_eq!(annotations[ann::PHASE], "Issued");
    assert_eq!(annotations[ann::WRAP_ACCESSOR], "wacc");
}

#[tokio::test]
async fn a_failed_mint_is_recorded_in_the_same_one_write_without_a_token() {
    let keys = keys();
    let old = issued_record(&keys);
    let (api, mut handle) = mocked();
    let server = tokio::spawn(async move {
        let created = answer(&mut handle, 201, secret_json("p-b-wrap", "1", "b")).await;
        let patched = answer(&mut handle, 200, secret_json("p-b-wrap", "6", "b")).await;
        (created, patched)
    });
    let r = records(&api, &keys);
    for i in [issue(None), issue(Some(old))] {
        let changes =
            writes::issue_changes(&i, writes::failure_changes("permission denied", t(1), 1));
        writes::write_issue(&r, &i, &changes, None).await.unwrap();
    }
    let (created, patched) = server.await.unwrap();
    assert_eq!(created.method, Method::POST);
    assert!(created.body.get("data").is_none(), "no token");
    assert_eq!(
        created.body["metadata"]["annotations"][ann::PHASE],
        "Failed"
    );
    assert_eq!(patched.method, Method::PATCH);
    assert_eq!(patched.body["metadata"]["resourceVersion"], "5");
    assert_eq!(
        patched.body["metadata"]["annotations"][ann::PHASE],
        "Failed"
    );
    // The previous wrap's accessors are removed (null in a merge patch), not left behind.
    let annotations = patched.body["metadata"]["annotations"].as_object().unwrap();
    assert!(annotations.contains_key(ann::WRAP_ACCESSOR));
    assert_eq!(annotations[ann::WRAP_ACCESSOR], Value::Null);
    assert!(patched.body.as_object().unwrap().contains_key("data"));
    assert_eq!(patched.body["data"], Value::Null);
}

#[tokio::test]
async fn settling_records_the_phase_and_removes_the_token_and_a_gone_record_is_lost() {
    let keys = keys();
    let wrap = issued_record(&keys);
    let (api, mut handle) = mocked();
    let server = tokio::spawn(async move {
        let ok = answer(&mut handle, 200, secret_json("p-b-wrap", "6", "b")).await;
        let gone = answer(&mut handle, 404, status_json(404, "NotFound")).await;
        let broken = answer(&mut handle, 500, status_json(500, "InternalError")).await;
        (ok, gone, broken)
    });
    let r = records(&api, &keys);
    let settled = writes::settle(&r, &wrap, Phase::Expired, false, "expired", 0).await;
    let gone = writes::settle(&r, &wrap, Phase::Expired, false, "expired", 0).await;
    let broken = writes::settle(&r, &wrap, Phase::Expired, false, "expired", 0).await;
    let (seen, _, _) = server.await.unwrap();
    assert_eq!(settled.unwrap(), "6");
    assert!(matches!(gone, Err(WriteError::Lost)), "{gone:?}");
    assert!(matches!(broken, Err(WriteError::Kube(_))), "{broken:?}");
    assert_eq!((seen.method, seen.path.as_str()), (Method::PATCH, RECORD));
    assert_eq!(seen.body["metadata"]["resourceVersion"], "5");
    assert!(seen.body.as_object().unwrap().contains_key("data"));
    assert_eq!(
        seen.body["data"],
        Value::Null,
        "the token leaves the Secret"
    );
    assert_eq!(seen.body["metadata"]["annotations"][ann::PHASE], "Expired");
}

#[tokio::test]
async fn removal_releases_the_finalizer_as_read_then_deletes_that_very_secret() {
    let keys = keys();
    let wrap = issued_record(&keys);
    let (api, mut handle) = mocked();
    let server = tokio::spawn(async move {
        let unfinalize = answer(&mut handle, 200, secret_json("p-b-wrap", "6", "b")).await;
        let delete = answer(&mut handle, 200, status_json(200, "Success")).await;
        // Already gone: nothing more is sent.
        let gone = answer(&mut handle, 404, status_json(404, "NotFound")).await;
        // Changed since it was read: not released, and nothing more is sent.
        let changed = answer(&mut handle, 409, status_json(409, "Conflict")).await;
        (unfinalize, delete, gone, changed)
    });
    assert!(writes::remove(&api, &wrap).await.unwrap());
    assert!(
        writes::remove(&api, &wrap).await.unwrap(),
        "gone counts as removed"
    );
    assert!(
        !writes::remove(&api, &wrap).await.unwrap(),
        "changed: not removed"
    );
    let (unfinalize, delete, gone, changed) = server.await.unwrap();
    assert_eq!(
        (unfinalize.method, unfinalize.path.as_str()),
        (Method::PATCH, RECORD)
    );
    // Released only as it was read: a record a new start claimed meanwhile keeps its finalizer.
    assert_eq!(
        unfinalize.body,
        json!({ "metadata": { "resourceVersion": "5", "finalizers": null } })
    );
    assert_eq!(changed.method, Method::PATCH);
    assert_eq!(
        (delete.method, delete.path.as_str()),
        (Method::DELETE, RECORD)
    );
    assert_eq!(delete.body["preconditions"]["uid"], "uid-secret");
    assert_eq!(gone.method, Method::PATCH);
}

#[tokio::test]
async fn a_create_refused_for_another_reason_is_an_error_not_a_lost_race() {
    let keys = keys();
    let (api, mut handle) = mocked();
    let server = tokio::spawn(async move {
        let seen = answer(&mut handle, 500, status_json(500, "InternalError")).await;
        // Nothing else may be asked: a lost race would read who won.
        assert!(handle.next_request().await.is_none(), "no read after a 500");
        seen
    });
    let i = issue(None);
    let written = {
        let r = records(&api, &keys);
        writes::write_issue(&r, &i, &delivered(&i), None).await
    };
    drop(api);
    let seen = server.await.unwrap();
    assert_eq!((seen.method, seen.path.as_str()), (Method::POST, SECRETS));
    assert!(matches!(written, Err(WriteError::Kube(_))), "{written:?}");
}

#[tokio::test]
async fn an_agents_report_is_one_guarded_patch_of_the_receipt_and_a_changed_record_is_lost() {
    let keys = keys();
    let wrap = issued_record(&keys);
    let (api, handle) = mocked();
    let server = patched_then_conflict(handle);
    let receipt = crate::agent::receipt::Receipt::unwrapped("acc");
    let (reported, changed) = {
        let r = records(&api, &keys);
        (
            writes::report(&r, &wrap, &receipt).await,
            writes::report(&r, &wrap, &receipt).await,
        )
    };
    // A report that sent nothing fails here, not by hanging.
    drop(api);
    let (seen, _) = server.await.unwrap();
    assert_eq!(reported.unwrap(), "6");
    assert!(matches!(changed, Err(WriteError::Lost)), "{changed:?}");
    assert_eq!((seen.method, seen.path.as_str()), (Method::PATCH, RECORD));
    assert_eq!(seen.content_type.as_deref(), Some(MERGE_PATCH));
    assert_eq!(seen.body["metadata"]["resourceVersion"], "5");
    assert_eq!(
        seen.body["metadata"]["annotations"][ann::RECEIPT],
        receipt.to_line()
    );
    assert!(
        !seen.body.as_object().unwrap().contains_key("data"),
        "the data is left as it is"
    );
}

#[tokio::test]
async fn removal_reads_each_answer_of_the_delete_and_fails_on_a_broken_server() {
    let keys = keys();
    let wrap = issued_record(&keys);
    let (api, mut handle) = mocked();
    let server = tokio::spawn(async move {
        let released = || secret_json("p-b-wrap", "6", "b");
        // Released, then deleted meanwhile by someone else (404) or replaced by another
        // Secret of the name (409 on the uid precondition): this record is gone either way.
        answer(&mut handle, 200, released()).await;
        answer(&mut handle, 404, status_json(404, "NotFound")).await;
        answer(&mut handle, 200, released()).await;
        answer(&mut handle, 409, status_json(409, "Conflict")).await;
        // Released, then the delete fails: an error (the next round tries again).
        answer(&mut handle, 200, released()).await;
        answer(&mut handle, 500, status_json(500, "InternalError")).await;
        // The release itself fails: an error, not "changed".
        answer(&mut handle, 500, status_json(500, "InternalError")).await;
    });
    assert!(
        writes::remove(&api, &wrap).await.unwrap(),
        "deleted meanwhile"
    );
    assert!(
        writes::remove(&api, &wrap).await.unwrap(),
        "replaced meanwhile"
    );
    assert!(writes::remove(&api, &wrap).await.is_err(), "delete failed");
    assert!(writes::remove(&api, &wrap).await.is_err(), "release failed");
    drop(api);
    server.await.unwrap();
}
