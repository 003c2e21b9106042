"""The tracking workload of `weir bench tracking`, through the official
mlflow client, against whichever server URI it is given (Weir's or MLflow's):

    mlflow_tracking.py URI RUNS SEARCHES

Logs RUNS runs, each 10 params and 20 metrics x 10 steps in one `log_batch`
(create, log_batch, terminate: three calls), then SEARCHES `search_runs`
calls with a filter string and an order_by. Prints one JSON line: the
seconds of each phase, and a digest of every search's results (the same
data gives the same digest on any correct server).
"""

import hashlib
import json
import sys
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

PARAMS, METRICS, STEPS = 10, 20, 10


def main():
    uri, runs, searches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(f"bench-{time.time_ns()}")
    started = time.perf_counter()
    for i in range(runs):
        run = client.create_run(experiment_id, run_name=f"run-{i:05}", start_time=1_700_000_000_000 + i)
        now = 1_700_000_000_000 + i
        metrics = [
            Metric(f"m{k}", ((i * 31 + k * 7 + step) % 1000) / 1000, now + step, step)
            for k in range(METRICS)
            for step in range(STEPS)
        ]
        params = [Param(f"p{j}", str((i + j) % 5)) for j in range(PARAMS)]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, synchronous=True)
        client.set_terminated(run.info.run_id, end_time=now + 1000)
    log_seconds = time.perf_counter() - started

    digest = hashlib.sha256()
    matched = 0
    started = time.perf_counter()
    for s in range(searches):
        found = client.search_runs(
            [experiment_id],
            filter_string=f"metrics.m0 > {(s % 10) / 10} and params.p1 = '{s % 5}'",
            order_by=["metrics.m1 DESC", "attributes.run_name ASC"],
            max_results=100,
        )
        names = [r.info.run_name for r in found]
        matched += len(names)
        digest.update(json.dumps(names).encode())
    search_seconds = time.perf_counter() - started
    print(json.dumps({
        "runs": runs,
        "log_seconds": log_seconds,
        "searches": searches,
        "search_seconds": search_seconds,
        "matched": matched,
        "digest": digest.hexdigest(),
    }))


if __name__ == "__main__":
    main()
