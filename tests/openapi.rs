//! The request endpoint's API document (`api/request-endpoint.openapi.yaml`) against the code,
//! without a server: its reason words, statuses and retries, its paths and its schemas must
//! be what `request::protocol`, `listener` and `agent::receipt` say, so that neither side can
//! change alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cubbyhole::agent::receipt::{Receipt, result};
use cubbyhole::listener::refusal_response;
use cubbyhole::request::protocol::{
    RECEIPT_PATH, Refusal, WRAP_PATH, WRAPPING_TOKEN_FIELD, WrapFacts, reason,
};
use serde::Deserialize;
use serde_json::{Value, json};

const DOCUMENT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/api/request-endpoint.openapi.yaml"
));

/// Every result word of `agent::receipt::result` (the module has no list of its own).
const RESULT_WORDS: [&str; 9] = result::ALL;

/// The document's routes by the names `x-refusal-reasons` uses, with their success status.
const ROUTES: [(&str, &str, &str); 2] =
    [("wrap", WRAP_PATH, "200"), ("receipt", RECEIPT_PATH, "204")];

/// One entry of `x-refusal-reasons`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Documented {
    reason: String,
    status: u16,
    retry: bool,
    retry_after: bool,
    routes: Vec<String>,
    description: String,
}

fn document() -> Value {
    serde_yaml_ng::from_str(DOCUMENT).expect("the API document is YAML")
}

fn documented_reasons() -> Vec<Documented> {
    serde_json::from_value(document()["x-refusal-reasons"].clone()).expect(
        "x-refusal-reasons is a list of {reason, status, retry, retryAfter, routes, description}",
    )
}

/// The document's `POST` operation of `path`.
fn operation(doc: &Value, path: &str) -> Value {
    let op = doc["paths"][path]["post"].clone();
    assert!(op.is_object(), "no POST {path} in the document");
    op
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name} in the document");
    s
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The reasons documented for `route` answered with `status`.
fn reasons_on<'a>(reasons: &'a [Documented], route: &str, status: u16) -> Vec<&'a Documented> {
    reasons
        .iter()
        .filter(|r| r.status == status && r.routes.iter().any(|x| x == route))
        .collect()
}

#[test]
fn every_refusal_reason_in_the_code_is_documented_with_its_status_and_retry() {
    let reasons = documented_reasons();
    let words: Vec<&str> = reasons.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        words,
        reason::ALL,
        "x-refusal-reasons must list reason::ALL, in its order"
    );
    for r in &reasons {
        let word = r.reason.as_str();
        assert_eq!(r.status, reason::status(word), "{word}: status");
        assert_eq!(r.retry, reason::retriable(word), "{word}: retry");
        assert!(!r.description.trim().is_empty(), "{word}: no description");
        assert!(!r.routes.is_empty(), "{word}: no route answers it");
        for route in &r.routes {
            assert!(
                ROUTES.iter().any(|(name, _, _)| name == route),
                "{word}: unknown route {route:?}"
            );
        }
    }
}

#[test]
fn the_refusal_schema_lists_exactly_the_reason_words_and_fields_of_the_code() {
    let doc = document();
    let refusal = schema(&doc, "Refusal");
    assert_eq!(
        strings(&refusal["properties"]["reason"]["enum"]),
        reason::ALL
    );
    let sent = serde_json::to_value(Refusal::new(reason::RETRY, "m")).unwrap();
    assert_eq!(keys(&refusal["properties"]), keys(&sent));
    assert_eq!(
        strings(&refusal["required"])
            .into_iter()
            .collect::<BTreeSet<_>>(),
        keys(&sent)
    );
}

