"""Partition data replication, driven through confluent-kafka (librdkafka)
against a three-node spate cluster (real `spate serve` processes, one raft
controller quorum; see test_cluster.py).

Every topic here has replication factor 3: followers fetch from the leader,
the high watermark is the lowest log end in the ISR, acks=all waits for it,
min.insync.replicas refuses acks=all writes (NOT_ENOUGH_REPLICAS) while the
ISR is too small, a follower too far behind for `replica_lag_time_max_ms`
leaves the ISR and rejoins once caught up, and a replica whose log diverged
from its new leader's truncates it (OffsetForLeaderEpoch) before it follows.

What is checked: acknowledged acks=all records survive two leader kills,
once each, with no long stall; an old leader's acks=1 tail that no follower
had is dropped and the three replicas end byte-identical; a frozen follower
leaves the ISR and rejoins it; a consumer group's offsets outlive their
coordinator; preferred leader election and DescribeCluster; replicas moved
under load (AlterPartitionReassignments through `spate partition move`); a
node whose data directory was replaced rejoins; a leader cut off from the
other nodes (by proxies the test runs) acknowledges nothing that is lost.

Each test starts its own cluster and stops it in `finally`; clients are
always bootstrapped with nodes believed alive (a SIGSTOPped node accepts
connections and never answers).
"""

import collections
import re
import shutil
import signal
import struct
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import node_metadata
from test_cluster import Cluster, produce, read_all

ALL = (1, 2, 3)
OFFSETS_TOPIC = "__consumer_offsets"
# The longest an acks=all producer may go without an acknowledgement while
# leaders die: a fenced leader's session plus an election and a retry.
MAX_ACK_GAP_S = 5.0
# A follower's fetch waits at the leader up to `replica_fetch_wait_max_ms`
# (500 ms by default) for new data. After this long frozen, a follower has no
# fetch pending there that could carry away records written meanwhile.
FETCH_DRAIN_S = 1.0
SEGMENT = re.compile(r"^\d{20}\.log$")


# ---------------------------------------------------------------- helpers


def shut_down(cluster):
    """Resumes any frozen node, stops every running one (a clean exit is
    asserted by Node.stop), and removes the cluster's files even if that fails."""
    for node in cluster.nodes.values():
        if node.proc and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGCONT)
    try:
        cluster.stop()
    finally:
        for node in cluster.nodes.values():
            if node.proc and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=10)
        shutil.rmtree(cluster.root, ignore_errors=True)


def freeze(cluster, *ids):
    for i in ids:
        cluster.nodes[i].proc.send_signal(signal.SIGSTOP)


def thaw(cluster, *ids):
    for i in ids:
        cluster.nodes[i].proc.send_signal(signal.SIGCONT)


def restart(cluster, node_id):
    cluster.nodes[node_id].start()
    cluster.nodes[node_id].wait_serving()


def wait_until(what, probe, done, timeout):
    """Polls `probe` until `done(value)` holds (None never does); the value.
    On timeout, fails with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and done(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last seen: {value!r}")
        time.sleep(0.2)


def partitions_state(cluster, topic, via=ALL):
    """{partition: (leader, sorted replicas, sorted ISR)} of `topic` as the
    cluster reports it to a client bootstrapped from nodes `via` (which must
    be running and not frozen); None when unanswered or unknown. librdkafka
    may ask any broker it has learned of, so this is not one node's own view:
    leaders_as_node_sees_them is."""
    for i in via:
        node = cluster.nodes[i]
        assert node.proc.poll() is None, f"node {i} died (exit {node.proc.returncode}):\n{node.log()}"
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap(*via)})
    try:
        md = admin.list_topics(topic, timeout=5)
    except KafkaException:
        return None
    t = md.topics.get(topic)
    if t is None or not t.partitions:
        return None
    return {p: (part.leader, sorted(part.replicas), sorted(part.isrs)) for p, part in t.partitions.items()}


def leaders_as_node_sees_them(cluster, node_id, topic):
    """{partition: leader} of `topic` as node `node_id` itself reports it."""
    return node_metadata(cluster.nodes[node_id].port, [topic])[2].get(topic)


def fully_in_sync(partitions):
    """A `done` for partitions_state: `partitions` partitions, each led, with
    all three nodes as replicas and in the ISR."""
    def done(state):
        return len(state) == partitions and all(
            leader in ALL and replicas == list(ALL) and isr == list(ALL) for leader, replicas, isr in state.values())
    return done


def create_replicated_topic(cluster, name, partitions, min_isr=None):
    """Creates `name` with replication factor 3 and waits until every
    partition is led and has its three replicas in sync."""
    config = {"min.insync.replicas": str(min_isr)} if min_isr else {}
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=3, config=config)])[name].result(
        timeout=20)
    return wait_until(f"every partition of {name} led, its 3 replicas in sync",
                      lambda: partitions_state(cluster, name), fully_in_sync(partitions), 30)


def leader_of(cluster, topic, partition, via=ALL):
    state = wait_until(f"a leader for {topic}-{partition}", lambda: partitions_state(cluster, topic, via),
                       lambda s: partition in s and s[partition][0] in ALL, 20)
    return state[partition][0]


def send(bootstrap, topic, items, acks="all", conf=None):
    """Produces `items`, (partition or None, value) pairs, and flushes:
    ({(partition, offset): value} acknowledged, [(value, error)] failed)."""
    acked, failed = {}, []

    def on_delivery(err, msg):
        if err:
            failed.append((msg.value().decode(), err))
        else:
            acked[(msg.partition(), msg.offset())] = msg.value().decode()

    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5, **(conf or {})})
    for partition, value in items:
        if partition is None:
            producer.produce(topic, value=value, on_delivery=on_delivery)
        else:
            producer.produce(topic, value=value, partition=partition, on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(30)
    assert left == 0, f"{left} of {len(items)} records neither acknowledged nor failed after 30 s"
    return acked, failed


def high_watermarks(bootstrap, topic, partitions):
    """{partition: high watermark}, None if a leader does not answer."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4()}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    except KafkaException:
        return None
    finally:
        consumer.close()


