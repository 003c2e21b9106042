"""The tracking workload of `weir bench tracking`, against whichever server
URI it is given (Weir's or MLflow's):

    mlflow_tracking.py URI RUNS SEARCHES [client|http]

`client` (default) drives it through the official mlflow client; `http`
sends the same requests (the JSON the client sends) with a plain
keep-alive `requests.Session`, which leaves out the client's own cost (it
builds protobuf messages and entity objects for every call) and so shows
more of the server's.

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

import requests

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

PARAMS, METRICS, STEPS = 10, 20, 10


def metric_values(i, now):
    return [
        (f"m{k}", ((i * 31 + k * 7 + step) % 1000) / 1000, now + step, step)
        for k in range(METRICS)
        for step in range(STEPS)
    ]


def search_filter(s):
    return f"metrics.m0 > {(s % 10) / 10} and params.p1 = '{s % 5}'"


ORDER_BY = ["metrics.m1 DESC", "attributes.run_name ASC"]


def over_http(uri, runs, searches):
    """The same calls as plain HTTP."""
    api = f"{uri}/api/2.0/mlflow"
    session = requests.Session()

    def call(route, body):
        response = session.post(f"{api}/{route}", json=body)
        response.raise_for_status()
        return response.json()

    experiment_id = call("experiments/create", {"name": f"bench-http-{time.time_ns()}"})["experiment_id"]
    started = time.perf_counter()
    for i in range(runs):
        now = 1_700_000_000_000 + i
        run_id = call("runs/create", {"experiment_id": experiment_id, "run_name": f"run-{i:05}", "start_time": now})["run"]["info"]["run_id"]
        call("runs/log-batch", {
            "run_id": run_id,
            "metrics": [{"key": k, "value": v, "timestamp": t, "step": s} for k, v, t, s in metric_values(i, now)],
            "params": [{"key": f"p{j}", "value": str((i + j) % 5)} for j in range(PARAMS)],
        })
        call("runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": now + 1000})
    log_seconds = time.perf_counter() - started
    digest, matched = hashlib.sha256(), 0
    started = time.perf_counter()
    for s in range(searches):
        found = call("runs/search", {"experiment_ids": [experiment_id], "filter": search_filter(s), "order_by": ORDER_BY, "max_results": 100})
        names = [r["info"]["run_name"] for r in found.get("runs", [])]
        matched += len(names)
        digest.update(json.dumps(names).encode())
    return log_seconds, time.perf_counter() - started, matched, digest.hexdigest()


def main():
    uri, runs, searches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "client"
    if mode == "http":
        log_seconds, search_seconds, matched, digest = over_http(uri, runs, searches)
        print(json.dumps({"runs": runs, "log_seconds": log_seconds, "searches": searches,
                          "search_seconds": search_seconds, "matched": matched, "digest": digest}))
        return
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(f"bench-{time.time_ns()}")
    started = time.perf_counter()
    for i in range(runs):
        run = client.create_run(experiment_id, run_name=f"run-{i:05}", start_time=1_700_000_000_000 + i)
        now = 1_700_000_000_000 + i
        metrics = [Metric(k, v, t, s) for k, v, t, s in metric_values(i, now)]
        params = [Param(f"p{j}", str((i + j) % 5)) for j in range(PARAMS)]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, synchronous=True)
        client.set_terminated(run.info.run_id, end_time=now + 1000)
    log_seconds = time.perf_counter() - started

    digest, matched = hashlib.sha256(), 0
    started = time.perf_counter()
    for s in range(searches):
        found = client.search_runs(
            [experiment_id],
            filter_string=search_filter(s),
            order_by=ORDER_BY,
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
