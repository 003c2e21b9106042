"""Confluent's official Python client, without serializers, against Weir:
produce N records to TOPIC (which need not exist) and read them back.

    confluent_plain.py BOOTSTRAP TOPIC N

Prints one JSON line: {"delivered": [...], "failed": [...], "consumed": [...]}
with the values delivered, the delivery errors, and the values read back.
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer


def main(bootstrap, topic, n):
    delivered, failed = [], []

    def report(error, message):
        if error is None:
            delivered.append(message.value().decode())
        else:
            failed.append(error.str())

    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10000})
    for i in range(n):
        producer.produce(topic, key=f"k{i % 3}", value=f"v{i:03d}", on_delivery=report)
    producer.flush(30)

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "plain-python", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    consumed = []
    deadline = time.time() + 30
    while len(consumed) < len(delivered) and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        consumed.append(message.value().decode())
    consumer.close()
    print(json.dumps({"delivered": delivered, "failed": failed, "consumed": consumed}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
