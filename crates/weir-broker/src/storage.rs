//! tansu's storage engines, with the fixes Weir needs, as a wrapper that
//! delegates everything else.
//!
//! - **`ListOffsets` (latest) in the memory engine** answers the base offset
//!   of the last batch plus one, which is wrong for any batch of more than
//!   one record (librdkafka batches by default): `weir tail -n`, watermarks
//!   and `OffsetTail` would all be off. The engine's own offset stage (what
//!   its fetch path reports as the high watermark) is right, so latest
//!   offsets are answered from it.
//! - **`DescribeConfigs`** reports a topic's own configs as broker defaults
//!   (`DEFAULT_CONFIG`), so clients that hide defaults, as Kafka tools do,
//!   show nothing. They are reported as dynamic topic configs.
//! - **`Fetch` in the memory engine** from an offset inside a batch (a
//!   consumer resuming at a committed offset, `weir tail -n`, a client
//!   that read part of a batch) skips the rest of that batch, or returns
//!   nothing and the consumer waits forever. The batch that holds the
//!   offset is looked up and returned **without its records before the
//!   offset** (as a compacted batch keeps its offsets): tansu's fetch loop
//!   computes the next offset as the requested one plus the records
//!   returned, so a whole batch from before the offset would make it skip
//!   as many records further on.
//! - **Produces are announced** to fetches waiting for records
//!   ([`crate::fetch`]).
//! - **`DeleteRecords`** is `todo!()` in both engines and would panic a
//!   connection task: it is refused with `UNSUPPORTED_VERSION` instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tansu_sans_io::create_topics_request::CreatableTopic;
use tansu_sans_io::delete_groups_response::DeletableGroupResult;
use tansu_sans_io::delete_records_request::DeleteRecordsTopic;
use tansu_sans_io::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use tansu_sans_io::describe_cluster_response::DescribeClusterBroker;
use tansu_sans_io::describe_configs_response::DescribeConfigsResult;
use tansu_sans_io::describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic;
use tansu_sans_io::incremental_alter_configs_request::AlterConfigsResource;
use tansu_sans_io::incremental_alter_configs_response::AlterConfigsResourceResponse;
use tansu_sans_io::list_groups_response::ListedGroup;
use tansu_sans_io::record::deflated;
use tansu_sans_io::txn_offset_commit_response::TxnOffsetCommitResponseTopic;
use tansu_sans_io::{
    ConfigResource, ConfigSource, ErrorCode, IsolationLevel, ListOffset, ScramMechanism,
};
use tansu_storage::{
    BrokerRegistrationRequest, GroupDetail, ListOffsetResponse, MetadataResponse, NamedGroupDetail,
    OffsetCommitRequest, OffsetStage, ProducerIdResponse, Result, ScramCredential, Storage,
    StorageContainer, TopicId, Topition, TxnAddPartitionsRequest, TxnAddPartitionsResponse,
    TxnOffsetCommitRequest, UpdateError, Version,
};
use tokio::sync::watch;
use url::Url;
use uuid::Uuid;

/// A tansu storage engine with Weir's fixes (see the module docs).
#[derive(Clone, Debug)]
pub struct PatchedStorage {
    inner: StorageContainer,
    /// Bumped after every produce, for the fetches waiting for records.
    produced: Arc<watch::Sender<u64>>,
}

impl PatchedStorage {
    pub fn new(inner: StorageContainer) -> Self {
        Self {
            inner,
            produced: Arc::new(watch::Sender::new(0)),
        }
    }

    /// What fetches wait on for new records.
    pub fn produced(&self) -> watch::Receiver<u64> {
        self.produced.subscribe()
    }
}

#[async_trait]
impl Storage for PatchedStorage {
    async fn list_offsets(
        &self,
        isolation_level: IsolationLevel,
        offsets: &[(Topition, ListOffset)],
    ) -> Result<Vec<(Topition, ListOffsetResponse)>> {
        let mut responses = self.inner.list_offsets(isolation_level, offsets).await?;
        for ((topition, request), (_, response)) in offsets.iter().zip(responses.iter_mut()) {
            if *request == ListOffset::Latest && response.error_code == ErrorCode::None {
                let stage = self.inner.offset_stage(topition).await?;
                response.offset = Some(match isolation_level {
                    IsolationLevel::ReadCommitted => stage.last_stable(),
                    IsolationLevel::ReadUncommitted => stage.high_watermark(),
                });
            }
        }
        Ok(responses)
    }

