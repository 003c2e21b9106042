//! Topics made by asking for them, as Apache Kafka does with
//! `auto.create.topics.enable=true` (its default).
//!
//! A client names the topics it wants in a `Metadata` request and says
//! whether the broker may create the missing ones (`allow_auto_topic_creation`:
//! librdkafka's producers say yes, its consumers only with
//! `allow.auto.create.topics=true`). tansu answers such a request with
//! `UNKNOWN_TOPIC_OR_PARTITION`, so a stock producer's records to a new
//! topic all fail. [`AutoCreateTopics`] creates the missing topics with the
//! broker's default partition count (Kafka's `num.partitions`) before the
//! request reaches tansu, and nothing else: no schema, no config.

use rama::{Context, Service};
use tansu_sans_io::create_topics_request::CreatableTopic;
use tansu_sans_io::{ApiKey as _, Body, ErrorCode, Frame, MetadataRequest};
use tansu_storage::{Storage as _, TopicId};

use crate::BrokerOptions;
use crate::storage::PatchedStorage;

/// Creates the missing topics a `Metadata` request names, when it allows
/// it; every request then goes to `inner` as it is.
#[derive(Clone, Debug)]
pub(crate) struct AutoCreateTopics<S> {
    pub(crate) inner: S,
    pub(crate) storage: PatchedStorage,
    /// Whether to, and with how many partitions.
    pub(crate) options: BrokerOptions,
}

impl<S> Service<(), Frame> for AutoCreateTopics<S>
where
    S: Service<(), Frame, Response = Frame, Error = tansu_broker::Error>,
{
    type Response = Frame;
    type Error = tansu_broker::Error;

    async fn serve(&self, ctx: Context<()>, frame: Frame) -> Result<Frame, Self::Error> {
        if self.options.auto_create_topics
            && frame.api_key()? == MetadataRequest::KEY
            && let Body::MetadataRequest(request) = &frame.body
            // Versions before 4 have no flag: they always allowed it.
            && request.allow_auto_topic_creation.unwrap_or(true)
        {
            for name in request
                .topics
                .iter()
                .flatten()
                .filter_map(|topic| topic.name.as_deref())
            {
                self.create_if_missing(name).await;
            }
        }
        self.inner.serve(ctx, frame).await
    }
}

impl<S> AutoCreateTopics<S> {
    async fn create_if_missing(&self, name: &str) {
        if !legal_topic_name(name) {
            return; // tansu answers it as unknown, as Kafka answers INVALID_TOPIC_EXCEPTION
        }
        let known = self
            .storage
            .metadata(Some(&[TopicId::Name(name.to_string())]))
            .await;
        let missing = known.is_ok_and(|metadata| {
            metadata
                .topics()
                .iter()
                .any(|topic| topic.error_code == i16::from(ErrorCode::UnknownTopicOrPartition))
        });
        if !missing {
            return;
        }
        let topic = CreatableTopic::default()
            .name(name.to_string())
            .num_partitions(self.options.num_partitions)
            .replication_factor(1)
            .assignments(Some(Vec::new()))
            .configs(Some(Vec::new()));
        match self.storage.create_topic(topic, false).await {
            Ok(_) => tracing::info!(
                topic = name,
                partitions = self.options.num_partitions,
                "topic created on first use"
            ),
            // Another request made it meanwhile.
            Err(error) => tracing::debug!(topic = name, ?error, "auto-creating a topic"),
        }
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.`
/// or `..`.
fn legal_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::legal_topic_name;

    #[test]
    fn kafka_topic_names() {
        assert!(legal_topic_name("orders.v1_x-y"));
        assert!(!legal_topic_name(""));
        assert!(!legal_topic_name(".."));
        assert!(!legal_topic_name("a b"));
        assert!(!legal_topic_name(&"a".repeat(250)));
    }
}
