---
name: spend_per_minute
description: Card spend per user per minute.
owner: docs
tags: [payments]
entity: [user_id]
sources:
  transactions: { topic: transactions, event_time: event_time, lateness: 5s }
---
SELECT user_id,
       count(*)    AS n,
       sum(amount) AS total,
       max(amount) AS largest
FROM transactions
GROUP BY user_id, tumble(event_time, INTERVAL '1 minute')
