//! A first, cheap look at an AdmissionReview before the typed parse: the few fields that
//! decide whether the pod is ours at all (operation, kind, sub-resource, the opt-in label) and
//! how many JSON values the pod holds. Nothing else is kept, so a request of any shape costs
//! one pass over its bytes; only opted-in pods of a sane size are parsed into a `Pod`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::webhook::inject::INJECT_LABEL;

/// Most JSON values (objects, arrays, strings, numbers...) an opted-in pod may hold: a pod of
/// many containers with long environments stays far below, a pod built to blow up the typed
/// parse (hundreds of thousands of tiny volumes) is refused.
pub const MAX_POD_VALUES: u64 = 50_000;

/// What the first look found.
#[derive(Debug, PartialEq, Eq)]
pub struct Glance {
    /// The request's uid, copied into any answer.
    pub uid: String,
    /// Whether the webhook has anything to do: a pod created (not a sub-resource) with the
    /// opt-in label `true`.
    pub opted_in_create: bool,
    /// JSON values in the pod object.
    pub pod_values: u64,
}

#[derive(Deserialize)]
struct Review {
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    kind: Kind,
    sub_resource: Option<IgnoredAny>,
    object: Option<Counted<Object>>,
}

#[derive(Default, Deserialize)]
struct Kind {
    #[serde(default)]
    kind: String,
}

#[derive(Default, Deserialize)]
struct Object {
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Takes the first look at an AdmissionReview body.
pub fn glance(body: &[u8]) -> Result<Glance, String> {
    let review: Review = serde_json::from_slice(body).map_err(|e| not_a_review(&e))?;
    let request = review.request.ok_or("AdmissionReview without a request")?;
    let (labels, pod_values) = match request.object {
        Some(Counted { value, count }) => (value.metadata.labels, count),
        None => (BTreeMap::new(), 0),
    };
    Ok(Glance {
        uid: request.uid,
        opted_in_create: request.operation == "CREATE"
            && request.kind.kind == "Pod"
            && request.sub_resource.is_none()
            && labels.get(INJECT_LABEL).map(String::as_str) == Some("true"),
        pod_values,
    })
}

/// Why a body is not an AdmissionReview, by where its JSON failed (never what it held).
pub fn not_a_review(e: &serde_json::Error) -> String {
    format!(
        "not an AdmissionReview ({:?} error at line {} column {})",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// A `T` read from a JSON value, with the number of values that value holds (itself included).
/// Only `T`'s fields are kept; every other value is counted and dropped.
struct Counted<T> {
    value: T,
    count: u64,
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Counted<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The value is read once as a tree of counted parts: the fields `T` wants are taken
        // from a map we rebuild only for them (metadata.labels here), the rest is counted.
        let mut count = 0u64;
        let kept = CountingSeed { count: &mut count }.deserialize(d)?;
        let value = T::deserialize(kept).map_err(de::Error::custom)?;
        Ok(Self { value, count })
    }
}

/// Counts every value it visits and keeps the parts of the tree `Object` reads (up to
/// `metadata.labels` and its strings), as a `serde_json::Value` of those parts only.
struct CountingSeed<'a> {
    count: &'a mut u64,
}

/// Which parts of the pod are kept while counting: the path from the root to the labels.
#[derive(Clone, Copy)]
enum Keep {
    Root,
    Metadata,
    Labels,
    Nothing,
}

struct Visit<'a> {
    count: &'a mut u64,
    keep: Keep,
}

impl<'de> DeserializeSeed<'de> for CountingSeed<'_> {
    type Value = serde_json::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(Visit {
            count: self.count,
            keep: Keep::Root,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Visit<'_> {
    type Value = serde_json::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Visit<'_> {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        *self.count += 1;
        Ok(serde_json::Value::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        *self.count += 1;
        Ok(serde_json::Value::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        *self.count += 1;
        Ok(serde_json::Value::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        *self.count += 1;
        Ok(serde_json::Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        *self.count += 1;
        Ok(serde_json::Value::Null)
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        *self.count += 1;
        Ok(match self.keep {
            Keep::Labels => serde_json::Value::String(s.to_string()),
            _ => serde_json::Value::Null,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        *self.count += 1;
        while seq
            .next_element_seed(Visit {
                count: &mut *self.count,
                keep: Keep::Nothing,
            })?
            .is_some()
        {}
        Ok(serde_json::Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        *self.count += 1;
        let mut kept = serde_json::Map::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let keep = match (self.keep, key.as_ref()) {
                (Keep::Root, "metadata") => Keep::Metadata,
                (Keep::Metadata, "labels") => Keep::Labels,
                (Keep::Labels, _) => Keep::Labels,
                _ => Keep::Nothing,
            };
            let value = map.next_value_seed(Visit {
                count: &mut *self.count,
                keep,
            })?;
            if !matches!(keep, Keep::Nothing) {
                kept.insert(key.into_owned(), value);
            }
        }
        Ok(match self.keep {
            Keep::Nothing => serde_json::Value::Null,
            _ => serde_json::Value::Object(kept),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(operation: &str, labels: serde_json::Value, volumes: usize) -> Vec<u8> {
        let volumes: Vec<_> = (0..volumes)
            .map(|i| json!({"name": format!("v{i}")}))
            .collect();
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "operation": operation,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "agents",
                "object": {"metadata": {"name": "p", "labels": labels},
                           "spec": {"volumes": volumes, "containers": [{"name": "a", "image": "i"}]}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn an_opted_in_create_is_seen_with_its_size() {
        let g = glance(&review(
            "CREATE",
            json!({"cubbyhole.dev/inject": "true", "app": "x"}),
            3,
        ))
        .unwrap();
        assert_eq!(g.uid, "u-1");
        assert!(g.opted_in_create);
        // object, metadata, name, labels + 2 values, spec, volumes [3 x (object + name)],
        // containers [object, name, image].
        assert_eq!(g.pod_values, 1 + 1 + 1 + 3 + 1 + 1 + 6 + 1 + 3);
    }

    #[test]
    fn pods_not_opted_in_updates_and_other_values_of_the_label_are_not_ours() {
        for (op, labels) in [
            ("CREATE", json!({"app": "x"})),
            ("CREATE", json!({"cubbyhole.dev/inject": "false"})),
            ("UPDATE", json!({"cubbyhole.dev/inject": "true"})),
        ] {
            assert!(
                !glance(&review(op, labels.clone(), 0))
                    .unwrap()
                    .opted_in_create,
                "{op} {labels}"
            );
        }
    }

    #[test]
    fn a_pod_of_many_tiny_volumes_counts_every_value() {
        let g = glance(&review(
            "CREATE",
            json!({"cubbyhole.dev/inject": "true"}),
            30_000,
        ))
        .unwrap();
        assert!(g.pod_values > MAX_POD_VALUES);
    }

    #[test]
    fn garbage_and_reviews_without_a_request_are_errors() {
        assert!(glance(b"{not json").is_err());
        assert!(glance(br#"{"kind": "AdmissionReview"}"#).is_err());
    }
}
