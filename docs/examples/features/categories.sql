---
name: categories
description: How many kinds of merchant a user paid, per minute.
owner: docs
tags: [payments, merchants]
entity: [user_id]
sources:
  transactions: { topic: transactions, event_time: event_time, lateness: 5s }
tables:
  merchants:
    topic: merchants
    key: merchant_id
    schema: { merchant_id: string, name: string, category: string }
---
SELECT t.user_id,
       count(DISTINCT m.category)                                AS categories,
       sum(CASE WHEN m.category = 'grocery' THEN t.amount END)   AS grocery
FROM transactions t
JOIN merchants m ON t.merchant_id = m.merchant_id
GROUP BY t.user_id, tumble(t.event_time, INTERVAL '1 minute')
