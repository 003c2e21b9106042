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
//! - **Produces are announced**, per topic, to fetches waiting for records
//!   ([`crate::fetch`]).
//! - **Offset stages are kept** between produces. tansu's SQLite engine
//!   prepares its statements anew for every call, and every partition of
//!   every fetch asks for its offset stage and reads its records: an idle
//!   consumer's fetch cost a dozen statement preparations per partition
//!   twice a second, and most of the broker's time. A partition's stage is
//!   read once and kept until a produce to it (or anything that may move
//!   offsets: a transaction ending, maintenance, a topic made or deleted);
//!   a fetch from the high watermark on is answered from it, without a
//!   read.
//! - **`DeleteRecords`** is `todo!()` in both engines and would panic a
//!   connection task: it is refused with `UNSUPPORTED_VERSION` instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
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
    /// Counted after every produce, for the fetches waiting for records.
    produced: Arc<watch::Sender<Produced>>,
    /// Topic ids by name, for counting produces by id as well.
    ids: Arc<Mutex<HashMap<String, [u8; 16]>>>,
    stages: Arc<Mutex<Stages>>,
}

/// Partitions' offset stages as last read, each with the version of the
/// partition it was read at.
#[derive(Debug, Default)]
struct Stages {
    /// Bumped after each produce to a partition.
    produced: HashMap<Topition, u64>,
    /// Bumped after anything that may move any partition's offsets.
    epoch: u64,
    read: HashMap<Topition, ((u64, u64), OffsetStage)>,
}

impl Stages {
    fn version(&self, topition: &Topition) -> (u64, u64) {
        (
            self.epoch,
            self.produced.get(topition).copied().unwrap_or_default(),
        )
    }

    /// The stage kept for `topition`, if nothing has moved it since.
    fn get(&self, topition: &Topition) -> Option<OffsetStage> {
        self.read
            .get(topition)
            .filter(|(version, _)| *version == self.version(topition))
            .map(|(_, stage)| *stage)
    }
}

/// How a fetch names a topic: by name, or (from Fetch v13) by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicKey {
    Name(String),
    Id([u8; 16]),
}

/// Produces so far, per topic, under both of its keys.
#[derive(Debug, Default)]
pub struct Produced {
    by_topic: HashMap<TopicKey, u64>,
    all: u64,
}

impl Produced {
    /// Produces to these topics so far; to any topic when `None`.
    pub fn count(&self, topics: Option<&[TopicKey]>) -> u64 {
        match topics {
            Some(topics) => topics
                .iter()
                .map(|topic| self.by_topic.get(topic).copied().unwrap_or(0))
                .sum(),
            None => self.all,
        }
    }
}

impl PatchedStorage {
    pub fn new(inner: StorageContainer) -> Self {
        Self {
            inner,
            produced: Arc::new(watch::Sender::new(Produced::default())),
            ids: Arc::default(),
            stages: Arc::default(),
        }
    }

    fn stages(&self) -> std::sync::MutexGuard<'_, Stages> {
        self.stages.lock().expect("offset stages")
    }

    /// After anything that may move the offsets of any partition.
    fn forget_stages(&self) {
        let mut stages = self.stages();
        stages.epoch += 1;
        stages.read.clear();
    }

    /// What fetches wait on for new records.
    pub fn produced(&self) -> watch::Receiver<Produced> {
        self.produced.subscribe()
    }

    /// `topic`'s id, looked up once.
    async fn topic_id(&self, topic: &str) -> Option<[u8; 16]> {
        if let Some(id) = self.ids.lock().expect("ids").get(topic) {
            return Some(*id);
        }
        let metadata = self
            .inner
            .metadata(Some(&[TopicId::Name(topic.to_string())]))
            .await
            .ok()?;
        let id = metadata.topics().first()?.topic_id?;
        self.ids.lock().expect("ids").insert(topic.to_string(), id);
        Some(id)
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
                let stage = self.offset_stage(topition).await?;
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
        let done = self.inner.create_topic(topic, validate_only).await;
        self.forget_stages();
        done
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        self.inner.incremental_alter_resource(resource).await
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        // A topic made again under the same name has a new id.
        self.ids.lock().expect("ids").clear();
        let deleted = self.inner.delete_topic(topic).await;
        self.forget_stages();
        deleted
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
        let offset = self.inner.produce(transaction_id, topition, batch).await;
        // Also after a failed produce: it may have written part of its batch.
        *self.stages().produced.entry(topition.clone()).or_default() += 1;
        let offset = offset?;
        let id = self.topic_id(topition.topic()).await;
        self.produced.send_modify(|produced| {
            produced.all += 1;
            let name = TopicKey::Name(topition.topic().to_string());
            for key in std::iter::once(name).chain(id.map(TopicKey::Id)) {
                *produced.by_topic.entry(key).or_default() += 1;
            }
        });
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
        let kept = self.stages().get(topition);
        if kept.is_some_and(|stage| offset >= stage.high_watermark()) {
            return Ok(Vec::new());
        }
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
        let stage = self.offset_stage(topition).await?;
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
        let version = {
            let stages = self.stages();
            if let Some(stage) = stages.get(topition) {
                return Ok(stage);
            }
            stages.version(topition)
        };
        let stage = self.inner.offset_stage(topition).await?;
        // Kept only if nothing moved the partition during the read: a read
        // that began before a produce may not have seen it.
        let mut stages = self.stages();
        if stages.version(topition) == version {
            stages.read.insert(topition.clone(), (version, stage));
        }
        Ok(stage)
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
        let done = self
            .inner
            .txn_end(transaction_id, producer_id, producer_epoch, committed)
            .await;
        self.forget_stages();
        done
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        let done = self.inner.maintain(now).await;
        self.forget_stages();
        done
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
