//! A tuning worker (`weir worker`): one member of an experiment's worker
//! group, running trials from `weir.jobs.<experiment>`.
//!
//! Trials come from the group's partitions; each is run under a lease on
//! `weir.meta` ([`claim_trial`]), so a trial is run once whoever delivers
//! it. A worker without work also reads every trial on the topic (without
//! the group) and takes any that is free: new and not yet claimed — the
//! group hands out partitions, not work, so a trial may wait behind
//! another worker's — or given up by a worker that died (its lease
//! lapsed). That is also how a dead worker's trials get run where the
//! broker never moves its partitions to the others.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_bus::{Bus, ConsumerOptions, RawRecord, StartFrom, TopicSpec};
use weir_catalog::Reference;
use weir_features::datasets::Datasets;
use weir_meta::artifacts::ArtifactStore;

use super::{JOB_PARTITIONS, Trial, TrialState, claim_trial, jobs_topic, run_trial};
use crate::TrainError;
use crate::job::{JobCache, Workspace};

/// What a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The experiment whose trials it runs.
    pub experiment: String,
    /// Stop after this many trials (`None`: until stopped).
    pub max_trials: Option<usize>,
    /// Where trials' data and runtimes' output go.
    pub scratch: PathBuf,
    /// Where runs' artifacts go.
    pub artifacts: ArtifactStore,
}

/// What a worker does, as it does it.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    /// It is ready and waits for trials.
    Waiting {
        /// Its name in leases (`host/pid/start`).
        holder: String,
        /// The topic it reads.
        topic: String,
    },
    /// A record on the topic is not a trial; it is skipped.
    NotATrial {
        /// `topic/partition@offset`.
        at: String,
        /// Why.
        error: String,
    },
    /// A trial it claimed was taken, or had been run, by another worker.
    NotRunHere {
        /// The trial.
        trial: String,
        /// Where it came from.
        at: String,
        /// Where it stood.
        state: TrialState,
    },
    /// It runs a trial.
    Running {
        /// The trial.
        trial: String,
        /// Where it came from (`taken over` when it was free on another
        /// worker's partition).
        at: String,
    },
    /// A trial's run is recorded.
    Recorded {
        /// The trial.
        trial: String,
        /// Its run.
        run_id: String,
        /// Why it failed, if it did.
        failure: Option<String>,
    },
}

/// Something told of a worker's events.
pub type Report = Arc<dyn Fn(WorkerEvent) + Send + Sync>;

