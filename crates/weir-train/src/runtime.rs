//! The runtime contract: how Weir runs what trains a model.
//!
//! A runtime is a command. Weir runs it with these variables set:
//!
//! | variable | what it holds |
//! |---|---|
//! | `WEIR_TRAIN_PATH` | the training rows, Parquet: the feature columns and the label |
//! | `WEIR_VALIDATION_PATH` | the validation rows, same columns |
//! | `WEIR_TEST_PATH` | the test rows, same columns |
//! | `WEIR_FEATURES` | the feature columns, in the model's input order (a JSON list) |
//! | `WEIR_LABEL` | the label column |
//! | `WEIR_TASK` | `classification` or `regression` |
//! | `WEIR_CLASSES` | a classifier's classes, in score order (a JSON list) |
//! | `WEIR_PARAMS` | the job's params (a JSON object) |
//! | `WEIR_SEED` | a seed for anything random |
//! | `WEIR_OUTPUT_DIR` | where it writes what it made (empty at start) |
//!
//! It must write `$WEIR_OUTPUT_DIR/model.onnx`: one `float32` input of
//! shape `[N, features]`, and for a classifier a `float32` output of class
//! probabilities `[N, classes]` (named `probabilities` if there are
//! several float outputs), for a regressor `[N, 1]` or `[N]`. It may write
//! `metrics.json` (`{"name": number}`, logged with the run),
//! `dependencies.json` (`{"package": "version"}`, kept with the model
//! version), and `validation_scores.parquet` (its own scores of the
//! validation rows, columns `score_0`, `score_1`, …: Weir checks the ONNX
//! model gives the same). Everything else it writes is kept as the run's
//! artifacts. It fails by exiting non-zero; the last lines it printed are
//! the run's failure reason.
//!
//! The built-in runtimes (`sklearn`, `lightgbm`) are `python/runtime.py`
//! run by the managed Python environment (`WEIR_PYTHON`). A process that
//! runs job after job (a tuning worker) keeps one such Python process
//! ([`Warm`]) and hands it each job: no interpreter start-up, imports or
//! data reading per job. The built-ins also take `WEIR_EXPORT=deferred`,
//! which tuning trials use: the fitted model is kept pickled
//! (`model.pkl`), with the framework's scores of the validation rows, and
//! only the model a search keeps is exported to ONNX ([`export`]).
//!
//! ## Data-parallel jobs
//!
//! With `distributed: {processes: N}`, Weir starts the runtime N times at
//! once, as Kubeflow's training operators start a job's replicas, and
//! supervises them ([`run_distributed`]). Rank *r*'s `WEIR_TRAIN_PATH` holds
//! its share of the training rows (row *i* goes to rank *i* mod N); the
//! validation and test rows are whole. Rank 0 writes to the job's
//! `WEIR_OUTPUT_DIR` (its model is the job's model); the others write to
//! their own directory, and only their logs are kept. Besides the contract's
//! variables each process gets:
//!
//! | variable | what it holds |
//! |---|---|
//! | `WEIR_RANK`, `RANK`, `LOCAL_RANK` | its rank, 0…N-1 |
//! | `WEIR_WORLD_SIZE`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE` | N |
//! | `WEIR_MASTER_ADDR`, `MASTER_ADDR`, `WEIR_MASTER_PORT`, `MASTER_PORT` | where rank 0 listens (PyTorch's `init_process_group` reads these) |
//! | `WEIR_PEERS` | every rank's `host:port`, by rank, comma-separated (LightGBM's `machines`) |
//! | `WEIR_LISTEN_PORT` | this rank's port in `WEIR_PEERS` |
//! | `WEIR_ATTEMPT` | 0, then 1, 2… after restarts |
//!
//! When one process fails, the others are killed (a collective would wait
//! for it forever); the job is started again, on fresh ports, while
//! `restarts` allow, and fails otherwise with the failed rank's last lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::TrainError;
use crate::spec::Runtime;

/// The built-in runtimes' script.
const SCRIPT: &str = include_str!("../python/runtime.py");

