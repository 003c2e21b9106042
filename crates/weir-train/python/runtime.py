"""Weir's built-in training runtimes: scikit-learn and LightGBM.

Run by `weir train` with the runtime contract's environment (see
`crates/weir-train/src/runtime.rs`); usage: runtime.py sklearn ESTIMATOR | lightgbm.
Writes model.onnx, validation_scores.parquet (the framework's own scores on
the validation rows, which Weir compares with ONNX Runtime's),
dependencies.json and metrics.json to $WEIR_OUTPUT_DIR.
"""

import json
import os
import platform
import sys
import time
from importlib import metadata


def fail(message):
    print(f"weir runtime: {message}", file=sys.stderr)
    sys.exit(2)


def estimator_class(kind, name, task):
    if kind == "lightgbm":
        import lightgbm

        return lightgbm.LGBMClassifier if task == "classification" else lightgbm.LGBMRegressor
    from sklearn.utils import all_estimators

    known = dict(all_estimators())
    if name not in known:
        fail(f"unknown scikit-learn estimator `{name}`")
    return known[name]


def main():
    kind = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else None
    import numpy as np
    import pyarrow.parquet as pq

    env = os.environ
    features = json.loads(env["WEIR_FEATURES"])
    label = env["WEIR_LABEL"]
    task = env["WEIR_TASK"]
    params = json.loads(env["WEIR_PARAMS"])
    out = env["WEIR_OUTPUT_DIR"]

    def read(path):
        table = pq.read_table(path)
        x = np.column_stack(
            [table.column(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in features]
        ) if features else np.zeros((table.num_rows, 0), np.float32)
        y = table.column(label).to_numpy(zero_copy_only=False)
        if y.dtype == bool:
            y = y.astype(np.int64)
        return x, y

    x_train, y_train = read(env["WEIR_TRAIN_PATH"])
    x_valid, y_valid = read(env["WEIR_VALIDATION_PATH"])

    cls = estimator_class(kind, name, task)
    model = cls()
    known = model.get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        fail(
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
        print(f"weir runtime: rank {rank} of {world} fitted on {len(y_train)} rows in {fit_seconds:.2f} s")
        return

    if task == "classification":
        if not hasattr(model, "predict_proba"):
            fail(f"{cls.__name__} gives no class probabilities (predict_proba)")
        scores = model.predict_proba(x_valid)
    else:
        scores = model.predict(x_valid).reshape(-1, 1)

    width = len(features)
    if kind == "lightgbm":
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        options = {"zipmap": False} if task == "classification" else {}
        onnx_model = convert_lightgbm(
            model, initial_types=[("input", FloatTensorType([None, width]))], **options
        )
    else:
        from skl2onnx import to_onnx

        options = {id(estimator): {"zipmap": False}} if task == "classification" else None
        onnx_model = to_onnx(model, x_train[:1], options=options)
    with open(os.path.join(out, "model.onnx"), "wb") as f:
        f.write(onnx_model.SerializeToString())

    import pyarrow as pa

    columns = {f"score_{i}": scores[:, i].astype(np.float64) for i in range(scores.shape[1])}
    pq.write_table(pa.table(columns), os.path.join(out, "validation_scores.parquet"))

    packages = ["numpy", "scikit-learn", "onnx"]
    packages += ["lightgbm", "onnxmltools"] if kind == "lightgbm" else ["skl2onnx"]
    dependencies = {p: metadata.version(p) for p in packages}
    dependencies["python"] = platform.python_version()
    with open(os.path.join(out, "dependencies.json"), "w") as f:
        json.dump(dependencies, f, indent=1)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"fit_seconds": fit_seconds}, f)
    print(f"weir runtime: {cls.__name__} fitted on {len(y_train)} rows in {fit_seconds:.2f} s"
          + (f" (rank 0 of {world})" if world > 1 else ""))


if __name__ == "__main__":
    main()