    async fn describe_config(
        &self,
        name: &str,
        resource: ConfigResource,
        keys: Option<&[String]>,
    ) -> Result<DescribeConfigsResult> {
        let mut result = self.inner.describe_config(name, resource, keys).await?;
        if resource == ConfigResource::Topic
            && let Some(configs) = result.configs.as_mut()
        {
            for config in configs {
                config.config_source = Some(ConfigSource::DynamicTopicConfig.into());
                config.is_default = Some(false);
            }
        }
        Ok(result)
    }

    async fn delete_records(
        &self,
        topics: &[DeleteRecordsTopic],
    ) -> Result<Vec<DeleteRecordsTopicResult>> {
        Ok(topics
            .iter()
            .map(|topic| {
                DeleteRecordsTopicResult::default()
                    .name(topic.name.clone())
                    .partitions(Some(
                        topic
                            .partitions
                            .iter()
                            .flatten()
                            .map(|partition| {
                                DeleteRecordsPartitionResult::default()
                                    .partition_index(partition.partition_index)
                                    .low_watermark(-1)
                                    .error_code(ErrorCode::UnsupportedVersion.into())
                            })
                            .collect(),
                    ))
            })
            .collect())
    }

    // Everything else: the engine's own behaviour.

    async fn register_broker(&self, registration: BrokerRegistrationRequest) -> Result<()> {
        self.inner.register_broker(registration).await
    }

    async fn create_topic(&self, topic: CreatableTopic, validate_only: bool) -> Result<Uuid> {
        self.inner.create_topic(topic, validate_only).await
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        self.inner.incremental_alter_resource(resource).await
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        self.inner.delete_topic(topic).await
    }

    async fn brokers(&self) -> Result<Vec<DescribeClusterBroker>> {
        self.inner.brokers().await
    }

    async fn produce(
        &self,
        transaction_id: Option<&str>,
        topition: &Topition,
        batch: deflated::Batch,
    ) -> Result<i64> {
        let offset = self.inner.produce(transaction_id, topition, batch).await?;
        self.produced.send_modify(|count| *count += 1);
        Ok(offset)
    }

    async fn fetch(
        &self,
        topition: &'_ Topition,
        offset: i64,
        min_bytes: u32,
        max_bytes: u32,
        isolation: IsolationLevel,
    ) -> Result<Vec<deflated::Batch>> {
        let batches = self
            .inner
            .fetch(topition, offset, min_bytes, max_bytes, isolation)
            .await?;
        if offset == 0 || batches.first().is_some_and(|b| b.base_offset == offset) {
            return Ok(batches);
        }
        if batches.first().is_some_and(|b| b.base_offset < offset) {
            return from_offset(batches, offset);
        }
        let stage = self.inner.offset_stage(topition).await?;
        if offset >= stage.high_watermark() {
            return Ok(batches);
        }
        // `offset` lies inside a batch that starts earlier: find that batch by
        // stepping back (doubling), then return from it. The client skips
        // the records before `offset` itself.
        let mut step = 1;
        loop {
            let mut from = (offset - step).max(0);
            loop {
                let found = self
                    .inner
                    .fetch(topition, from, min_bytes, max_bytes, isolation)
                    .await?;
                let Some(first) = found.first() else { break };
                if first.base_offset > offset {
                    break;
                }
                let end = |b: &deflated::Batch| b.base_offset + i64::from(b.last_offset_delta);
                let last_end = found.last().map_or(from, end);
                let covering: Vec<_> = found.into_iter().filter(|b| end(b) >= offset).collect();
                if !covering.is_empty() {
                    return from_offset(covering, offset);
                }
                // A size-limited answer ended before `offset`: go on after it.
                from = last_end + 1;
            }
            if offset - step <= 0 {
                return Ok(batches);
            }
            step *= 2;
        }
    }

    async fn offset_stage(&self, topition: &Topition) -> Result<OffsetStage> {
        self.inner.offset_stage(topition).await
    }

    async fn offset_commit(
        &self,
        group_id: &str,
        retention_time_ms: Option<Duration>,
        offsets: &[(Topition, OffsetCommitRequest)],
    ) -> Result<Vec<(Topition, ErrorCode)>> {
        self.inner
            .offset_commit(group_id, retention_time_ms, offsets)
            .await
    }

