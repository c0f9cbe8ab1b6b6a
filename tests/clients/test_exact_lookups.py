"""Exact answers a Kafka user relies on: `offsets_for_times` names the first
*record* at or after a time, inside compressed batches of several records
(as Kafka answers it), and `spate produce` puts keyed records on the
partition Java's default partitioner (murmur2) would."""

import os
import struct
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.partitioner.default import murmur2

from conftest import SPATE

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
BATCHES = 3
PER_BATCH = 5


def create(addr, topic, partitions=1, config=None):
    admin = AdminClient({"bootstrap.servers": addr})
    for f in admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})]).values():
        f.result(timeout=30)


def produce_batches(addr, topic, codec, timestamp_of):
    """BATCHES batches of PER_BATCH records each, record n stamped
    timestamp_of(n); returns the offsets of the records in order."""
    p = Producer({"bootstrap.servers": addr, "compression.type": codec, "linger.ms": 10000,
                  "batch.num.messages": PER_BATCH})
    offsets = []
    for b in range(BATCHES):
        for r in range(PER_BATCH):
            n = b * PER_BATCH + r
            kwargs = {} if timestamp_of is None else {"timestamp": timestamp_of(n)}
            p.produce(topic, value=f"v{n}".encode(), partition=0,
                      on_delivery=lambda err, msg: offsets.append(msg.offset()), **kwargs)
        assert p.flush(30) == 0
        time.sleep(0.02)  # distinct append times per batch (LogAppendTime)
    assert offsets == list(range(BATCHES * PER_BATCH))
    return offsets


def stored_batches(broker, topic):
    """(base offset, record count) of every batch in the partition's files."""
    out = []
    for path in sorted((broker.dir / "data" / f"{topic}-0").glob("*.log")):
        data = path.read_bytes()
        at = 0
        while at + 61 <= len(data):
            base, length = struct.unpack(">qi", data[at:at + 12])
            if length <= 0:
                break  # preallocated zeros past the last batch
            out.append((base, struct.unpack(">i", data[at + 57:at + 61])[0]))
            at += 12 + length
    return out


def offsets_for_times(addr, topic, ts):
    c = Consumer({"bootstrap.servers": addr, "group.id": "lookups", "enable.auto.commit": False})
    try:
        found = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)[0]
        assert found.error is None, found.error
        return found.offset
    finally:
        c.close()


@pytest.mark.parametrize("codec", CODECS)
def test_offsets_for_times_finds_the_exact_record_in_compressed_batches(broker, codec):
    topic = f"times-{codec}"
    create(broker.addr, topic)
    produce_batches(broker.addr, topic, codec, lambda n: 1_000_000 + 10 * n)
    assert stored_batches(broker, topic) == [(b * PER_BATCH, PER_BATCH) for b in range(BATCHES)], \
        "several records per batch, or the test proves nothing"
    last = BATCHES * PER_BATCH - 1
    for n in range(BATCHES * PER_BATCH):
        ts = 1_000_000 + 10 * n
        assert offsets_for_times(broker.addr, topic, ts) == n, f"exactly {ts}"
        if n > 0:
            assert offsets_for_times(broker.addr, topic, ts - 9) == n, f"just after record {n - 1}"
    assert offsets_for_times(broker.addr, topic, 0) == 0
    # Past the last record: Kafka answers -1 (the end, for librdkafka).
    assert offsets_for_times(broker.addr, topic, 1_000_000 + 10 * last + 1) == -1


def test_offsets_for_times_with_log_append_time(broker):
    """LogAppendTime: every record of a batch carries the batch's time, so a
    lookup lands on the first record of the first batch appended at or after
    it."""
    topic = "times-append"
    create(broker.addr, topic, config={"message.timestamp.type": "LogAppendTime"})
    produce_batches(broker.addr, topic, "lz4", None)
    c = Consumer({"bootstrap.servers": broker.addr, "group.id": "append", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    stamps = [m.timestamp()[1] for m in c.consume(BATCHES * PER_BATCH, timeout=10)]
    c.close()
    assert len(stamps) == BATCHES * PER_BATCH
    for b in range(BATCHES):
        batch = stamps[b * PER_BATCH:(b + 1) * PER_BATCH]
        assert len(set(batch)) == 1, "one append time per batch"
        first = b * PER_BATCH
        assert offsets_for_times(broker.addr, topic, batch[0]) == first
        if b > 0:
            # Just after the previous batch's time (batches are 20 ms apart).
            assert stamps[first - 1] + 1 < batch[0]
            assert offsets_for_times(broker.addr, topic, stamps[first - 1] + 1) == first


def test_produce_partitions_keys_with_murmur2(broker):
    """`spate produce -k` sends each key where kafka-python's (that is,
    Java's) murmur2 partitioner does, and where librdkafka's murmur2_random
    partitioner sends the same keys."""
    partitions = 7
    create(broker.addr, "keyed-cli", partitions)
    create(broker.addr, "keyed-rdkafka", partitions)
    keys = [f"user-{i}" for i in range(200)] + ["21", "foobar", "abc", ""]
    lines = "".join(f"{k}:{k or 'empty'}\n" for k in keys)
    subprocess.run([str(SPATE), "produce", "keyed-cli", "-k", ":"], input=lines.encode(), check=True,
                   env={**os.environ, "SPATE_BROKERS": broker.addr}, capture_output=True)
    p = Producer({"bootstrap.servers": broker.addr, "partitioner": "murmur2_random"})
    for k in keys:
        p.produce("keyed-rdkafka", key=k.encode(), value=(k or "empty").encode())
    assert p.flush(30) == 0

    def placed(topic):
        c = Consumer({"bootstrap.servers": broker.addr, "group.id": "placed-" + topic,
                      "enable.auto.commit": False})
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out = {}
        deadline = time.time() + 20
        while len(out) < len(keys) and time.time() < deadline:
            for m in c.consume(500, timeout=1):
                assert m.error() is None, m.error()
                out[(m.key() or b"").decode()] = m.partition()
        c.close()
        return out

    java = {k: (murmur2(k.encode()) & 0x7FFFFFFF) % partitions for k in keys}
    assert placed("keyed-cli") == java
    assert placed("keyed-rdkafka") == java