/// What the runtime is given.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Training, validation and test rows.
    pub parts: [PathBuf; 3],
    /// Feature columns.
    pub features: Vec<String>,
    /// Label column.
    pub label: String,
    /// `classification` or `regression`.
    pub task: String,
    /// A classifier's classes.
    pub classes: Vec<String>,
    /// Params.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Seed.
    pub seed: u64,
    /// Where it writes.
    pub output: PathBuf,
    /// A built-in runtime keeps the fitted model (`model.pkl`) rather than
    /// exporting it to ONNX (`WEIR_EXPORT=deferred`).
    pub deferred: bool,
}

/// What a built-in runtime's process is asked to do.
enum Task<'a> {
    Train(&'a Runtime),
    /// Export the pickled model at this path.
    Export(&'a Path),
}

impl Task<'_> {
    /// The script's arguments; `None` for a command.
    fn script_args(&self) -> Option<Vec<String>> {
        match self {
            Task::Train(Runtime::Sklearn { estimator }) => {
                Some(vec!["sklearn".into(), estimator.clone()])
            }
            Task::Train(Runtime::Lightgbm) => Some(vec!["lightgbm".into()]),
            Task::Train(Runtime::Command { .. }) => None,
            Task::Export(_) => Some(vec!["export".into()]),
        }
    }

    fn describe(&self) -> String {
        match self {
            Task::Train(runtime) => runtime.describe(),
            Task::Export(_) => "export".into(),
        }
    }
}

/// The OpenMP threads each of `workers` runtimes on one machine gets: its
/// share of the machine's cores (`OMP_NUM_THREADS`), so that workers side
/// by side do not oversubscribe it.
pub fn threads_per_worker(workers: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / workers.max(1)).max(1).to_string()
}

/// The Python the built-in runtimes use: `WEIR_PYTHON`, else the managed
/// training environment's (`weir setup` installs it).
pub fn python() -> Result<PathBuf, TrainError> {
    Ok(weir_setup::training_python()?)
}

/// Runs `runtime` under the contract — in `warm`'s process when given and
/// the runtime is built in, else in a process of its own; its output
/// (stdout and stderr) goes to `log`. Errors carry the last lines it
/// printed.
pub async fn run(
    runtime: &Runtime,
    contract: &Contract,
    log: &Path,
    warm: Option<&Warm>,
) -> Result<(), TrainError> {
    run_task(Task::Train(runtime), contract, log, warm).await
}

/// Exports the model a deferred job of a built-in runtime pickled (at
/// `model`) to `contract.output`: `model.onnx`, and the framework's scores
/// of the validation rows (`validation_scores.parquet`) to check it with.
pub async fn export(
    model: &Path,
    contract: &Contract,
    log: &Path,
    warm: Option<&Warm>,
) -> Result<(), TrainError> {
    run_task(Task::Export(model), contract, log, warm).await
}

async fn run_task(
    task: Task<'_>,
    contract: &Contract,
    log: &Path,
    warm: Option<&Warm>,
) -> Result<(), TrainError> {
    if let (Some(warm), Some(args)) = (warm, task.script_args()) {
        return warm.run(&task, args, contract, log).await;
    }
    let mut command = command(&task, contract, log)?;
    let status = command.status().await.map_err(|e| cannot_start(&task, e))?;
    if !status.success() {
        return Err(TrainError::Runtime(format!(
            "runtime {} exited with {status}: {}",
            task.describe(),
            tail(log, 5)
        )));
    }
    Ok(())
}

/// A Python process running the built-in runtimes' jobs one after another
/// (`runtime.py serve`), started at its first job and again after one that
/// killed it. Jobs take turns.
#[derive(Debug, Default)]
pub struct Warm {
    process: tokio::sync::Mutex<Option<WarmProcess>>,
}

