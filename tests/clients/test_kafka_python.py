"""kafka-python: producer, consumer, and the admin APIs spate implements."""

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions, NewTopic


def test_produce_and_consume(broker):
    producer = KafkaProducer(bootstrap_servers=broker.addr, acks=1, compression_type="gzip", linger_ms=5)
    sent = [producer.send("kp-basic", key=str(i % 7).encode(), value=f"v{i}".encode(),
                          headers=[("h", str(i).encode())]) for i in range(5000)]
    producer.flush()
    offsets = [f.get(timeout=30).offset for f in sent]
    assert offsets == list(range(5000))
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=broker.addr, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    consumer.assign([TopicPartition("kp-basic", 0)])
    consumer.seek_to_beginning()
    got = [m for _, m in zip(range(5000), consumer)]
    consumer.close()
    assert [m.offset for m in got] == list(range(5000))
    assert [m.value for m in got] == [f"v{i}".encode() for i in range(5000)]
    assert [dict(m.headers)["h"] for m in got] == [str(i).encode() for i in range(5000)]


def test_offsets_for_times_and_end_offsets(broker):
    producer = KafkaProducer(bootstrap_servers=broker.addr, acks="all")
    for i in range(30):
        producer.send("kp-times", value=b"x", timestamp_ms=1_000_000 + i * 1000).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.addr)
    tp = TopicPartition("kp-times", 0)
    assert consumer.beginning_offsets([tp])[tp] == 0
    assert consumer.end_offsets([tp])[tp] == 30
    found = consumer.offsets_for_times({tp: 1_000_000 + 10_500})[tp]
    assert found.offset == 11 and found.timestamp == 1_011_000
    assert consumer.offsets_for_times({tp: 9_999_999_999})[tp] is None
    consumer.close()


def test_admin_topics_partitions_and_delete_records(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.addr)
    admin.create_topics([NewTopic("kp-admin", num_partitions=2, replication_factor=1)])
    assert "kp-admin" in admin.list_topics()
    admin.create_partitions({"kp-admin": NewPartitions(total_count=4)})
    producer = KafkaProducer(bootstrap_servers=broker.addr, acks=1)
    for i in range(100):
        producer.send("kp-admin", value=b"r%d" % i, partition=3)
    producer.flush()
    producer.close()
    tp = TopicPartition("kp-admin", 3)
    result = admin.delete_records({tp: 40})
    assert result[tp]["low_watermark"] == 40
    consumer = KafkaConsumer(bootstrap_servers=broker.addr)
    assert consumer.beginning_offsets([tp])[tp] == 40
    assert len(consumer.partitions_for_topic("kp-admin")) == 4
    consumer.close()
    admin.delete_topics(["kp-admin"])
    assert "kp-admin" not in admin.list_topics()
    admin.close()
