"""The hop benchmark's query as a batch in DuckDB over the same Parquet file.

usage: duckdb_hop.py EVENTS.parquet
Prints {"seconds": ..., "windows": ...} on one line.
"""

import json
import sys
import time

import duckdb

path = sys.argv[1]
connection = duckdb.connect()
connection.execute("SET threads TO 2")
started = time.perf_counter()
# Every 1 h window sliding by 5 min that holds an event: the 12 starts
# from the event's 5-minute slot back.
(windows,) = connection.execute(
    f"""
    SELECT count(*) FROM (
      SELECT user_id, ws, count(*) AS n, avg(amount) AS avg_amount, max(amount) AS max_amount
      FROM (
        SELECT user_id, amount,
               unnest(generate_series(ts // 300000 * 300000 - 3300000, ts // 300000 * 300000, 300000)) AS ws
        FROM read_parquet('{path}')
      )
      GROUP BY user_id, ws
    )
    """
).fetchone()
print(json.dumps({"seconds": time.perf_counter() - started, "windows": windows}))
