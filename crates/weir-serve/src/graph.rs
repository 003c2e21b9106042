//! The inference graph around the models: request columns and feature
//! look-ups in, declared pre-processing, the feature matrix the models
//! take; scores out, declared post-processing.
//!
//! Each model feature (a name from the model version's signature, in
//! order) comes from one place, decided once when the deployment starts:
//! - `column=category` of a `one_hot` column: 1 or 0;
//! - `view__feature` or `feature` of a looked-up view: the online store's
//!   value for the row's entity (the snapshot's full feature names, so a
//!   model trained on a snapshot is served from the same views);
//! - otherwise the request column of that name.
//!
//! Then `fill` replaces a missing value and `scale` standardises it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value as Json;
use weir_features::online::{OnlineStore, OnlineView, Status, key_text};

use crate::ServeError;
use crate::spec::{DeploymentSpec, Postprocess, Scale};

/// One request column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// Numbers (NaN where missing).
    Num(Vec<f64>),
    /// Text (`None` where missing).
    Text(Vec<Option<String>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Self::Num(v) => v.len(),
            Self::Text(v) => v.len(),
        }
    }
}

/// A request's rows, by column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    /// How many rows.
    pub rows: usize,
    /// The columns, in the order given.
    pub columns: Vec<(String, Column)>,
}

impl Frame {
    /// Adds a column; its length must be the frame's.
    pub fn push(&mut self, name: String, column: Column) -> Result<(), ServeError> {
        if self.columns.is_empty() {
            self.rows = column.len();
        } else if column.len() != self.rows {
            return Err(ServeError::Request(format!(
                "input `{name}` has {} rows, the others {}",
                column.len(),
                self.rows
            )));
        }
        self.columns.push((name, column));
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// A view looked up by entity.
#[derive(Debug, Clone)]
struct Lookup {
    view: OnlineView,
    /// The request columns holding the entity key.
    entity: Vec<String>,
    /// The view's features the models take.
    features: Vec<String>,
}

#[derive(Debug, Clone)]
enum Source {
    Request(String),
    Lookup { lookup: usize, index: usize },
    OneHot { column: String, category: String },
}

#[derive(Debug, Clone)]
struct Feature {
    name: String,
    source: Source,
    fill: Option<f64>,
    scale: Option<Scale>,
}

/// The input a request becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `rows × features`, row-major.
    pub matrix: Vec<f32>,
    /// How many rows.
    pub rows: usize,
    /// The values looked up, by `view__feature` (NaN where missing).
    pub looked_up: Vec<(String, Vec<f64>)>,
}

/// A deployment's graph.
pub struct Graph {
    features: Vec<Feature>,
    lookups: Vec<Lookup>,
    store: Option<Arc<OnlineStore>>,
    post: Postprocess,
    classes: Vec<String>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("features", &self.features.len())
            .field("lookups", &self.lookups.len())
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// Plans the graph for models taking `features` (in order) with
    /// `classes`, the views the spec looks up (`views`) read from `store`.
    pub fn new(
        spec: &DeploymentSpec,
        features: &[String],
        classes: &[String],
        views: &[OnlineView],
        store: Option<Arc<OnlineStore>>,
    ) -> Result<Self, ServeError> {
        let mut lookups = Vec::new();
        for lookup in &spec.features {
            let view = views
                .iter()
                .find(|v| v.name == lookup.view)
                .ok_or_else(|| {
                    ServeError::Spec(format!("features: no feature view `{}`", lookup.view))
                })?;
            if view.entity.len() != lookup.entity.len() {
                return Err(ServeError::Spec(format!(
                    "features: `{}` is keyed by {} column(s) ({}), the look-up names {}",
                    view.name,
                    view.entity.len(),
                    view.entity.join(", "),
                    lookup.entity.len()
                )));
            }
            lookups.push(Lookup {
                view: view.clone(),
                entity: lookup.entity.clone(),
                features: Vec::new(),
            });
        }
        if !lookups.is_empty() && store.is_none() {
            return Err(ServeError::Spec(
                "features: look-ups need the online store".into(),
            ));
        }
        let mut planned = Vec::with_capacity(features.len());
        for name in features {
            let source = source_of(spec, name, &mut lookups);
            planned.push(Feature {
                name: name.clone(),
                source,
                fill: spec.preprocess.fill.get(name).copied(),
                scale: spec.preprocess.scale.get(name).copied(),
            });
        }
        for column in spec
            .preprocess
            .fill
            .keys()
            .chain(spec.preprocess.scale.keys())
        {
            if !features.contains(column) {
                return Err(ServeError::Spec(format!(
                    "preprocess: `{column}` is not a feature of the model ({})",
                    features.join(", ")
                )));
            }
        }
        Ok(Self {
            features: planned,
            lookups,
            store,
            post: spec.postprocess.clone(),
            classes: classes.to_vec(),
        })
    }

