"""The official `mlflow` client against `weir server`.

    mlflow_client.py write URI   # logs experiments, runs, artifacts, models; checks
                                 # every value read back; prints the state as JSON
    mlflow_client.py read URI    # prints the same state, read only (for replay checks)
    mlflow_client.py errors URI  # bad requests get MLflow's error codes

Every check is an `assert`: a failure exits non-zero with the values.
"""

import json
import math
import os
import sys
import tempfile
import warnings

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still served

EXPERIMENT = "churn"
MODEL = "churn-model"
TRIALS = [(0.1, 3, "lgbm"), (0.05, 5, "linear"), (0.2, 7, "lgbm")]
MODEL_BYTES = bytes(range(256)) * 64


def error_code(call):
    try:
        call()
    except MlflowException as e:
        return e.error_code
    raise AssertionError("expected an MlflowException")


def write(client):
    experiment = mlflow.set_experiment(EXPERIMENT)
    assert experiment.name == EXPERIMENT and experiment.lifecycle_stage == "active"
    # set_experiment again finds it (get-by-name), does not create another.
    assert mlflow.set_experiment(EXPERIMENT).experiment_id == experiment.experiment_id
    run_ids = []
    for i, (lr, depth, family) in enumerate(TRIALS):
        with mlflow.start_run(run_name=f"trial-{i}") as run:
            mlflow.log_params({"lr": lr, "depth": depth, "model": family})
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1) + i, step=step)
            mlflow.log_metrics({"auc": 0.7 + 0.1 * i, "acc": 0.6 + 0.05 * i})
            mlflow.set_tags({"team": "risk", "trial": str(i)})
            mlflow.log_dict({"lr": lr, "depth": depth}, "config/params.json")
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.bin")
                with open(path, "wb") as f:
                    f.write(MODEL_BYTES)
                mlflow.log_artifact(path, "model")
            # Params are write-once: the same value again is fine, another is not.
            mlflow.log_param("lr", lr)
            code = error_code(lambda: mlflow.log_param("lr", lr + 1))
            assert code == "INVALID_PARAMETER_VALUE", code
            run_ids.append(run.info.run_id)

    for i, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        lr, depth, family = TRIALS[i]
        assert run.info.status == "FINISHED" and run.info.end_time, run.info
        assert run.info.run_name == f"trial-{i}"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        assert run.data.params == {"lr": str(lr), "depth": str(depth), "model": family}, run.data.params
        assert math.isclose(run.data.metrics["loss"], 1.0 / 5 + i), run.data.metrics
        assert math.isclose(run.data.metrics["auc"], 0.7 + 0.1 * i)
        assert run.data.tags["team"] == "risk" and run.data.tags["trial"] == str(i)
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(5)), history
        assert all(math.isclose(m.value, 1.0 / (m.step + 1) + i) for m in history)

        names = sorted(f.path for f in client.list_artifacts(run_id))
        assert names == ["config", "model"], names
        files = [(f.path, f.file_size) for f in client.list_artifacts(run_id, "model")]
        assert files == [("model/model.bin", len(MODEL_BYTES))], files
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/model.bin")
        with open(local, "rb") as f:
            assert f.read() == MODEL_BYTES
        loaded = mlflow.artifacts.load_dict(f"runs:/{run_id}/config/params.json")
        assert loaded == {"lr": lr, "depth": depth}, loaded

    # Search: MLflow's filter strings, order_by, pages.
    exp = [mlflow.get_experiment_by_name(EXPERIMENT).experiment_id]
    found = client.search_runs(exp, "metrics.auc > 0.75 and params.model = 'lgbm'")
    assert [r.info.run_name for r in found] == ["trial-2"], found
    ordered = client.search_runs(exp, "", order_by=["metrics.auc DESC"])
    assert [r.info.run_name for r in ordered] == ["trial-2", "trial-1", "trial-0"]
    ordered = client.search_runs(exp, "tags.team = 'risk'", order_by=["params.lr ASC"])
    assert [r.data.params["lr"] for r in ordered] == ["0.05", "0.1", "0.2"]
    liked = client.search_runs(exp, "attributes.run_name LIKE 'trial-%' and metrics.loss < 1.5")
    assert sorted(r.info.run_name for r in liked) == ["trial-0", "trial-1"], liked
    pages, token = [], None
    while True:
        page = client.search_runs(exp, "", order_by=["metrics.acc ASC"], max_results=2, page_token=token)
        pages.append([r.info.run_name for r in page])
        token = page.token
        if not token:
            break
    assert pages == [["trial-0", "trial-1"], ["trial-2"]], pages
    code = error_code(lambda: client.search_runs(exp, "metrics.auc >> 1"))
    assert code == "INVALID_PARAMETER_VALUE", code

    # The registry: a model, versions, an alias, stages.
    best = found[0].info.run_id
    client.create_registered_model(MODEL, tags={"domain": "churn"}, description="who leaves")
    v1 = client.create_model_version(MODEL, source=f"runs:/{best}/model", run_id=best)
    assert v1.version == "1" and v1.status == "READY", v1
    client.set_registered_model_alias(MODEL, "champion", "1")
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    staged = client.transition_model_version_stage(MODEL, "1", "production")
    assert staged.current_stage == "Production", staged
    v2 = client.create_model_version(MODEL, source=f"runs:/{run_ids[0]}/model", run_id=run_ids[0])
    assert v2.version == "2"
    client.transition_model_version_stage(MODEL, "2", "Production", archive_existing_versions=True)
    assert client.get_model_version(MODEL, "1").current_stage == "Archived"
    latest = client.get_latest_versions(MODEL, stages=["Production"])
    assert [v.version for v in latest] == ["2"], latest
    models = client.search_registered_models("name LIKE 'churn%'")
    assert [m.name for m in models] == [MODEL], models
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert sorted(v.version for v in versions) == ["1", "2"], versions
    # The champion's files, through the registry.
    root = mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion")
    with open(os.path.join(root, "model.bin"), "rb") as f:
        assert f.read() == MODEL_BYTES
    client.set_registered_model_alias(MODEL, "challenger", "2")
    client.delete_registered_model_alias(MODEL, "challenger")
    code = error_code(lambda: client.get_model_version_by_alias(MODEL, "challenger"))
    assert code == "INVALID_PARAMETER_VALUE", code


