//! The write path and the reads.
//!
//! A write is a closure that looks at the state and returns the event it
//! means (or refuses). Writers take turns: the event is applied to the
//! state, which checks it, and queued to `weir.meta` in the same turn, so
//! the log holds events in the order they were applied. The caller then
//! waits, outside the turn, for the broker's acknowledgement: a reply
//! never promises a change the log does not have. Should the log refuse
//! one, the tracker stops taking writes — its state is ahead of the log —
//! and a restart rebuilds it from the log.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use weir_bus::{Bus, OutRecord, Producer};
use weir_core::now_ms;

use crate::MetaError;
use crate::artifacts::ArtifactStore;
use crate::event::{Event, KeyValue, Metric};
use crate::state::{RUN_NAME_TAG, State};
use crate::store::{Position, Store, digest};

/// Experiments, runs, models and artifacts: the state, the log and the
/// artifact store.
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// Writers' turns.
    turn: tokio::sync::Mutex<()>,
    producer: Producer,
    artifacts: ArtifactStore,
    broken: AtomicBool,
    /// This tracker's id in the [`WRITER_HEADER`] of its records.
    writer: String,
    /// The task following what other processes append; stopped with the
    /// tracker.
    follower: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The offset of the next record that task applies.
    applied: tokio::sync::watch::Sender<i64>,
    /// Where the state is saved, when it is.
    saving: Option<Saving>,
}

/// What a tracker with a store keeps to save its state with the position
/// of the log it stands at.
struct Saving {
    store: Store,
    /// Where the follower has read the log to, and this tracker's own
    /// events acknowledged beyond it; changed only while the state's
    /// write lock is held, so that the two agree.
    position: std::sync::Mutex<Position>,
    /// Events applied and not yet acknowledged by the log.
    in_flight: AtomicUsize,
    /// The task that saves every [`SAVE_EVERY`].
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The record header naming the tracker that wrote an event: a tracker
/// follows the log for other writers' events and passes over its own,
/// which it applied as it wrote them.
pub const WRITER_HEADER: &str = "weir-writer";

/// How often a tracker with a store saves what changed.
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(follower) = self.follower.lock().expect("follower lock").take() {
            follower.abort();
        }
        if let Some(saving) = &self.saving
            && let Some(task) = saving.task.lock().expect("save task lock").take()
        {
            task.abort();
        }
    }
}

/// How a tracker with a store came by its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Events the store had.
    pub from_store: u64,
    /// Events replayed from the log after them.
    pub from_log: u64,
    /// Why the store was not used, when it was not (the whole log was
    /// replayed).
    pub rebuilt: Option<String>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").finish_non_exhaustive()
    }
}

/// Replays `weir.meta` (creating it if needed) into a state, and the
/// consumer that read it, positioned on what is written after.
pub async fn follow(bus: &Bus) -> Result<(State, weir_bus::Consumer), MetaError> {
    let follower = Follower::start(bus).await?;
    Ok((follower.state, follower.log))
}

/// How long the broker holds a follower's fetch when there is nothing new.
/// A fetch is answered as soon as an event is appended (Kafka's long poll,
/// which the embedded broker does too), so this is not how late a follower
/// sees an event, only how often an idle one asks.
pub const FOLLOW_WAIT_MS: &str = "500";

/// How long [`Tracker::catch_up_with`] waits for the tracker's own
/// following before it resyncs.
pub const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// When a lease taken at `at` for `ttl` ends.
fn lease_end(at: i64, ttl: std::time::Duration) -> i64 {
    at.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2))
}

/// The producer a tracker writes with. Each write waits for its event, so
/// it is sent at once rather than lingering for a batch (the bus's default
/// is tuned for throughput). Trackers make it before they replay, so
/// getting its producer id overlaps the replay.
fn writer(bus: &Bus) -> Result<Producer, MetaError> {
    let mut config = bus.config().clone();
    config.overrides.push(("linger.ms".into(), "0".into()));
    Producer::new(&config).map_err(|e| MetaError::internal(format!("creating a producer: {e}")))
}

/// A change applied to a tracker's state and queued for the log, not yet
/// acknowledged (see [`Tracker::acknowledged`]).
struct Queued(weir_bus::PendingDelivery);

/// A consumer of `weir.meta` from `offset` on.
fn consumer_at(bus: &Bus, offset: i64) -> Result<weir_bus::Consumer, MetaError> {
    let meta = weir_core::topics::META;
    bus.consumer(
        &[meta],
        weir_bus::ConsumerOptions {
            start: weir_bus::StartFrom::Offsets(vec![(meta.to_string(), 0, offset)]),
            read_only: true,
            settings: vec![("fetch.wait.max.ms".into(), FOLLOW_WAIT_MS.into())],
            ..Default::default()
        },
    )
    .map_err(|e| MetaError::internal(format!("reading {meta}: {e}")))
}

