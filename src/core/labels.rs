//! A pod's labels as the operator keeps them (one string, not a map: at 10,000 cached pods a
//! map per pod was a tenth of the operator's memory), and label selectors evaluated on them
//! with exactly kube's semantics.

use std::collections::BTreeMap;

use kube::core::{Expression, Selector};

/// Separates keys and values. Label keys and values never hold it: the API server admits
/// only `[A-Za-z0-9._/-]` in them.
const SEP: char = '\0';

/// An immutable label set: `key SEP value SEP key SEP value ...`, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<str>);

impl Labels {
    /// The labels of a map.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        let mut packed =
            String::with_capacity(map.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
        for (k, v) in map {
            packed.push_str(k);
            packed.push(SEP);
            packed.push_str(v);
            packed.push(SEP);
        }
        Self(packed.into_boxed_str())
    }

    /// The value of `key`, if the label is set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every `(key, value)`, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.split_terminator(SEP);
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when no label is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        Self::from_map(map)
    }
}

/// A label selector, evaluated on [`Labels`] the way kube's [`Selector`] is on a map.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelQuery(Vec<Expression>);

impl From<Selector> for LabelQuery {
    fn from(selector: Selector) -> Self {
        Self(selector.into_iter().collect())
    }
}

impl LabelQuery {
    /// True when every expression holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|expression| match expression {
            Expression::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Expression::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Expression::Exists(key) => labels.get(key).is_some(),
            Expression::DoesNotExist(key) => labels.get(key).is_none(),
            Expression::Equal(key, value) => labels.get(key) == Some(value.as_str()),
            Expression::NotEqual(key, value) => labels.get(key) != Some(value.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use kube::core::SelectorExt;

    #[test]
    fn labels_read_from_a_map_keep_every_pair() {
        let map = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let labels = Labels::from(&map);
        assert_eq!(labels.get("app"), Some("web"));
        assert_eq!(labels.len(), 1);
    }

    fn pick(rng: &mut Rng, from: &[&str]) -> String {
        rng.pick(from).expect("never empty").to_string()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_read_back_as_the_map_they_came_from() {
        for pairs in [
            &[][..],
            &[("app", "agent")][..],
            &[("app", ""), ("a.b/c", "x"), ("tier", "agents"), ("z", "")][..],
        ] {
            let m = map(pairs);
            let labels = Labels::from_map(&m);
            let back: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(back, m);
            assert_eq!(labels.len(), m.len());
            assert_eq!(labels.is_empty(), m.is_empty());
            for (k, v) in &m {
                assert_eq!(labels.get(k), Some(v.as_str()));
            }
            assert_eq!(labels.get("missing"), None);
            // A key is never found inside a value, nor a value taken for a key.
            assert_eq!(labels.get("agent"), None);
            assert_eq!(labels.get(""), None);
        }
    }

    /// Every expression kind, on random label sets: the query decides exactly as kube's
    /// `Selector` does on the map.
    #[test]
    fn a_query_decides_as_kubes_selector_on_random_labels() {
        let keys = ["app", "tier", "team.example.com/owner", "x"];
        let values = ["", "a", "b", "agent"];
        let mut rng = Rng::new(12);
        let mut matched = 0;
        for _ in 0..20_000 {
            let mut m = BTreeMap::new();
            for _ in 0..rng.below(4) {
                m.insert(pick(&mut rng, &keys), pick(&mut rng, &values));
            }
            let expressions: Vec<Expression> = (0..1 + rng.below(3))
                .map(|_| {
                    let key = pick(&mut rng, &keys);
                    let set = (0..1 + rng.below(2))
                        .map(|_| pick(&mut rng, &values))
                        .collect();
                    match rng.below(6) {
                        0 => Expression::In(key, set),
                        1 => Expression::NotIn(key, set),
                        2 => Expression::Exists(key),
                        3 => Expression::DoesNotExist(key),
                        4 => Expression::Equal(key, pick(&mut rng, &values)),
                        _ => Expression::NotEqual(key, pick(&mut rng, &values)),
                    }
                })
                .collect();
            let selector: Selector = expressions.into_iter().collect();
            let expected = selector.matches(&m);
            assert_eq!(
                LabelQuery::from(selector.clone()).matches(&Labels::from_map(&m)),
                expected,
                "{selector} on {m:?}"
            );
            matched += usize::from(expected);
        }
        // Both answers were exercised often.
        assert!((2_000..18_000).contains(&matched), "{matched}");
    }
}
