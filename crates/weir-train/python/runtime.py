"""Weir's built-in training runtimes: scikit-learn and LightGBM.

Run by Weir with the runtime contract's variables (see
`crates/weir-train/src/runtime.rs`). Three ways:

  runtime.py sklearn ESTIMATOR | lightgbm   one job, the contract in the environment
  runtime.py serve                          many jobs, one JSON line each on stdin
  (a request's `args` are the words above, or `export`; see `serve`)

A job writes to $WEIR_OUTPUT_DIR: model.onnx, validation_scores.parquet
(the framework's own scores on the validation rows, which Weir compares
with ONNX Runtime's), dependencies.json and metrics.json. With
WEIR_EXPORT=deferred it writes the fitted model pickled (model.pkl)
instead of model.onnx; `export` turns such a pickle
(WEIR_MODEL_PATH) into model.onnx later, for the one model kept.
"""

import functools
import json
import os
import pickle
import platform
import sys
import time
from importlib import metadata


class Failure(Exception):
    """The job is wrong: its message is the run's failure reason."""


def estimator_class(kind, name, task):
    if kind == "lightgbm":
        import lightgbm

        return lightgbm.LGBMClassifier if task == "classification" else lightgbm.LGBMRegressor
    from sklearn.utils import all_estimators

    known = dict(all_estimators())
    if name not in known:
        raise Failure(f"unknown scikit-learn estimator `{name}`")
    return known[name]


class Parts:
    """Reads the contract's parts as float32 matrices, keeping the last few
    (a warm process sees the same parts trial after trial)."""

    def __init__(self, keep):
        self.keep = keep
        self.read_parts = {}

    def read(self, path, features, label):
        import numpy as np
        import pyarrow.parquet as pq

        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size, tuple(features), label)
        if key in self.read_parts:
            return self.read_parts[key]
        table = pq.read_table(path)
        x = np.column_stack(
            [table.column(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in features]
        ) if features else np.zeros((table.num_rows, 0), np.float32)
        y = table.column(label).to_numpy(zero_copy_only=False)
        if y.dtype == bool:
            y = y.astype(np.int64)
        if len(self.read_parts) >= self.keep:
            self.read_parts.pop(next(iter(self.read_parts)))
        self.read_parts[key] = (x, y)
        return x, y


def write_scores(path, scores):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {f"score_{i}": scores[:, i].astype(np.float64) for i in range(scores.shape[1])}
    pq.write_table(pa.table(columns), path)


def framework_scores(model, x, task, name):
    if task == "classification":
        if not hasattr(model, "predict_proba"):
            raise Failure(f"{name} gives no class probabilities (predict_proba)")
        return model.predict_proba(x)
    return model.predict(x).reshape(-1, 1)


def to_onnx(kind, model, estimator, task, x_sample):
    width = x_sample.shape[1]
    if kind == "lightgbm":
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        options = {"zipmap": False} if task == "classification" else {}
        return convert_lightgbm(
            model, initial_types=[("input", FloatTensorType([None, width]))], **options
        )
    from skl2onnx import to_onnx as sklearn_to_onnx

    options = {id(estimator): {"zipmap": False}} if task == "classification" else None
    return sklearn_to_onnx(model, x_sample, options=options)


@functools.cache
def dependencies(kind):
    """The versions a model of this runtime needs (a warm process looks
    them up once)."""
    packages = ["numpy", "scikit-learn", "onnx"]
    packages += ["lightgbm", "onnxmltools"] if kind == "lightgbm" else ["skl2onnx"]
    found = {p: metadata.version(p) for p in packages}
    found["python"] = platform.python_version()
    return found


def train(kind, name, env, parts):
    """One training job under the contract (`env`): returns what it did."""
    features = json.loads(env["WEIR_FEATURES"])
    label = env["WEIR_LABEL"]
    task = env["WEIR_TASK"]
    params = json.loads(env["WEIR_PARAMS"])
    out = env["WEIR_OUTPUT_DIR"]
    deferred = env.get("WEIR_EXPORT") == "deferred"

    x_train, y_train = parts.read(env["WEIR_TRAIN_PATH"], features, label)
    x_valid, _ = parts.read(env["WEIR_VALIDATION_PATH"], features, label)

    cls = estimator_class(kind, name, task)
    model = cls()
    known = model.get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise Failure(
            f"unknown param{'s' if len(unknown) > 1 else ''} {', '.join(f'`{p}`' for p in unknown)} "
            f"for {cls.__name__}; it takes: {', '.join(sorted(known))}"
        )
    world = int(env.get("WEIR_WORLD_SIZE", "1"))
    rank = int(env.get("WEIR_RANK", "0"))
    if kind == "lightgbm" and world > 1:
        # Data-parallel: each rank holds its share of the rows and the ranks
        # build every tree together over LightGBM's sockets.
        params.update(
            tree_learner="data",
            num_machines=world,
            machines=env["WEIR_PEERS"],
            local_listen_port=int(env["WEIR_LISTEN_PORT"]),
            pre_partition=True,
            time_out=2,
        )
        # Its network messages (ranks connected) go to the log.
        params.setdefault("verbose", 0)
        # The ranks share this machine's cores.
        params.setdefault("n_jobs", max(1, (os.cpu_count() or 1) // world))
    if kind == "lightgbm":
        params.setdefault("verbose", -1)
        # LightGBM takes every core unless told (it does not read
        # OMP_NUM_THREADS): a worker given its share of the cores keeps to it,
        # as threads of several processes spinning over the same cores slow
        # every one of them down.
        share = os.environ.get("OMP_NUM_THREADS", "")
        if share.isdigit() and int(share) > 0:
            params.setdefault("n_jobs", int(share))
    if "random_state" in known and "random_state" not in params:
        params["random_state"] = int(env.get("WEIR_SEED", "0"))
    model.set_params(**params)
    estimator = model
    if kind == "sklearn" and not cls.__name__.startswith("HistGradientBoosting"):
        # Linear models and neural networks take no missing values, and
        # skl2onnx routes them wrongly through other trees: fill them with
        # the median and scale, in the exported graph too. (Histogram
        # boosting handles them natively, in ONNX as well.)
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), estimator)

    started = time.perf_counter()
    model.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - started
    if rank > 0:
        # Every rank ends with the same model; rank 0 writes it.
        return f"rank {rank} of {world} fitted on {len(y_train)} rows in {fit_seconds:.2f} s"

    write_scores(
        os.path.join(out, "validation_scores.parquet"),
        framework_scores(model, x_valid, task, cls.__name__),
    )
    if deferred:
        # Kept as fitted: only the model a search keeps is exported (and
        # scored on the test rows).
        with open(os.path.join(out, "model.pkl"), "wb") as f:
            pickle.dump({"kind": kind, "model": model, "estimator": estimator}, f)
    else:
        onnx_model = to_onnx(kind, model, estimator, task, x_train[:1])
        with open(os.path.join(out, "model.onnx"), "wb") as f:
            f.write(onnx_model.SerializeToString())

    with open(os.path.join(out, "dependencies.json"), "w") as f:
        json.dump(dependencies(kind), f, indent=1)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"fit_seconds": fit_seconds}, f)
    return (f"{cls.__name__} fitted on {len(y_train)} rows in {fit_seconds:.2f} s"
            + (f" (rank 0 of {world})" if world > 1 else ""))


