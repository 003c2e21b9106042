"""Anchor for `weir bench join`: Quix Streams' interval join
(`join_interval`, inner), log records joined with the feedback of the same
request id from 0 to 60 s after them (event time from the `ts` field),
RocksDB state, joined records to a topic. The same join as Weir's job and
the hand loop.

    quix_join.py BROKERS LOG_TOPIC FEEDBACK_TOPIC N

N: records to read, both topics together. Prints one JSON line:
{"events": N, "seconds": S, "events_per_second": R, "joined": J}.
"""
import json
import shutil
import sys
import tempfile
import time

from quixstreams import Application

brokers, log_topic, feedback_topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
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


def event_time(value, headers, timestamp, timestamp_type):
    return value["ts"]


log = app.dataframe(app.topic(log_topic, value_deserializer="json", timestamp_extractor=event_time))
feedback = app.dataframe(app.topic(feedback_topic, value_deserializer="json", timestamp_extractor=event_time))
seen = {"n": 0, "t0": None, "joined": 0}


def count(value):
    if seen["t0"] is None:
        seen["t0"] = time.time()
    seen["n"] += 1
    if seen["n"] >= n:
        seconds = time.time() - seen["t0"]
        print(json.dumps({"events": n, "seconds": seconds, "events_per_second": n / seconds, "joined": seen["joined"]}), flush=True)
        app.stop()
    return value


def joined(value):
    seen["joined"] += 1
    return value


log = log.update(count)
feedback = feedback.update(count)
merged = log.join_interval(
    feedback,
    how="inner",
    on_merge=lambda left, right: {**left, "label": right["label"], "label_ts": right["ts"]},
    grace_ms=120_000,
    backward_ms=0,
    forward_ms=60_000,
)
merged = merged.update(joined)
merged.to_topic(app.topic(log_topic + "-quix", value_serializer="json"))
app.run()
shutil.rmtree(state, ignore_errors=True)