def read_to_ends(bootstrap, topic, ends):
    """{(partition, offset): value} of every record of each partition from
    its start to `ends[partition]` (exclusive), without a group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    seen = {}
    remaining = {p for p, end in ends.items() if end > 0}
    deadline = time.monotonic() + 30
    try:
        while remaining:
            assert time.monotonic() < deadline, (
                f"read {len(seen)} records in 30 s; partitions {sorted(remaining)} not read to their ends {ends}")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            seen[(msg.partition(), msg.offset())] = msg.value().decode()
            if msg.offset() >= ends[msg.partition()] - 1:
                remaining.discard(msg.partition())
    finally:
        consumer.close()
    return seen


def partition_log(cluster, node_id, topic, partition):
    """The bytes of a partition's segment files on one node, concatenated in
    name (base offset) order, and those names."""
    d = cluster.nodes[node_id].data / f"{topic}-{partition}"
    files = sorted(f for f in d.iterdir() if SEGMENT.match(f.name)) if d.is_dir() else []
    return b"".join(f.read_bytes() for f in files), [f.name for f in files]


def batches(data):
    """(base offset, last offset, partition leader epoch) of each record batch
    (Kafka's v2 format) in `data`, which must hold whole batches only."""
    out = []
    at = 0
    while at < len(data):
        if not any(data[at:]):
            raise AssertionError(f"{len(data) - at} zero bytes after the last batch (at byte {at}): space not trimmed")
        assert len(data) - at >= 61, f"a partial batch header at byte {at} of {len(data)}"
        base, length, epoch = struct.unpack_from(">qii", data, at)
        assert data[at + 16] == 2, f"batch at byte {at} (base offset {base}) has magic {data[at + 16]}"
        (last_delta,) = struct.unpack_from(">i", data, at + 23)
        assert at + 12 + length <= len(data), f"batch at byte {at} (base offset {base}) runs past the end"
        out.append((base, base + last_delta, epoch))
        at += 12 + length
    return out


def first_difference(a, b):
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def offsets_partition(group, partitions):
    """Kafka's placement of a group: abs(Java hashCode(group id)) % partitions."""
    h = 0
    units = group.encode("utf-16-be")
    for i in range(0, len(units), 2):
        h = (h * 31 + int.from_bytes(units[i:i + 2], "big")) & 0xFFFFFFFF
    if h >= 1 << 31:
        h -= 1 << 32
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def coordinator_of(cluster, group, via):
    """The node id coordinating `group` as nodes `via` see it: from
    DescribeGroups, else the leader of the group's __consumer_offsets
    partition. None when unknown."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap(*via)})
    try:
        return admin.describe_consumer_groups([group], request_timeout=10)[group].result().coordinator.id
    except KafkaException:
        pass
    state = partitions_state(cluster, OFFSETS_TOPIC, via)
    return state[offsets_partition(group, len(state))][0] if state else None


class Trickle:
    """A background producer writing one record with acks=1 every
    `interval` seconds until stopped."""

    def __init__(self, bootstrap, topic, interval, tag):
        self.acked, self.errors = {}, []
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 0,
                                  "message.timeout.ms": 10000})
        self.topic, self.interval, self.tag = topic, interval, tag
        self.stopping = threading.Event()
        self.failure = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_delivery(self, err, msg):
        if err:
            self.errors.append((msg.value().decode(), err))
        else:
            self.acked[(msg.partition(), msg.offset())] = msg.value().decode()

    def _run(self):
        try:
            i = 0
            while not self.stopping.is_set():
                self.producer.produce(self.topic, value=f"{self.tag}-{i}", partition=0, on_delivery=self._on_delivery)
                i += 1
                self.producer.poll(self.interval)
            self.left = self.producer.flush(15)
        except Exception as e:  # reported by stop()
            self.failure = e

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the acks=1 producer did not finish"
        assert self.failure is None, f"the acks=1 producer failed: {self.failure!r}"
        assert self.left == 0, f"{self.left} acks=1 records unacknowledged"


# ---------------------------------------------------------------- tests


def test_acks_all_records_survive_two_leader_kills():
    """An idempotent acks=all producer writes on while the leader of
    partition 0 is killed, restarted and back in sync, and then its new
    leader is killed and restarted too: every acknowledged record is found at
    its acknowledged offset, no record is written twice, and no stretch
    without acknowledgements lasts MAX_ACK_GAP_S."""
    stopping = threading.Event()  # ends the producer thread, also when the test fails
    cluster = Cluster(extra=["replica_lag_time_max_ms=2000"])
    try:
        topic, partitions = "survive", 3
        create_replicated_topic(cluster, topic, partitions, min_isr=2)

        acked = {}  # (partition, offset) -> value
        ack_times = []  # monotonic time of each acknowledgement, in order
        ack_times_of = collections.defaultdict(list)  # partition -> ack times
        errors, client_errors = [], []
        produced = [0]
        outcome = {}
        started = time.monotonic()
        events = []

        def mark(what):
            events.append((what, round(time.monotonic() - started, 2)))

        def on_delivery(err, msg):
            now = time.monotonic()
            if err:
                errors.append((msg.value().decode(), err))
                return
            acked[(msg.partition(), msg.offset())] = msg.value().decode()
            ack_times.append(now)
            ack_times_of[msg.partition()].append(now)

        def run():
            try:
                producer = Producer({"bootstrap.servers": cluster.bootstrap(), "enable.idempotence": True,
                                     "acks": "all", "linger.ms": 5, "message.timeout.ms": 30000,
                                     "error_cb": client_errors.append})
                interval = 1 / 250
                next_at = time.monotonic()
                i = 0
                while not stopping.is_set():
                    producer.produce(topic, value=f"v{i}", partition=i % partitions, on_delivery=on_delivery)
                    i += 1
                    produced[0] = i
                    next_at += interval
                    while (wait := next_at - time.monotonic()) > 0:
                        producer.poll(wait)
                    producer.poll(0)
                outcome["left"] = producer.flush(30)
            except Exception as e:  # reported below
                outcome["failure"] = e

        def wait_acks(partition, since, what, count=20, timeout=15):
            wait_until(f"{count} acknowledgements on partition {partition} {what}",
                       lambda: sum(1 for t in list(ack_times_of[partition]) if t > since),
                       lambda n: n >= count, timeout)

        def kill_leader_of_0(label):
            leader = leader_of(cluster, topic, 0)
            others = [i for i in ALL if i != leader]
            cluster.nodes[leader].kill9()
            mark(f"{label}: killed leader {leader}")
            state = wait_until(f"a new leader of {topic}-0 among {others}",
                               lambda: partitions_state(cluster, topic, others), lambda s: s[0][0] in others, 20)
            elected = time.monotonic()
            mark(f"{label}: {state[0][0]} leads")
            wait_acks(0, elected, f"under the new leader {state[0][0]}")
            mark(f"{label}: acks resumed on partition 0")
            restart(cluster, leader)
            mark(f"{label}: {leader} restarted")
            wait_until(f"node {leader} back in the ISR of every partition of {topic}",
                       lambda: partitions_state(cluster, topic), fully_in_sync(partitions), 30)
            mark(f"{label}: all in sync")
            return leader

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        for p in range(partitions):
            wait_acks(p, started, "before any failure")
        mark("warm")

        first = kill_leader_of_0("first kill")
        second = kill_leader_of_0("second kill")
        settled = time.monotonic()
        for p in range(partitions):
            wait_acks(p, settled, "after both failovers")
        stopping.set()
        thread.join(timeout=45)
        mark("stopped")
        assert not thread.is_alive(), "the producer did not finish flushing"
        assert "failure" not in outcome, f"the producer failed: {outcome['failure']!r}"
        assert outcome["left"] == 0, f"{outcome['left']} of {produced[0]} records unacknowledged after flush"

        fatal = [e for e in client_errors if e.fatal()]
        assert not fatal, f"fatal producer errors: {fatal}"
        assert not errors, f"{len(errors)} of {produced[0]} deliveries failed, e.g. {errors[:5]}"
        per_partition = collections.Counter(p for p, _ in acked)
        assert len(acked) == produced[0] and all(per_partition[p] > 0 for p in range(partitions)), (
            f"{len(acked)} acknowledged of {produced[0]} produced, per partition {dict(per_partition)}")

        # No long stall while leaders died.
        gaps = [b - a for a, b in zip(ack_times, ack_times[1:])]
        worst = max(range(len(gaps)), key=gaps.__getitem__)
        per_partition_gap = {p: round(max(b - a for a, b in zip(ts, ts[1:])), 2) for p, ts in ack_times_of.items()}
        assert gaps[worst] < MAX_ACK_GAP_S, (
            f"no acknowledgement for {gaps[worst]:.2f} s from t={ack_times[worst] - started:.2f} s "
            f"(limit {MAX_ACK_GAP_S} s; {len(acked)} acks; longest per partition {per_partition_gap}; "
            f"events {events})")

        # Every acknowledged record is where it was acknowledged, once.
        last_acked = {p: max(o for q, o in acked if q == p) for p in range(partitions)}
        ends = wait_until(
            f"high watermarks past every acknowledged offset {last_acked}",
            lambda: high_watermarks(cluster.bootstrap(), topic, partitions),
            lambda hw: all(hw[p] > last_acked[p] for p in range(partitions)), 20)
        seen = read_to_ends(cluster.bootstrap(), topic, ends)
        wrong = [(k, v, seen.get(k)) for k, v in acked.items() if seen.get(k) != v]
        assert not wrong, (
            f"{len(wrong)} of {len(acked)} acknowledged records missing or different "
            f"((partition, offset), acked, found): {sorted(wrong)[:10]}; killed {first} then {second}; events {events}")
        copies = collections.Counter(seen.values())
        twice = sorted(v for v, n in copies.items() if n > 1)
        assert not twice, (
            f"{len(twice)} values written more than once (of {len(seen)} records read, {len(acked)} acked): "
            f"{[(v, sorted(k for k, w in seen.items() if w == v)) for v in twice[:10]]}")
    finally:
        stopping.set()
        shut_down(cluster)


def test_divergent_tail_is_truncated_and_replicas_end_identical():
    """The leader takes acks=1 records while both followers are frozen, then
    dies; a follower takes over and new records land at the same offsets.
    The old leader, restarted, truncates its divergent tail and follows: its
    acks=1 records are gone and the three replicas' logs end byte-identical."""
    cluster = Cluster()  # replica_lag_time_max_ms stays 10 s: no ISR shrink while followers are frozen
    try:
        topic = "diverge"
        create_replicated_topic(cluster, topic, 1, min_isr=1)
        first = produce(cluster.bootstrap(), topic, 50, "first")
        assert sorted(o for _, o in first) == list(range(50)), first

        old = leader_of(cluster, topic, 0)
        followers = [i for i in ALL if i != old]
        state = partitions_state(cluster, topic, (old,))
        assert state and state[0][2] == list(ALL), f"both followers in sync before they are frozen: {state}"

        lone = Producer({"bootstrap.servers": cluster.nodes[old].addr, "acks": "1", "linger.ms": 0,
                         "message.timeout.ms": 5000})
        lone.list_topics(topic, timeout=10)  # connected, and the leader known, before the followers freeze
        lost, lost_errors = {}, []

        def on_lost(err, msg):
            if err:
                lost_errors.append((msg.value().decode(), err))
            else:
                lost[(msg.partition(), msg.offset())] = msg.value().decode()

        freeze(cluster, *followers)
        frozen_at = time.monotonic()
        # The followers' fetches pending at the leader time out empty first:
        # none of them can carry the records below away.
        time.sleep(FETCH_DRAIN_S)
        for i in range(20):
            lone.produce(topic, value=f"lost-{i}", partition=0, on_delivery=on_lost)
        left = lone.flush(5)
        cluster.nodes[old].kill9()
        thaw(cluster, *followers)
        frozen_for = time.monotonic() - frozen_at
        del lone  # its leader is gone
        assert left == 0 and not lost_errors and len(lost) == 20, (
            f"acks=1 to the lone leader: {len(lost)} acked, {left} left, errors {lost_errors}")
        assert sorted(o for _, o in lost) == list(range(50, 70)), f"acks=1 records after the first 50: {lost}"

        state = wait_until(f"a new leader of {topic}-0 among {followers} (old leader {old} killed)",
                           lambda: partitions_state(cluster, topic, followers), lambda s: s[0][0] in followers, 30)
        new = state[0][0]
        after = produce(cluster.bootstrap(*followers), topic, 30, "after")
        assert min(o for _, o in after) == 50, (
            f"the new leader {new} should have ended at offset 50, where its followers were frozen "
            f"{frozen_for:.2f} s; its first new record is at {min(o for _, o in after)}: "
            "did an acks=1 record reach a follower?")

        restart(cluster, old)
        wait_until(f"the old leader {old} back in the ISR of {topic}-0",
                   lambda: partitions_state(cluster, topic), fully_in_sync(1), 30)
        final = produce(cluster.bootstrap(), topic, 10, "final")
        state = partitions_state(cluster, topic)
        assert state and state[0][2] == list(ALL), f"all three in sync after the last acks=all records: {state}"

        acked = {**first, **after, **final}
        seen = read_all(cluster.bootstrap(), topic, 1, len(acked))
        assert not set(lost.values()) & set(seen.values()), (
            f"acks=1 records of the old leader survived: {sorted(set(lost.values()) & set(seen.values()))}")
        missing = sorted(k for k in acked if seen.get(k) != acked[k])
        extra = sorted(k for k in seen if k not in acked)
        assert not missing and not extra, (
            f"read {len(seen)} records, {len(acked)} acked with acks=all: "
            f"missing or different at {missing[:10]}, unexpected at {extra[:10]}")

        # Stopped cleanly, the three logs hold the same batches, byte for byte.
        for i in ALL:
            cluster.nodes[i].stop()
        logs = {i: partition_log(cluster, i, topic, 0) for i in ALL}
        reference, _ = logs[new]
        assert reference, f"no segment files in {cluster.nodes[new].data / f'{topic}-0'}"
        for i, (data, names) in logs.items():
            assert data == reference, (
                f"node {i}'s log ({len(data)} bytes in {names}) differs from the new leader {new}'s "
                f"({len(reference)} bytes in {logs[new][1]}) from byte {first_difference(data, reference)}; "
                f"old leader {old}")
        found = batches(reference)
        assert found[0][0] == 0 and found[-1][1] == len(acked) - 1, f"batches cover 0..{len(acked) - 1}: {found}"
        for (_, last, epoch), (base, _, next_epoch) in zip(found, found[1:]):
            assert base == last + 1 and next_epoch >= epoch, f"batches contiguous, epochs not decreasing: {found}"
        at_50 = next((b for b in found if b[0] == 50), None)
        before_50 = next((b for b in found if b[1] == 49), None)
        assert at_50 and before_50 and at_50[2] > before_50[2], (
            f"a batch ends at 49 and the next, at 50, is of the new leader's (later) epoch: {found}")
    finally:
        shut_down(cluster)


def test_slow_follower_leaves_and_rejoins_isr():
    """With min.insync.replicas=3, a frozen follower leaves the ISR after
    replica_lag_time_max_ms while acks=1 records keep coming; acks=all is
    then refused with NOT_ENOUGH_REPLICAS. Resumed, the follower catches up,
    rejoins the ISR, and acks=all succeeds again."""
    cluster = Cluster(extra=["replica_lag_time_max_ms=2000"])
    try:
        topic = "laggard"
        create_replicated_topic(cluster, topic, 1, min_isr=3)
        before = produce(cluster.bootstrap(), topic, 20, "before")
        assert len(before) == 20

        leader = leader_of(cluster, topic, 0)
        controller = cluster.metadata(leader)[0]
        followers = [i for i in ALL if i != leader]
        # Not the controller: the quorum's leader is not disturbed.
        slow = next((f for f in followers if f != controller), followers[0])
        live = [i for i in ALL if i != slow]

        trickle = Trickle(cluster.bootstrap(*live), topic, 0.2, "trickle")
        freeze(cluster, slow)
        frozen_at = time.monotonic()
        try:
            # The leader's own view: the ISR it checks min.insync.replicas against.
            state = wait_until(f"node {slow} (frozen) to leave the ISR of {topic}-0",
                               lambda: partitions_state(cluster, topic, (leader,)),
                               lambda s: s[0][2] == sorted(live), 20)
            assert state[0][0] == leader, f"the leader stays {leader}: {state}"
            left_after = time.monotonic() - frozen_at

            # acks=all is refused outright while the ISR is below min.insync.replicas.
            deadline = time.monotonic() + 15
            attempts = []
            while True:
                value = f"refused-{len(attempts)}"
                result = []
                producer = Producer({"bootstrap.servers": cluster.bootstrap(*live), "acks": "all", "retries": 0,
                                     "enable.idempotence": False, "linger.ms": 0, "message.timeout.ms": 5000})
                producer.produce(topic, value=value, partition=0, on_delivery=lambda err, msg: result.append(err))
                producer.flush(10)
                err = result[0] if result else "no delivery report"
                attempts.append((value, err))
                assert err is not None, f"acks=all acknowledged with ISR {sorted(live)} < min.insync.replicas=3"
                if isinstance(err, KafkaError) and err.code() == KafkaError.NOT_ENOUGH_REPLICAS:
                    break
                assert time.monotonic() < deadline, (
                    f"acks=all never refused with NOT_ENOUGH_REPLICAS ({slow} out of the ISR "
                    f"{left_after:.1f} s after freezing): {attempts}")
        finally:
            trickle.stop()
            thaw(cluster, slow)
        assert trickle.acked and not trickle.errors, (
            f"acks=1 goes on with the ISR short: {len(trickle.acked)} acked, errors {trickle.errors[:5]}")

        wait_until(f"node {slow} (resumed) back in the ISR of {topic}-0",
                   lambda: partitions_state(cluster, topic, (leader,)), lambda s: s[0][2] == list(ALL), 30)
        after = produce(cluster.bootstrap(), topic, 20, "after")
        assert len(after) == 20

        acked = {**before, **trickle.acked, **after}
        seen = read_all(cluster.bootstrap(), topic, 1, len(acked))
        assert seen == acked, (
            f"read {len(seen)} records, acknowledged {len(acked)} ({len(trickle.acked)} with acks=1): "
            f"missing {sorted(set(acked) - set(seen))[:10]}, unexpected {sorted(set(seen) - set(acked))[:10]}")
        refused = {v for v, _ in attempts}
        assert not refused & set(seen.values()), f"refused records were written: {refused & set(seen.values())}"
    finally:
        shut_down(cluster)


def test_a_follower_whose_writes_fail():
    """Injected I/O errors on a follower (SPATE_FAULTS at its restart): a
    burst of ENOSPC on one replica's writes is rolled back and fetched
    again, and the replica stays in step to the byte; EIO (its device
    failed) takes another replica offline: it fetches no more and leaves the
    ISR after replica_lag_time_max_ms, while acks=all writes go on with the
    two others (min.insync.replicas=2). Every acknowledged record is read
    back at its offset."""
    cluster = Cluster(extra=["replica_lag_time_max_ms=2000"])
    try:
        for topic in ("sick", "blip"):
            create_replicated_topic(cluster, topic, 1, min_isr=2)
        leaders = {leader_of(cluster, "sick", 0), leader_of(cluster, "blip", 0)}
        controller = cluster.metadata(next(iter(leaders)))[0]
        followers = [n for n in ALL if n not in leaders]
        faulty = next((n for n in followers if n != controller), followers[0])
        healthy = [n for n in ALL if n != faulty]
        acked = {}
        for topic in ("sick", "blip"):
            acked[topic], failed = send(cluster.bootstrap(), topic, [(0, f"{topic}-a{i}") for i in range(50)])
            assert len(acked[topic]) == 50 and not failed, failed

        cluster.nodes[faulty].stop()
        faults = "op=write,error=EIO,times=0,path=sick-0;op=write,error=ENOSPC,times=5,path=blip-0"
        cluster.nodes[faulty].start(env={"SPATE_FAULTS": faults})
        cluster.nodes[faulty].wait_serving()
        for topic in ("sick", "blip"):
            wait_until(f"node {faulty} (restarted) back in the ISR of {topic}-0",
                       lambda: partitions_state(cluster, topic, healthy), lambda s: s[0][2] == list(ALL), 30)

        for topic in ("sick", "blip"):
            more, failed = send(cluster.bootstrap(*healthy), topic, [(0, f"{topic}-b{i}") for i in range(200)])
            assert len(more) == 200 and not failed, f"{topic}: {len(more)} acknowledged, failed {failed[:3]}"
            acked[topic].update(more)
        wait_until(f"node {faulty}, its sick-0 offline, out of the ISR", lambda: partitions_state(
            cluster, "sick", healthy), lambda s: s[0][2] == healthy, 20)
        log = cluster.nodes[faulty].log_path.read_text()
        assert any("partition offline" in line and "sick-0" in line for line in log.splitlines()), log[-3000:]
        wait_until(f"node {faulty} in step on blip-0 after its ENOSPC burst", lambda: partitions_state(
            cluster, "blip", healthy), lambda s: s[0][2] == list(ALL), 20)
        assert any("write failed" in line and "blip-0" in line for line in log.splitlines()), "no ENOSPC on blip-0"
        for topic in ("sick", "blip"):
            more, failed = send(cluster.bootstrap(*healthy), topic, [(0, f"{topic}-c{i}") for i in range(50)])
            assert len(more) == 50 and not failed, failed
            acked[topic].update(more)
            seen = read_all(cluster.bootstrap(*healthy), topic, 1, len(acked[topic]))
            wrong = [k for k, v in acked[topic].items() if seen.get(k) != v]
            assert not wrong, f"{topic}: {len(wrong)} acknowledged records not at their offsets, e.g. {wrong[:3]}"

        blip_leader = leader_of(cluster, "blip", 0, healthy)
        for node in cluster.nodes.values():
            node.stop()
        logs = {n: partition_log(cluster, n, "blip", 0)[0] for n in (blip_leader, faulty)}
        assert logs[faulty] and logs[faulty] == logs[blip_leader], (
            f"blip-0 differs between {faulty} and {blip_leader} from byte "
            f"{first_difference(logs[faulty], logs[blip_leader])}")
    finally:
        shut_down(cluster)


def test_group_moves_with_its_coordinator():
    """A group commits offsets; its coordinator is killed; a new consumer of
    the group, knowing only the survivors, starts exactly at those commits:
    __consumer_offsets is replicated and another node takes the group over."""
    cluster = Cluster(extra=["group_initial_rebalance_delay_ms=0", "offsets_topic_num_partitions=5"])
    try:
        topic, group, partitions = "moving", "g-moving", 3
        create_replicated_topic(cluster, topic, partitions)
        written, failed = send(cluster.bootstrap(), topic, [(i % partitions, f"m-{i}") for i in range(300)])
        assert len(written) == 300 and not failed, f"{len(written)} acked, failed {failed[:5]}"

        conf = {"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
                "session.timeout.ms": 6000}
        first_errors = []
        c1 = Consumer({"bootstrap.servers": cluster.bootstrap(), "error_cb": first_errors.append, **conf})
        c1.subscribe([topic])
        last = {}
        deadline = time.monotonic() + 20
        while len(last) < partitions:
            assert time.monotonic() < deadline, f"the first consumer read from {sorted(last)} only: {first_errors}"
            msg = c1.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            last[msg.partition()] = msg.offset()
        commits = {p: o + 1 for p, o in last.items()}
        assert sum(commits.values()) > 0

        # The offsets topic exists now (the group found its coordinator):
        # commit once its replicas are all in sync, so the commit is on each.
        offsets_state = wait_until(f"every {OFFSETS_TOPIC} partition led, 3 replicas in sync",
                                   lambda: partitions_state(cluster, OFFSETS_TOPIC),
                                   lambda s: fully_in_sync(len(s))(s), 30)
        c1.commit(offsets=[TopicPartition(topic, p, o) for p, o in commits.items()], asynchronous=False)
        stored = c1.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        assert {tp.partition: tp.offset for tp in stored} == commits, f"committed {stored}, meant {commits}"
        c1.close()

        # Records past every commit, so each partition has one to resume at.
        more, failed = send(cluster.bootstrap(), topic,
                            [(p, f"more-{p}-{i}") for p in range(partitions) for i in range(10)])
        assert len(more) == 30 and not failed, f"{len(more)} acked, failed {failed[:5]}"

        coordinator = wait_until(f"the coordinator of {group}", lambda: coordinator_of(cluster, group, ALL),
                                 lambda c: c in ALL, 15)
        group_partition = offsets_partition(group, len(offsets_state))
        replicas = offsets_state[group_partition][1]
        assert replicas == list(ALL), f"{OFFSETS_TOPIC}-{group_partition} is replicated on every node: {replicas}"
        survivors = [i for i in ALL if i != coordinator]

        cluster.nodes[coordinator].kill9()
        killed_at = time.monotonic()
        second_errors = []
        c2 = Consumer({"bootstrap.servers": cluster.bootstrap(*survivors), "error_cb": second_errors.append, **conf})
        try:
            c2.subscribe([topic])
            starts, poll_errors = {}, []
            while len(starts) < partitions and time.monotonic() < killed_at + 20:
                msg = c2.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().fatal():
                        raise KafkaException(msg.error())
                    poll_errors.append(msg.error())
                    continue
                starts.setdefault(msg.partition(), msg.offset())
            took = time.monotonic() - killed_at
            assert len(starts) == partitions, (
                f"{took:.1f} s after coordinator {coordinator} died, the group resumed on {sorted(starts)} only "
                f"(commits {commits}); errors {poll_errors[:5]} {second_errors[:5]}")
            assert starts == commits, (
                f"the group resumed at {starts}, committed {commits} (coordinator {coordinator} killed)")
            resumed = c2.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
            assert {tp.partition: tp.offset for tp in resumed} == commits, f"committed now {resumed}, were {commits}"
        finally:
            c2.close()

        moved = wait_until(f"a new coordinator of {group} among {survivors}",
                           lambda: coordinator_of(cluster, group, survivors), lambda c: c in survivors, 15)
        assert moved != coordinator
    finally:
        shut_down(cluster)


def test_preferred_leader_election_and_describe_cluster():
    """A partition whose preferred replica died and came back is led by
    another node until ElectLeaders moves it home (confluent-kafka's
    `elect_leaders`); a second election is not needed. DescribeCluster lists
    the three nodes and the controller. acks=all writes keep working and
    every acknowledged record stays at its offset."""
    from confluent_kafka import ElectionType

    cluster = Cluster(extra=["replica_lag_time_max_ms=2000"])
    try:
        topic = "elect"
        create_replicated_topic(cluster, topic, 1, min_isr=2)
        preferred = partitions_state(cluster, topic)[0][0]
        replicas = AdminClient({"bootstrap.servers": cluster.bootstrap()}).list_topics(topic).topics[topic]
        assert replicas.partitions[0].replicas[0] == preferred, "the first replica leads a new partition"
        acked, failed = send(cluster.bootstrap(), topic, [(0, f"a{i}") for i in range(50)])
        assert len(acked) == 50 and not failed, failed

        cluster.nodes[preferred].kill9()
        others = [n for n in ALL if n != preferred]
        moved = wait_until("another leader once the preferred one is fenced",
                           lambda: partitions_state(cluster, topic, via=others),
                           lambda s: s[0][0] in others, 20)[0][0]
        more, failed = send(cluster.bootstrap(*others), topic, [(0, f"b{i}") for i in range(50)])
        assert len(more) == 50 and not failed, failed
        acked.update(more)
        restart(cluster, preferred)
        wait_until("the preferred replica back in sync", lambda: partitions_state(cluster, topic),
                   fully_in_sync(1), 30)
        assert partitions_state(cluster, topic)[0][0] == moved, "no automatic move back"

        admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})
        result = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, 0)]).result(timeout=20)
        errors = {(tp.topic, tp.partition): err for tp, err in result.items()}
        assert errors == {(topic, 0): None}, f"election results: {errors}"
        state = wait_until("the preferred replica leading again", lambda: partitions_state(cluster, topic),
                           lambda s: s[0][0] == preferred, 20)
        assert state[0][2] == list(ALL), state
        again = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, 0)]).result(timeout=20)
        err = {(tp.topic, tp.partition): e for tp, e in again.items()}.get((topic, 0))
        assert err is not None and err.code() == KafkaError.ELECTION_NOT_NEEDED, f"second election: {err}"

        last, failed = send(cluster.bootstrap(), topic, [(0, f"c{i}") for i in range(50)])
        assert len(last) == 50 and not failed, failed
        acked.update(last)
        ends = high_watermarks(cluster.bootstrap(), topic, 1)
        seen = read_to_ends(cluster.bootstrap(), topic, ends)
        assert all(seen.get(k) == v for k, v in acked.items()), "every acknowledged record at its offset"
        assert len(seen) == len(acked) == 150, (len(seen), len(acked))

        described = admin.describe_cluster().result(timeout=10)
        assert sorted(n.id for n in described.nodes) == list(ALL), described.nodes
        assert described.controller is not None and described.controller.id in ALL
        assert described.cluster_id
    finally:
        shut_down(cluster)