def export(env, parts):
    """Exports a model a deferred job pickled (WEIR_MODEL_PATH) to ONNX,
    with its scores of the validation rows."""
    features = json.loads(env["WEIR_FEATURES"])
    task = env["WEIR_TASK"]
    out = env["WEIR_OUTPUT_DIR"]
    # The pickle is the one this runtime wrote into Weir's artifact store.
    with open(env["WEIR_MODEL_PATH"], "rb") as f:
        kept = pickle.load(f)
    x_valid, _ = parts.read(env["WEIR_VALIDATION_PATH"], features, env["WEIR_LABEL"])
    model = kept["model"]
    write_scores(
        os.path.join(out, "validation_scores.parquet"),
        framework_scores(model, x_valid, task, type(kept["estimator"]).__name__),
    )
    onnx_model = to_onnx(kept["kind"], model, kept["estimator"], task, x_valid[:1])
    with open(os.path.join(out, "model.onnx"), "wb") as f:
        f.write(onnx_model.SerializeToString())
    return f"exported {type(kept['estimator']).__name__} to ONNX"


def job(args, env, parts):
    if args[0] == "export":
        return export(env, parts)
    return train(args[0], args[1] if len(args) > 1 else None, env, parts)


def serve():
    """Runs jobs one after another, imports and data kept warm.

    A request is a JSON line on stdin, `{"args": [...], "env": {...},
    "log": PATH}`; what the job prints (Python's and the libraries' own
    output) goes to PATH; the answer is a JSON line on the original stdout,
    `{"status": 0}` or the exit status a cold run would have had. It
    imports the libraries the jobs use as it starts, before the first
    request. The process ends when stdin does."""
    import ctypes
    import traceback

    # What every job needs, imported before the first one comes.
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sklearn.utils  # noqa: F401

    try:
        import lightgbm  # noqa: F401
    except ImportError:
        pass
    libc = ctypes.CDLL(None)
    answers = os.fdopen(os.dup(1), "w")
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    parts = Parts(keep=8)
    for line in sys.stdin:
        request = json.loads(line)
        status = 0
        with open(request["log"], "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                print(f"weir runtime: {job(request['args'], request['env'], parts)}")
            except Failure as failure:
                print(f"weir runtime: {failure}", file=sys.stderr)
                status = 2
            except BaseException:  # noqa: BLE001 - the job's failure, reported
                traceback.print_exc()
                status = 1
            sys.stdout.flush()
            sys.stderr.flush()
            # C libraries' own buffered output belongs to this job's log.
            libc.fflush(None)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
        answers.write(json.dumps({"status": status}) + "\n")
        answers.flush()


def main():
    if sys.argv[1] == "serve":
        serve()
        return
    try:
        print(f"weir runtime: {job(sys.argv[1:], os.environ, Parts(keep=3))}")
    except Failure as failure:
        print(f"weir runtime: {failure}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