    /// The request columns the graph reads: name and whether it is text.
    pub fn inputs(&self) -> Vec<(String, bool)> {
        let mut inputs: Vec<(String, bool)> = Vec::new();
        let mut add = |name: &str, text: bool| {
            if !inputs.iter().any(|(n, _)| n == name) {
                inputs.push((name.to_string(), text));
            }
        };
        for lookup in &self.lookups {
            for column in &lookup.entity {
                add(column, true);
            }
        }
        for feature in &self.features {
            match &feature.source {
                Source::Request(column) => add(column, false),
                Source::OneHot { column, .. } => add(column, true),
                Source::Lookup { .. } => {}
            }
        }
        inputs
    }

    /// How many features a row has.
    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// Whether requests go through it unchanged (no look-ups, no
    /// pre-processing): a feature matrix may then be sent as it is.
    pub fn is_plain(&self) -> bool {
        self.lookups.is_empty()
            && self.features.iter().all(|f| {
                matches!(f.source, Source::Request(_)) && f.fill.is_none() && f.scale.is_none()
            })
    }

    /// The matrix for `frame`'s rows, looking entities up as of `now` (ms).
    pub fn prepare(&self, frame: &Frame, now: i64) -> Result<Prepared, ServeError> {
        let rows = frame.rows;
        let looked_up = self.look_up(frame, now)?;
        let mut matrix = vec![0f32; rows * self.features.len()];
        let width = self.features.len();
        for (j, feature) in self.features.iter().enumerate() {
            let values: Vec<f64> = match &feature.source {
                Source::Request(column) => match frame.get(column) {
                    Some(Column::Num(values)) => values.clone(),
                    Some(Column::Text(_)) => {
                        return Err(ServeError::Request(format!(
                            "input `{column}` must be numbers (the model takes it as a feature)"
                        )));
                    }
                    None if feature.fill.is_some() => vec![f64::NAN; rows],
                    None => {
                        return Err(ServeError::Request(format!(
                            "input `{column}` is missing; the deployment takes {}",
                            self.inputs()
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                },
                Source::Lookup { lookup, index } => looked_up[*lookup][*index].1.clone(),
                Source::OneHot { column, category } => match frame.get(column) {
                    Some(Column::Text(values)) => values
                        .iter()
                        .map(|v| f64::from(u8::from(v.as_deref() == Some(category.as_str()))))
                        .collect(),
                    Some(Column::Num(_)) => {
                        return Err(ServeError::Request(format!(
                            "input `{column}` must be text (it is one-hot encoded)"
                        )));
                    }
                    None => vec![0.0; rows],
                },
            };
            for (i, mut value) in values.into_iter().enumerate() {
                if value.is_nan()
                    && let Some(fill) = feature.fill
                {
                    value = fill;
                }
                if let Some(scale) = feature.scale {
                    value = (value - scale.mean) / scale.std;
                }
                matrix[i * width + j] = value as f32;
            }
        }
        Ok(Prepared {
            matrix,
            rows,
            looked_up: looked_up.into_iter().flatten().collect(),
        })
    }

    /// Per look-up, per feature it serves: `(view__feature, values)`.
    #[allow(clippy::type_complexity)]
    fn look_up(&self, frame: &Frame, now: i64) -> Result<Vec<Vec<(String, Vec<f64>)>>, ServeError> {
        let mut out = Vec::with_capacity(self.lookups.len());
        for lookup in &self.lookups {
            let mut keys = vec![Vec::with_capacity(lookup.entity.len()); frame.rows];
            for column in &lookup.entity {
                let values = frame.get(column).ok_or_else(|| {
                    ServeError::Request(format!(
                        "input `{column}` is missing: it keys the look-up of `{}`",
                        lookup.view.name
                    ))
                })?;
                for (row, key) in keys.iter_mut().enumerate() {
                    key.push(match values {
                        Column::Text(v) => v[row].clone().unwrap_or_default(),
                        Column::Num(v) => key_text(&number(v[row])),
                    });
                }
            }
            let store = self.store.as_ref().expect("checked when planned");
            let found = store
                .get(&lookup.view, &keys, &lookup.features, now)
                .map_err(|e| ServeError::Internal(format!("online store: {e}")))?;
            let mut columns: Vec<(String, Vec<f64>)> = lookup
                .features
                .iter()
                .map(|f| {
                    (
                        format!("{}__{f}", lookup.view.name),
                        Vec::with_capacity(frame.rows),
                    )
                })
                .collect();
            for found in found {
                for (k, (_, values)) in columns.iter_mut().enumerate() {
                    let value = match found.status {
                        Status::Present => found.values[k].as_f64().unwrap_or(f64::NAN),
                        Status::NotFound | Status::OutsideMaxAge => f64::NAN,
                    };
                    values.push(value);
                }
            }
            out.push(columns);
        }
        Ok(out)
    }

    /// Whether scores become labels (a `threshold` or `labels` given).
    pub fn post_processes(&self) -> bool {
        self.post.threshold.is_some() || !self.post.labels.is_empty()
    }

    /// The label of each row of `scores` (`rows × width`), when the
    /// deployment post-processes: a threshold on the last class of a
    /// binary classifier, else the top class; named by `labels`, else by
    /// the model's classes.
    pub fn labels(&self, scores: &[f64], width: usize) -> Option<Vec<String>> {
        if !self.post_processes() {
            return None;
        }
        let name = |class: usize| {
            self.post
                .labels
                .get(class)
                .or_else(|| self.classes.get(class))
                .cloned()
                .unwrap_or_else(|| class.to_string())
        };
        Some(
            scores
                .chunks(width.max(1))
                .map(|row| {
                    let class = match self.post.threshold {
                        Some(t) if row.len() == 2 => usize::from(row[1] >= t),
                        Some(t) if row.len() == 1 => usize::from(row[0] >= t),
                        _ => top(row),
                    };
                    name(class)
                })
                .collect(),
        )
    }
}

fn top(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// An integral number as an integer (an entity key `7`, not `7.0`).
fn number(value: f64) -> Json {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        Json::from(value as i64)
    } else {
        Json::from(value)
    }
}

fn source_of(spec: &DeploymentSpec, name: &str, lookups: &mut [Lookup]) -> Source {
    if let Some((column, category)) = name.split_once('=')
        && spec
            .preprocess
            .one_hot
            .get(column)
            .is_some_and(|categories| categories.iter().any(|c| c == category))
    {
        return Source::OneHot {
            column: column.to_string(),
            category: category.to_string(),
        };
    }
    for (index, lookup) in lookups.iter_mut().enumerate() {
        let prefix = format!("{}__", lookup.view.name);
        let feature = name.strip_prefix(&prefix).unwrap_or(name);
        if lookup.view.features.iter().any(|f| f == feature) {
            let at = match lookup.features.iter().position(|f| f == feature) {
                Some(at) => at,
                None => {
                    lookup.features.push(feature.to_string());
                    lookup.features.len() - 1
                }
            };
            return Source::Lookup {
                lookup: index,
                index: at,
            };
        }
    }
    Source::Request(name.to_string())
}

/// Where each model feature comes from, for `describe`.
pub fn describe(graph: &Graph) -> BTreeMap<String, String> {
    graph
        .features
        .iter()
        .map(|f| {
            let from = match &f.source {
                Source::Request(c) => format!("request `{c}`"),
                Source::Lookup { lookup, index } => {
                    let l = &graph.lookups[*lookup];
                    format!(
                        "view `{}` feature `{}` by {}",
                        l.view.name,
                        l.features[*index],
                        l.entity.join(", ")
                    )
                }
                Source::OneHot { column, category } => format!("one-hot `{column}` = {category}"),
            };
            (f.name.clone(), from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> DeploymentSpec {
        DeploymentSpec::parse(&format!("name: d\nmodel: m\n{text}"), "t.yaml").unwrap()
    }

    #[test]
    fn columns_fill_scale_and_one_hot_make_the_matrix() {
        let spec = spec(
            "preprocess:\n  fill: {a: -1}\n  scale: {b: {mean: 10, std: 2}}\n  one_hot: {c: [x, y]}\n",
        );
        let features = ["a", "b", "c=x", "c=y"].map(String::from);
        let graph = Graph::new(&spec, &features, &[], &[], None).unwrap();
        assert!(!graph.is_plain());
        let mut frame = Frame::default();
        frame
            .push("a".into(), Column::Num(vec![1.0, f64::NAN]))
            .unwrap();
        frame
            .push("b".into(), Column::Num(vec![12.0, 8.0]))
            .unwrap();
        frame
            .push("c".into(), Column::Text(vec![Some("y".into()), None]))
            .unwrap();
        let prepared = graph.prepare(&frame, 0).unwrap();
        assert_eq!(prepared.matrix, [1.0, 1.0, 0.0, 1.0, -1.0, -1.0, 0.0, 0.0]);
        let mut missing = Frame::default();
        missing.push("a".into(), Column::Num(vec![1.0])).unwrap();
        let error = graph.prepare(&missing, 0).unwrap_err().to_string();
        assert!(error.contains("input `b` is missing"), "{error}");
    }

    #[test]
    fn labels_follow_the_threshold_and_names() {
        let graph = Graph::new(
            &spec("postprocess: {threshold: 0.3, labels: [stay, churn]}\n"),
            &["a".into()],
            &["0".into(), "1".into()],
            &[],
            None,
        )
        .unwrap();
        assert_eq!(
            graph.labels(&[0.8, 0.2, 0.6, 0.4], 2).unwrap(),
            ["stay", "churn"]
        );
    }
}
