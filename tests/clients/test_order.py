"""Order through a real client: confluent-kafka (librdkafka) with five
requests in flight per connection and no idempotence (the pre-idempotence
default of librdkafka and the Java client), large batches and a topic whose
small segments roll every few requests. Every partition must hold the
messages in the order they were produced."""

from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "ordered-confluent"
PARTITIONS = 2
TOTAL = 3_000
# From 10 bytes to 200 KB: batches of a few bytes up to ~1 MB.
SIZES = [10, 2_000, 50_000, 200_000]


def test_pipelined_produces_keep_their_order(broker):
    admin = AdminClient({"bootstrap.servers": broker.addr})
    topic = NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1,
                     config={"segment.bytes": str(1 << 20)})
    admin.create_topics([topic])[TOPIC].result(timeout=30)

    producer = Producer({"bootstrap.servers": broker.addr, "acks": "1", "enable.idempotence": False,
                         "max.in.flight.requests.per.connection": 5, "linger.ms": 2,
                         "batch.size": 1_000_000, "message.max.bytes": 1_000_000,
                         "retries": 0})
    errors = []
    delivered = defaultdict(list)

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.partition()].append(msg.offset())

    for i in range(TOTAL):
        value = f"{i:08d}".encode().ljust(SIZES[i % len(SIZES)], b".")
        producer.produce(TOPIC, partition=i % PARTITIONS, value=value, on_delivery=on_delivery)
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    for p in range(PARTITIONS):
        assert delivered[p] == sorted(delivered[p]), f"partition {p}: offsets acknowledged out of order"

    consumer = Consumer({"bootstrap.servers": broker.addr, "group.id": "unused-assign-only",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.max.bytes": 10_000_000})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    got = defaultdict(list)
    count, idle = 0, 0
    while count < TOTAL and idle < 50:
        batch = consumer.consume(num_messages=1_000, timeout=0.5)
        idle = idle + 1 if not batch else 0
        for msg in batch:
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            got[msg.partition()].append(int(msg.value()[:8]))
            count += 1
    consumer.close()
    assert count == TOTAL
    for p in range(PARTITIONS):
        sent = list(range(p, TOTAL, PARTITIONS))
        assert got[p] == sent, f"partition {p} holds its messages in the order produced"
    segments = len(list((broker.dir / "data" / f"{TOPIC}-0").glob("*.log")))
    assert segments > 10, f"the test needs many rolls, got {segments} segments"
