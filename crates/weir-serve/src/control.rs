//! `weir.control.<deployment>`: the routings experiments publish (JSON
//! [`Routing`] records keyed by the experiment, on one compacted
//! partition) and serving follows, so every replica routes alike and a
//! change applies without a restart. Compaction keeps each experiment's
//! latest routing, so its versions go on where they were.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weir_bus::{Bus, Consumer, ConsumerOptions, OutRecord, StartFrom, TopicSpec};

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
        .send_and_wait(OutRecord::new(&topic, &bytes).key(routing.experiment.as_bytes()))
        .await
        .map_err(|e| bus_error(&topic, e))?;
    Ok(())
}

/// Which routings take effect: an allocator's weights (`allocated`) only
/// while their experiment is the one applied last and has not stopped, so
/// that weights published after a stop route nothing.
#[derive(Debug, Clone, Default)]
pub struct InForce {
    /// The experiment of the latest routing no allocator wrote, and
    /// whether it stopped.
    applied: Option<(String, bool)>,
}

impl InForce {
    /// Whether `routing`, the next one published, takes effect; notes it.
    pub fn admit(&mut self, routing: &Routing) -> bool {
        if routing.allocated {
            return self.applied.as_ref().is_some_and(|(experiment, stopped)| {
                *experiment == routing.experiment && !stopped
            });
        }
        self.applied = Some((routing.experiment.clone(), routing.stopped));
        true
    }
}

/// Every routing published for `deployment` that took effect (see
/// [`InForce`]), oldest first, and the offset after the last.
pub async fn history(bus: &Bus, deployment: &str) -> Result<(Vec<Routing>, i64), ServeError> {
    let topic = ensure_topic(bus, deployment).await?;
    let (records, next) = bus
        .read_log_records(&topic)
        .await
        .map_err(|e| bus_error(&topic, e))?;
    let mut routings = Vec::with_capacity(records.len());
    let mut in_force = InForce::default();
    for (offset, payload) in records {
        match Routing::from_bytes(&payload) {
            Ok(routing) if in_force.admit(&routing) => routings.push(routing),
            Ok(_) => {}
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

/// A reader of the deployment's control topic from offset `from` on (the
/// offset [`history`] returns reads what comes next), answering quickly.
pub fn reader(bus: &Bus, deployment: &str, from: i64) -> Result<Consumer, ServeError> {
    let topic = weir_core::topics::control(deployment);
    bus.consumer(
        &[&topic],
        ConsumerOptions {
            start: StartFrom::Offsets(vec![(topic.clone(), 0, from)]),
            read_only: true,
            settings: vec![("fetch.wait.max.ms".into(), "20".into())],
            ..Default::default()
        },
    )
    .map_err(|e| bus_error(&topic, e))
}

/// Applies the latest routing published for the deployment, if any, and
/// returns where to follow from, and what is in force there.
pub async fn apply_latest(
    bus: &Bus,
    deployment: &Deployment,
    registry: &Registry,
) -> Result<(i64, InForce), ServeError> {
    let (routings, next) = history(bus, deployment.name()).await?;
    let mut in_force = InForce::default();
    for routing in &routings {
        in_force.admit(routing);
    }
    if let Some(routing) = routings.into_iter().next_back().filter(|r| !r.stopped) {
        apply(deployment, registry, routing).await;
    }
    Ok((next, in_force))
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

/// Applies each routing published from offset `from` on (where
/// `in_force` holds), until `stopped`. Routings published together apply
/// as one: the latest that takes effect.
pub async fn follow(
    bus: Bus,
    deployment: Arc<Deployment>,
    registry: Arc<Registry>,
    (from, mut in_force): (i64, InForce),
    mut stopped: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let topic = weir_core::topics::control(deployment.name());
    let mut consumer = reader(&bus, deployment.name(), from)?;
    loop {
        let record = tokio::select! {
            record = consumer.next_raw() => record.map_err(|e| bus_error(&topic, e))?,
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        };
        let Some(record) = record else {
            return Ok(());
        };
        let mut records = vec![record];
        // Whatever else has arrived meanwhile.
        while let Ok(next) =
            tokio::time::timeout(Duration::from_millis(5), consumer.next_raw()).await
        {
            match next.map_err(|e| bus_error(&topic, e))? {
                Some(next) => records.push(next),
                None => break,
            }
        }
        let mut latest = None;
        for record in records {
            let Some(payload) = record.payload else {
                continue;
            };
            match Routing::from_bytes(&payload) {
                Ok(routing) if in_force.admit(&routing) => latest = Some(routing),
                Ok(routing) => tracing::debug!(
                    %topic,
                    experiment = %routing.experiment,
                    version = routing.version,
                    "an allocator's weights for an experiment not running: ignored"
                ),
                Err(error) => tracing::error!(
                    %topic,
                    offset = record.offset,
                    %error,
                    "a control record that is no routing: ignored"
                ),
            }
        }
        if let Some(routing) = latest {
            apply(&deployment, &registry, routing).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Candidate, Kind};

    fn routing(experiment: &str, stopped: bool, allocated: bool) -> Routing {
        Routing {
            experiment: experiment.into(),
            version: 1,
            kind: Kind::Bandit,
            candidates: vec![Candidate {
                model: "m@1".into(),
                weight: 1.0,
            }],
            default: "m@1".into(),
            mirror: None,
            sticky: None,
            stopped,
            allocated,
            at: 0,
        }
    }

    #[test]
    fn an_allocators_weights_take_effect_only_while_its_experiment_runs() {
        let mut in_force = InForce::default();
        assert!(
            !in_force.admit(&routing("a", false, true)),
            "nothing applied yet"
        );
        assert!(in_force.admit(&routing("a", false, false)));
        assert!(in_force.admit(&routing("a", false, true)));
        assert!(
            !in_force.admit(&routing("b", false, true)),
            "another experiment's"
        );
        assert!(in_force.admit(&routing("a", true, false)), "the stop");
        assert!(
            !in_force.admit(&routing("a", false, true)),
            "after the stop"
        );
        assert!(in_force.admit(&routing("b", false, false)));
        assert!(
            !in_force.admit(&routing("a", false, true)),
            "after b was applied"
        );
    }
}