def state(client):
    """Everything readable, as plain JSON."""
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "", order_by=["attributes.run_name"])
    model = client.get_registered_model(MODEL)
    return {
        "experiment": {"id": experiment.experiment_id, "name": experiment.name},
        "runs": [
            {
                "info": {k: getattr(r.info, k) for k in ("run_id", "run_name", "status", "start_time", "end_time", "artifact_uri")},
                "params": r.data.params,
                "metrics": r.data.metrics,
                "tags": r.data.tags,
                "loss": [(m.step, m.value, m.timestamp) for m in client.get_metric_history(r.info.run_id, "loss")],
                "artifacts": sorted(f.path for f in client.list_artifacts(r.info.run_id, "model")),
            }
            for r in runs
        ],
        "model": {
            "name": model.name,
            "description": model.description,
            "tags": model.tags,
            "aliases": model.aliases,
            "versions": [
                {k: getattr(v, k) for k in ("version", "current_stage", "source", "run_id", "status")}
                for v in sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: v.version)
            ],
        },
    }


def errors(uri):
    """Bad requests, sent as raw HTTP: MLflow's codes and statuses."""
    api = f"{uri}/api/2.0/mlflow"
    run = requests.post(f"{api}/runs/create", json={"experiment_id": "0", "start_time": 1}).json()["run"]
    run_id = run["info"]["run_id"]
    cases = [
        ("GET", "runs/get", {"run_id": "0" * 32}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("GET", "experiments/get-by-name", {"experiment_name": "nope"}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("GET", "experiments/get", {"experiment_id": "abc"}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "runs/search", {"experiment_ids": ["0"], "filter": "params.x > 'a'"}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "runs/search", {"experiment_ids": ["0"], "filter": "metrics.m = 1 or metrics.m = 2"}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "runs/log-metric", {"run_id": run_id, "key": "m", "value": "abc", "timestamp": 1}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "runs/log-metric", {"run_id": run_id, "key": "m", "value": 1.0}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "runs/log-batch", {"run_id": run_id, "params": [{"key": f"p{i}", "value": "1"} for i in range(101)]}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "runs/log-parameter", {"run_id": run_id, "key": "../up", "value": "1"}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "runs/search", {"experiment_ids": ["0"], "page_token": "not-a-token"}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "experiments/create", {}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "registered-models/create", {"name": "m"}, 200, None),
        ("POST", "registered-models/create", {"name": "m"}, 400, "RESOURCE_ALREADY_EXISTS"),
        ("GET", "model-versions/get", {"name": "m", "version": "9"}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("POST", "model-versions/transition-stage", {"name": "m", "version": "9", "stage": "Production"}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("POST", "registered-models/alias", {"name": "m", "alias": "v1", "version": "1"}, 400, "INVALID_PARAMETER_VALUE"),
    ]
    for method, route, fields, status, code in cases:
        if method == "GET":
            response = requests.get(f"{api}/{route}", params=fields)
        else:
            response = requests.post(f"{api}/{route}", json=fields)
        body = response.json()
        assert response.status_code == status, (route, fields, response.status_code, body)
        if code:
            assert body["error_code"] == code and body["message"], (route, fields, body)
    # Malformed JSON is a 400, not a crash.
    response = requests.post(f"{api}/runs/create", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    # Artifact paths cannot climb out of the store, however they are spelt.
    artifacts = f"{uri}/api/2.0/mlflow-artifacts/artifacts"
    for path in ["0/x/..%2F..%2Fescape", "0/x/%252e%252e/escape", "0/x/a\\..\\b"]:
        response = requests.put(f"{artifacts}/{path}", data=b"x")
        assert response.status_code == 400, (path, response.status_code, response.text)
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    response = requests.get(f"{artifacts}/0/x/nothing-here")
    assert response.status_code == 404 and response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    # Still up.
    assert requests.get(f"{uri}/health").status_code == 200


def main():
    mode, uri = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    if mode == "write":
        write(client)
        print(json.dumps(state(client), sort_keys=True))
    elif mode == "read":
        print(json.dumps(state(client), sort_keys=True))
    elif mode == "errors":
        errors(uri)
        print("ok")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