/// Whether the log has, at `position`, the record the position names:
/// a store saved from this log, and not from another or from one that
/// was wiped and written again.
async fn log_has(bus: &Bus, position: &Position) -> Result<bool, MetaError> {
    let meta = weir_core::topics::META;
    let (low, high) = bus
        .admin()
        .watermarks(meta, 0)
        .await
        .map_err(|e| MetaError::internal(format!("reading {meta}: {e}")))?;
    let Some(last) = &position.last else {
        return Ok(position.next == 0);
    };
    if position.next > high || position.next - 1 < low {
        return Ok(false);
    }
    let mut log = consumer_at(bus, position.next - 1)?;
    let record = log
        .next_raw()
        .await
        .map_err(|e| MetaError::internal(format!("reading {meta}: {e}")))?;
    Ok(record
        .is_some_and(|r| r.offset == position.next - 1 && digest(r.payload.as_deref()) == *last))
}

/// Reads `weir.meta` to its end into a state.
pub async fn replay(bus: &Bus) -> Result<State, MetaError> {
    let mut state = State::default();
    let log = bus
        .read_log(weir_core::topics::META)
        .await
        .map_err(|e| MetaError::internal(format!("reading {}: {e}", weir_core::topics::META)))?;
    for payload in &log {
        state.apply_record(payload);
    }
    Ok(state)
}

/// The state a store saved, brought up to the end of `weir.meta`.
pub async fn replay_from(bus: &Bus, saved: crate::store::Saved) -> Result<State, MetaError> {
    Ok(Follower::resume(bus, saved.state, saved.position, false)
        .await?
        .state)
}

/// The state as of the end of `weir.meta`, read from the query store in
/// `dir` (opened read-only: a running server may hold it) and the events
/// after it; replayed from the whole log when there is no store there, or
/// one saved from another log.
pub async fn replay_with_store(bus: &Bus, dir: &std::path::Path) -> Result<State, MetaError> {
    let saved = if dir.join("CURRENT").is_file() {
        Store::open_read_only(dir)?.load()?
    } else {
        None
    };
    match saved {
        Some(saved) if log_has(bus, &saved.position).await? => replay_from(bus, saved).await,
        _ => replay(bus).await,
    }
}

/// A state kept current with `weir.meta`: replayed once, then every event
/// applied as it arrives, whoever wrote it. [`Tracker::catch_up_with`]
/// brings a tracker up to it, and [`Tracker::claim_lease`] uses it to learn who won a claim by reading
/// only the events since.
pub struct Follower {
    bus: Bus,
    state: State,
    log: weir_bus::Consumer,
    /// The offset of the next event to apply.
    next: i64,
    /// The digest of the last record read, when kept (for a store).
    last: Option<String>,
    keep_digests: bool,
    /// Offsets ahead whose events the state already has.
    skip: std::collections::BTreeSet<i64>,
}

impl Follower {
    /// Replays the log and follows it from its end.
    pub async fn start(bus: &Bus) -> Result<Self, MetaError> {
        Self::resume(bus, State::default(), Position::START, false).await
    }

    /// Follows the log from `position`, where `state` stands, applying
    /// what it has after; with `keep_digests`, each record's digest is
    /// kept for [`Follower::log_position`].
    async fn resume(
        bus: &Bus,
        state: State,
        position: Position,
        keep_digests: bool,
    ) -> Result<Self, MetaError> {
        let meta = weir_core::topics::META;
        bus.admin()
            .ensure_topic(&weir_bus::TopicSpec::new(meta, 1))
            .await
            .map_err(|e| MetaError::internal(format!("reading {meta}: {e}")))?;
        // One consumer replays the log up to where it ended and then
        // follows it, so that no event is applied twice or missed.
        let mut follower = Self {
            bus: bus.clone(),
            state,
            log: consumer_at(bus, position.next)?,
            next: position.next,
            last: position.last,
            keep_digests,
            skip: position.skip.into_iter().collect(),
        };
        follower.catch_up().await?;
        Ok(follower)
    }

    /// Where the follower stands in the log, with the digest of the last
    /// record when it keeps them.
    pub fn log_position(&self) -> Position {
        Position {
            next: self.next,
            last: self.last.clone(),
            skip: self.skip.iter().copied().collect(),
        }
    }

    /// Applies every event the log has now (one request to the broker for
    /// where it ends).
    pub async fn catch_up(&mut self) -> Result<(), MetaError> {
        let meta = weir_core::topics::META;
        let (_, end) = self
            .bus
            .admin()
            .watermarks(meta, 0)
            .await
            .map_err(|e| MetaError::internal(format!("reading {meta}: {e}")))?;
        self.until(end - 1).await
    }

    /// The state, as of the events applied so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The offset of the next event to apply.
    pub fn position(&self) -> i64 {
        self.next
    }