def test_reassignment_under_load_loses_nothing():
    """`spate partition move` under an acks=all load: reordering a
    partition's replicas (1,2,3 → 2,3,1) is done at once and `spate
    partition elect-leaders` hands it to its new preferred leader; moving a
    two-replica partition onto the third node (x,y → z,x) makes z a follower
    that catches up, then drops y, which deletes its copy. Every acknowledged record is read back at
    its offset, and the moved replicas hold the same bytes."""
    import subprocess
    from conftest import SPATE

    def cli(*args):
        out = subprocess.run([str(SPATE), "--brokers", cluster.bootstrap(), *args], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    cluster = Cluster()
    stop = threading.Event()
    acked, errors = {}, []

    def load(topics):
        producer = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all", "enable.idempotence": True,
                             "linger.ms": 2})

        def on_delivery(err, msg):
            if err:
                errors.append(err)
            else:
                acked[(msg.topic(), msg.partition(), msg.offset())] = msg.value().decode()
        i = 0
        while not stop.is_set():
            for topic in topics:
                producer.produce(topic, value=f"{topic}-{i}", partition=0, on_delivery=on_delivery)
            i += 1
            producer.poll(0.005)
        producer.flush(30)

    try:
        create_replicated_topic(cluster, "reorder", 1)
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})
        admin.create_topics([NewTopic("grow", num_partitions=1, replication_factor=2)])["grow"].result(timeout=20)
        grow = wait_until("grow led with 2 replicas in sync", lambda: partitions_state(cluster, "grow"),
                          lambda s: s[0][0] in ALL and len(s[0][2]) == 2, 30)[0]
        md = admin.list_topics("reorder").topics["reorder"].partitions[0]
        first, rest = md.replicas[0], md.replicas[1:]
        thread = threading.Thread(target=load, args=(["reorder", "grow"],), daemon=True)
        thread.start()
        time.sleep(1)

        reordered = rest + [first]
        cli("partition", "move", "reorder/0", "--to", ",".join(map(str, reordered)))
        md = admin.list_topics("reorder").topics["reorder"].partitions[0]
        assert md.replicas == reordered, f"replicas now {md.replicas}, wanted {reordered}"
        assert "elected its preferred leader" in cli("partition", "elect-leaders", "reorder/0")
        wait_until("reorder led by its new preferred replica", lambda: partitions_state(cluster, "reorder"),
                   lambda s: s[0][0] == reordered[0], 20)

        x, y = grow[1]  # sorted replicas of "grow"
        z = next(n for n in ALL if n not in (x, y))
        out = cli("partition", "move", "grow/0", "--to", f"{z},{x}", "--timeout-s", "60")
        assert "now has replicas" in out, out
        state = wait_until("grow on z and x only", lambda: partitions_state(cluster, "grow"),
                           lambda s: s[0][1] == sorted([z, x]) and s[0][2] == sorted([z, x]), 20)
        assert state[0][0] in (z, x)
        assert "grow/0" not in cli("partition", "moves")
        # y no longer holds a replica: its copy is deleted (renamed, then removed).
        wait_until(f"grow/0's directory gone from node {y}",
                   lambda: [d.name for d in cluster.nodes[y].data.iterdir() if d.name.startswith("grow-0")],
                   lambda names: names == [], 20)
        time.sleep(1)
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert not errors, f"{len(errors)} deliveries failed, e.g. {errors[:3]}"
        for topic in ("reorder", "grow"):
            mine = {(p, o): v for (t, p, o), v in acked.items() if t == topic}
            assert len(mine) > 50, f"only {len(mine)} records acknowledged on {topic}"
            ends = high_watermarks(cluster.bootstrap(), topic, 1)
            seen = read_to_ends(cluster.bootstrap(), topic, ends)
            wrong = [k for k, v in mine.items() if seen.get(k) != v]
            assert not wrong, f"{topic}: {len(wrong)} acknowledged records not at their offsets, e.g. {wrong[:3]}"
        wait_until("z in sync on grow", lambda: partitions_state(cluster, "grow"),
                   lambda s: sorted(s[0][2]) == sorted([z, x]), 20)
        for node in cluster.nodes.values():
            node.stop()
        logs = {n: partition_log(cluster, n, "grow", 0)[0] for n in (z, x)}
        assert logs[z] and logs[z] == logs[x], (
            f"grow/0 differs between {z} and {x} from byte {first_difference(logs[z], logs[x])}")
    finally:
        stop.set()
        shut_down(cluster)


