//! Lineage: what came from what, across the platform.
//!
//! ```text
//! topic ──▶ feature view version ──▶ dataset version (snapshot) ──▶ run ──▶ model version
//! ```
//!
//! The edges come from `weir.meta` alone: a feature view version names its
//! source topics, tables and parent views (`feature_view_version` events,
//! written by `weir features apply`); a dataset version names the view
//! versions and datasets it was made from (`dataset_version` events); a run
//! names the datasets it read (MLflow's `log_input`, by dataset name,
//! `name@version` or the latest version when it started); a model version
//! names its run. [`Graph::around`] walks up and down from one node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::MetaError;
use crate::state::State;

/// A thing in the lineage graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// A Kafka topic.
    Topic(String),
    /// A feature view version.
    View(String, u32),
    /// A dataset version.
    Dataset(String, u32),
    /// A run, by id.
    Run(String),
    /// A registered model version.
    Model(String, u64),
    /// A deployment.
    Deployment(String),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Topic(name) => write!(f, "topic {name}"),
            Node::View(name, v) => write!(f, "view {name}@{v}"),
            Node::Dataset(name, v) => write!(f, "dataset {name}@{v}"),
            Node::Run(id) => write!(f, "run {id}"),
            Node::Model(name, v) => write!(f, "model {name}@{v}"),
            Node::Deployment(name) => write!(f, "deployment {name}"),
        }
    }
}

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
    views: BTreeMap<(String, u32), ViewRecord>,
    #[serde(with = "pairs")]
    datasets: BTreeMap<(String, u32), DatasetRecord>,
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

#[derive(Deserialize)]
struct ViewEvent {
    name: String,
    version: u32,
    topic: String,
    applied_at: i64,
    header: ViewHeader,
}

#[derive(Deserialize)]
struct ViewHeader {
    #[serde(default)]
    sources: BTreeMap<String, ViewSource>,
    #[serde(default)]
    tables: BTreeMap<String, ViewTable>,
}

#[derive(Deserialize)]
struct ViewSource {
    topic: Option<String>,
    view: Option<String>,
}

#[derive(Deserialize)]
struct ViewTable {
    topic: String,
}

#[derive(Deserialize)]
struct DatasetEvent {
    name: String,
    version: u32,
    created: i64,
    #[serde(default)]
    lineage: DatasetLineage,
}

#[derive(Deserialize, Default)]
struct DatasetLineage {
    #[serde(default)]
    views: Vec<DatasetView>,
    #[serde(default)]
    datasets: Vec<String>,
}

#[derive(Deserialize)]
struct DatasetView {
    name: String,
    version: u32,
}

/// `name@version`.
fn name_at(text: &str) -> Option<(String, u32)> {
    let (name, version) = text.rsplit_once('@')?;
    Some((name.to_string(), version.parse().ok()?))
}

impl Records {
    /// Records a feature view or dataset version event; other kinds are
    /// not lineage's, and an event recorded twice changes nothing.
    pub fn record(&mut self, payload: &[u8]) {
        let Ok(json) = serde_json::from_slice::<Json>(payload) else {
            return;
        };
        match json.get("kind").and_then(Json::as_str) {
            Some("feature_view_version") => {
                if let Ok(view) = serde_json::from_value::<ViewEvent>(json) {
                    let header = view.header;
                    let mut topics: Vec<String> = header
                        .sources
                        .values()
                        .filter_map(|s| s.topic.clone())
                        .collect();
                    topics.extend(header.tables.into_values().map(|t| t.topic));
                    let parent_views = header
                        .sources
                        .into_values()
                        .filter_map(|s| s.view)
                        .collect();
                    self.views.insert(
                        (view.name, view.version),
                        ViewRecord {
                            topics,
                            parent_views,
                            output: view.topic,
                            applied_at: view.applied_at,
                        },
                    );
                }
            }
            Some("dataset_version") => {
                if let Ok(dataset) = serde_json::from_value::<DatasetEvent>(json) {
                    self.datasets.insert(
                        (dataset.name, dataset.version),
                        DatasetRecord {
                            views: dataset
                                .lineage
                                .views
                                .into_iter()
                                .map(|v| (v.name, v.version))
                                .collect(),
                            datasets: dataset
                                .lineage
                                .datasets
                                .iter()
                                .filter_map(|d| name_at(d))
                                .collect(),
                            created: dataset.created,
                        },
                    );
                }
            }
            _ => {}
        }
    }

