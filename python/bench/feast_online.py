"""The Feast side of `weir bench online`: a feature repository whose view
`users` (entity `user_id`, features f0..f4, the same values as Weir's store)
is materialized into Feast's SQLite online store, ready for `feast serve`.

    feast_online.py DIR ENTITIES

Values: f{k} of user i = ((i * 31 + k * 7) % 1000) / 1000.
"""

import datetime
import os
import subprocess
import sys

import pandas as pd

FEATURES = 5


def main():
    root, entities = sys.argv[1], int(sys.argv[2])
    os.makedirs(root, exist_ok=True)
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    frame = pd.DataFrame({
        "user_id": pd.Series(range(entities), dtype="int64"),
        "event_timestamp": [when] * entities,
        "created": [when] * entities,
        **{f"f{k}": [((i * 31 + k * 7) % 1000) / 1000 for i in range(entities)] for k in range(FEATURES)},
    })
    frame.to_parquet(f"{root}/users.parquet")
    with open(f"{root}/feature_store.yaml", "w") as f:
        f.write(f"""project: bench
registry: {root}/registry.db
provider: local
online_store:
  type: sqlite
  path: {root}/online.db
offline_store:
  type: file
entity_key_serialization_version: 3
""")
    with open(f"{root}/definitions.py", "w") as f:
        f.write(f"""from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
source = FileSource(path="{root}/users.parquet", timestamp_field="event_timestamp", created_timestamp_column="created")
users = FeatureView(
    name="users", entities=[user], ttl=timedelta(days=0), online=True, source=source,
    schema=[Field(name=f"f{{k}}", dtype=Float64) for k in range({FEATURES})],
)
""")
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    subprocess.run([feast, "apply"], cwd=root, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [feast, "materialize", "2025-12-01T00:00:00", "2026-01-02T00:00:00"],
        cwd=root, check=True, stdout=subprocess.DEVNULL,
    )
    print("ok")


if __name__ == "__main__":
    main()
