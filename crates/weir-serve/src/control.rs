//! `weir.control.<deployment>`: the routings experiments publish (JSON
//! [`Routing`] records keyed by the deployment, on one compacted
//! partition) and serving follows, so every replica routes alike and a
//! change applies without a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weir_bus::{Bus, ConsumerOptions, OutRecord, StartFrom, TopicSpec};

use crate::registry::Registry;
use crate::routing::Routing;
use crate::{Deployment, ServeError};

fn bus_error(topic: &str, error: weir_bus::BusError) -> ServeError {
    ServeError::Internal(format!("{topic}: {error}"))
}

/// Creates the deployment's control topic if it does not exist.
pub async fn ensure_topic(bus: &Bus, deployment: &str) -> Result<String, ServeError> {
    let topic = weir_core::topics::control(deployment);
    bus.admin()
        .ensure_topic(&TopicSpec::new(&topic, 1).config("cleanup.policy", "compact"))
        .await
        .map_err(|e| bus_error(&topic, e))?;
    Ok(topic)
}

/// Publishes `routing` for `deployment`; serving applies it.
pub async fn publish(bus: &Bus, deployment: &str, routing: &Routing) -> Result<(), ServeError> {
    routing.check()?;
    let topic = ensure_topic(bus, deployment).await?;
    let bytes = routing.to_bytes();
    let producer = bus.producer().map_err(|e| bus_error(&topic, e))?;
    producer
        .send_and_wait(OutRecord::new(&topic, &bytes).key(deployment.as_bytes()))
        .await
        .map_err(|e| bus_error(&topic, e))?;
    Ok(())
}

/// Every routing published for `deployment`, oldest first, and the offset
/// after the last.
pub async fn history(bus: &Bus, deployment: &str) -> Result<(Vec<Routing>, i64), ServeError> {
    let topic = ensure_topic(bus, deployment).await?;
    let (records, next) = bus
        .read_log_records(&topic)
        .await
        .map_err(|e| bus_error(&topic, e))?;
    let mut routings = Vec::with_capacity(records.len());
    for (offset, payload) in records {
        match Routing::from_bytes(&payload) {
            Ok(routing) => routings.push(routing),
            Err(error) => tracing::warn!(
                %topic,
                offset,
                %error,
                "a control record that is no routing: skipped"
            ),
        }
    }
    Ok((routings, next))
}

/// Applies the latest routing published for the deployment, if any, and
/// returns where to follow from.
pub async fn apply_latest(
    bus: &Bus,
    deployment: &Deployment,
    registry: &Registry,
) -> Result<i64, ServeError> {
    let (routings, next) = history(bus, deployment.name()).await?;
    if let Some(routing) = routings.into_iter().next_back().filter(|r| !r.stopped) {
        apply(deployment, registry, routing).await;
    }
    Ok(next)
}

async fn apply(deployment: &Deployment, registry: &Registry, routing: Routing) {
    let (experiment, version) = (routing.experiment.clone(), routing.version);
    let stopped = routing.stopped;
    match deployment.route(routing, registry).await {
        Ok(()) if stopped => tracing::info!(
            deployment = deployment.name(),
            %experiment,
            "experiment stopped: serving the deployment's own model"
        ),
        Ok(()) => tracing::info!(
            deployment = deployment.name(),
            %experiment,
            version,
            "routing by the experiment"
        ),
        Err(error) => tracing::error!(
            deployment = deployment.name(),
            %experiment,
            version,
            %error,
            "the experiment's routing cannot serve; the routing before it goes on"
        ),
    }
}

/// Applies each routing published from offset `from` on, until `stopped`.
/// Routings published together apply as one: the latest.
pub async fn follow(
    bus: Bus,
    deployment: Arc<Deployment>,
    registry: Arc<Registry>,
    from: i64,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let topic = weir_core::topics::control(deployment.name());
    let mut consumer = bus
        .consumer(
            &[&topic],
            ConsumerOptions {
                start: StartFrom::Offsets(vec![(topic.clone(), 0, from)]),
                read_only: true,
                settings: vec![("fetch.wait.max.ms".into(), "20".into())],
                ..Default::default()
            },
        )
        .map_err(|e| bus_error(&topic, e))?;
    loop {
        let record = tokio::select! {
            record = consumer.next_raw() => record.map_err(|e| bus_error(&topic, e))?,
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        };
        let Some(mut record) = record else {
            return Ok(());
        };
        // Whatever else has arrived meanwhile: only the latest applies.
        while let Ok(next) =
            tokio::time::timeout(Duration::from_millis(5), consumer.next_raw()).await
        {
            match next.map_err(|e| bus_error(&topic, e))? {
                Some(next) => record = next,
                None => break,
            }
        }
        let Some(payload) = record.payload else {
            continue;
        };
        match Routing::from_bytes(&payload) {
            Ok(routing) => apply(&deployment, &registry, routing).await,
            Err(error) => tracing::error!(
                %topic,
                offset = record.offset,
                %error,
                "a control record that is no routing: ignored"
            ),
        }
    }
}