#[derive(Debug)]
struct WarmProcess {
    child: tokio::process::Child,
    requests: tokio::process::ChildStdin,
    answers: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Warm {
    /// No process yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the process now (it imports the libraries the jobs use while
    /// nothing waits for it), unless it runs.
    pub async fn start(&self) -> Result<(), TrainError> {
        let python = python()?;
        WarmProcess::running(&mut *self.process.lock().await, &python)
            .map(drop)
            .map_err(|e| TrainError::Runtime(format!("starting {}: {e}", python.display())))
    }

    async fn run(
        &self,
        task: &Task<'_>,
        args: Vec<String>,
        contract: &Contract,
        log: &Path,
    ) -> Result<(), TrainError> {
        use tokio::io::AsyncWriteExt as _;
        let python = python()?;
        let mut process = self.process.lock().await;
        let running =
            WarmProcess::running(&mut process, &python).map_err(|e| cannot_start(task, e))?;
        let env: BTreeMap<&str, String> = contract_env(task, contract)
            .into_iter()
            .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
            .collect();
        let request = serde_json::json!({"args": args, "env": env, "log": log});
        let mut line = serde_json::to_vec(&request).expect("JSON");
        line.push(b'\n');
        let sent = running.requests.write_all(&line).await;
        let answer = match sent {
            Ok(()) => running.answers.next_line().await,
            Err(error) => Err(error),
        };
        let status = match answer {
            Ok(Some(answer)) => serde_json::from_str::<serde_json::Value>(&answer)
                .ok()
                .and_then(|a| a["status"].as_i64()),
            _ => None,
        };
        match status {
            Some(0) => Ok(()),
            Some(status) => Err(TrainError::Runtime(format!(
                "runtime {} failed (status {status}): {}",
                task.describe(),
                tail(log, 5)
            ))),
            None => {
                // Killed or broken mid-job: the next job starts a new one.
                *process = None;
                Err(TrainError::Runtime(format!(
                    "runtime {}: its process died: {}",
                    task.describe(),
                    tail(log, 5)
                )))
            }
        }
    }
}

impl WarmProcess {
    /// The process in `slot`, started if there is none or it has exited.
    fn running<'a>(slot: &'a mut Option<Self>, python: &Path) -> std::io::Result<&'a mut Self> {
        let alive = slot.as_mut().is_some_and(|process| {
            process
                .child
                .try_wait()
                .is_ok_and(|exited| exited.is_none())
        });
        if !alive {
            *slot = Some(Self::start(python)?);
        }
        Ok(slot.as_mut().expect("started above"))
    }

    fn start(python: &Path) -> std::io::Result<Self> {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = Command::new(python)
            .args(["-c", SCRIPT, "serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let requests = child.stdin.take().expect("piped");
        let answers = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Self {
            child,
            requests,
            answers,
        })
    }
}

/// A data-parallel job's processes.
#[derive(Debug, Clone)]
pub struct Ranks {
    /// Each rank's training rows, by rank.
    pub shards: Vec<PathBuf>,
    /// Each rank's log, by rank.
    pub logs: Vec<PathBuf>,
    /// Where ranks other than 0 write (a directory each is made under it).
    pub scratch: PathBuf,
    /// Restarts allowed.
    pub restarts: u32,
}

/// Runs `runtime` as one process per rank (see the module's doc) until all
/// succeed; returns how many attempts it took.
pub async fn run_distributed(
    runtime: &Runtime,
    contract: &Contract,
    ranks: &Ranks,
) -> Result<u32, TrainError> {
    let world = ranks.shards.len();
    let mut attempt = 0;
    loop {
        if attempt > 0 {
            // Nothing a failed attempt wrote is kept.
            let output = &contract.output;
            std::fs::remove_dir_all(output)
                .and_then(|()| std::fs::create_dir_all(output))
                .map_err(|e| TrainError::io(output.display(), e))?;
        }
        let ports = free_ports(world)?;
        let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut running = tokio::task::JoinSet::new();
        for (rank, (shard, log)) in ranks.shards.iter().zip(&ranks.logs).enumerate() {
            let mut contract = contract.clone();
            contract.parts[0] = shard.clone();
            if rank > 0 {
                contract.output = ranks.scratch.join(format!("output-rank{rank}-{attempt}"));
                std::fs::create_dir_all(&contract.output)
                    .map_err(|e| TrainError::io(contract.output.display(), e))?;
            }
            let mut command = command(&Task::Train(runtime), &contract, log)?;
            for (names, value) in [
                (&["WEIR_RANK", "RANK", "LOCAL_RANK"][..], rank.to_string()),
                (
                    &["WEIR_WORLD_SIZE", "WORLD_SIZE", "LOCAL_WORLD_SIZE"],
                    world.to_string(),
                ),
                (&["WEIR_MASTER_ADDR", "MASTER_ADDR"], "127.0.0.1".into()),
                (&["WEIR_MASTER_PORT", "MASTER_PORT"], ports[0].to_string()),
                (&["WEIR_PEERS"], peers.join(",")),
                (&["WEIR_LISTEN_PORT"], ports[rank].to_string()),
                (&["WEIR_ATTEMPT"], attempt.to_string()),
            ] {
                for name in names {
                    command.env(name, &value);
                }
            }
            // Dropped (when another rank fails), the child is killed.
            let mut child = command
                .spawn()
                .map_err(|e| cannot_start(&Task::Train(runtime), e))?;
            running.spawn(async move { (rank, child.wait().await) });
        }
        let mut failure = None;
        while let Some(joined) = running.join_next().await {
            let (rank, status) = joined.expect("a rank's task is never cancelled here");
            let failed = match status {
                Ok(status) if status.success() => continue,
                Ok(status) => format!("exited with {status}"),
                Err(error) => format!("could not be waited for: {error}"),
            };
            failure = Some(format!(
                "rank {rank} of {world} {failed}: {}",
                tail(&ranks.logs[rank], 5)
            ));
            running.shutdown().await;
            break;
        }
        let Some(failure) = failure else {
            return Ok(attempt + 1);
        };
        if attempt >= ranks.restarts {
            return Err(TrainError::Runtime(format!(
                "runtime {} (attempt {} of {}): {failure}",
                runtime.describe(),
                attempt + 1,
                ranks.restarts + 1
            )));
        }
        tracing::warn!(%failure, attempt, "a rank failed; starting every rank again");
        attempt += 1;
    }
}