def test_a_node_with_a_replaced_data_directory_rejoins():
    """A node stopped, its data directory wiped (a replaced disk) and
    started again with the same node id: the quorum's leader remembers more
    of its metadata log than it has, which must not crash it; it catches up
    from the quorum, fetches its replicas back from their leaders, and
    rejoins every ISR with the same bytes."""
    cluster = Cluster()
    try:
        create_replicated_topic(cluster, "wiped", 2)
        acked, failed = send(cluster.bootstrap(), "wiped", [(i % 2, f"w{i}") for i in range(200)])
        assert len(acked) == 200 and not failed, failed
        victim = 2
        others = [n for n in ALL if n != victim]
        cluster.nodes[victim].stop()
        wait_until("the stopped node out of every ISR", lambda: partitions_state(cluster, "wiped", via=others),
                   lambda s: all(victim not in isr for _, _, isr in s.values()), 20)
        shutil.rmtree(cluster.nodes[victim].data)
        more, failed = send(cluster.bootstrap(*others), "wiped", [(i % 2, f"x{i}") for i in range(100)])
        assert len(more) == 100 and not failed, failed
        acked.update(more)
        restart(cluster, victim)
        wait_until("the wiped node back in every ISR", lambda: partitions_state(cluster, "wiped"),
                   fully_in_sync(2), 30)
        ends = high_watermarks(cluster.bootstrap(), "wiped", 2)
        seen = read_to_ends(cluster.bootstrap(), "wiped", ends)
        assert seen == acked, f"{len(seen)} records read, {len(acked)} acknowledged"
        for node in cluster.nodes.values():
            node.stop()
        for p in range(2):
            logs = {n: partition_log(cluster, n, "wiped", p)[0] for n in ALL}
            assert logs[victim] and all(logs[n] == logs[victim] for n in others), f"wiped-{p} differs between nodes"
    finally:
        shut_down(cluster)