#[test]
fn the_document_has_exactly_the_two_paths_of_the_code_both_post() {
    let doc = document();
    let paths = keys(&doc["paths"]);
    let expected: BTreeSet<String> = [WRAP_PATH, RECEIPT_PATH].map(String::from).into();
    assert_eq!(paths, expected);
    for path in [WRAP_PATH, RECEIPT_PATH] {
        assert_eq!(
            keys(&doc["paths"][path]),
            BTreeSet::from(["post".to_string()]),
            "{path}: the endpoint routes POST only"
        );
    }
    assert!(
        operation(&doc, WRAP_PATH).get("requestBody").is_none(),
        "an ask has no body"
    );
    let receipt = operation(&doc, RECEIPT_PATH);
    assert_eq!(
        receipt["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Receipt"
    );
}

#[test]
fn each_route_documents_exactly_the_statuses_of_the_reasons_it_can_answer() {
    let doc = document();
    let reasons = documented_reasons();
    for (route, path, success) in ROUTES {
        let responses = &operation(&doc, path)["responses"];
        let mut expected: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for r in reasons
            .iter()
            .filter(|r| r.routes.iter().any(|x| x == route))
        {
            expected
                .entry(r.status.to_string())
                .or_default()
                .push(&r.reason);
        }
        let documented: BTreeSet<String> = keys(responses)
            .into_iter()
            .filter(|s| s.as_str() != success)
            .collect();
        assert_eq!(
            documented,
            expected.keys().cloned().collect::<BTreeSet<_>>(),
            "{path}: the refusal statuses documented are not those of its reasons"
        );
        assert!(responses[success].is_object(), "{path}: no {success}");
        for (status, words) in &expected {
            let answer = &responses[status.as_str()];
            assert_eq!(
                answer["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Refusal",
                "{path} {status}: a refusal's body"
            );
            let said = answer["description"].as_str().unwrap_or_default();
            for word in words {
                assert!(
                    said.contains(word),
                    "{path} {status}: its description does not name {word}"
                );
            }
        }
    }
}

#[test]
fn retry_after_is_documented_on_exactly_the_answers_that_carry_it() {
    let doc = document();
    let reasons = documented_reasons();
    for r in &reasons {
        // serve.rs gives a wait (so `Retry-After`) to RateLimited, Retry, Internal and
        // VaultUnavailable, and to nothing else: exactly the reasons worth retrying.
        assert_eq!(
            r.retry_after,
            reason::retriable(&r.reason),
            "{}: retryAfter",
            r.reason
        );
    }
    for (route, path, success) in ROUTES {
        let responses = &operation(&doc, path)["responses"];
        assert!(
            responses[success]["headers"].get("Retry-After").is_none(),
            "{path} {success}"
        );
        for status in keys(responses)
            .into_iter()
            .filter(|s| s.as_str() != success)
        {
            let on = reasons_on(&reasons, route, status.parse().unwrap());
            let carried = on.iter().any(|r| r.retry_after);
            assert!(
                on.iter().all(|r| r.retry_after == carried),
                "{path} {status}: reasons of one status disagree on Retry-After"
            );
            let header = &responses[status.as_str()]["headers"]["Retry-After"];
            assert_eq!(
                header.is_object(),
                carried,
                "{path} {status}: Retry-After documented: {}, sent: {carried}",
                header.is_object()
            );
            if carried {
                assert_eq!(header["$ref"], "#/components/headers/RetryAfter");
            }
        }
    }
    let header = &doc["components"]["headers"]["RetryAfter"];
    assert_eq!(header["schema"]["type"], "integer");
    assert_eq!(header["schema"]["minimum"], 1);
}

#[tokio::test]
async fn a_refusal_is_answered_with_its_documented_status_body_and_whole_seconds_to_wait() {
    let doc = document();
    let refusal_fields = keys(&schema(&doc, "Refusal")["properties"]);
    for r in documented_reasons() {
        let wait = r.retry_after.then_some(Duration::from_millis(1500));
        let answer = refusal_response(&Refusal::new(&r.reason, "m"), wait);
        assert_eq!(answer.status().as_u16(), r.status, "{}", r.reason);
        let retry_after = answer
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(retry_after, wait.map(|_| "2".to_string()), "{}", r.reason);
        let challenge = answer
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let documented = doc["paths"][WRAP_PATH]["post"]["responses"][r.status.to_string()]
            ["headers"]["WWW-Authenticate"]["$ref"]
            .as_str()
            .map(|_| {
                doc["components"]["headers"]["WwwAuthenticate"]["schema"]["const"]
                    .as_str()
                    .unwrap()
                    .to_string()
            });
        assert_eq!(challenge, documented, "{}", r.reason);
        let body = axum::body::to_bytes(answer.into_body(), 64 * 1024)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(keys(&body), refusal_fields, "{}", r.reason);
        assert_eq!(body["reason"], r.reason.as_str());
    }
    let short = refusal_response(
        &Refusal::new(reason::RETRY, "m"),
        Some(Duration::from_millis(1)),
    );
    assert_eq!(
        short.headers()["retry-after"],
        "1",
        "at least one second, as documented"
    );
}

#[test]
fn the_wrap_schema_is_a_served_answer_field_for_field() {
    let doc = document();
    let wrap = schema(&doc, "Wrap");
    let facts = WrapFacts {
        wrap_accessor: "a".into(),
        binding: "b".into(),
        start: 1,
        wrap_ttl_seconds: 60,
    };
    let mut served = serde_json::to_value(&facts).unwrap();
    served[WRAPPING_TOKEN_FIELD] = json!("hvs.x");
    assert_eq!(keys(&wrap["properties"]), keys(&served));
    assert_eq!(
        strings(&wrap["required"])
            .into_iter()
            .collect::<BTreeSet<_>>(),
        keys(&served),
        "every field of the answer is always sent"
    );
    for (field, value) in served.as_object().unwrap() {
        let kind = if value.is_u64() { "integer" } else { "string" };
        assert_eq!(wrap["properties"][field]["type"], kind, "{field}");
    }
    let example =
        &operation(&doc, WRAP_PATH)["responses"]["200"]["content"]["application/json"]["example"];
    assert!(
        example[WRAPPING_TOKEN_FIELD].is_string(),
        "the example's token"
    );
    serde_json::from_value::<WrapFacts>(example.clone()).expect("the example is a served answer");
}

#[test]
fn the_receipt_schema_lists_the_agents_result_words_and_the_limits_the_endpoint_enforces() {
    let doc = document();
    let receipt = schema(&doc, "Receipt");
    let props = &receipt["properties"];
    assert_eq!(strings(&props["result"]["enum"]), RESULT_WORDS);
    assert_eq!(strings(&receipt["required"]), ["result"]);
    assert_ne!(
        receipt["additionalProperties"], false,
        "the endpoint ignores unknown fields"
    );
    let documented = keys(props);
    for sent in [
        Receipt::unwrapped("x"),
        Receipt::failed(result::VAULT_ERROR),
    ] {
        let line = serde_json::to_value(&sent).unwrap();
        assert!(
            keys(&line).is_subset(&documented),
            "{line} has an undocumented field"
        );
    }
    for word in RESULT_WORDS {
        assert!(
            Receipt::parse(&json!({ "result": word }).to_string()).is_some(),
            "{word}"
        );
    }
    let with_extra = json!({"result": result::UNWRAPPED, "accessor": "a", "other": 1});
    assert!(Receipt::parse(&with_extra.to_string()).is_some());
    // The documented maxLength is the longest the endpoint accepts.
    let max = |field: &str| props[field]["maxLength"].as_u64().expect(field) as usize;
    let result_of = |n: usize| json!({ "result": "r".repeat(n) }).to_string();
    assert!(Receipt::parse(&result_of(max("result"))).is_some());
    assert!(Receipt::parse(&result_of(max("result") + 1)).is_none());
    assert!(Receipt::parse(&result_of(0)).is_none());
    assert_eq!(props["result"]["minLength"], 1);
    let accessor_of =
        |n: usize| json!({"result": result::UNWRAPPED, "accessor": "a".repeat(n)}).to_string();
    assert!(Receipt::parse(&accessor_of(max("accessor"))).is_some());
    assert!(Receipt::parse(&accessor_of(max("accessor") + 1)).is_none());
}

#[test]
fn the_document_is_openapi_3_1_with_a_bearer_scheme_for_the_pods_token() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "cubbyhole request endpoint");
    let scheme = &doc["components"]["securitySchemes"]["podToken"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    assert_eq!(doc["security"], json!([{"podToken": []}]));
}
