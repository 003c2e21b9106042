//! Recording a deployment spec (`weir deploy`, and `weir serve` with a
//! file): its model references are resolved and must name registered ONNX
//! models, and the spec becomes its deployment's next version on
//! `weir.meta` unless it is the latest already.

use weir_meta::state::State;
use weir_meta::{MetaError, Tracker};

use crate::{DeploymentSpec, ServeError};

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
