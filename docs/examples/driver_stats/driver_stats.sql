---
name: driver_stats
description: Each driver's latest precomputed rates, as a batch job writes them (Feast's driver_stats).
owner: docs
entity: [driver]
ttl: 1h
# Two rows of one driver at the same event time: the one created last wins.
created_timestamp: created
sources:
  # Precomputed rows come in no order of event time: a day of lateness.
  stats: { topic: driver_stats, event_time: event_ts, lateness: 1d, schema: { driver: string, conv_rate: double, trips: long, event_ts: long, created: long } }
---
SELECT driver, conv_rate, trips, created FROM stats
