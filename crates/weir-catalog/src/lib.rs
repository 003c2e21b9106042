//! The catalog: the records on `weir.meta` that more than one component
//! writes or reads, defined once, and the references that name them.
//!
//! - [`ViewVersion`] (kind `feature_view_version`): a feature view as it
//!   was applied — header, query, output columns, topic. Written by
//!   `weir-sql`; read by the feature repository, the metadata crate's
//!   lineage, serving and `weir`.
//! - [`DatasetVersion`] (kind `dataset_version`): a dataset version with
//!   its files, schema and lineage. Written by `weir-features`; read by
//!   training, lineage and `weir`.
//! - [`Signature`]: what an ONNX model takes and gives. Read from the file
//!   by `weir-onnx`, stored with each model version by `weir-meta`, checked
//!   by serving; plain data here, so that storing it pulls in no ONNX
//!   Runtime.
//! - [`Reference`]: `name`, `name@version` or `name@alias`, the one way a
//!   user names a model, dataset or view version, parsed and printed here.
//!
//! These records are JSON on the topic, next to `weir-meta`'s own Avro
//! events (experiments, runs, models, deployments), which only that crate
//! writes and reads and which stay there. [`Record::decode`] tells one
//! payload of the log from another.

pub mod dataset;
pub mod reference;
pub mod signature;
pub mod view;

pub use dataset::{DatasetVersion, FileEntry, Lineage, ViewInput};
pub use reference::{At, Reference, ReferenceError};
pub use signature::{Opset, Signature, TensorSpec};
pub use view::{ColumnDef, Header, ViewVersion};

/// A catalog record read from `weir.meta`.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A feature view version.
    View(Box<ViewVersion>),
    /// A dataset version.
    Dataset(Box<DatasetVersion>),
}

impl Record {
    /// The record in one payload of `weir.meta`, if it is one of the
    /// catalog's; other kinds (and other components' events) give `None`.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Kind {
            kind: String,
        }
        let kind = serde_json::from_slice::<Kind>(payload).ok()?.kind;
        match kind.as_str() {
            view::KIND => serde_json::from_slice(payload)
                .ok()
                .map(|v| Self::View(Box::new(v))),
            dataset::KIND => serde_json::from_slice(payload)
                .ok()
                .map(|d| Self::Dataset(Box::new(d))),
            _ => None,
        }
    }

    /// The payload it is written as.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::View(view) => serde_json::to_vec(view),
            Self::Dataset(dataset) => serde_json::to_vec(dataset),
        }
        .expect("catalog records are plain data")
    }

    /// The key it is written under: one per version.
    pub fn key(&self) -> String {
        match self {
            Self::View(view) => format!("feature_view/{}/v{}", view.name, view.version),
            Self::Dataset(dataset) => format!("dataset/{}/v{}", dataset.name, dataset.version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_told_apart_by_kind() {
        let dataset = DatasetVersion {
            kind: dataset::KIND.into(),
            name: "churn".into(),
            version: 2,
            hash: "h".into(),
            format: "csv".into(),
            description: String::new(),
            owner: String::new(),
            tags: vec![],
            entity: vec!["customer_id".into()],
            schema: vec![],
            rows: Some(3),
            files: vec![],
            lineage: Lineage {
                datasets: vec!["raw@4".into(), "unversioned".into()],
                ..Default::default()
            },
            created: 1,
        };
        let record = Record::Dataset(Box::new(dataset.clone()));
        assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
        assert_eq!(record.key(), "dataset/churn/v2");
        assert_eq!(dataset.reference().to_string(), "churn@2");
        assert_eq!(dataset.lineage.parent_datasets(), vec![("raw".into(), 4)]);
        // Another kind, another component's Avro, and noise are not the catalog's.
        assert_eq!(Record::decode(br#"{"kind": "run_created"}"#), None);
        assert_eq!(Record::decode(&[0xc3, 0x01, 7, 7]), None);
    }

    #[test]
    fn a_view_without_a_window_is_timed_by_its_event_time() {
        let header: Header = serde_json::from_value(serde_json::json!({
            "name": "driver_stats", "entity": ["driver"], "created_timestamp": "created",
            "sources": {"s": {"topic": "driver_stats", "event_time": "event_ts"}}
        }))
        .unwrap();
        let column = |name: &str| ColumnDef {
            name: name.into(),
            data_type: "Int64".into(),
            nullable: true,
        };
        let mut view = ViewVersion {
            kind: view::KIND.into(),
            name: "driver_stats".into(),
            version: 1,
            hash: "h".into(),
            topic: "weir.features.driver_stats.v1".into(),
            job: "j".into(),
            path: "p".into(),
            header,
            sql: "SELECT driver, rate, event_ts, created FROM s".into(),
            output: ["driver", "rate", "event_ts", "created"]
                .map(column)
                .to_vec(),
            feature_time: Some("event_ts".into()),
            applied_at: 0,
        };
        assert_eq!(view.feature_time(), "event_ts");
        assert_eq!(view.features(), vec!["rate"]);
        assert_eq!(view.source_topics(), vec!["driver_stats"]);
        // Recorded before `feature_time` was: a windowed view.
        view.feature_time = None;
        let encoded = Record::View(Box::new(view.clone())).encode();
        assert!(!String::from_utf8_lossy(&encoded).contains("feature_time"));
        assert_eq!(view.feature_time(), view::WINDOW_END);
    }
}