/// `count` ports free now on the loopback interface.
fn free_ports(count: usize) -> Result<Vec<u16>, TrainError> {
    // Held together so that they differ; released for the ranks to bind.
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrainError::Runtime(format!("finding free ports: {e}")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| TrainError::Runtime(format!("finding free ports: {e}")))
}

fn cannot_start(task: &Task<'_>, error: std::io::Error) -> TrainError {
    TrainError::Runtime(format!(
        "runtime {}: cannot start: {error}",
        task.describe()
    ))
}

/// The runtime's process under the contract, its output going to `log`.
fn command(task: &Task<'_>, contract: &Contract, log: &Path) -> Result<Command, TrainError> {
    let (program, args): (PathBuf, Vec<String>) = match (task, task.script_args()) {
        (_, Some(args)) => {
            let mut words = vec!["-c".to_string(), SCRIPT.into()];
            words.extend(args);
            (python()?, words)
        }
        (Task::Train(Runtime::Command { command }), None) => {
            let (program, args) = command
                .split_first()
                .ok_or_else(|| TrainError::Invalid("runtime: `command` is empty".into()))?;
            (program.into(), args.to_vec())
        }
        (_, None) => unreachable!("only commands have no script arguments"),
    };
    let log_file = std::fs::File::create(log).map_err(|e| TrainError::io(log.display(), e))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| TrainError::io(log.display(), e))?;
    let mut command = Command::new(&program);
    command
        .args(&args)
        .envs(contract_env(task, contract))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .kill_on_drop(true);
    Ok(command)
}

/// The contract's variables.
fn contract_env(task: &Task<'_>, contract: &Contract) -> Vec<(&'static str, std::ffi::OsString)> {
    let [train, validation, test] = &contract.parts;
    let mut env = vec![
        ("WEIR_TRAIN_PATH", train.into()),
        ("WEIR_VALIDATION_PATH", validation.into()),
        ("WEIR_TEST_PATH", test.into()),
        ("WEIR_FEATURES", json(&contract.features).into()),
        ("WEIR_LABEL", (&contract.label).into()),
        ("WEIR_TASK", (&contract.task).into()),
        ("WEIR_CLASSES", json(&contract.classes).into()),
        ("WEIR_PARAMS", json(&contract.params).into()),
        ("WEIR_SEED", contract.seed.to_string().into()),
        ("WEIR_OUTPUT_DIR", (&contract.output).into()),
    ];
    if contract.deferred {
        env.push(("WEIR_EXPORT", "deferred".into()));
    }
    if let Task::Export(model) = task {
        env.push(("WEIR_MODEL_PATH", model.into()));
    }
    env
}

/// The last `lines` non-empty lines of a file, joined with ` | `.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    last[last.len().saturating_sub(lines)..].join(" | ")
}

/// One JSON text, for an environment variable.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("JSON of plain values")
}