    /// The version of view `name` current at `time`: the latest applied by
    /// then (or the first, if none was).
    fn view_at(&self, name: &str, time: i64) -> Option<u32> {
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
    fn dataset_at(&self, name: &str, time: i64) -> Option<(String, u32)> {
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

/// An edge: `.1` was made from `.0`.
pub type Edge = (Node, Node);

/// Edges, upstream to downstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// `(from, to)`: `to` was made from `from`.
    pub edges: BTreeSet<(Node, Node)>,
}

impl Graph {
    /// Every edge the metadata knows.
    pub fn of(state: &State) -> Self {
        let records = state.records();
        let mut edges = BTreeSet::new();
        for ((name, version), view) in &records.views {
            let node = Node::View(name.clone(), *version);
            for topic in &view.topics {
                edges.insert((Node::Topic(topic.clone()), node.clone()));
            }
            for parent in &view.parent_views {
                if let Some(v) = records.view_at(parent, view.applied_at) {
                    edges.insert((Node::View(parent.clone(), v), node.clone()));
                }
            }
            edges.insert((node, Node::Topic(view.output.clone())));
        }
        for ((name, version), dataset) in &records.datasets {
            let node = Node::Dataset(name.clone(), *version);
            for (view, v) in &dataset.views {
                edges.insert((Node::View(view.clone(), *v), node.clone()));
            }
            for (parent, v) in &dataset.datasets {
                edges.insert((Node::Dataset(parent.clone(), *v), node.clone()));
            }
        }
        for experiment in state.experiments() {
            for run in state.runs_of(&experiment.experiment_id) {
                for input in &run.inputs {
                    let Some(name) = input.pointer("/dataset/name").and_then(Json::as_str) else {
                        continue;
                    };
                    if let Some((dataset, v)) = records.dataset_at(name, run.start_time) {
                        edges.insert((Node::Dataset(dataset, v), Node::Run(run.run_id.clone())));
                    }
                }
            }
        }
        for model in state.models() {
            for version in model.versions.values() {
                if !version.run_id.is_empty() {
                    edges.insert((
                        Node::Run(version.run_id.clone()),
                        Node::Model(model.name.clone(), version.version),
                    ));
                }
            }
        }
        for deployment in state.deployments() {
            for served in deployment.served.keys() {
                if let Some((name, Ok(version))) =
                    served.rsplit_once('@').map(|(n, v)| (n, v.parse::<u64>()))
                {
                    edges.insert((
                        Node::Model(name.to_string(), version),
                        Node::Deployment(deployment.name.clone()),
                    ));
                }
            }
        }
        Self { edges }
    }

    /// The edges above `node` (what it was made from, transitively) and
    /// below it (what was made from it).
    pub fn around(&self, node: &Node) -> (Vec<Edge>, Vec<Edge>) {
        let walk = |upstream: bool| {
            let mut seen = BTreeSet::from([node.clone()]);
            let mut queue = VecDeque::from([node.clone()]);
            let mut found = Vec::new();
            while let Some(at) = queue.pop_front() {
                for (from, to) in &self.edges {
                    let (near, far) = if upstream { (to, from) } else { (from, to) };
                    if *near == at {
                        found.push((from.clone(), to.clone()));
                        if seen.insert(far.clone()) {
                            queue.push_back(far.clone());
                        }
                    }
                }
            }
            found
        };
        (walk(true), walk(false))
    }
}

/// Finds the node a user names: `topic:NAME`, `view:NAME@V`,
/// `dataset:NAME@V`, `run:ID`, `model:NAME@V`, `model:NAME@ALIAS` or
/// `deployment:NAME`; or,
/// without a prefix, a run id, `model@version`, `model@alias`,
/// `dataset@version` or `view@version`, tried in that order.
pub fn find(state: &State, text: &str) -> Result<Node, MetaError> {
    let records = state.records();
    let model = |name: &str, which: &str| -> Option<Node> {
        let model = state.model(name).ok()?;
        let version = match which.parse::<u64>() {
            Ok(v) => model.versions.contains_key(&v).then_some(v)?,
            Err(_) => *model.aliases.get(which)?,
        };
        Some(Node::Model(name.to_string(), version))
    };
    let found = match text.split_once(':') {
        Some(("topic", name)) => Some(Node::Topic(name.to_string())),
        Some(("deployment", name)) => state
            .deployment(name)
            .ok()
            .map(|d| Node::Deployment(d.name.clone())),
        Some(("run", id)) => state.run(id).ok().map(|r| Node::Run(r.run_id.clone())),
        Some(("model", rest)) => rest.rsplit_once('@').and_then(|(n, w)| model(n, w)),
        Some(("view", rest)) => name_at(rest)
            .filter(|k| records.views.contains_key(k))
            .map(|(n, v)| Node::View(n, v)),
        Some(("dataset", rest)) => name_at(rest)
            .filter(|k| records.datasets.contains_key(k))
            .map(|(n, v)| Node::Dataset(n, v)),
        _ => state
            .run(text)
            .ok()
            .map(|r| Node::Run(r.run_id.clone()))
            .or_else(|| text.rsplit_once('@').and_then(|(n, w)| model(n, w)))
            .or_else(|| {
                name_at(text)
                    .filter(|k| records.datasets.contains_key(k))
                    .map(|(n, v)| Node::Dataset(n, v))
            })
            .or_else(|| {
                name_at(text)
                    .filter(|k| records.views.contains_key(k))
                    .map(|(n, v)| Node::View(n, v))
            }),
    };
    found.ok_or_else(|| {
        MetaError::missing(format!(
            "nothing named `{text}` in the metadata: name a run id, model@version, model@alias, dataset@version or view@version (or prefix it: topic:, view:, dataset:, run:, model:, deployment:)"
        ))
    })
}

/// The edges as a Mermaid flowchart.
pub fn mermaid(edges: &[Edge]) -> String {
    let ids = ids(edges);
    let mut out = String::from("flowchart LR\n");
    for (node, id) in &ids {
        out.push_str(&format!("  {id}[\"{node}\"]\n"));
    }
    for (from, to) in edges {
        out.push_str(&format!("  {} --> {}\n", ids[from], ids[to]));
    }
    out
}

/// The edges as a Graphviz digraph.
pub fn dot(edges: &[Edge]) -> String {
    let ids = ids(edges);
    let mut out = String::from("digraph lineage {\n  rankdir=LR;\n");
    for (node, id) in &ids {
        out.push_str(&format!("  {id} [label=\"{node}\"];\n"));
    }
    for (from, to) in edges {
        out.push_str(&format!("  {} -> {};\n", ids[from], ids[to]));
    }
    out.push_str("}\n");
    out
}

fn ids(edges: &[Edge]) -> BTreeMap<Node, String> {
    let nodes: BTreeSet<&Node> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), format!("n{i}")))
        .collect()
}

