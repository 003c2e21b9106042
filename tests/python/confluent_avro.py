"""Confluent's official Python client against Weir: produce or consume Avro
with the Confluent serializers, using Weir's schema registry API.

    confluent_avro.py produce BOOTSTRAP REGISTRY_URL TOPIC SCHEMA_FILE N
    confluent_avro.py consume BOOTSTRAP REGISTRY_URL TOPIC N
    confluent_avro.py produce-json BOOTSTRAP REGISTRY_URL TOPIC KEY_FIELD < LINES

`produce` writes N records (JSON of each on stdout); `consume` reads N
records from the beginning and prints each decoded value as a JSON line;
`produce-json` writes each JSON line of stdin with the schema registered
for the topic's values (the serializer registers nothing), keyed by a
field.
"""
import datetime
import json
import sys

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def produce(bootstrap, registry_url, topic, schema_file, n):
    registry = SchemaRegistryClient({"url": registry_url})
    with open(schema_file) as f:
        serializer = AvroSerializer(registry, f.read())
    producer = Producer({"bootstrap.servers": bootstrap})
    context = SerializationContext(topic, MessageField.VALUE)
    for i in range(n):
        value = {
            "transaction_id": f"py{i:05d}",
            "user_id": f"u{i % 3}",
            "merchant_id": f"m{i % 4}",
            "amount": 10.5 + i,
            "currency": "USD",
            "event_time": 1_700_000_000_000 + i,
        }
        producer.produce(topic, key=value["user_id"], value=serializer(value, context))
        print(json.dumps(value), flush=True)
    producer.flush(30)


def produce_json(bootstrap, registry_url, topic, key_field):
    registry = SchemaRegistryClient({"url": registry_url})
    schema = registry.get_latest_version(f"{topic}-value").schema
    serializer = AvroSerializer(
        registry,
        schema.schema_str,
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    producer = Producer({"bootstrap.servers": bootstrap})
    context = SerializationContext(topic, MessageField.VALUE)
    for line in sys.stdin:
        if line.strip():
            value = json.loads(line)
            producer.produce(topic, key=str(value[key_field]), value=serializer(value, context))
    if producer.flush(30) != 0:
        raise SystemExit("records were not delivered")


def epoch_millis(value):
    """fastavro decodes timestamp-millis to datetime; print it as Avro stores it."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    raise TypeError(f"{type(value)} is not JSON")


def consume(bootstrap, registry_url, topic, n):
    registry = SchemaRegistryClient({"url": registry_url})
    deserializer = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "confluent-python",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    context = SerializationContext(topic, MessageField.VALUE)
    seen = 0
    idle = 0
    while seen < n and idle < 60:
        message = consumer.poll(1.0)
        if message is None:
            idle += 1
            continue
        if message.error():
            raise SystemExit(f"consume error: {message.error()}")
        value = deserializer(message.value(), context)
        print(json.dumps(value, default=epoch_millis), flush=True)
        seen += 1
    consumer.close()
    if seen < n:
        raise SystemExit(f"read {seen} of {n} records")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "produce":
        produce(args[0], args[1], args[2], args[3], int(args[4]))
    elif command == "produce-json":
        produce_json(args[0], args[1], args[2], args[3])
    elif command == "consume":
        consume(args[0], args[1], args[2], int(args[3]))
    else:
        raise SystemExit(__doc__)
