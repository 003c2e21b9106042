"""Feast's own answer to a point-in-time join, for Weir's snapshot to be
compared with: Feast's `get_historical_features` (file offline store) over
feature rows with an event time and a created time.

    feast_pit.py ROWS_JSONL LABELS_CSV TTL_SECONDS

ROWS_JSONL: {"driver", "rate", "event_ts", "created"} per line, times in ms.
LABELS_CSV: driver,event_timestamp (RFC 3339),label.
Prints one JSON line per row of Feast's answer, in the label table's order:
{"driver", "label", "rate"} (rate null when Feast found none; `label` is the
label table's row number). Feast's file offline store leaves out some label
rows (see tests/e2e/snapshot.rs).
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pandas as pd

rows_path, labels_path, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = tempfile.mkdtemp(prefix="feast-pit-")
rows = pd.read_json(rows_path, lines=True)
rows["event_ts"] = pd.to_datetime(rows["event_ts"], unit="ms", utc=True)
rows["created"] = pd.to_datetime(rows["created"], unit="ms", utc=True)
rows.to_parquet(f"{d}/stats.parquet")
open(f"{d}/feature_store.yaml", "w").write(textwrap.dedent(f"""
    project: weirpit
    registry: {d}/registry.db
    provider: local
    online_store: {{type: sqlite, path: {d}/online.db}}
    offline_store: {{type: file}}
    entity_key_serialization_version: 3
"""))
open(f"{d}/repo.py", "w").write(textwrap.dedent(f"""
    from datetime import timedelta
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64
    driver = Entity(name="driver", join_keys=["driver"], value_type=ValueType.STRING)
    source = FileSource(path="{d}/stats.parquet", timestamp_field="event_ts",
                        created_timestamp_column="created")
    driver_stats = FeatureView(name="driver_stats", entities=[driver], ttl=timedelta(seconds={ttl}),
                               schema=[Field(name="rate", dtype=Float64)], source=source)
"""))
# The environment's `feast` executable (`python -m feast` does not work).
bin_dir = os.path.dirname(sys.executable)
subprocess.run([os.path.join(bin_dir, "feast"), "apply"], cwd=d, check=True, capture_output=True,
               env={**os.environ, "PATH": bin_dir + ":" + os.environ["PATH"]})
from feast import FeatureStore  # noqa: E402 (after apply)

labels = pd.read_csv(labels_path)
labels["event_timestamp"] = pd.to_datetime(labels["event_timestamp"], utc=True)
labels["row"] = range(len(labels))
out = FeatureStore(repo_path=d).get_historical_features(
    entity_df=labels, features=["driver_stats:rate"]).to_df().sort_values("row")
for _, r in out.iterrows():
    rate = None if pd.isna(r["rate"]) else float(r["rate"])
    print(json.dumps({"driver": r["driver"], "label": int(r["label"]), "rate": rate}))