/// The edges around `node` as text: what it was made from, what was made
/// from it, one edge a line.
pub fn text(node: &Node, upstream: &[Edge], downstream: &[Edge]) -> String {
    let mut out = format!("{node}\n");
    for (title, edges) in [("made from", upstream), ("used by", downstream)] {
        out.push_str(&format!("  {title}:\n"));
        if edges.is_empty() {
            out.push_str("    (nothing)\n");
        }
        for (from, to) in edges {
            out.push_str(&format!("    {from} -> {to}\n"));
        }
    }
    out
}

/// The edges around `node` as JSON: `{"node", "upstream", "downstream"}`,
/// each edge `{"from", "to"}`.
pub fn json(node: &Node, upstream: &[Edge], downstream: &[Edge]) -> Json {
    let edges = |edges: &[Edge]| -> Vec<Json> {
        edges
            .iter()
            .map(|(from, to)| serde_json::json!({"from": from.to_string(), "to": to.to_string()}))
            .collect()
    };
    serde_json::json!({"node": node.to_string(), "upstream": edges(upstream), "downstream": edges(downstream)})
}

/// Renders the lineage of `node` as `format`: `text`, `json`, `mermaid` or
/// `dot`.
pub fn render(state: &State, node: &Node, format: &str) -> Result<String, MetaError> {
    let (up, down) = Graph::of(state).around(node);
    let all: Vec<Edge> = up.iter().chain(&down).cloned().collect();
    match format {
        "text" => Ok(text(node, &up, &down)),
        "json" => Ok(json(node, &up, &down).to_string()),
        "mermaid" => Ok(mermaid(&all)),
        "dot" => Ok(dot(&all)),
        other => Err(MetaError::invalid(format!(
            "unknown lineage format `{other}`: text, json, mermaid or dot"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn view(state: &mut State, name: &str, version: u32, at: i64, sources: Json) {
        let event = serde_json::json!({
            "kind": "feature_view_version", "name": name, "version": version, "applied_at": at,
            "topic": format!("weir.features.{name}.v{version}"),
            "header": {"name": name, "sources": sources},
        });
        state.record_foreign(event.to_string().as_bytes());
    }

    fn dataset(state: &mut State, name: &str, version: u32, created: i64, views: Json) {
        let event = serde_json::json!({
            "kind": "dataset_version", "name": name, "version": version, "created": created,
            "lineage": {"views": views},
        });
        state.record_foreign(event.to_string().as_bytes());
    }

    fn run(state: &mut State, id: &str, start: i64, input: &str) {
        state
            .apply(&Event::RunCreated {
                at: start,
                run_id: id.into(),
                experiment_id: "0".into(),
                run_name: id.into(),
                user_id: String::new(),
                start_time: start,
                artifact_uri: String::new(),
                tags: vec![],
            })
            .unwrap();
        state
            .apply(&Event::RunInputs {
                at: start,
                run_id: id.into(),
                datasets: vec![serde_json::json!({"dataset": {"name": input}})],
            })
            .unwrap();
    }

    #[test]
    fn edges_follow_the_versions_current_at_the_time() {
        let mut state = State::default();
        view(
            &mut state,
            "spend",
            1,
            100,
            serde_json::json!({"t": {"topic": "transactions"}}),
        );
        view(
            &mut state,
            "spend",
            2,
            300,
            serde_json::json!({"t": {"topic": "transactions"}}),
        );
        // A view over a view: it reads the version current when it was applied.
        view(
            &mut state,
            "trend",
            1,
            200,
            serde_json::json!({"s": {"view": "spend"}}),
        );
        dataset(
            &mut state,
            "train",
            1,
            250,
            serde_json::json!([{"name": "trend", "version": 1}]),
        );
        dataset(
            &mut state,
            "train",
            2,
            400,
            serde_json::json!([{"name": "spend", "version": 2}]),
        );
        // By name: the latest version when the run started; or pinned.
        run(&mut state, "early", 260, "train");
        run(&mut state, "late", 500, "train");
        run(&mut state, "pinned", 500, "train@1");

        let graph = Graph::of(&state);
        let up = |node: Node| -> Vec<String> {
            graph
                .around(&node)
                .0
                .iter()
                .map(|(f, t)| format!("{f} -> {t}"))
                .collect()
        };
        assert_eq!(
            up(Node::Run("early".into())),
            [
                "dataset train@1 -> run early",
                "view trend@1 -> dataset train@1",
                "view spend@1 -> view trend@1",
                "topic transactions -> view spend@1",
            ]
        );
        assert_eq!(
            up(Node::Run("late".into()))[0],
            "dataset train@2 -> run late"
        );
        assert_eq!(
            up(Node::Run("pinned".into()))[0],
            "dataset train@1 -> run pinned"
        );
        let (_, down) = graph.around(&Node::Topic("transactions".into()));
        assert!(down.contains(&(Node::Dataset("train".into(), 2), Node::Run("late".into()))));
        assert!(down.contains(&(
            Node::View("spend".into(), 2),
            Node::Topic("weir.features.spend.v2".into())
        )));

        assert_eq!(
            find(&state, "train@2").unwrap(),
            Node::Dataset("train".into(), 2)
        );
        assert_eq!(
            find(&state, "view:spend@1").unwrap(),
            Node::View("spend".into(), 1)
        );
        assert_eq!(find(&state, "early").unwrap(), Node::Run("early".into()));
        let error = find(&state, "nothing@9").unwrap_err();
        assert!(
            error.message.contains("nothing named `nothing@9`"),
            "{}",
            error.message
        );
    }
}