    async fn offset_fetch(
        &self,
        group_id: Option<&str>,
        topics: &[Topition],
        require_stable: Option<bool>,
    ) -> Result<BTreeMap<Topition, i64>> {
        self.inner
            .offset_fetch(group_id, topics, require_stable)
            .await
    }

    async fn committed_offset_topitions(&self, group_id: &str) -> Result<BTreeMap<Topition, i64>> {
        self.inner.committed_offset_topitions(group_id).await
    }

    async fn metadata(&self, topics: Option<&[TopicId]>) -> Result<MetadataResponse> {
        self.inner.metadata(topics).await
    }

    async fn upsert_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    ) -> Result<()> {
        self.inner
            .upsert_user_scram_credential(user, mechanism, credential)
            .await
    }

    async fn delete_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<()> {
        self.inner
            .delete_user_scram_credential(user, mechanism)
            .await
    }

    async fn user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        self.inner.user_scram_credential(user, mechanism).await
    }

    async fn list_groups(&self, states_filter: Option<&[String]>) -> Result<Vec<ListedGroup>> {
        self.inner.list_groups(states_filter).await
    }

    async fn delete_groups(
        &self,
        group_ids: Option<&[String]>,
    ) -> Result<Vec<DeletableGroupResult>> {
        self.inner.delete_groups(group_ids).await
    }

    async fn describe_groups(
        &self,
        group_ids: Option<&[String]>,
        include_authorized_operations: bool,
    ) -> Result<Vec<NamedGroupDetail>> {
        self.inner
            .describe_groups(group_ids, include_authorized_operations)
            .await
    }

    async fn describe_topic_partitions(
        &self,
        topics: Option<&[TopicId]>,
        partition_limit: i32,
        cursor: Option<Topition>,
    ) -> Result<Vec<DescribeTopicPartitionsResponseTopic>> {
        self.inner
            .describe_topic_partitions(topics, partition_limit, cursor)
            .await
    }

    async fn update_group(
        &self,
        group_id: &str,
        detail: GroupDetail,
        version: Option<Version>,
    ) -> Result<Version, UpdateError<GroupDetail>> {
        self.inner.update_group(group_id, detail, version).await
    }

    async fn init_producer(
        &self,
        transaction_id: Option<&str>,
        transaction_timeout_ms: i32,
        producer_id: Option<i64>,
        producer_epoch: Option<i16>,
    ) -> Result<ProducerIdResponse> {
        self.inner
            .init_producer(
                transaction_id,
                transaction_timeout_ms,
                producer_id,
                producer_epoch,
            )
            .await
    }

    async fn txn_add_offsets(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
    ) -> Result<ErrorCode> {
        self.inner
            .txn_add_offsets(transaction_id, producer_id, producer_epoch, group_id)
            .await
    }

    async fn txn_add_partitions(
        &self,
        partitions: TxnAddPartitionsRequest,
    ) -> Result<TxnAddPartitionsResponse> {
        self.inner.txn_add_partitions(partitions).await
    }

    async fn txn_offset_commit(
        &self,
        offsets: TxnOffsetCommitRequest,
    ) -> Result<Vec<TxnOffsetCommitResponseTopic>> {
        self.inner.txn_offset_commit(offsets).await
    }

    async fn txn_end(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
    ) -> Result<ErrorCode> {
        self.inner
            .txn_end(transaction_id, producer_id, producer_epoch, committed)
            .await
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        self.inner.maintain(now).await
    }

    async fn cluster_id(&self) -> Result<String> {
        self.inner.cluster_id().await
    }

    async fn node(&self) -> Result<i32> {
        self.inner.node().await
    }

    async fn advertised_listener(&self) -> Result<Url> {
        self.inner.advertised_listener().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

/// `batches` (the first holding `offset`) without the records before
/// `offset`: the first batch keeps its base offset and the offsets of the
/// records it keeps, as a compacted batch does.
fn from_offset(mut batches: Vec<deflated::Batch>, offset: i64) -> Result<Vec<deflated::Batch>> {
    let Some(first) = batches.first_mut() else {
        return Ok(batches);
    };
    if first.base_offset >= offset {
        return Ok(batches);
    }
    let mut inflated = tansu_sans_io::record::inflated::Batch::try_from(&*first)?;
    let base = inflated.base_offset;
    inflated
        .records
        .retain(|record| base + i64::from(record.offset_delta) >= offset);
    if inflated.records.is_empty() {
        batches.remove(0);
    } else {
        *first = deflated::Batch::try_from(inflated)?;
    }
    Ok(batches)
}
