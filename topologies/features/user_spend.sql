---
name: user_spend
description: Card spend per user over the last hour, every five minutes.
owner: risk-team
tags: [payments, fraud]
entity: [user_id]
ttl: 2h
sources:
  transactions: { topic: transactions, event_time: event_time, lateness: 5s }
---
SELECT user_id,
       count(*)                    AS n,
       sum(amount)                 AS total,
       avg(amount)                 AS avg_amount,
       max(amount)                 AS max_amount,
       count(DISTINCT merchant_id) AS merchants
FROM transactions
WHERE amount > 0
GROUP BY user_id, hop(event_time, INTERVAL '5 minutes', INTERVAL '1 hour')
