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


def import_lightgbm():
    """LightGBM, without the scikit-learn and pandas integrations its
    package imports when they are installed: a second of a worker's start,
    for wrappers this runtime does not use (it trains through LightGBM's
    own API on NumPy arrays). They stay importable for other jobs."""
    if "lightgbm" in sys.modules:
        return sys.modules["lightgbm"]
    hidden = [m for m in ("sklearn", "pandas", "dask") if m not in sys.modules]
    for m in hidden:
        # `import m` now raises ImportError, which LightGBM takes as "not
        # installed".
        sys.modules[m] = None
    try:
        import lightgbm
    finally:
        for m in hidden:
            del sys.modules[m]
    return lightgbm


@functools.cache
def lightgbm_params():
    """Every name LightGBM takes a parameter by, aliases included."""
    aliases = import_lightgbm().basic._ConfigAliases._get_all_param_aliases()
    return {name for names in aliases.values() for name in names}


def sklearn_class(name):
    from sklearn.utils import all_estimators

    known = dict(all_estimators())
    if name not in known:
        raise Failure(f"unknown scikit-learn estimator `{name}`")
    return known[name]


class LightGBM:
    """A LightGBM booster trained through LightGBM's own API, with what
    scikit-learn's wrapper would keep: a classifier's classes (its labels
    are their indexes while training) and the task. It fits and predicts
    as a scikit-learn estimator does; `parts`, when given, keeps its binned
    training rows for the next job."""

    # Taken for scikit-learn's `LGBMClassifier` compatibility, no effect on
    # the model: `importance_type` only names what `feature_importances_`
    # reports.
    WRAPPER_ONLY = ("importance_type",)

    def __init__(self, task, params, parts=None):
        self.task = task
        self.params = dict(params)
        self.parts = parts
        self.classes = None
        self.booster = None

    @staticmethod
    def check(params):
        """Refuses params LightGBM does not know (it would warn and go on)."""
        known = lightgbm_params() | set(LightGBM.WRAPPER_ONLY) | {"class_weight"}
        unknown = sorted(set(params) - known)
        if unknown:
            import difflib

            hints = [
                f"`{p}` (did you mean `{close[0]}`?)" if close else f"`{p}`"
                for p in unknown
                for close in [difflib.get_close_matches(p, known, n=1)]
            ]
            raise Failure(
                f"unknown param{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for LightGBM; "
                "it takes LightGBM's parameters and their aliases "
                "(https://lightgbm.readthedocs.io/en/latest/Parameters.html)"
            )

    # Params that shape only the trees, not how the training rows are
    # binned: jobs that differ in no other param share a binned set.
    TREE_ONLY = (
        "num_iterations", "learning_rate", "num_leaves", "max_depth", "lambda_l1",
        "lambda_l2", "min_gain_to_split", "min_sum_hessian_in_leaf", "bagging_fraction",
        "bagging_freq", "feature_fraction", "feature_fraction_bynode", "extra_trees",
        "path_smooth", "max_delta_step", "num_threads", "verbosity",
    )

    def fit(self, x, y):
        import numpy as np

        lightgbm = import_lightgbm()
        params = {k: v for k, v in self.params.items() if k not in self.WRAPPER_ONLY}
        class_weight = params.pop("class_weight", None)
        weight = None
        if self.task == "classification":
            self.classes, y = np.unique(y, return_inverse=True)
            if len(self.classes) > 2:
                params.setdefault("objective", "multiclass")
                params["num_class"] = len(self.classes)
            else:
                params.setdefault("objective", "binary")
            if class_weight is not None:
                # As scikit-learn's wrapper does: "balanced", or a weight
                # per class label.
                if class_weight == "balanced":
                    counts = np.bincount(y, minlength=len(self.classes))
                    per_class = len(y) / (len(self.classes) * np.maximum(counts, 1))
                elif isinstance(class_weight, dict):
                    given = {str(k): v for k, v in class_weight.items()}
                    per_class = np.array([given.get(str(c), 1.0) for c in self.classes.tolist()])
                else:
                    raise Failure('`class_weight` is "balanced" or a weight per class')
                weight = per_class[y]
        elif class_weight is not None:
            raise Failure("`class_weight` is for classifiers")
        # Binning the rows (170 ms for 60,000 × 30 here) is the same for
        # every trial of a search: a warm runtime's next job reuses it.
        tree_only = lightgbm.basic._ConfigAliases.get(*self.TREE_ONLY)
        key = json.dumps(
            [self.task, class_weight, {k: v for k, v in params.items() if k not in tree_only}],
            sort_keys=True,
        )
        def build():
            return lightgbm.Dataset(x, y, weight=weight)

        dataset = self.parts.binned(x, key, build) if self.parts else build()
        # As trained: `train` would otherwise copy the booster through its
        # text form (15-25 ms for 150 trees of 32 leaves), for nothing here.
        self.booster = lightgbm.train(params, dataset, keep_training_booster=True)
        return self

    def kept(self):
        """What a deferred job pickles: the booster, the classes and the
        task, which load with LightGBM alone (not this script)."""
        return {"kind": "lightgbm", "booster": self.booster, "classes": self.classes,
                "task": self.task}

    @classmethod
    def from_kept(cls, kept, task):
        if "booster" not in kept:
            # Pickled by an earlier runtime, which trained scikit-learn's
            # wrapper: its booster and classes are the same things.
            wrapper = kept["model"]
            kept = {"booster": wrapper._Booster, "classes": getattr(wrapper, "_classes", None)}
        model = cls(task, {})
        model.booster, model.classes = kept["booster"], kept["classes"]
        return model

    def predict(self, x):
        """A regressor's values (a classifier's last class probability,
        or all of them)."""
        return self.booster.predict(x)

    def predict_proba(self, x):
        """Class probabilities, `rows × classes`."""
        import numpy as np

        predicted = self.booster.predict(x)
        return np.column_stack([1.0 - predicted, predicted]) if predicted.ndim == 1 else predicted

    def to_onnx(self, width):
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType
        # The converter's own wrapper of a booster; given the classes, the
        # model's `label` output names them as scikit-learn's wrapper would.
        from onnxmltools.convert.lightgbm._parse import WrappedBooster

        model = WrappedBooster(self.booster)
        options = {}
        if self.task == "classification":
            model.classes_ = self.classes
            options["zipmap"] = False
        return convert_lightgbm(
            model, initial_types=[("input", FloatTensorType([None, width]))], **options
        )