/// Runs trials until `stop` completes or `options.max_trials` have run;
/// returns how many ran here. Runs still being recorded when it stops (on
/// an error too) are recorded first.
pub async fn run_worker(
    bus: &Bus,
    options: WorkerOptions,
    stop: impl Future<Output = ()>,
    report: Report,
) -> Result<usize, TrainError> {
    let topic = jobs_topic(&options.experiment);
    bus.admin()
        .ensure_topic(&TopicSpec::new(&topic, JOB_PARTITIONS))
        .await?;
    let setting = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut group = bus.consumer(
        &[&topic],
        ConsumerOptions {
            group: Some(format!("weir-workers.{}", options.experiment)),
            start: StartFrom::Committed,
            settings: vec![
                // Notice a dead worker quickly; never drop a live one for
                // taking long over a trial.
                setting("session.timeout.ms", "6000"),
                setting("heartbeat.interval.ms", "1000"),
                setting("max.poll.interval.ms", "86400000"),
            ],
            ..Default::default()
        },
    )?;
    let mut everything = bus.consumer(
        &[&topic],
        ConsumerOptions {
            start: StartFrom::Beginning,
            read_only: true,
            settings: vec![setting(
                "fetch.wait.max.ms",
                weir_meta::tracker::FOLLOW_WAIT_MS,
            )],
            ..Default::default()
        },
    )?;
    let holder = format!(
        "{}/{}/{}",
        hostname(),
        std::process::id(),
        weir_core::now_ms()
    );
    // One warm runtime process and the datasets' split parts, kept from
    // trial to trial.
    let cache = JobCache::new(
        options
            .scratch
            .join(format!("worker-{}", std::process::id())),
    );
    cache.warm_up().await?;
    // Trials seen on any partition and not yet known to be done.
    let mut seen: BTreeMap<String, Trial> = BTreeMap::new();
    let mut idle = tokio::time::interval(Duration::from_millis(250));
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let parse = |record: &RawRecord| {
        let at = format!("{}/{}@{}", record.topic, record.partition, record.offset);
        match serde_json::from_slice::<Trial>(record.payload.as_deref().unwrap_or(b"")) {
            Ok(trial) => Some((trial, at)),
            Err(error) => {
                report(WorkerEvent::NotATrial {
                    at,
                    error: error.to_string(),
                });
                None
            }
        }
    };
    // The log, read once and then followed: the trials' runs and leases,
    // and the state each trial's tracker starts from. Three reads of the
    // log at once; the tracker's own also starts its producer early (each
    // trial brings it up to the follower).
    let (mut follower, mut datasets, tracker) = tokio::try_join!(
        async { Ok::<_, TrainError>(weir_meta::tracker::Follower::start(bus).await?) },
        async { Ok(Datasets::load(bus).await?) },
        async { Ok(weir_meta::Tracker::open(bus, options.artifacts.clone()).await?) },
    )?;
    report(WorkerEvent::Waiting {
        holder: holder.clone(),
        topic: topic.clone(),
    });
    // Trials whose runtime is done, their runs being recorded and their
    // claims given up while the runtime starts the next trial.
    let mut recording = tokio::task::JoinSet::new();
    let mut run_here = BTreeSet::new();
    let mut ran = 0;
    tokio::pin!(stop);
    let served = async {
        while options.max_trials.is_none_or(|max| ran < max) {
            let (trial, at) = tokio::select! {
                // The log first: what is decided below reads its state.
                biased;
                event = follower.next() => {
                    if !event? {
                        return Err(TrainError::Runtime(format!("{} closed", weir_core::topics::META)));
                    }
                    continue;
                }
                record = group.next_raw() => {
                    let Some(record) = record? else { break };
                    let trial = parse(&record);
                    group.commit().await?;
                    match trial {
                        // One another worker has already run (or is running) is
                        // passed over without a claim.
                        Some((trial, at)) => match trial.state(follower.state(), weir_core::now_ms()) {
                            TrialState::Recorded | TrialState::Closed => continue,
                            TrialState::Held { holder: h, .. } if h != holder => continue,
                            _ => (trial, at),
                        },
                        None => continue,
                    }
                }
                record = everything.next_raw() => {
                    let Some(record) = record? else {
                        return Err(TrainError::Runtime(format!("{topic} ended")));
                    };
                    let Some((trial, at)) = parse(&record) else { continue };
                    seen.insert(trial.id(), trial.clone());
                    // An idle worker takes a new trial at once, whichever
                    // worker's partition it came on: the claim decides.
                    match trial.state(follower.state(), weir_core::now_ms()) {
                        TrialState::Open { .. } => (trial, at),
                        _ => continue,
                    }
                }
                _ = idle.tick(), if !seen.is_empty() => {
                    let now = weir_core::now_ms();
                    let state = follower.state();
                    seen.retain(|_, trial| {
                        !matches!(trial.state(state, now), TrialState::Recorded | TrialState::Closed)
                    });
                    let free = seen
                        .values()
                        .find(|trial| matches!(trial.state(state, now), TrialState::Open { .. }));
                    match free {
                        Some(trial) => (trial.clone(), "taken over".to_string()),
                        None => continue,
                    }
                }
                () = &mut stop => break,
            };
            tracing::debug!(trial = %trial.id(), %at, "worker: a trial to claim");
            // Both consumers deliver each trial, and one this worker ran
            // is still held by it while its run is being recorded: it is
            // not run twice.
            if run_here.contains(&trial.id()) {
                continue;
            }
            if let Some(state) = claim_trial(&trial, &tracker, &mut follower, &holder).await? {
                if !matches!(state, TrialState::Recorded | TrialState::Closed) {
                    report(WorkerEvent::NotRunHere {
                        trial: trial.id(),
                        at,
                        state,
                    });
                }
                continue;
            }
            tracing::debug!(trial = %trial.id(), "worker: claimed");
            run_here.insert(trial.id());
            report(WorkerEvent::Running {
                trial: trial.id(),
                at,
            });
            // Dataset versions do not change; a name without a version
            // means the latest, which may be new.
            let dataset = &trial.job.dataset;
            let known = dataset
                .parse::<Reference>()
                .ok()
                .filter(|r| r.number().is_some())
                .and_then(|r| datasets.find(&r));
            if !std::path::Path::new(dataset).is_file() && known.is_none() {
                datasets = Datasets::load(bus).await?;
            }
            let workspace = Workspace {
                tracker: &tracker,
                datasets: &datasets,
                scratch: &options.scratch,
                cache: Some(&cache),
            };
            // While the runtime starts this trial (its job does not read
            // the tracker), the last trial's run goes to the log, then the
            // tracker gets to where the follower has read (up to the
            // claim): no replay of the log per trial. The run goes first:
            // the tracker may take the follower's state, which has not
            // read it yet. Both take milliseconds; the claim's first
            // renewal comes after a third of its lease.
            let ready = async {
                while let Some(recorded) = recording.join_next().await {
                    recorded.map_err(|e| TrainError::Runtime(e.to_string()))??;
                }
                tracker.catch_up_with(bus, &follower).await?;
                Ok::<_, TrainError>(())
            };
            let (ready, trial_ran) = tokio::join!(ready, run_trial(&trial, workspace, &holder));
            ready?;
            let trial_ran = trial_ran?;
            let (tracker, id, report) = (tracker.clone(), trial.id(), report.clone());
            recording.spawn(async move {
                let outcome = trial_ran.record(&tracker).await?;
                report(WorkerEvent::Recorded {
                    trial: id,
                    run_id: outcome.run_id,
                    failure: outcome.failure,
                });
                Ok::<_, TrainError>(())
            });
            ran += 1;
        }
        Ok(())
    }
    .await;
    while let Some(recorded) = recording.join_next().await {
        recorded.map_err(|e| TrainError::Runtime(e.to_string()))??;
    }
    served?;
    tracker.close().await;
    Ok(ran)
}

/// This machine's name, for naming a worker.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
