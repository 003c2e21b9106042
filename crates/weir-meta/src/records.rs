//! What the catalog's records on `weir.meta` (feature view and dataset
//! versions, which other components write) say that lineage needs, kept
//! with the metadata state as the log is applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_catalog::{Record, Reference};

/// A feature view version, as far as lineage goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewRecord {
    /// Its source topics and tables' topics.
    pub topics: Vec<String>,
    /// The views it reads.
    pub parent_views: Vec<String>,
    /// Its output topic.
    pub output: String,
    /// When it was applied.
    pub applied_at: i64,
}

/// A dataset version, as far as lineage goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// The view versions it was made from.
    pub views: Vec<(String, u32)>,
    /// The datasets it was made from.
    pub datasets: Vec<(String, u32)>,
    /// When it was registered.
    pub created: i64,
}

/// What other components record on `weir.meta` that lineage needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Records {
    #[serde(with = "pairs")]
    pub(crate) views: BTreeMap<(String, u32), ViewRecord>,
    #[serde(with = "pairs")]
    pub(crate) datasets: BTreeMap<(String, u32), DatasetRecord>,
}

/// A map with tuple keys as a list of pairs (JSON keys are strings).
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

impl Records {
    /// Records a feature view or dataset version; other kinds are not
    /// lineage's, and a version recorded twice changes nothing.
    pub fn record(&mut self, payload: &[u8]) {
        match Record::decode(payload) {
            Some(Record::View(view)) => {
                self.views.insert(
                    (view.name.clone(), view.version),
                    ViewRecord {
                        topics: view.source_topics(),
                        parent_views: view.parent_views(),
                        output: view.topic.clone(),
                        applied_at: view.applied_at,
                    },
                );
            }
            Some(Record::Dataset(dataset)) => {
                self.datasets.insert(
                    (dataset.name.clone(), dataset.version),
                    DatasetRecord {
                        views: dataset
                            .lineage
                            .views
                            .iter()
                            .map(|v| (v.name.clone(), v.version))
                            .collect(),
                        datasets: dataset.lineage.parent_datasets(),
                        created: dataset.created,
                    },
                );
            }
            None => {}
        }
    }

    /// The version of view `name` current at `time`: the latest applied by
    /// then (or the first, if none was).
    pub(crate) fn view_at(&self, name: &str, time: i64) -> Option<u32> {
        let versions = self.views.iter().filter(|((n, _), _)| n == name);
        versions
            .clone()
            .filter(|(_, r)| r.applied_at <= time)
            .map(|((_, v), _)| *v)
            .max()
            .or_else(|| versions.map(|((_, v), _)| *v).min())
    }

    /// The dataset a run's input names: `name@version`, or the latest
    /// version of `name` registered by `time`.
    pub(crate) fn dataset_at(&self, name: &str, time: i64) -> Option<(String, u32)> {
        if let Some((name, version)) = name_at(name)
            && self.datasets.contains_key(&(name.clone(), version))
        {
            return Some((name, version));
        }
        self.datasets
            .iter()
            .filter(|((n, _), r)| n == name && r.created <= time)
            .map(|((n, v), _)| (n.clone(), *v))
            .max_by_key(|(_, v)| *v)
    }
}

/// `name@version`, with a number that fits a view's or dataset's.
pub(crate) fn name_at(text: &str) -> Option<(String, u32)> {
    let reference = text.parse::<Reference>().ok()?;
    let version = reference.number_as::<u32>().ok()??;
    Some((reference.name, version))
}
