//! Recording a deployment spec (`weir deploy`, and `weir serve` with a
//! file): its model references are resolved and must name registered ONNX
//! models, and the spec becomes its deployment's next version on
//! `weir.meta` unless it is the latest already.

use std::path::Path;

use weir_meta::state::State;
use weir_meta::{MetaError, Tracker};

use crate::spec::Protocol;
use crate::{DeploymentSpec, ServeError};

/// What to serve, as `weir serve` is told: a spec file, the name of a
/// deployment recorded before, or a registered model alone; with fields
/// replaced.
#[derive(Debug, Clone, Default)]
pub struct Chosen<'a> {
    /// A spec file or a deployment's name.
    pub spec: Option<&'a Path>,
    /// A model reference served instead of the spec's (or alone).
    pub model: Option<&'a str>,
    /// The deployment's name with `model` alone (default: the model's).
    pub name: Option<&'a str>,
    /// Where HTTP listens; not recorded.
    pub listen: Option<&'a str>,
    /// Where gRPC listens; not recorded.
    pub grpc_listen: Option<&'a str>,
    /// How requests arrive, when not the spec's; not recorded.
    pub protocols: Vec<Protocol>,
}

impl Chosen<'_> {
    /// The spec to serve and the text to record for it.
    pub fn resolve(&self, state: &State) -> Result<(DeploymentSpec, String), ServeError> {
        let yaml = |spec: &DeploymentSpec| {
            serde_yaml::to_string(spec).map_err(|e| ServeError::Internal(e.to_string()))
        };
        let (mut spec, mut text) = match (self.spec, self.model) {
            (Some(path), _) if path.exists() => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ServeError::Spec(format!("reading {}: {e}", path.display())))?;
                (
                    DeploymentSpec::parse(&text, &path.display().to_string())?,
                    text,
                )
            }
            (Some(name), _) => latest(state, &name.display().to_string())?,
            (None, Some(model)) => {
                let name = match self.name {
                    Some(name) => name.to_string(),
                    None => {
                        model
                            .parse::<weir_catalog::Reference>()
                            .map_err(|e| ServeError::Spec(e.to_string()))?
                            .name
                    }
                };
                let spec = DeploymentSpec::single(&name, model);
                let text = yaml(&spec)?;
                (spec, text)
            }
            (None, None) => {
                return Err(ServeError::Spec(
                    "give a deployment spec, a deployment's name, or a model (name@alias)".into(),
                ));
            }
        };
        if let (Some(_), Some(model)) = (self.spec, self.model) {
            spec.model = Some(model.to_string());
            spec.models.clear();
            text = yaml(&spec)?;
        }
        if let Some(listen) = self.listen {
            spec.http.listen = listen.to_string();
        }
        if let Some(listen) = self.grpc_listen {
            spec.grpc.listen = listen.to_string();
        }
        if !self.protocols.is_empty() {
            spec.protocols = self.protocols.clone();
        }
        Ok((spec, text))
    }
}

/// The latest version of deployment `name`: its spec, and the text it was
/// recorded as.
pub fn latest(state: &State, name: &str) -> Result<(DeploymentSpec, String), ServeError> {
    let deployment = state.deployment(name).map_err(|_| {
        ServeError::NotFound(format!(
            "`{name}` is neither a spec file nor a deployment (weir deployments list)"
        ))
    })?;
    if deployment.deleted {
        return Err(ServeError::NotFound(format!(
            "deployment `{name}` was deleted: apply its spec again (weir deploy FILE)"
        )));
    }
    let text = deployment.latest().spec.clone();
    let spec = DeploymentSpec::parse(&text, &format!("deployment {name}"))?;
    Ok((spec, text))
}

/// What recording a spec did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The deployment's version now.
    pub version: u64,
    /// Whether that version is new (else the spec was the latest).
    pub new: bool,
    /// Each model reference and the version it names now
    /// (`churn-model@champion → churn-model@1`).
    pub resolved: Vec<String>,
}

/// Checks `spec` (its source text `text`) against the registry and
/// records it as its deployment's next version unless it is the latest.
pub async fn record(
    tracker: &Tracker,
    spec: &DeploymentSpec,
    text: &str,
) -> Result<Deployed, MetaError> {
    let references: Vec<String> = spec.members().into_iter().map(|m| m.model).collect();
    let resolved = tracker.read(|state| {
        references
            .iter()
            .map(|r| {
                let (model, version) = state.version_by_reference(r)?;
                if version.model.is_none() {
                    return Err(MetaError::invalid(format!(
                        "{}@{} has no ONNX model Weir made",
                        model.name, version.version
                    )));
                }
                Ok(format!("{r} → {}@{}", model.name, version.version))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let (version, new) = tracker
        .apply_deployment(&spec.name, text, references)
        .await?;
    Ok(Deployed {
        version,
        new,
        resolved,
    })
}
