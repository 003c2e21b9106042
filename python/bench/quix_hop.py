"""Anchor for `weir bench hop`: Quix Streams, hopping window 1 h / 5 min,
count / mean / max of amount per user, RocksDB state, results to a topic.
Adapted from shared/anchors/quix_hop.py (same query and settings) with the
emit mode as a parameter: `final` emits each window once when it closes, as
Weir's job does; `current` emits on every update, as the anchor script did.

    quix_hop.py BROKERS TOPIC N final|current

Prints one JSON line: {"events": N, "seconds": S, "events_per_second": R}.
"""
import json
import shutil
import sys
import tempfile
import time

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Max, Mean

brokers, topic, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
state = tempfile.mkdtemp(prefix="quix-state-")
app = Application(
    broker_address=brokers,
    consumer_group=f"quix-bench-{time.time_ns()}",
    auto_offset_reset="earliest",
    state_dir=state,
    auto_create_topics=True,
    use_changelog_topics=False,
    # The librdkafka setting every Weir consumer and the hand loop have.
    consumer_extra_config={"fetch.queue.backoff.ms": 10},
)
source = app.topic(topic, value_deserializer="json", timestamp_extractor=lambda v, h, ts, tt: v["ts"])
sdf = app.dataframe(source)
seen = {"n": 0, "t0": None}


def count(value):
    if seen["t0"] is None:
        seen["t0"] = time.time()
    seen["n"] += 1
    if seen["n"] >= n:
        seconds = time.time() - seen["t0"]
        print(json.dumps({"events": n, "seconds": seconds, "events_per_second": n / seconds}), flush=True)
        app.stop()
    return value


sdf = sdf.update(count)
windowed = sdf.hopping_window(duration_ms=3_600_000, step_ms=300_000).agg(
    count=Count(), avg_amount=Mean("amount"), max_amount=Max("amount")
)
sdf = windowed.final() if mode == "final" else windowed.current()
sdf = sdf.to_topic(app.topic(topic + "-quix", value_serializer="json"))
app.run()
shutil.rmtree(state, ignore_errors=True)