class Proxy:
    """A TCP proxy from a local port to `target_port` that the test can cut.
    `replica_only`: the target is a Kafka listener, and only connections
    whose first request comes from a follower's fetcher (client id
    `spate-replica-N`) are cut; clients pass. Otherwise every connection is."""

    def __init__(self, target_port, replica_only=False):
        import socket
        self.target_port, self.replica_only = target_port, replica_only
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.lock = threading.Lock()
        self.cuttable = []  # live (client, upstream) socket pairs that a cut closes
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self):
        self.cut_off.set()
        with self.lock:
            pairs, self.cuttable = self.cuttable, []
        for pair in pairs:
            for s in pair:
                self._close(s)

    def heal(self):
        self.cut_off.clear()

    @staticmethod
    def _close(s):
        import socket
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        import socket
        head = b""
        cuttable = True
        if self.replica_only:
            # The first request's header: length, api key, version, correlation id, client id.
            try:
                while len(head) < 14:
                    chunk = client.recv(14 - len(head))
                    if not chunk:
                        return client.close()
                    head += chunk
                (id_len,) = struct.unpack_from(">h", head, 12)
                while len(head) < 14 + max(id_len, 0):
                    chunk = client.recv(14 + id_len - len(head))
                    if not chunk:
                        return client.close()
                    head += chunk
            except OSError:
                return client.close()
            cuttable = head[14:14 + max(id_len, 0)].startswith(b"spate-replica-")
        if cuttable and self.cut_off.is_set():
            return self._close(client)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
            upstream.sendall(head)
        except OSError:
            return client.close()
        if cuttable:
            with self.lock:
                self.cuttable.append((client, upstream))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            self._close(s)


