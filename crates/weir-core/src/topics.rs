//! Names of the platform's own topics, kept in one place.
//!
//! User topics are named by the user. Everything Weir itself writes lives
//! under the `weir.` prefix, one family per concern:
//!
//! | topic | what it carries |
//! |---|---|
//! | `weir.schemas` | schema registry log (compacted) |
//! | `weir.meta` | metadata events: experiments, runs, models, lineage |
//! | `weir.dlq.<source>` | records of `<source>` that failed to decode or validate |
//! | `weir.features.<view>.v<N>` | output of version N of a feature view |
//! | `weir.requests.<deployment>` | inference requests for stream serving |
//! | `weir.predictions.<deployment>` | predictions, keyed by request id |
//! | `weir.log.<deployment>` | every request and response with model version and route |
//! | `weir.feedback.<deployment>` | labels that arrive later, keyed by request id |
//! | `weir.control.<deployment>` | routing weights and deployment configuration |
//! | `weir.jobs.<experiment>` | tuning trials for `weir worker`s |
//! | `weir.metrics`, `weir.alerts` | monitoring output |

/// Prefix of every topic Weir itself owns.
pub const PLATFORM_PREFIX: &str = "weir.";
/// The schema registry's log: one record per registered (subject, schema).
pub const SCHEMAS: &str = "weir.schemas";
/// Metadata events (experiments, runs, models, lineage).
pub const META: &str = "weir.meta";
/// Monitoring metrics.
pub const METRICS: &str = "weir.metrics";
/// Monitoring alerts.
pub const ALERTS: &str = "weir.alerts";

const DLQ_PREFIX: &str = "weir.dlq.";

/// Dead-letter topic of `source`: records of it that failed to decode or validate.
pub fn dlq(source: &str) -> String {
    format!("{DLQ_PREFIX}{source}")
}

/// The source topic of a dead-letter topic, if `topic` is one.
pub fn dlq_source(topic: &str) -> Option<&str> {
    topic.strip_prefix(DLQ_PREFIX)
}

/// Output topic of a feature view.
pub fn features(view: &str) -> String {
    format!("weir.features.{view}")
}

/// Inference requests of a deployment (stream serving).
pub fn requests(deployment: &str) -> String {
    format!("weir.requests.{deployment}")
}

/// Predictions of a deployment, keyed by request id.
pub fn predictions(deployment: &str) -> String {
    format!("weir.predictions.{deployment}")
}

/// Request and response log of a deployment.
pub fn log(deployment: &str) -> String {
    format!("weir.log.{deployment}")
}

/// Labels for a deployment's predictions, keyed by request id.
pub fn feedback(deployment: &str) -> String {
    format!("weir.feedback.{deployment}")
}

/// Routing weights and configuration of a deployment.
pub fn control(deployment: &str) -> String {
    format!("weir.control.{deployment}")
}

/// An experiment analysis's results on a deployment: each candidate
/// against the default, tick after tick.
pub fn analysis(deployment: &str) -> String {
    format!("weir.analysis.{deployment}")
}

/// An experiment's guardrails on a deployment: each candidate's latency
/// and error rate, tick after tick.
pub fn guardrails(deployment: &str) -> String {
    format!("weir.guardrails.{deployment}")
}

/// Tuning trials of an experiment, for its workers: the experiment's name
/// with what a topic name cannot hold as `_`.
pub fn jobs(experiment: &str) -> String {
    let safe: String = experiment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("weir.jobs.{safe}")
}

/// Changelog of an operator's state in a dataflow job.
pub fn state(job: &str, operator: &str) -> String {
    format!("weir.state.{job}.{operator}")
}

/// Schema registry subject of a topic's record values (Confluent's
/// `TopicNameStrategy`, so that other clients find the same schema).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// Schema registry subject of a topic's record keys.
pub fn key_subject(topic: &str) -> String {
    format!("{topic}-key")
}

/// Checks that `name` is a legal Kafka topic name (1–249 characters of
/// `[a-zA-Z0-9._-]`, not `.` or `..`).
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic name cannot be empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a legal topic name"));
    }
    if name.len() > 249 {
        return Err(format!("topic name `{name}` is longer than 249 characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name `{name}` has `{bad}`: only ASCII letters, digits, `.`, `_` and `-` are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlq_names_round_trip() {
        assert_eq!(dlq("transactions"), "weir.dlq.transactions");
        assert_eq!(dlq_source(&dlq("transactions")), Some("transactions"));
        assert_eq!(dlq_source("transactions"), None);
    }

    #[test]
    fn topic_names_are_validated() {
        assert!(validate("card.transactions-v1_x").is_ok());
        assert!(validate("").is_err());
        assert!(validate("..").is_err());
        assert!(validate("a b").unwrap_err().contains("` `"));
        assert!(validate(&"x".repeat(250)).is_err());
    }
}
