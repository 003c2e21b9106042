---
name: user_sessions
description: Card sessions per user (payments less than ten minutes apart).
owner: risk-team
tags: [payments]
entity: [user_id]
sources:
  transactions: { topic: transactions, event_time: event_time, lateness: 5s }
---
SELECT user_id,
       count(*)                  AS payments,
       sum(amount)               AS total,
       max(amount) - min(amount) AS spread
FROM transactions
GROUP BY user_id, session(event_time, INTERVAL '10 minutes')
HAVING count(*) > 1