    /// Waits for the next record of the log and applies it (a record
    /// without a value is no event); `false` when the log is closed.
    pub async fn next(&mut self) -> Result<bool, MetaError> {
        let record = self.log.next_raw().await.map_err(|e| {
            MetaError::internal(format!("following {}: {e}", weir_core::topics::META))
        })?;
        let Some(record) = record else {
            return Ok(false);
        };
        self.next = record.offset + 1;
        if self.keep_digests {
            self.last = Some(digest(record.payload.as_deref()));
        }
        if self.skip.remove(&record.offset) {
            return Ok(true);
        }
        if let Some(payload) = &record.payload {
            self.state.apply_record(payload);
        }
        Ok(true)
    }

    /// Applies events until the one at `offset` is applied.
    pub async fn until(&mut self, offset: i64) -> Result<(), MetaError> {
        while self.next <= offset {
            if !self.next().await? {
                return Err(MetaError::internal(format!(
                    "{} closed before offset {offset}",
                    weir_core::topics::META
                )));
            }
        }
        Ok(())
    }
}

impl Tracker {
    /// Rebuilds the state from `weir.meta` and opens the artifact store.
    /// Feature view and dataset versions that other components record
    /// later are followed, for lineage.
    pub async fn open(bus: &Bus, artifacts: ArtifactStore) -> Result<Self, MetaError> {
        // The producer first: it acquires its id while the log replays.
        let producer = writer(bus)?;
        let follower = Follower::start(bus).await?;
        tracing::info!(
            events = follower.state.applied(),
            "metadata state rebuilt from the log"
        );
        let next = follower.next;
        Self::with_state(
            artifacts,
            follower.state,
            (follower.log, next),
            producer,
            None,
        )
    }

    /// [`Tracker::open`] with the artifact store of a state directory
    /// (`<state>/artifacts`), as `weir`'s commands use it.
    pub async fn open_under(bus: &Bus, state_dir: &std::path::Path) -> Result<Self, MetaError> {
        Self::open(bus, ArtifactStore::under(state_dir)?).await
    }

    /// [`Tracker::open`] with a query store: the state comes from `store`
    /// and the log's events after it (all of them when the store is empty
    /// or was saved from another log), and is saved back every
    /// [`SAVE_EVERY`] and when the tracker closes.
    pub async fn open_with_store(
        bus: &Bus,
        artifacts: ArtifactStore,
        store: Store,
    ) -> Result<(Self, Restored), MetaError> {
        let producer = writer(bus)?;
        let (mut state, position, rebuilt) = match store.load()? {
            Some(saved) if log_has(bus, &saved.position).await? => {
                (saved.state, saved.position, None)
            }
            Some(saved) => {
                store.clear()?;
                let why = format!(
                    "the store stands at offset {} of a log that is not this {} (wiped, or another broker's)",
                    saved.position.next,
                    weir_core::topics::META
                );
                (State::default(), Position::START, Some(why))
            }
            None => (
                State::default(),
                Position::START,
                Some("the store was empty".to_string()),
            ),
        };
        state.track_changes();
        let from_store = state.applied();
        let follower = Follower::resume(bus, state, position, true).await?;
        let restored = Restored {
            from_store,
            from_log: follower.state.applied() - from_store,
            rebuilt,
        };
        let position = follower.log_position();
        let next = follower.next;
        let saving = Saving {
            store,
            position: std::sync::Mutex::new(position),
            in_flight: AtomicUsize::new(0),
            task: std::sync::Mutex::new(None),
        };
        let tracker = Self::with_state(
            artifacts,
            follower.state,
            (follower.log, next),
            producer,
            Some(saving),
        )?;
        tracker.start_saving();
        Ok((tracker, restored))
    }

