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

use serde_json::Value as Json;
use weir_catalog::{At, Reference};

use crate::MetaError;
use crate::records::name_at;
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
                if let Ok(reference) = served.parse::<Reference>()
                    && let Some(version) = reference.number()
                {
                    edges.insert((
                        Node::Model(reference.name, version),
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
    // A model named by version or alias (a bare name is not a model's).
    let model = |text: &str| -> Option<Node> {
        let reference = text.parse::<Reference>().ok()?;
        let model = state.model(&reference.name).ok()?;
        let version = match &reference.at {
            At::Version(v) => model.versions.contains_key(v).then_some(*v)?,
            At::Alias(alias) => *model.aliases.get(alias)?,
            At::Latest => return None,
        };
        Some(Node::Model(reference.name, version))
    };
    let found = match text.split_once(':') {
        Some(("topic", name)) => Some(Node::Topic(name.to_string())),
        Some(("deployment", name)) => state
            .deployment(name)
            .ok()
            .map(|d| Node::Deployment(d.name.clone())),
        Some(("run", id)) => state.run(id).ok().map(|r| Node::Run(r.run_id.clone())),
        Some(("model", rest)) => model(rest),
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
            .or_else(|| model(text))
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

    /// Records a feature view version, as `weir features apply` writes it.
    fn view(state: &mut State, name: &str, version: u32, at: i64, sources: Json) {
        let header = serde_json::from_value(serde_json::json!({
            "name": name, "entity": ["user_id"], "sources": sources,
        }))
        .unwrap();
        let record = weir_catalog::Record::View(Box::new(weir_catalog::ViewVersion {
            kind: weir_catalog::view::KIND.into(),
            name: name.into(),
            version,
            hash: format!("{name}{version}"),
            topic: format!("weir.features.{name}.v{version}"),
            job: name.into(),
            path: format!("{name}.sql"),
            header,
            sql: "SELECT 1".into(),
            output: vec![],
            feature_time: None,
            applied_at: at,
        }));
        state.record_foreign(&record.encode());
    }

    /// Records a dataset version made from `views`, as `weir snapshot`
    /// writes it.
    fn dataset(state: &mut State, name: &str, version: u32, created: i64, views: Json) {
        let views: Vec<(String, u32)> = serde_json::from_value::<Vec<Json>>(views)
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["version"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        let record = weir_catalog::Record::Dataset(Box::new(weir_catalog::DatasetVersion {
            kind: weir_catalog::dataset::KIND.into(),
            name: name.into(),
            version,
            hash: format!("{name}{version}"),
            format: "parquet".into(),
            description: String::new(),
            owner: String::new(),
            tags: vec![],
            entity: vec![],
            schema: vec![],
            rows: None,
            files: vec![],
            lineage: weir_catalog::Lineage {
                views: views
                    .into_iter()
                    .map(|(name, version)| weir_catalog::ViewInput {
                        topic: format!("weir.features.{name}.v{version}"),
                        name,
                        version,
                        offsets: Default::default(),
                    })
                    .collect(),
                ..Default::default()
            },
            created,
        }));
        state.record_foreign(&record.encode());
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
