"""Log compaction as a confluent-kafka user sees it: a compacted topic keeps
the latest record of every key at its original offset, with each codec;
tombstones go after delete.retention.ms; a consumer seeking into a gap reads
from the next kept offset."""

import os
import shutil
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker

KEYS = 20


@pytest.fixture(scope="module")
def cbroker():
    b = Broker(extra=["log_cleaner_backoff_ms=200", "log_cleaner_io_buffer_bytes=65536"])
    yield b
    assert b.proc.poll() is None, "broker died during the tests:\n" + b.log()
    b.stop()


def create_compacted(addr, topic, delete_retention_ms):
    admin = AdminClient({"bootstrap.servers": addr})
    config = {
        "cleanup.policy": "compact",
        "segment.bytes": "16384",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": str(delete_retention_ms),
    }
    for f in admin.create_topics([NewTopic(topic, 1, 1, config=config)]).values():
        f.result(timeout=30)


def produce(addr, topic, records, codec):
    """Produces (key, value) records in order; returns their offsets."""
    p = Producer({"bootstrap.servers": addr, "compression.type": codec, "enable.idempotence": True,
                  "linger.ms": 5, "batch.num.messages": 40})
    offsets = [None] * len(records)

    def done(i):
        def cb(err, msg):
            assert err is None, err
            offsets[i] = msg.offset()
        return cb

    for i, (key, value) in enumerate(records):
        p.produce(topic, key=key, value=value, partition=0, on_delivery=done(i))
        p.poll(0)
    assert p.flush(30) == 0
    return offsets


def workload(codec, tombstone_every=7):
    """Many values for few keys, some tombstones, then unique-key filler
    (random bytes, so it seals the segments before it even compressed)."""
    records = []
    for i in range(2000):
        key = f"k{i % KEYS}".encode()
        value = None if i % tombstone_every == tombstone_every // 2 else f"{codec}-v{i}-".encode() + b"x" * 100
        records.append((key, value))
    for i in range(300):
        records.append((f"fill-{i}".encode(), os.urandom(200)))
    return records


def read_all(addr, topic, start=0):
    """offset -> (key, value) of every record from `start` to the end."""
    c = Consumer({"bootstrap.servers": addr, "group.id": "reader", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, start)])
    got = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        msg = c.poll(1)
        if msg is None:
            continue
        if msg.error():
            assert msg.error().code() == -191, msg.error()  # _PARTITION_EOF
            break
        assert msg.offset() not in got
        got[msg.offset()] = (msg.key(), msg.value())
    else:
        pytest.fail("no end of partition reached")
    c.close()
    return got


def latest(records, offsets, keep_tombstones):
    by_key = {}
    for (key, value), offset in zip(records, offsets):
        by_key[key] = (offset, value)
    return {o: (k, v) for k, (o, v) in by_key.items() if keep_tombstones or v is not None}


def wait_cleaned(addr, topic, records, offsets, keep_tombstones, log):
    want = latest(records, offsets, keep_tombstones)
    deadline = time.time() + 90
    while True:
        got = read_all(addr, topic)
        produced = dict(zip(offsets, records))
        for offset, record in got.items():
            assert produced[offset] == record, f"offset {offset}: {record} was not produced there"
        for offset, record in want.items():
            if record[1] is not None:
                assert got.get(offset) == record, f"latest record of {record[0]} lost"
        if got == want:
            return got
        assert time.time() < deadline, f"not cleaned: {len(got)} records, want {len(want)}\n{log()}"
        time.sleep(0.5)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compaction_keeps_latest_per_key_at_its_offset(cbroker, codec):
    topic = f"compact-{codec}"
    create_compacted(cbroker.addr, topic, 3_600_000)
    records = workload(codec)
    offsets = produce(cbroker.addr, topic, records, codec)
    assert offsets == list(range(len(records)))
    got = wait_cleaned(cbroker.addr, topic, records, offsets, True, cbroker.log)
    # A consumer positioned inside a gap reads from the next kept offset.
    kept = sorted(got)
    gap = kept[0] // 2
    assert gap not in got and kept[0] > 0
    after = read_all(cbroker.addr, topic, start=gap)
    assert after == got


def test_tombstones_go_after_delete_retention(cbroker):
    topic = "compact-tombstones"
    create_compacted(cbroker.addr, topic, 0)
    records = workload("lz4", tombstone_every=2)
    offsets = produce(cbroker.addr, topic, records, "lz4")
    got = wait_cleaned(cbroker.addr, topic, records, offsets, False, cbroker.log)
    assert all(v is not None for _, v in got.values())


def test_consumer_offsets_are_compacted_and_reload_after_kill9():
    """Thousands of commits of one group fill many small segments of its
    offsets partition; the cleaner compacts them, and after kill -9 the group
    still has its latest commit (offset and metadata) for every partition."""
    from test_groups import GroupBroker

    b = GroupBroker(extra=["offsets_topic_segment_bytes=16384", "offsets_topic_num_partitions=1",
                           "log_cleaner_backoff_ms=200"])
    try:
        admin = AdminClient({"bootstrap.servers": b.addr})
        for f in admin.create_topics([NewTopic("committed", 3, 1)]).values():
            f.result(timeout=30)
        c = Consumer({"bootstrap.servers": b.addr, "group.id": "compacted", "enable.auto.commit": False})
        for i in range(1500):
            offsets = [TopicPartition("committed", p, i * 3 + p, metadata=f"m{i}-{p}") for p in range(3)]
            c.commit(offsets=offsets, asynchronous=False)
        c.close()
        deadline = time.time() + 60
        while not any("log cleaned" in line and "__consumer_offsets-0" in line for line in b.log().splitlines()):
            assert time.time() < deadline, f"__consumer_offsets was never cleaned\n{b.logs()}"
            time.sleep(0.2)
        b.kill()
        b.start()
        c = Consumer({"bootstrap.servers": b.addr, "group.id": "compacted", "enable.auto.commit": False})
        got = c.committed([TopicPartition("committed", p) for p in range(3)], timeout=30)
        c.close()
        assert [(tp.partition, tp.offset, tp.metadata) for tp in got] == [
            (p, 1499 * 3 + p, f"m1499-{p}") for p in range(3)
        ], b.logs()
        b.terminate()
        shutil.rmtree(b.dir, ignore_errors=True)
    finally:
        if b.alive():
            b.kill()
