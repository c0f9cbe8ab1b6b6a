"""confluent-kafka (librdkafka 2.x from PyPI): 100,000 keyed messages with
headers over 8 partitions, all read back in per-partition order."""

from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TOTAL = 100_000
PARTITIONS = 8


def test_hundred_thousand_keyed_messages_with_headers(broker):
    admin = AdminClient({"bootstrap.servers": broker.addr})
    futures = admin.create_topics([NewTopic("confluent-100k", num_partitions=PARTITIONS, replication_factor=1)])
    futures["confluent-100k"].result(timeout=30)

    producer = Producer({"bootstrap.servers": broker.addr, "linger.ms": 5, "acks": "all",
                         "compression.type": "lz4", "batch.num.messages": 5000})
    errors = []
    delivered = defaultdict(list)

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.partition()].append((msg.offset(), msg.value()))

    for i in range(TOTAL):
        producer.produce("confluent-100k", key=f"user-{i % 1000}".encode(), value=f"event-{i}".encode(),
                         headers=[("seq", str(i).encode()), ("src", b"test")], on_delivery=on_delivery)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:3]
    assert sum(len(v) for v in delivered.values()) == TOTAL
    assert len(delivered) == PARTITIONS, "keys spread over every partition"

    consumer = Consumer({"bootstrap.servers": broker.addr, "group.id": "unused-assign-only",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition("confluent-100k", p, 0) for p in range(PARTITIONS)])
    got = defaultdict(list)
    count = 0
    idle = 0
    while count < TOTAL and idle < 50:
        batch = consumer.consume(num_messages=10_000, timeout=0.5)
        idle = idle + 1 if not batch else 0
        for msg in batch:
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            headers = dict(msg.headers())
            seq = int(headers["seq"])
            assert msg.value() == f"event-{seq}".encode()
            assert msg.key() == f"user-{seq % 1000}".encode()
            assert headers["src"] == b"test"
            got[msg.partition()].append((msg.offset(), msg.value()))
            count += 1
    consumer.close()
    assert count == TOTAL
    for p in range(PARTITIONS):
        assert got[p] == sorted(delivered[p]), f"partition {p} reads back in produce order"
        assert [o for o, _ in got[p]] == list(range(len(got[p]))), "offsets are contiguous"
        # the same key always lands in the same partition, in send order
    by_key = defaultdict(set)
    for p, msgs in got.items():
        for _, value in msgs:
            by_key[int(value.split(b"-")[1]) % 1000].add(p)
    assert all(len(ps) == 1 for ps in by_key.values())


def test_admin_describe_and_alter_configs(broker):
    from confluent_kafka.admin import ConfigResource

    admin = AdminClient({"bootstrap.servers": broker.addr})
    admin.create_topics([NewTopic("confluent-cfg", num_partitions=2, replication_factor=1,
                                  config={"retention.ms": "3600000"})])["confluent-cfg"].result(timeout=30)
    resource = ConfigResource("topic", "confluent-cfg")
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "delete"
    resource = ConfigResource("topic", "confluent-cfg", set_config={"retention.ms": "7200000"})
    admin.alter_configs([resource])[resource].result(timeout=30)
    configs = admin.describe_configs([ConfigResource("topic", "confluent-cfg")])
    assert list(configs.values())[0].result(timeout=30)["retention.ms"].value == "7200000"
    meta = admin.list_topics(timeout=10)
    assert len(meta.topics["confluent-cfg"].partitions) == 2
    admin.delete_topics(["confluent-cfg"])["confluent-cfg"].result(timeout=30)
    assert "confluent-cfg" not in admin.list_topics(timeout=10).topics
