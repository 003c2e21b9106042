"""Anchor for `weir bench automl`: Optuna's TPE on the same LightGBM
objective, data split and trial budget as `weir tune`.

Usage: optuna_tune.py DATA.parquet TRIALS JOBS SEED
The split is Weir's time split: rows ordered by `t`, the first 60% train,
the next 20% validation (the last 20% is the test part, unused here).
Prints one JSON line: wall seconds, summed fit seconds, best validation ROC AUC.
"""

import json
import os
import sys
import time

import lightgbm
import numpy as np
import optuna
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

path, trials, jobs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
table = pq.read_table(path).to_pandas().sort_values("t", kind="stable")
features = [c for c in table.columns if c.startswith("f")]
n = len(table)
n_test, n_valid = round(n * 0.2), round(n * 0.2)
train = table.iloc[: n - n_test - n_valid]
valid = table.iloc[n - n_test - n_valid : n - n_test]
x_train, y_train = train[features].to_numpy(np.float32), train["label"].to_numpy()
x_valid, y_valid = valid[features].to_numpy(np.float32), valid["label"].to_numpy()
threads = max(1, (os.cpu_count() or 1) // jobs)
fits = []


def objective(trial):
    model = lightgbm.LGBMClassifier(
        n_estimators=trial.suggest_int("n_estimators", 20, 200),
        learning_rate=trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        num_leaves=trial.suggest_categorical("num_leaves", [8, 16, 32, 64]),
        random_state=0,
        verbose=-1,
        # Each of the `jobs` threads gets its share of the cores, as each of
        # Weir's workers does: LightGBM takes every core unless told, and
        # threads of several fits spinning over the same cores slow them all.
        n_jobs=threads,
    )
    started = time.perf_counter()
    model.fit(x_train, y_train)
    fits.append(time.perf_counter() - started)
    return roc_auc_score(y_valid, model.predict_proba(x_valid)[:, 1])


optuna.logging.set_verbosity(optuna.logging.WARNING)
started = time.perf_counter()
study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
study.optimize(objective, n_trials=trials, n_jobs=jobs)
wall = time.perf_counter() - started
print(json.dumps({"wall": wall, "fit": sum(fits), "best": study.best_value, "trials": len(study.trials)}))