class Parts:
    """Reads the contract's parts as float32 matrices, keeping the last few
    (a warm process sees the same parts trial after trial), and the last
    training set LightGBM binned."""

    def __init__(self, keep):
        self.keep = keep
        self.read_parts = {}
        self.last_binned = None

    def binned(self, x, key, build):
        """LightGBM's binned training set of `x` (a matrix `read` gave):
        the last one when `x` and the binning `key` are the same, else
        `build()`, kept in its place."""
        last = self.last_binned
        if last is not None and last[0] is x and last[1] == key:
            return last[2]
        self.last_binned = None
        dataset = build()
        self.last_binned = (x, key, dataset)
        return dataset

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
    if kind == "lightgbm":
        return model.to_onnx(x_sample.shape[1])
    from skl2onnx import to_onnx as sklearn_to_onnx

    options = {id(estimator): {"zipmap": False}} if task == "classification" else None
    return sklearn_to_onnx(model, x_sample, options=options)


@functools.cache
def dependencies(kind):
    """The versions a model of this runtime needs (a warm process looks
    them up once)."""
    packages = ["numpy", "onnx"]
    packages += ["lightgbm", "onnxmltools"] if kind == "lightgbm" else ["scikit-learn", "skl2onnx"]
    found = {p: metadata.version(p) for p in packages}
    found["python"] = platform.python_version()
    return found


def lightgbm_model(task, params, env, world, seed, parts):
    """A LightGBM model of the job's params, with Weir's defaults."""
    LightGBM.check(params)
    aliases = import_lightgbm().basic._ConfigAliases.get

    def default(name, value):
        if not aliases(name) & set(params):
            params[name] = value

    if world > 1:
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
        default("verbosity", 0)
        # The ranks share this machine's cores.
        default("num_threads", max(1, (os.cpu_count() or 1) // world))
    default("verbosity", -1)
    # LightGBM takes every core unless told (it does not read
    # OMP_NUM_THREADS): a worker given its share of the cores keeps to it, as
    # threads of several processes spinning over the same cores slow every
    # one of them down.
    share = os.environ.get("OMP_NUM_THREADS", "")
    if share.isdigit() and int(share) > 0:
        default("num_threads", int(share))
    default("seed", seed)
    return LightGBM(task, params, parts)


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

    world = int(env.get("WEIR_WORLD_SIZE", "1"))
    rank = int(env.get("WEIR_RANK", "0"))
    seed = int(env.get("WEIR_SEED", "0"))
    if kind == "lightgbm":
        model = estimator = lightgbm_model(task, params, env, world, seed, parts)
        name = type(model).__name__
    else:
        cls = sklearn_class(name)
        estimator = cls()
        known = estimator.get_params()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise Failure(
                f"unknown param{'s' if len(unknown) > 1 else ''} {', '.join(f'`{p}`' for p in unknown)} "
                f"for {name}; it takes: {', '.join(sorted(known))}"
            )
        if "random_state" in known and "random_state" not in params:
            params["random_state"] = seed
        estimator.set_params(**params)
        model = estimator
        if not name.startswith("HistGradientBoosting"):
            # Linear models and neural networks take no missing values, and
            # skl2onnx routes them wrongly through other trees: fill them
            # with the median and scale, in the exported graph too.
            # (Histogram boosting handles them natively, in ONNX as well.)
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
        framework_scores(model, x_valid, task, name),
    )
    if deferred:
        # Kept as fitted: only the model a search keeps is exported (and
        # scored on the test rows).
        with open(os.path.join(out, "model.pkl"), "wb") as f:
            pickle.dump(
                model.kept() if kind == "lightgbm"
                else {"kind": kind, "model": model, "estimator": estimator},
                f,
            )
    else:
        onnx_model = to_onnx(kind, model, estimator, task, x_train[:1])
        with open(os.path.join(out, "model.onnx"), "wb") as f:
            f.write(onnx_model.SerializeToString())

    with open(os.path.join(out, "dependencies.json"), "w") as f:
        json.dump(dependencies(kind), f, indent=1)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"fit_seconds": fit_seconds}, f)
    return (f"{name} fitted on {len(y_train)} rows in {fit_seconds:.2f} s"
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
    if kept["kind"] == "lightgbm":
        model = estimator = LightGBM.from_kept(kept, task)
    else:
        model, estimator = kept["model"], kept["estimator"]
    name = type(estimator).__name__
    write_scores(
        os.path.join(out, "validation_scores.parquet"),
        framework_scores(model, x_valid, task, name),
    )
    onnx_model = to_onnx(kept["kind"], model, estimator, task, x_valid[:1])
    with open(os.path.join(out, "model.onnx"), "wb") as f:
        f.write(onnx_model.SerializeToString())
    return f"exported {name} to ONNX"


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
    request (scikit-learn at the first job that needs it: LightGBM's jobs
    do not). The process ends when stdin does."""
    import ctypes
    import traceback

    # What every job needs, imported before the first one comes.
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    try:
        import_lightgbm()
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
