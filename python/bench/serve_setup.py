"""`weir bench serve`'s set-up: the anchors' serving model (a scikit-learn
GradientBoostingClassifier, 100 trees of depth 3 on 30 features, as in
../shared/anchors/mlserver_setup.py), laid out as an MLServer model
repository serving the original model, and its ONNX export for Weir.

Usage: python serve_setup.py DIR HTTP_PORT GRPC_PORT METRICS_PORT
"""
import json
import os
import sys

import joblib
import numpy as np
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier

d, http_port, grpc_port, metrics_port = sys.argv[1], *map(int, sys.argv[2:5])
os.makedirs(f"{d}/gbdt", exist_ok=True)
rng = np.random.default_rng(7)
X = rng.normal(size=(20000, 30)).astype(np.float32)
y = (X[:, :5].sum(1) + rng.normal(size=20000) > 0).astype(int)
model = GradientBoostingClassifier(n_estimators=100, max_depth=3).fit(X, y)
joblib.dump(model, f"{d}/gbdt/model.joblib")
json.dump(
    {"name": "gbdt", "implementation": "mlserver_sklearn.SKLearnModel",
     "parameters": {"uri": "./model.joblib"}},
    open(f"{d}/gbdt/model-settings.json", "w"),
)
# MLServer 1.7.1's parallel inference pool crashes on these machines
# ("There is no current event loop in thread 'MainThread'"): it serves
# from its main process, as the anchors measured it.
json.dump(
    {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
     "parallel_workers": 0},
    open(f"{d}/settings.json", "w"),
)
onnx = to_onnx(model, X[:1], options={id(model): {"zipmap": False}})
open(f"{d}/gbdt.onnx", "wb").write(onnx.SerializeToString())
body = {"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP32", "data": X[0].tolist()}]}
json.dump(body, open(f"{d}/body.json", "w"))
# The framework's own probabilities of the first rows, to check both servers.
json.dump({"x": X[:8].tolist(), "proba": model.predict_proba(X[:8]).tolist(),
           "label": model.predict(X[:8]).tolist()}, open(f"{d}/check.json", "w"))
print("ok")