class IsolatableCluster:
    """Three nodes where node 3 talks to the others only through proxies:
    the controller traffic both ways, and the followers' fetches from its
    Kafka listener (which it advertises through a proxy that lets clients
    pass). `isolate()` cuts node 3 off from the other nodes, not from clients."""

    def __init__(self):
        import tempfile
        from pathlib import Path

        from conftest import free_port
        from test_cluster import Node

        self.root = Path(tempfile.mkdtemp(prefix="spate-isolation-"))
        kafka = {i: free_port() for i in ALL}
        control = {i: free_port() for i in ALL}
        self.proxies = {i: Proxy(control[i]) for i in ALL}  # to node i's controller port
        self.kafka_proxy = Proxy(kafka[3], replica_only=True)
        direct = {i: f"{i}@127.0.0.1:{control[i]}" for i in ALL}
        proxied = {i: f"{i}@127.0.0.1:{self.proxies[i].port}" for i in ALL}
        voters_of_3 = ",".join([proxied[1], proxied[2], direct[3]])
        voters_of_others = ",".join([direct[1], direct[2], proxied[3]])
        self.nodes = {
            1: Node(self.root, 1, kafka[1], control[1], voters_of_others, []),
            2: Node(self.root, 2, kafka[2], control[2], voters_of_others, []),
            3: Node(self.root, 3, kafka[3], control[3], voters_of_3,
                    [f"advertised_port={self.kafka_proxy.port}"]),
        }
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_serving()

    def isolate(self):
        for proxy in self.proxies.values():
            proxy.cut()
        self.kafka_proxy.cut()

    def heal(self):
        for proxy in self.proxies.values():
            proxy.heal()
        self.kafka_proxy.heal()

    def bootstrap(self, *ids):
        return ",".join(self.nodes[i].addr for i in (ids or self.nodes))

    def stop(self):
        for node in self.nodes.values():
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def test_an_isolated_leader_acknowledges_nothing_that_is_lost():
    """Node 3 leads a partition (RF 3, min.insync.replicas 2) and is cut off
    from the other nodes while clients still reach it. It cannot get acks=all
    writes replicated, so it acknowledges none; the others fence it and elect
    a new leader, where writes go on. Healed, node 3 learns it follows,
    truncates what it took alone, and catches up: every acknowledged record
    is at its offset, once, and the three replicas end byte-identical."""
    cluster = IsolatableCluster()
    stop = threading.Event()
    acked, isolated_acks = {}, []
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})
        admin.create_topics([NewTopic("iso", num_partitions=1, replica_assignment=[[3, 1, 2]],
                                      config={"min.insync.replicas": "2"})])["iso"].result(timeout=20)
        wait_until("iso led by node 3, all in sync", lambda: partitions_state(cluster, "iso"),
                   lambda s: s[0][0] == 3 and s[0][2] == list(ALL), 30)
        first, failed = send(cluster.bootstrap(), "iso", [(0, f"before-{i}") for i in range(50)],
                             conf={"enable.idempotence": True})
        assert len(first) == 50 and not failed, failed
        acked.update(first)

        def load():
            producer = Producer({"bootstrap.servers": cluster.bootstrap(), "acks": "all",
                                 "enable.idempotence": True, "linger.ms": 2, "message.timeout.ms": 30000})

            def on_delivery(err, msg):
                if not err:
                    acked[(msg.partition(), msg.offset())] = msg.value().decode()
            i = 0
            while not stop.is_set():
                producer.produce("iso", value=f"during-{i}", partition=0, on_delivery=on_delivery)
                i += 1
                producer.poll(0.01)
            assert producer.flush(40) == 0, "records neither acknowledged nor failed"
        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        time.sleep(0.5)

        cluster.isolate()
        # A producer that knows only node 3 sends it acks=all writes while it is cut off.
        alone = Producer({"bootstrap.servers": f"127.0.0.1:{cluster.kafka_proxy.port}", "acks": "all",
                          "message.timeout.ms": 4000, "retries": 0})
        alone_errors = []
        for i in range(20):
            alone.produce("iso", value=f"alone-{i}", partition=0,
                          on_delivery=lambda err, msg: alone_errors.append(err) if err else isolated_acks.append(
                              msg.offset()))
        alone.flush(10)
        assert not isolated_acks, f"the isolated leader acknowledged acks=all writes at {isolated_acks}"
        timed_out = (KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT)
        assert len(alone_errors) == 20 and all(e.code() in timed_out for e in alone_errors), (
            f"writes to the isolated leader should wait for replicas and time out: {alone_errors[:3]}")
        wait_until("a new leader among the connected nodes",
                   lambda: [(leaders_as_node_sees_them(cluster, n, "iso") or {}).get(0) for n in (1, 2)],
                   lambda leaders: all(leader in (1, 2) for leader in leaders), 20)
        assert leaders_as_node_sees_them(cluster, 3, "iso") == {0: 3}, "node 3, cut off, still believes it leads"
        time.sleep(2)  # writes go on at the new leader
        cluster.heal()
        wait_until("node 3 back in sync after healing", lambda: partitions_state(cluster, "iso"),
                   lambda s: s[0][0] in (1, 2) and s[0][2] == list(ALL), 40)
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()
        during = [k for k, v in acked.items() if v.startswith("during-")]
        assert len(during) > 50, f"only {len(during)} acknowledged writes around the isolation"
        ends = high_watermarks(cluster.bootstrap(1, 2), "iso", 1)
        seen = read_to_ends(cluster.bootstrap(1, 2), "iso", ends)
        lost = {k: v for k, v in acked.items() if seen.get(k) != v}
        assert not lost, f"{len(lost)} acknowledged records not at their offsets, e.g. {list(lost.items())[:3]}"
        values = list(seen.values())
        assert len(values) == len(set(values)), "a record appears twice"
        assert not any(v.startswith("alone-") for v in values), "a write the isolated leader took alone survived"
        for node in cluster.nodes.values():
            node.stop()
        logs = {n: partition_log(cluster, n, "iso", 0)[0] for n in ALL}
        assert logs[1] and logs[1] == logs[2] == logs[3], (
            f"replicas differ: 1/3 from byte {first_difference(logs[1], logs[3])}")
    finally:
        stop.set()
        shut_down(cluster)