    /// Saves what changed since the last save. It takes the writers'
    /// turn, so that no event is applied meanwhile, and waits for the
    /// events already sent to be acknowledged: then the state is the log
    /// up to where the follower has read, plus this tracker's own events
    /// beyond that, whose offsets are now known. `Ok(false)` when the
    /// tracker has no store, or cannot say where its state stands (the
    /// log refused a write, or acknowledgements are late).
    pub async fn save(&self) -> Result<bool, MetaError> {
        let Some(saving) = &self.inner.saving else {
            return Ok(false);
        };
        let _turn = self.inner.turn.lock().await;
        let acknowledged = async {
            while saving.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(5), acknowledged)
            .await
            .is_err()
            || self.inner.broken.load(Ordering::SeqCst)
        {
            return Ok(false);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let saving = inner.saving.as_ref().expect("checked");
            let mut state = inner.state.write().expect("state lock");
            let position = saving.position.lock().expect("position lock");
            saving.store.save(&mut state, &position)
        })
        .await
        .map_err(|e| MetaError::internal(format!("saving the metadata store: {e}")))??;
        Ok(true)
    }

    fn start_saving(&self) {
        let Some(saving) = &self.inner.saving else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(SAVE_EVERY).await;
                let Some(inner) = weak.upgrade() else { break };
                if let Err(error) = (Tracker { inner }).save().await {
                    tracing::warn!(%error, "saving the metadata store");
                }
            }
        });
        *saving.task.lock().expect("save task lock") = Some(task);
    }

    /// Takes the state `follower` has reached as this tracker's, for a
    /// process that follows the log and writes now and then (a worker):
    /// cheaper than opening a tracker, and its producer, each time.
    pub fn resync(&self, bus: &Bus, follower: &Follower) -> Result<(), MetaError> {
        if self.inner.saving.is_some() {
            return Err(MetaError::internal(
                "a tracker with a store follows the log itself; it does not resync",
            ));
        }
        let log = consumer_at(bus, follower.position())?;
        *self.inner.state.write().expect("state lock") = follower.state().clone();
        self.follow_log((log, follower.position()));
        Ok(())
    }

    /// Brings this tracker up to what `follower` has read, for a process
    /// that follows the log and writes now and then (a worker before a
    /// trial): waits for the tracker's own following to get there, which
    /// is at once or within a few milliseconds; if it lags by more than
    /// [`CATCH_UP_WAIT`], takes `follower`'s state instead ([`Tracker::resync`],
    /// which costs a new consumer and dropping the old).
    pub async fn catch_up_with(&self, bus: &Bus, follower: &Follower) -> Result<(), MetaError> {
        let target = follower.position();
        let mut applied = self.inner.applied.subscribe();
        match tokio::time::timeout(CATCH_UP_WAIT, applied.wait_for(|&next| next >= target)).await {
            Ok(Ok(_)) => Ok(()),
            _ => self.resync(bus, follower),
        }
    }

    fn with_state(
        artifacts: ArtifactStore,
        state: State,
        follower: (weir_bus::Consumer, i64),
        producer: Producer,
        saving: Option<Saving>,
    ) -> Result<Self, MetaError> {
        let tracker = Self {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                turn: tokio::sync::Mutex::new(()),
                producer,
                artifacts,
                broken: AtomicBool::new(false),
                writer: uuid::Uuid::new_v4().simple().to_string(),
                follower: std::sync::Mutex::new(None),
                applied: tokio::sync::watch::Sender::new(follower.1),
                saving,
            }),
        };
        tracker.follow_log(follower);
        Ok(tracker)
    }

    /// Applies what other processes append to the log `log` reads
    /// (replacing the consumer followed so far): other writers' events —
    /// a `weir train` while a server runs, another server — and other
    /// components' records. This tracker's own events, applied as it wrote
    /// them, are known by their [`WRITER_HEADER`] and passed over. `log`
    /// comes with the offset it starts at.
    fn follow_log(&self, (mut log, from): (weir_bus::Consumer, i64)) {
        self.inner.applied.send_replace(from);
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            while let Ok(Some(record)) = log.next_raw().await {
                let Some(inner) = weak.upgrade() else { break };
                let own = record.headers.iter().any(|(name, value)| {
                    name == WRITER_HEADER && *value == inner.writer.as_bytes()
                });
                let others = record.payload.as_deref().filter(|_| !own);
                {
                    let mut state = inner.state.write().expect("state lock");
                    if let Some(payload) = others {
                        state.apply_record(payload);
                    }
                    // With a store, the position moves past every record,
                    // under the state's lock.
                    if let Some(saving) = &inner.saving {
                        let mut position = saving.position.lock().expect("position lock");
                        position.next = record.offset + 1;
                        position.last = Some(digest(record.payload.as_deref()));
                        position.skip.retain(|&own| own > record.offset);
                    }
                }
                inner.applied.send_replace(record.offset + 1);
            }
        });
        if let Some(old) = self
            .inner
            .follower
            .lock()
            .expect("follower lock")
            .replace(task)
        {
            old.abort();
        }
    }

    /// Stops following the log and waits until the follower's consumer is
    /// closed: call it before stopping a broker this process runs.
    pub async fn close(self) {
        if let Some(saving) = &self.inner.saving {
            if let Some(task) = saving.task.lock().expect("save task lock").take() {
                task.abort();
            }
            match self.save().await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "the metadata store was not saved at close; the next start replays more of the log"
                ),
                Err(error) => tracing::warn!(%error, "saving the metadata store at close"),
            }
        }
        let follower = self.inner.follower.lock().expect("follower lock").take();
        if let Some(follower) = follower {
            follower.abort();
            let _ = follower.await;
        }
    }

    /// Reads the state.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.inner.state.read().expect("state lock"))
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.inner.artifacts
    }

    /// A copy of the state (for comparing nodes).
    pub fn snapshot(&self) -> State {
        self.read(State::clone)
    }

    /// Makes the change `decide` returns, once the log has it. `decide`
    /// may refuse, and so may [`State::apply`]; either way nothing changes.
    pub async fn write<T>(
        &self,
        decide: impl FnOnce(&State) -> Result<(Event, T), MetaError>,
    ) -> Result<T, MetaError> {
        Ok(self.write_at(decide).await?.0)
    }

    /// [`Tracker::write`], also returning the event's offset in the log.
    async fn write_at<T>(
        &self,
        decide: impl FnOnce(&State) -> Result<(Event, T), MetaError>,
    ) -> Result<(T, i64), MetaError> {
        let (answer, queued) = self.queue(decide).await?;
        Ok((answer, self.acknowledged(queued).await?))
    }

    /// The first half of [`Tracker::write`]: the change applied to the
    /// state and queued for the log. Changes are queued in the order their
    /// calls began (the turn lock is fair). The caller must wait for
    /// [`Tracker::acknowledged`].
    async fn queue<T>(
        &self,
        decide: impl FnOnce(&State) -> Result<(Event, T), MetaError>,
    ) -> Result<(T, Queued), MetaError> {
        let pending = {
            let _turn = self.inner.turn.lock().await;
            if self.inner.broken.load(Ordering::SeqCst) {
                return Err(MetaError::internal(
                    "the metadata log refused an earlier change; restart the server to rebuild from weir.meta",
                ));
            }
            let (event, answer) = {
                let mut state = self.inner.state.write().expect("state lock");
                let (event, answer) = decide(&state)?;
                state.apply(&event)?;
                if let Some(saving) = &self.inner.saving {
                    saving.in_flight.fetch_add(1, Ordering::SeqCst);
                }
                (event, answer)
            };
            let payload = event.encode();
            let key = event.subject();
            let record = OutRecord::new(weir_core::topics::META, &payload)
                .key(key.as_bytes())
                .header(WRITER_HEADER, self.inner.writer.as_bytes());
            let queued = self.inner.producer.send(record).await;
            match queued {
                Ok(pending) => (pending, answer),
                Err(error) => return Err(self.break_with(error)),
            }
        };
        let (pending, answer) = pending;
        Ok((answer, Queued(pending)))
    }

    /// The second half of [`Tracker::write`]: waits until the log has the
    /// change; its offset.
    async fn acknowledged(&self, Queued(pending): Queued) -> Result<i64, MetaError> {
        let delivery = pending.await.map_err(|e| self.break_with(e));
        if let Some(saving) = &self.inner.saving {
            if let Ok(delivery) = &delivery {
                // Applied already; a save must tell a replay to skip it
                // until the follower has read past it.
                let mut position = saving.position.lock().expect("position lock");
                if delivery.offset >= position.next {
                    position.skip.push(delivery.offset);
                }
            }
            saving.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(delivery?.offset)
    }

    /// Makes the change `event` describes (checked against the state).
    pub async fn append(&self, event: Event) -> Result<(), MetaError> {
        self.write(|_| Ok((event, ()))).await
    }

    /// Takes or renews a lease on `key` for `holder`, for `ttl`: `true`
    /// when `weir.meta`, read up to the claim, names `holder` as the
    /// lease's holder. Other processes write to the log too, so this
    /// tracker's own state cannot tell who won a race; the log's order
    /// does (a lost claim in the log changes nothing). Nothing is written
    /// while the log already names another holder with a live lease. It
    /// replays the log; a process that follows it uses
    /// [`Tracker::claim_lease`].
    pub async fn take_lease(
        &self,
        bus: &Bus,
        key: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, MetaError> {
        let mut follower = Follower::start(bus).await?;
        self.claim_lease(&mut follower, key, holder, ttl).await
    }

    /// [`Tracker::take_lease`] for a process that follows the log: the
    /// claim is written, then `follower` reads on to it (unless the claim
    /// came right after what it had read), and the log's order up to the
    /// claim decides — no replay. Also nothing is written
    /// while `follower` or this tracker sees another holder's live lease.
    pub async fn claim_lease(
        &self,
        follower: &mut Follower,
        key: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, MetaError> {
        let at = now_ms();
        let held = |state: &State| {
            state
                .lease(key)
                .is_some_and(|lease| lease.holder != holder && lease.live(at))
        };
        if held(follower.state()) || self.read(held) {
            return Ok(false);
        }
        let until = lease_end(at, ttl);
        let ((), offset) = self
            .write_at(|_| {
                Ok((
                    Event::Lease {
                        at,
                        key: key.into(),
                        holder: holder.into(),
                        until,
                    },
                    (),
                ))
            })
            .await?;
        if offset == follower.position() {
            // The claim is the event right after those the follower has
            // read, and they left the lease free: nothing came between, so
            // it wins without waiting to read it back (the follower applies
            // it when it gets there).
            return Ok(true);
        }
        follower.until(offset).await?;
        Ok(follower
            .state()
            .lease(key)
            .is_some_and(|lease| lease.holder == holder && lease.until == until))
    }

    /// Extends `holder`'s lease on `key` by `ttl` from now, without asking
    /// who holds it (a renewal of a lease another holder has taken over
    /// changes nothing in the log).
    pub async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<(), MetaError> {
        let at = now_ms();
        self.append(Event::Lease {
            at,
            key: key.into(),
            holder: holder.into(),
            until: lease_end(at, ttl),
        })
        .await
    }

    /// Gives up `holder`'s lease on `key` (nothing happens if another
    /// holder has it).
    pub async fn release_lease(&self, key: &str, holder: &str) -> Result<(), MetaError> {
        let at = now_ms();
        self.append(Event::Lease {
            at,
            key: key.into(),
            holder: holder.into(),
            until: at,
        })
        .await
    }

    fn break_with(&self, error: impl std::fmt::Display) -> MetaError {
        self.inner.broken.store(true, Ordering::SeqCst);
        tracing::error!(%error, "the metadata log refused a change; no more writes");
        MetaError::internal(format!("appending to {}: {error}", weir_core::topics::META))
    }
}

/// A run to start.
#[derive(Debug, Clone, Default)]
pub struct RunStart {
    /// Its experiment's id.
    pub experiment_id: String,
    /// Its name; a generated one (`adjective-animal-number`) if none, or
    /// the `mlflow.runName` tag's.
    pub run_name: Option<String>,
    /// Who started it; the `mlflow.user` tag's if none.
    pub user_id: Option<String>,
    /// When, ms since the epoch.
    pub start_time: i64,
    /// Tags.
    pub tags: Vec<KeyValue>,
}

/// A finished job reported as one run: what it read, its params and
/// metrics (`weir demo`'s snapshot; training jobs).
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The experiment, by name (created if missing).
    pub experiment: String,
    /// The run's name.
    pub run_name: String,
    /// When it started and ended, ms since the epoch.
    pub start_time: i64,
    /// When it ended.
    pub end_time: i64,
    /// Params.
    pub params: Vec<KeyValue>,
    /// Metrics.
    pub metrics: Vec<Metric>,
    /// Tags.
    pub tags: Vec<KeyValue>,
    /// The Weir datasets it read, `name@version`, with their content hash
    /// and what they were read for (`training`, …).
    pub datasets: Vec<(String, String, String)>,
    /// `FINISHED` (when empty) or `FAILED`.
    pub status: String,
    /// Files stored under the run's artifacts before it ends: path
    /// relative to them, bytes.
    pub artifacts: Vec<(String, Vec<u8>)>,
}

/// A stored artifact of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArtifact {
    /// Its path in the store.
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// A name for a run that was given none, as MLflow makes them
/// (`adjective-animal-number`), from the run id.
fn run_name_for(run_id: &uuid::Uuid) -> String {
    const ADJECTIVES: [&str; 16] = [
        "bright", "calm", "clever", "bold", "gentle", "quick", "rare", "silent", "sunny", "swift",
        "wise", "brave", "crisp", "eager", "keen", "merry",
    ];
    const ANIMALS: [&str; 16] = [
        "owl", "fox", "otter", "heron", "lynx", "whale", "finch", "hare", "moth", "seal", "wren",
        "crane", "bison", "gecko", "koi", "yak",
    ];
    let bytes = run_id.as_bytes();
    format!(
        "{}-{}-{}",
        ADJECTIVES[bytes[0] as usize % 16],
        ANIMALS[bytes[1] as usize % 16],
        bytes[2] as u32 * 4 % 1000
    )
}

impl Tracker {
    /// Creates an experiment; its artifacts go under `location` (default
    /// `mlflow-artifacts:/<id>`). Returns its id.
    pub async fn create_experiment(
        &self,
        name: String,
        location: Option<String>,
        tags: Vec<KeyValue>,
    ) -> Result<String, MetaError> {
        self.write(|state| {
            let experiment_id = state.next_experiment_id();
            let artifact_location =
                location.unwrap_or_else(|| format!("mlflow-artifacts:/{experiment_id}"));
            let event = Event::ExperimentCreated {
                at: now_ms(),
                experiment_id: experiment_id.clone(),
                name,
                artifact_location,
                tags,
            };
            Ok((event, experiment_id))
        })
        .await
    }

    /// Starts a run, as MLflow does (the `mlflow.runName` tag holds its
    /// name; its artifacts go under its experiment's). Returns its id.
    pub async fn start_run(&self, start: RunStart) -> Result<String, MetaError> {
        let (run_id, queued) = self.queue_run(start).await?;
        self.acknowledged(queued).await?;
        Ok(run_id)
    }

    /// [`Tracker::start_run`], queued: the run is in the state at once.
    async fn queue_run(&self, start: RunStart) -> Result<(String, Queued), MetaError> {
        let RunStart {
            experiment_id,
            run_name,
            user_id,
            start_time,
            mut tags,
        } = start;
        let uuid = uuid::Uuid::new_v4();
        let run_id = uuid.simple().to_string();
        let tag = |tags: &[KeyValue], key: &str| {
            tags.iter().find(|t| t.key == key).map(|t| t.value.clone())
        };
        let run_name = run_name
            .or_else(|| tag(&tags, RUN_NAME_TAG))
            .unwrap_or_else(|| run_name_for(&uuid));
        tags.retain(|t| t.key != RUN_NAME_TAG);
        tags.push(KeyValue {
            key: RUN_NAME_TAG.into(),
            value: run_name.clone(),
        });
        let user_id = user_id
            .or_else(|| tag(&tags, "mlflow.user"))
            .unwrap_or_default();
        let ((), queued) = self
            .queue(|state| {
                let experiment = state.experiment(&experiment_id)?;
                let artifact_uri = format!("{}/{run_id}/artifacts", experiment.artifact_location);
                let event = Event::RunCreated {
                    at: now_ms(),
                    run_id: run_id.clone(),
                    experiment_id,
                    run_name,
                    user_id,
                    start_time,
                    artifact_uri,
                    tags,
                };
                Ok((event, ()))
            })
            .await?;
        Ok((run_id, queued))
    }

    /// Records a finished job as one run: experiment (created if
    /// missing), run, its inputs, params, metrics, tags and artifacts, and
    /// its end (`FINISHED` or `FAILED`). Returns the run's id and the
    /// stored artifacts.
    pub async fn record_run(
        &self,
        mut report: RunReport,
    ) -> Result<(String, Vec<StoredArtifact>), MetaError> {
        let experiment_id = self.experiment_named(&report.experiment).await?;
        let (run_id, created) = self
            .queue_run(RunStart {
                experiment_id,
                // An empty name gets a generated one.
                run_name: Some(std::mem::take(&mut report.run_name)).filter(|n| !n.is_empty()),
                user_id: None,
                start_time: report.start_time,
                tags: vec![],
            })
            .await?;
        // The rest is queued while the log takes the run's start: one
        // round trip for the whole run, not one per step. The start is
        // waited for even when the rest fails.
        let rest = self.record_rest(&run_id, report);
        let (created, rest) = futures::join!(self.acknowledged(created), rest);
        created?;
        Ok((run_id, rest?))
    }

    /// [`Tracker::record_run`] after the run's start: its inputs, params,
    /// metrics, tags, artifacts and end.
    async fn record_rest(
        &self,
        run_id: &str,
        report: RunReport,
    ) -> Result<Vec<StoredArtifact>, MetaError> {
        let run_id = run_id.to_string();
        // MLflow's `DatasetInput` shape, so its clients read them too.
        let datasets: Vec<serde_json::Value> = report
            .datasets
            .iter()
            .map(|(name, digest, context)| {
                serde_json::json!({
                    "dataset": {"name": name, "digest": digest, "source_type": "weir", "source": name},
                    "tags": [{"key": "mlflow.data.context", "value": context}],
                })
            })
            .collect();
        let events = [
            Event::RunInputs {
                at: now_ms(),
                run_id: run_id.clone(),
                datasets,
            },
            Event::RunLogged {
                at: now_ms(),
                run_id: run_id.clone(),
                metrics: report.metrics,
                params: report.params,
                tags: report.tags,
            },
        ];
        let mut events = Vec::from(events);
        // The files are written together: each write is a few hops to the
        // blocking pool, and a trial keeps four or five of them.
        let puts = report.artifacts.into_iter().map(|(path, bytes)| {
            let run_id = &run_id;
            async move { self.put_artifact(run_id, &path, bytes).await }
        });
        let mut stored = Vec::new();
        for (event, artifact) in futures::future::try_join_all(puts).await? {
            events.push(event);
            stored.push(artifact);
        }
        let status = if report.status.is_empty() {
            "FINISHED".to_string()
        } else {
            report.status
        };
        events.push(Event::RunUpdated {
            at: now_ms(),
            run_id,
            status: Some(status),
            end_time: Some(report.end_time),
            run_name: None,
        });
        // Queued one after another (the end only if all before it were
        // taken), then acknowledged together; each queued one is waited
        // for, even after a refusal, as it counts as in flight until then.
        let mut queued = Vec::with_capacity(events.len());
        let mut refused = Ok(());
        for event in events {
            match self.queue(|_| Ok((event, ()))).await {
                Ok(((), change)) => queued.push(change),
                Err(error) => {
                    refused = Err(error);
                    break;
                }
            }
        }
        let acknowledged =
            futures::future::join_all(queued.into_iter().map(|change| self.acknowledged(change)))
                .await;
        refused?;
        for result in acknowledged {
            result?;
        }
        Ok(stored)
    }

    /// The id of the experiment `name`, created if missing.
    pub async fn experiment_named(&self, name: &str) -> Result<String, MetaError> {
        let id = |state: &State| {
            state
                .experiment_by_name(name)
                .map(|e| e.experiment_id.clone())
        };
        if let Ok(existing) = self.read(id) {
            return Ok(existing);
        }
        match self.create_experiment(name.to_string(), None, vec![]).await {
            // Another writer created it since we looked.
            Err(error) if error.code == crate::ErrorCode::ResourceAlreadyExists => self.read(id),
            created => created,
        }
    }

    /// Where a run's artifacts are in Weir's store (`<experiment>/<run>/artifacts`);
    /// an error for a run that keeps them elsewhere.
    pub fn artifact_root(&self, run_id: &str) -> Result<String, MetaError> {
        let uri = self.read(|state| state.run(run_id).map(|r| r.artifact_uri.clone()))?;
        uri.strip_prefix("mlflow-artifacts:/")
            .map(|root| root.trim_start_matches('/').to_string())
            .ok_or_else(|| {
                MetaError::invalid(format!(
                    "run {run_id} keeps its artifacts at {uri}, outside Weir's store"
                ))
            })
    }

    /// Stores `bytes` as the artifact `path` (relative to the run's
    /// artifacts) of a run whose artifacts go through the proxy
    /// (`mlflow-artifacts:/…`).
    pub async fn store_artifact(
        &self,
        run_id: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<StoredArtifact, MetaError> {
        let (event, artifact) = self.put_artifact(run_id, path, bytes).await?;
        self.append(event).await?;
        Ok(artifact)
    }

    /// Puts `bytes` in the store as the artifact `path` of a run: the event
    /// that records it, still to append.
    async fn put_artifact(
        &self,
        run_id: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(Event, StoredArtifact), MetaError> {
        crate::artifacts::check_path(path)?;
        let path = format!("{}/{path}", self.artifact_root(run_id)?);
        let body =
            futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(bytes))]);
        let (sha256, size) = self.artifacts().put(body).await?;
        let event = Event::ArtifactStored {
            at: now_ms(),
            path: path.clone(),
            sha256: sha256.clone(),
            size,
        };
        Ok((event, StoredArtifact { path, sha256, size }))
    }

    /// The bytes of the artifact at `path` in the store.
    pub async fn artifact_bytes(&self, path: &str) -> Result<Vec<u8>, MetaError> {
        use futures::TryStreamExt as _;
        let sha256 = self.read(|state| {
            state
                .artifact(path)
                .map(|a| a.sha256.clone())
                .ok_or_else(|| MetaError::missing(format!("no artifact at {path}")))
        })?;
        let chunks: Vec<bytes::Bytes> = self.artifacts().get(&sha256).await?.try_collect().await?;
        Ok(chunks.concat())
    }

    /// Registers a version of model `name` (created if missing) made by
    /// run `run_id` from the files at `source`. Returns its number.
    pub async fn register_version(
        &self,
        name: &str,
        source: String,
        run_id: String,
        description: String,
        model: Option<crate::event::ModelInfo>,
    ) -> Result<u64, MetaError> {
        let created = self
            .append(Event::ModelCreated {
                at: now_ms(),
                name: name.to_string(),
                description: String::new(),
                tags: vec![],
            })
            .await;
        match created {
            Ok(()) => {}
            Err(error) if error.code == crate::ErrorCode::ResourceAlreadyExists => {}
            Err(error) => return Err(error),
        }
        self.write(|state| {
            let version = state.model(name)?.next_version;
            let event = Event::VersionCreated {
                at: now_ms(),
                name: name.to_string(),
                version,
                source,
                run_id,
                user_id: String::new(),
                description,
                tags: vec![],
                model: model.map(Box::new),
            };
            Ok((event, version))
        })
        .await
    }

    /// Points `alias` of model `name` at `version`.
    pub async fn set_alias(&self, name: &str, alias: &str, version: u64) -> Result<(), MetaError> {
        self.append(Event::AliasSet {
            at: now_ms(),
            name: name.to_string(),
            alias: alias.to_string(),
            version: Some(version),
        })
        .await
    }

    /// Records `spec` (YAML, serving `models`) as the next version of
    /// deployment `name`, unless it is the latest already. Returns the
    /// version and whether it is new.
    pub async fn apply_deployment(
        &self,
        name: &str,
        spec: &str,
        models: Vec<String>,
    ) -> Result<(u64, bool), MetaError> {
        let unchanged = self.read(|state| {
            state
                .deployment(name)
                .ok()
                .filter(|d| !d.deleted && d.latest().spec == spec)
                .map(|d| d.latest().version)
        });
        if let Some(version) = unchanged {
            return Ok((version, false));
        }
        self.write(|state| {
            let version = state.deployment(name).map_or(1, |d| d.latest().version + 1);
            let event = Event::DeploymentApplied {
                at: now_ms(),
                name: name.to_string(),
                version,
                spec: spec.to_string(),
                models,
            };
            Ok((event, (version, true)))
        })
        .await
    }

    /// Records that deployment `name` serves `models` (`name@version`).
    pub async fn deployment_serving(
        &self,
        name: &str,
        models: Vec<String>,
    ) -> Result<(), MetaError> {
        self.append(Event::DeploymentServing {
            at: now_ms(),
            name: name.to_string(),
            models,
        })
        .await
    }

    /// Deletes deployment `name`: its servers stop.
    pub async fn delete_deployment(&self, name: &str) -> Result<(), MetaError> {
        self.append(Event::DeploymentDeleted {
            at: now_ms(),
            name: name.to_string(),
        })
        .await
    }
}
