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


def test_consumer_fetch_sessions():
    """kafka-python fetches through incremental fetch sessions (KIP-227): the
    broker hands one out, and a consumer of several partitions, each busy in
    turn while the others idle (and so left out of the answers), reads every
    record of each partition in order."""
    import time
    from test_operating import AdminBroker, total
    b = AdminBroker(extra=["default_partitions=4"])
    try:
        producer = KafkaProducer(bootstrap_servers=b.addr, acks=1)
        for p in range(4):
            producer.send("kp-sessions", value=b"first", partition=p)
        producer.flush()
        consumer = KafkaConsumer(bootstrap_servers=b.addr, auto_offset_reset="earliest",
                                 enable_auto_commit=False, fetch_max_wait_ms=100)
        consumer.assign([TopicPartition("kp-sessions", p) for p in range(4)])
        expected = {p: [b"first"] for p in range(4)}
        got = {p: [] for p in range(4)}
        deadline = time.time() + 60
        for wave in range(16):
            busy = wave % 4
            values = [f"w{wave}-{i}".encode() for i in range(50)]
            for v in values:
                producer.send("kp-sessions", value=v, partition=busy)
            producer.flush()
            expected[busy] += values
            while got != expected and time.time() < deadline:
                for tp, messages in consumer.poll(timeout_ms=200).items():
                    got[tp.partition] += [m.value for m in messages]
        assert got == expected
        samples = b.scrape()
        assert total(samples, "spate_fetch_sessions") >= 1, "kafka-python fetched without a session"
        assert total(samples, "spate_fetch_session_partitions") >= 4
        assert total(samples, "spate_request_errors", api="Fetch") == 0, "no session was refused"
        consumer.close()
        producer.close()
    finally:
        b.stop()
