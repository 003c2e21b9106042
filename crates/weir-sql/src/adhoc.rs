//! Ad-hoc queries over the bus (`weir sql`): each table a query names is
//! resolved — a feature view (its latest version's results), a topic, or a
//! file DataFusion reads itself — and the query runs as a batch.
//!
//! A topic is decoded with, in order: a schema the caller declares, the
//! schema of the view that writes it, the schema registered under
//! `<topic>-value`, or, for a topic of JSON records with none of these, a
//! schema inferred from a sample of its records (the first 1,000, as
//! DataFusion infers NDJSON files' schemas), which the result says.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use weir_bus::Bus;

use crate::SqlError;
use crate::batch::{context, read_topic};
use crate::registry::{Registry, output_schema};

/// Records a schema is inferred from.
pub const INFERENCE_SAMPLE: usize = 1_000;

/// A query's result.
#[derive(Debug)]
pub struct QueryResult {
    /// The result's schema.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
    /// What the caller should know about how tables were read (a schema
    /// inferred, say), one line each.
    pub notes: Vec<String>,
}

/// Runs `sql` over the bus's views and topics and the files it names;
/// `declared` gives topics' schemas that override all others.
pub async fn query(
    bus: &Bus,
    sql: &str,
    declared: &HashMap<String, SchemaRef>,
) -> Result<QueryResult, SqlError> {
    let plain = |e: datafusion::error::DataFusionError| SqlError::Execution(e.strip_backtrace());
    let context = context().enable_url_table();
    let state = context.state();
    let statement = state
        .sql_to_statement(sql, &datafusion::config::Dialect::Generic)
        .map_err(plain)?;
    let references = state.resolve_table_references(&statement).map_err(plain)?;
    let registry = Registry::load(bus).await?;
    let topics: Vec<String> = bus
        .admin()
        .list_topics()
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut notes = Vec::new();
    for reference in references {
        let name = reference.table().to_string();
        if Path::new(&name).exists() {
            continue; // a file: DataFusion reads it
        }
        let (topic, schema) = if let Some(view) = registry.latest(&name) {
            (view.topic.clone(), output_schema(view)?)
        } else if topics.contains(&name) {
            (
                name.clone(),
                topic_schema(bus, &registry, &name, declared, &mut notes).await?,
            )
        } else {
            return Err(SqlError::Execution(format!(
                "`{name}` is no topic, feature view or file"
            )));
        };
        let rows = read_topic(bus, &topic, schema.clone()).await?;
        let mut batches = rows.batches;
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema.clone()));
        }
        context.register_table(
            reference,
            Arc::new(MemTable::try_new(schema, vec![batches])?),
        )?;
    }
    let frame = context.sql(sql).await.map_err(plain)?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(plain)?;
    Ok(QueryResult {
        schema,
        batches,
        notes,
    })
}

/// The schema `topic` is read with (see the module docs).
async fn topic_schema(
    bus: &Bus,
    registry: &Registry,
    topic: &str,
    declared: &HashMap<String, SchemaRef>,
    notes: &mut Vec<String>,
) -> Result<SchemaRef, SqlError> {
    if let Some(schema) = declared.get(topic) {
        return Ok(schema.clone());
    }
    let written_by = registry
        .names()
        .filter_map(|n| registry.versions(n).iter().find(|v| v.topic == topic))
        .next();
    if let Some(view) = written_by {
        return output_schema(view);
    }
    let subject = weir_core::topics::value_subject(topic);
    if bus.registry().latest(&subject).is_some() {
        return Ok(weir_dataflow::job::topic_schema(bus, topic, None)?);
    }
    let payloads = sample(bus, topic, INFERENCE_SAMPLE).await?;
    let inferred = infer_json(&payloads).map_err(|reason| {
        SqlError::Execution(format!(
            "topic `{topic}` has no schema registered under `{subject}`, and none can be \
             inferred from its records: {reason} (register one: weir schemas register)"
        ))
    })?;
    notes.push(format!(
        "`{topic}`: schema inferred from its first {} record(s) ({}); register one to fix it",
        payloads.len(),
        inferred
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(inferred)
}

/// The schema of JSON objects, as arrow-json infers it.
fn infer_json(payloads: &[Vec<u8>]) -> Result<SchemaRef, String> {
    if payloads.is_empty() {
        return Err("it has no records".into());
    }
    let values = payloads.iter().enumerate().map(|(i, payload)| {
        serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| {
                arrow::error::ArrowError::JsonError(format!("record {i} is not a JSON object"))
            })
    });
    arrow::json::reader::infer_json_schema_from_iterator(values)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// The values of up to `limit` records from the start of `topic`.
async fn sample(bus: &Bus, topic: &str, limit: usize) -> Result<Vec<Vec<u8>>, SqlError> {
    let partitions = bus.admin().partitions(topic).await?;
    let config = bus.config().clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let fail =
            |e: rdkafka::error::KafkaError| SqlError::Execution(format!("reading `{topic}`: {e}"));
        let consumer: BaseConsumer = weir_bus::consumer_config(&config, "weir-sql-sample")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(fail)?;
        let mut assignment = TopicPartitionList::new();
        let mut left = 0;
        for partition in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .map_err(fail)?;
            if high > low {
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(low))
                    .map_err(fail)?;
                left += usize::try_from(high - low).unwrap_or(usize::MAX);
            }
        }
        consumer.assign(&assignment).map_err(fail)?;
        let wanted = left.min(limit);
        let mut payloads = Vec::with_capacity(wanted);
        let deadline = Instant::now() + Duration::from_secs(30);
        while payloads.len() < wanted && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.map_err(fail)?;
                if let Some(payload) = message.payload() {
                    payloads.push(payload.to_vec());
                }
            }
        }
        Ok(payloads)
    })
    .await
    .map_err(|e| SqlError::Execution(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::infer_json;

    #[test]
    fn json_objects_give_their_schema_and_anything_else_says_why_not() {
        let payloads: Vec<Vec<u8>> = [
            r#"{"user": "u1", "n": 3}"#,
            r#"{"user": "u2", "amount": 2.5}"#,
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
        let schema = infer_json(&payloads).unwrap();
        let fields: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        // serde_json orders an object's keys; later records add theirs at the end.
        assert_eq!(fields, ["n Int64", "user Utf8", "amount Float64"]);
        let error = infer_json(&[b"not json".to_vec()]).unwrap_err();
        assert!(error.contains("record 0 is not a JSON object"), "{error}");
        assert_eq!(infer_json(&[]).unwrap_err(), "it has no records");
    }
}
