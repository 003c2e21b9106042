//! Running jobs to their end: their status reported now and then, and a
//! stop (Ctrl-C, a shutdown) turned into a checkpoint and a clean stop of
//! every job.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::DataflowError;
use crate::job::{JobHandle, Status};

/// Runs `jobs` until all have ended or `stop` resolves (then each
/// checkpoints and stops). Every `every`, and once more at the end,
/// `on_status` is told each job's index, name and status. Returns each
/// job's last status, or the first job's failure.
pub async fn supervise(
    jobs: Vec<(String, JobHandle)>,
    every: Duration,
    mut on_status: impl FnMut(usize, &str, &Status),
    stop: impl Future<Output = ()>,
) -> Result<Vec<(String, Status)>, DataflowError> {
    let jobs = Arc::new(Mutex::new(jobs));
    let finished = {
        let jobs = jobs.clone();
        tokio::task::spawn_blocking(move || {
            while !jobs
                .lock()
                .expect("jobs")
                .iter()
                .all(|(_, h)| h.is_finished())
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    tokio::pin!(finished, stop);
    let mut stopped = false;
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut finished => break,
            _ = ticker.tick() => {
                for (i, (name, handle)) in jobs.lock().expect("jobs").iter().enumerate() {
                    on_status(i, name, &handle.status());
                }
            }
            _ = &mut stop, if !stopped => {
                stopped = true;
                for (_, handle) in jobs.lock().expect("jobs").iter() {
                    handle.stop();
                }
            }
        }
    }
    let jobs = std::mem::take(&mut *jobs.lock().expect("jobs"));
    let mut statuses = Vec::new();
    for (i, (name, handle)) in jobs.into_iter().enumerate() {
        let status = match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(joined) => joined,
            Err(panicked) => Err(DataflowError::Execution(panicked.to_string())),
        }
        .map_err(|cause| DataflowError::Job {
            job: name.clone(),
            cause: Box::new(cause),
        })?;
        on_status(i, &name, &status);
        statuses.push((name, status));
    }
    Ok(statuses)
}
