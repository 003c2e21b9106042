---
name: labelled_requests
description: Served requests with the labels that came within a minute of them; a request left without one shows with nulls.
entity: [request_id]
sources:
  served: { topic: served, event_time: ts, lateness: 5s, schema: { request_id: string, variant: string, ts: long } }
  feedback: { topic: feedback, event_time: ts, lateness: 5s, schema: { request_id: string, label: long, ts: long } }
---
SELECT s.request_id, s.variant, f.label, f.ts AS label_ts, s.ts
FROM served s LEFT JOIN feedback f
  ON s.request_id = f.request_id
 AND f.ts BETWEEN s.ts AND s.ts + 60000
