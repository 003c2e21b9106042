//! `weir.feedback.<deployment>`: what became of a request later — a
//! reward, a label, or both — keyed by request id, in Avro
//! (`schemas/feedback.avsc`, registered under the topic's value subject,
//! so any Kafka client's Avro serializer can publish it too).
//!
//! [`parse`] reads feedback as clients send it (JSON: one record or a
//! list) and names the record and field of a mistake; [`Writer`] fills in
//! the time and publishes. Whether a request id is known is for the jobs
//! that meet feedback with the log to say: a deployment's replicas do not
//! share what they answered.

use serde::Deserialize;
use serde_json::{Value as Json, json};
use weir_bus::{Bus, Publisher};

use crate::ServeError;

/// The feedback record's schema.
pub const SCHEMA: &str = include_str!("../../../schemas/feedback.avsc");

/// Feedback on one request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The request it is about.
    pub request_id: String,
    /// A reward (1 for a conversion, 0 for none; any finite number).
    #[serde(default)]
    pub reward: Option<f64>,
    /// The true label.
    #[serde(default)]
    pub label: Option<String>,
    /// When it was observed, ms since the epoch (default: when published).
    #[serde(default)]
    pub timestamp: Option<i64>,
}

impl Feedback {
    fn check(&self) -> Result<(), String> {
        if self.request_id.is_empty() {
            return Err("request_id: empty".into());
        }
        if self.reward.is_none() && self.label.is_none() {
            return Err("give a `reward`, a `label` or both".into());
        }
        Ok(())
    }

    fn to_json(&self, now: i64) -> Json {
        json!({
            "request_id": self.request_id,
            "reward": self.reward,
            "label": self.label,
            "timestamp": self.timestamp.unwrap_or(now),
        })
    }
}

/// Feedback as a client sends it: one JSON object or a list of them.
/// An error names the record (`[2]` in a list) and what is wrong with it.
pub fn parse(value: Json) -> Result<Vec<Feedback>, String> {
    let (items, listed) = match value {
        Json::Array(items) => (items, true),
        object => (vec![object], false),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = if listed {
                format!("[{i}]: ")
            } else {
                String::new()
            };
            let feedback: Feedback =
                serde_json::from_value(item).map_err(|e| format!("{at}{e}"))?;
            feedback.check().map_err(|e| format!("{at}{e}"))?;
            Ok(feedback)
        })
        .collect()
}

/// Feedback as JSON lines (one object a line; blank lines skipped), read
/// from `origin`. Every line is checked: an error lists each bad one as
/// `ORIGIN:LINE[:COL]: problem`, so that nothing is published when one is
/// bad.
pub fn read_lines(
    reader: impl std::io::BufRead,
    origin: &str,
) -> Result<Vec<Feedback>, ServeError> {
    let (mut items, mut problems) = (Vec::new(), Vec::new());
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| ServeError::Request(format!("reading {origin}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = index + 1;
        match serde_json::from_str(&line) {
            Err(e) => problems.push(format!("{origin}:{at}:{}: {e}", e.column())),
            Ok(value) => match parse(value) {
                Ok(parsed) => items.extend(parsed),
                Err(e) => problems.push(format!("{origin}:{at}: {e}")),
            },
        }
    }
    if !problems.is_empty() {
        return Err(ServeError::Request(format!(
            "{} bad line(s), nothing published:\n{}",
            problems.len(),
            problems.join("\n")
        )));
    }
    Ok(items)
}

/// Creates `weir.feedback.<deployment>` if needed and registers its
/// schema; returns the topic.
pub async fn ensure(bus: &Bus, deployment: &str) -> Result<String, ServeError> {
    let topic = weir_core::topics::feedback(deployment);
    crate::log::ensure_avro_topic(bus, &topic, SCHEMA).await?;
    Ok(topic)
}

/// Publishes a deployment's feedback.
#[derive(Debug, Clone)]
pub struct Writer {
    publisher: Publisher,
}

impl Writer {
    /// Ensures the topic and schema and starts a producer.
    pub async fn start(bus: &Bus, deployment: &str) -> Result<Self, ServeError> {
        let topic = ensure(bus, deployment).await?;
        let publisher = bus
            .publisher(&topic)
            .map_err(|e| ServeError::Internal(format!("{topic}: {e}")))?;
        Ok(Self { publisher })
    }

    /// Publishes `items` (a missing time is now) and waits until the
    /// broker has them all; returns how many.
    pub async fn write(&self, items: &[Feedback]) -> Result<usize, ServeError> {
        let now = weir_core::now_ms();
        let topic = self.publisher.codec().topic().to_string();
        let bus_error = |e: weir_bus::BusError| ServeError::Internal(format!("{topic}: {e}"));
        let mut pending = Vec::with_capacity(items.len());
        for item in items {
            let bytes = self
                .publisher
                .encode(&item.to_json(now))
                .map_err(|e| ServeError::Request(format!("{}: {e}", item.request_id)))?;
            pending.push(
                self.publisher
                    .send(Some(item.request_id.as_bytes()), &bytes)
                    .await
                    .map_err(bus_error)?,
            );
        }
        for delivery in pending {
            delivery.await.map_err(bus_error)?;
        }
        Ok(items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_all_checked_and_each_bad_one_named() {
        let good = "{\"request_id\": \"r1\", \"reward\": 1}\n\n{\"request_id\": \"r2\", \"label\": \"x\"}\n";
        let read = read_lines(good.as_bytes(), "f.jsonl").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].label.as_deref(), Some("x"));
        let bad = "{\"request_id\": \"r1\", \"reward\": 1}\n{\"request_id\": \"r2\"}\nnot json\n";
        let error = read_lines(bad.as_bytes(), "f.jsonl")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "2 bad line(s), nothing published:\nf.jsonl:2: give a `reward`, a `label` or both\nf.jsonl:3:2: expected ident at line 1 column 2"
        );
    }

    #[test]
    fn feedback_reads_one_or_a_list_and_names_the_bad_record() {
        let one = parse(json!({"request_id": "r1", "reward": 1})).unwrap();
        assert_eq!(one[0].reward, Some(1.0));
        let many = parse(json!([
            {"request_id": "r1", "label": "churns", "timestamp": 5},
            {"request_id": "r2", "reward": 0.5},
        ]))
        .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].timestamp, Some(5));

        let error = parse(json!([{"request_id": "r1", "reward": 1}, {"request_id": "r2"}]));
        assert_eq!(
            error.unwrap_err(),
            "[1]: give a `reward`, a `label` or both"
        );
        let error = parse(json!({"request_id": "r1", "reward": "high"})).unwrap_err();
        assert!(
            error.starts_with("invalid type: string \"high\""),
            "{error}"
        );
        let error = parse(json!({"request": "r1", "reward": 1})).unwrap_err();
        assert!(error.starts_with("unknown field `request`"), "{error}");
    }
}
