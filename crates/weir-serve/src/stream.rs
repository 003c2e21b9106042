//! Stream serving: requests from `weir.requests.<deployment>`, predictions
//! to `weir.predictions.<deployment>` keyed by request id.
//!
//! A request record is an OIP inference request in JSON (the HTTP body);
//! its key, else its `id`, else `topic-partition-offset`, is its request
//! id. The prediction is the OIP response in JSON. A request the
//! deployment cannot answer gets `{"id", "error"}` on the predictions topic
//! and goes, unchanged, to `weir.dlq.weir.requests.<deployment>` with the
//! reason; the stream goes on.
//!
//! Workers share the consumer group `weir-serve.<deployment>`, so replicas
//! (in this process or on other machines) split the partitions. A worker
//! takes what is waiting (up to 256 requests), answers them concurrently
//! (the batcher merges their rows), waits until the predictions are
//! stored, then commits: a crash answers a request again rather than never
//! (at least once; the request id lets a reader drop the repeat).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use weir_bus::{
    Bus, ConsumerOptions, DeadLetterReason, DecodeError, OutRecord, RawRecord, StartFrom, TopicSpec,
};

use crate::ServeError;
use crate::deployment::Deployment;
use crate::log::Channel;

/// The consumer group of a deployment's stream workers.
pub fn group(deployment: &str) -> String {
    format!("weir-serve.{deployment}")
}

/// Partitions of a deployment's request and prediction topics.
pub const PARTITIONS: i32 = 4;

/// Creates the request and prediction topics if needed.
pub async fn ensure_topics(bus: &Bus, deployment: &str) -> Result<(), ServeError> {
    for topic in [
        weir_core::topics::requests(deployment),
        weir_core::topics::predictions(deployment),
    ] {
        bus.admin()
            .ensure_topic(&TopicSpec::new(topic, PARTITIONS))
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?;
    }
    Ok(())
}

/// What the workers have done.
#[derive(Debug, Default)]
pub struct StreamCounts {
    /// Requests answered.
    pub answered: AtomicU64,
    /// Requests rejected (error record and dead letter).
    pub rejected: AtomicU64,
}

impl StreamCounts {
    /// `(answered, rejected)`.
    pub fn get(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }
}

const MAX_BATCH: usize = 256;

/// Runs one stream worker until `stop` turns true.
pub async fn worker(
    bus: Bus,
    deployment: Arc<Deployment>,
    counts: Arc<StreamCounts>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let name = deployment.name().to_string();
    let requests = weir_core::topics::requests(&name);
    let predictions = weir_core::topics::predictions(&name);
    let bus_error = |e: weir_bus::BusError| ServeError::Internal(e.to_string());
    let mut consumer = bus
        .consumer(
            &[&requests],
            ConsumerOptions {
                group: Some(group(&name)),
                start: StartFrom::Committed,
                ..Default::default()
            },
        )
        .map_err(bus_error)?;
    let producer = bus.producer().map_err(bus_error)?;
    loop {
        // Wait for the first request (or the stop), then take what is queued.
        let first = tokio::select! {
            record = consumer.next_raw() => record.map_err(bus_error)?,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout(Duration::from_millis(2), consumer.next_raw()).await {
                Ok(Ok(Some(record))) => batch.push(record),
                Ok(Err(error)) => return Err(bus_error(error)),
                Ok(Ok(None)) | Err(_) => break,
            }
        }
        let answers =
            futures::future::join_all(batch.iter().map(|record| answer(&deployment, record))).await;
        let mut deliveries = Vec::with_capacity(batch.len());
        for (record, (id, outcome)) in batch.iter().zip(answers) {
            let body = match outcome {
                Ok(body) => {
                    counts.answered.fetch_add(1, Ordering::Relaxed);
                    body
                }
                Err(error) => {
                    counts.rejected.fetch_add(1, Ordering::Relaxed);
                    consumer
                        .dead_letter(
                            record,
                            &DecodeError::new(DeadLetterReason::Rejected, error.to_string()),
                        )
                        .await
                        .map_err(bus_error)?;
                    serde_json::to_vec(&json!({"id": id, "error": error.to_string()}))
                        .expect("JSON serializes")
                }
            };
            deliveries.push(
                producer
                    .send(OutRecord::new(&predictions, &body).key(id.as_bytes()))
                    .await
                    .map_err(bus_error)?,
            );
        }
        for delivery in deliveries {
            delivery.await.map_err(bus_error)?;
        }
        consumer.commit().await.map_err(bus_error)?;
    }
    consumer.commit().await.map_err(bus_error)?;
    Ok(())
}

/// The request id and the prediction's body, or why there is none.
async fn answer(
    deployment: &Deployment,
    record: &RawRecord,
) -> (String, Result<Vec<u8>, ServeError>) {
    let fallback = format!("{}-{}-{}", record.topic, record.partition, record.offset);
    let key = record
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::to_string);
    let payload = record.payload.as_deref().unwrap_or_default();
    let mut decoded = match crate::oip::decode(payload, None) {
        Ok(decoded) => decoded,
        Err(error) => return (key.unwrap_or(fallback), Err(error)),
    };
    let id = key
        .or_else(|| decoded.request.id.clone())
        .unwrap_or(fallback);
    decoded.request.id = Some(id.clone());
    // A sticky experiment's header arrives as a record header.
    if let Some(name) = deployment.sticky_header() {
        decoded.request.route_key = record
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::to_string);
    }
    let outcome = deployment
        .infer(decoded.request, Channel::Stream)
        .await
        .map(|response| crate::oip::encode(deployment.name(), &response, &[], false).0);
    (id, outcome)
}
