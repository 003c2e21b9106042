"""Feast's get_historical_features (local file offline store) on the data
`weir bench snapshot` wrote to DIR: labels.parquet and views a, b, c
(ttl 1 day, created column for ties), as shared/anchors/feast_pit.py runs it.
Writes DIR/feast.parquet; prints one JSON line: seconds, rows, peak RSS."""
import json, os, resource, subprocess, sys, textwrap, time

import pandas as pd

d = sys.argv[1]
features = {"a": 4, "b": 3, "c": 3}
open(f"{d}/feature_store.yaml", "w").write(textwrap.dedent(f"""
    project: weirbench
    registry: {d}/registry.db
    provider: local
    online_store: {{type: sqlite, path: {d}/online.db}}
    offline_store: {{type: file}}
    entity_key_serialization_version: 3
"""))
open(f"{d}/repo.py", "w").write(textwrap.dedent(f"""
    from datetime import timedelta
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    def fv(v, k):
        src = FileSource(path="{d}/" + v + ".parquet", timestamp_field="event_timestamp",
                         created_timestamp_column="created")
        return FeatureView(name="fv_" + v, entities=[user], ttl=timedelta(days=1),
                           schema=[Field(name=v + str(i), dtype=Float32) for i in range(k)], source=src)
    a, b, c = fv("a", 4), fv("b", 3), fv("c", 3)
"""))
# Use the environment's `feast` executable (`python -m feast` does not work).
bin_dir = os.path.dirname(sys.executable)
subprocess.run([os.path.join(bin_dir, "feast"), "apply"], cwd=d, check=True, capture_output=True,
               env={**os.environ, "PATH": bin_dir + ":" + os.environ["PATH"]})
from feast import FeatureStore  # noqa: E402 (after apply)

store = FeatureStore(repo_path=d)
labels = pd.read_parquet(f"{d}/labels.parquet")
refs = [f"fv_{v}:{v}{i}" for v, k in features.items() for i in range(k)]
started = time.time()
out = store.get_historical_features(entity_df=labels, features=refs).to_df()
seconds = time.time() - started
out.to_parquet(f"{d}/feast.parquet")
print(json.dumps({"seconds": seconds, "rows": len(out),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
