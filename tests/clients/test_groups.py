"""Consumer groups through real clients: the group coordinator (FindCoordinator,
JoinGroup, SyncGroup, Heartbeat, LeaveGroup), committed offsets (OffsetCommit,
OffsetFetch) and group administration (ListGroups, DescribeGroups,
DeleteGroups), each checked by what the clients observe.

  [1] confluent-kafka: three consumers of one group start together (default
      rebalance delay) and join in one generation; per-message synchronous
      commits; one closes mid-way and the other two take its partitions; every
      message read exactly once, in order; a fresh member finds nothing left.
  [2] the same with kafka-python, aiokafka and kcat -G (kafkajs: test_kafkajs.py
      runs node/kafkajs_groups.js).
  [3] a member killed with SIGKILL is removed after its session timeout (not
      before) and the survivor gets all partitions.
  [4] static membership: a static member killed and restarted within its
      session timeout gets its assignment back and the other member sees no
      rebalance.
  [5] committed offsets survive a clean restart and kill -9 during a stream of
      commits (acknowledged <= committed after restart <= attempted).
  [6] AdminClient: list, describe, delete (empty group deleted; non-empty
      group refused with NON_EMPTY_GROUP).
  [7] cooperative-sticky: 2 then 3 members, incremental and sticky, no message
      lost or read twice.

Each test starts from its own brokers (GroupBroker below) so that the data
directory and port can outlive a broker process. Tests that need no restart
share one module broker with a short initial rebalance delay. Brokers whose
test failed keep their directory (logs: broker-<n>.log) and print its path.
"""

import asyncio
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import (Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError,
                             KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import SHARDS, SPATE, free_port

# Settings of the shared broker: joins of an empty group wait 200 ms instead of 3 s.
FAST = ["default_partitions=1", "group_initial_rebalance_delay_ms=200"]
SESSION_MS = 6000  # the broker's default group_min_session_timeout_ms
HEARTBEAT_MS = 500


# ---------------------------------------------------------------- broker

class GroupBroker:
    """A spate process whose data directory and port outlive it: `restart()`
    (after `terminate()` or `kill()`) starts a new process on both. Each start
    logs to its own file, broker-<n>.log in the directory."""

    def __init__(self, extra=()):
        self.dir = Path(tempfile.mkdtemp(prefix="spate-py-groups-"))
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.starts = 0
        self.proc = None
        self.start()

    def start(self):
        assert not self.alive()
        self.log_path = self.dir / f"broker-{self.starts}.log"
        self.starts += 1
        cmd = [str(SPATE), "serve", "--listen", self.addr, "--data-dir", str(self.dir / "data"),
               "--shards", str(SHARDS), "--set", "pin_shards=false", "--set", "admin_listen=127.0.0.1:0"]
        for item in self.extra:
            cmd += ["--set", item]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spate exited with {self.proc.returncode} at start:\n{self.log()}")
            if self.log().count("listening") >= SHARDS:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                        if s.getsockname() != s.getpeername():
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"spate did not start:\n{self.log()}")

    def log(self):
        return self.log_path.read_text()

    def logs(self, tail=60):
        """The last lines of every start's log, for assertion messages."""
        out = []
        for n in range(self.starts):
            lines = (self.dir / f"broker-{n}.log").read_text().splitlines()
            out.append(f"--- broker-{n}.log (last {tail} of {len(lines)} lines)\n" + "\n".join(lines[-tail:]))
        return "\n".join(out)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def terminate(self):
        """SIGTERM: a clean shutdown must exit 0."""
        self.proc.terminate()
        rc = self.proc.wait(timeout=30)
        assert rc == 0, f"spate exited with {rc} on SIGTERM\n{self.logs()}"

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def broker_fixture(request, extra):
    failed = request.session.testsfailed
    b = GroupBroker(extra)
    yield b
    alive = b.alive()
    if alive:
        b.terminate()
    if alive and request.session.testsfailed == failed:
        shutil.rmtree(b.dir, ignore_errors=True)
    else:
        print(f"\nbroker data and logs kept in {b.dir}")
    assert alive, "broker died during the test:\n" + b.logs()


@pytest.fixture(scope="module")
def gb(request):
    """Shared broker, initial rebalance delay 200 ms."""
    yield from broker_fixture(request, FAST)


@pytest.fixture
def default_broker(request):
    """Own broker with every group setting at its default (3 s initial delay)."""
    yield from broker_fixture(request, ["default_partitions=1"])


@pytest.fixture
def own_broker(request):
    """Own broker (fast delay) for tests that stop or kill it."""
    yield from broker_fixture(request, FAST)


# ---------------------------------------------------------------- helpers

def create_topic(addr, topic, partitions):
    admin = AdminClient({"bootstrap.servers": addr})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(timeout=30)


def produce_keyed(addr, topic, count, prefix="m"):
    """`count` keyed messages; returns {(partition, offset): value} of the acknowledged ones."""
    producer = Producer({"bootstrap.servers": addr, "acks": "all", "linger.ms": 5})
    delivered, errors = {}, []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[(msg.partition(), msg.offset())] = msg.value().decode()

    for i in range(count):
        producer.produce(topic, key=f"key-{i % 97}".encode(), value=f"{prefix}-{i}".encode(), on_delivery=on_delivery)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors[:3]
    assert len(delivered) == count
    return delivered


def cconf(addr, group, **extra):
    conf = {"bootstrap.servers": addr, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS}
    conf.update(extra)
    return conf


def end_offsets(addr, topic, partitions):
    c = Consumer({"bootstrap.servers": addr, "group.id": "end-offsets-probe"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        c.close()


def committed(addr, group, topic, partitions):
    """OffsetFetch of `group` (-1001 for none)."""
    c = Consumer({"bootstrap.servers": addr, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        for tp in tps:
            assert tp.error is None, tp.error
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def assert_exactly_once(seen, delivered):
    """`seen` lists every (partition, offset) read, across the group."""
    counts = Counter(seen)
    dups = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(set(delivered) - set(counts))
    unknown = sorted(set(counts) - set(delivered))
    assert not dups and not missing and not unknown, (
        f"{len(dups)} read more than once (first {dups[:10]}), {len(missing)} never read "
        f"(first {missing[:10]}), {len(unknown)} read but never produced (first {unknown[:10]})")


def assert_nothing_left(addr, group, topic, partitions, seconds=2.5):
    """A fresh member of `group` is assigned every partition and then reads
    nothing for `seconds`; the group's committed offsets are the log ends."""
    ends = end_offsets(addr, topic, partitions)
    c = Consumer(cconf(addr, group, **{"client.id": "fresh"}))
    c.subscribe([topic])
    got = []
    try:
        deadline = time.time() + 20
        while len(c.assignment()) < partitions:
            assert time.time() < deadline, f"fresh member not assigned all partitions: {c.assignment()}"
            msg = c.poll(0.1)
            if msg is not None and not msg.error():
                got.append((msg.partition(), msg.offset()))
        until = time.time() + seconds
        while time.time() < until:
            msg = c.poll(0.1)
            if msg is not None and not msg.error():
                got.append((msg.partition(), msg.offset()))
        assert not got, f"a fresh member of {group} read {len(got)} messages already read: {got[:10]}"
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        assert {tp.partition: tp.offset for tp in tps} == ends, "committed offsets are the log ends"
    finally:
        c.close()


def partitions_of(tps):
    return sorted(tp.partition for tp in tps)


class Fleet:
    """confluent-kafka consumers of one group. Every message read is committed
    synchronously before that member polls again. A commit that fails stays
    pending: it is retried before the member's next poll while the partition
    is still assigned, and committed from the revoke callback when the
    partition is taken away (what an application committing by hand does).

    Unthreaded, all members are polled round-robin from the test's thread, so
    read order across the group is well defined. That suits the eager
    protocol only: a cooperative member rejoins while it keeps consuming, and
    its commit then waits behind its own JoinGroup on the coordinator
    connection (Kafka answers a connection's requests in order) until every
    other member has rejoined, which the same thread cannot make them do
    meanwhile. Threaded, each member is polled by its own thread, the only
    one that calls it (its assignment is published in `current`: calling
    assignment() from another thread while the owner polls can hang)."""

    def __init__(self, addr, topic, group, threaded=False, **conf):
        self.addr, self.topic, self.group, self.conf = addr, topic, group, conf
        self.threaded = threaded
        self.lock = threading.RLock()
        self.members = {}
        self.threads = {}
        self.current = {}  # threaded: name -> partitions, as the owning thread last saw them
        self.events = defaultdict(list)  # name -> [(kind, [partitions])]
        self.seen = []  # (partition, offset) in read order
        self.by_member = defaultdict(list)
        self.commit_errors = []  # (member, partition, offset, KafkaError)
        self.pending = defaultdict(dict)  # member -> {partition: offset whose commit failed}
        self.errors = []

    def add(self, name):
        c = Consumer(cconf(self.addr, self.group, **{"client.id": name, **self.conf}))

        def on_assign(consumer, tps):
            self.events[name].append(("assign", partitions_of(tps)))

        def on_revoke(consumer, tps):
            self.events[name].append(("revoke", partitions_of(tps)))
            revoked = {tp.partition for tp in tps}
            todo = {p: o for p, o in self.pending[name].items() if p in revoked}
            if todo:
                self._commit(name, consumer, todo)

        def on_lost(consumer, tps):
            self.events[name].append(("lost", partitions_of(tps)))

        c.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        self.members[name] = c
        if self.threaded:
            stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(name, c, stop), daemon=True)
            self.threads[name] = (thread, stop)
            thread.start()
        return c

    def _run(self, name, c, stop):
        try:
            while not stop.is_set():
                self._poll_one(name, c, 0.1)
                self.current[name] = partitions_of(c.assignment())
            c.close()
        except BaseException as e:  # noqa: BLE001 - asserted on
            self.errors.append((name, repr(e)))

    def _commit(self, name, c, offsets):
        """Commits {partition: offset} synchronously; failures become pending."""
        try:
            result = c.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                              asynchronous=False)
            failed = {tp.partition: tp.error for tp in result or [] if tp.error is not None}
        except KafkaException as e:
            failed = {p: e.args[0] for p in offsets}
        with self.lock:
            for p, o in offsets.items():
                if p in failed:
                    self.commit_errors.append((name, p, o, failed[p]))
                    self.pending[name][p] = max(o, self.pending[name].get(p, o))
                elif self.pending[name].get(p, o) <= o:
                    self.pending[name].pop(p, None)

    def _poll_one(self, name, c, timeout):
        if self.pending[name]:
            assigned = {tp.partition for tp in c.assignment()}
            retry = {p: o for p, o in self.pending[name].items() if p in assigned}
            if retry:
                self._commit(name, c, retry)
        msg = c.poll(timeout)
        if msg is None:
            return False
        if msg.error():
            self.errors.append((name, msg.error()))
            return False
        with self.lock:
            self.seen.append((msg.partition(), msg.offset()))
            self.by_member[name].append((msg.partition(), msg.offset()))
        self._commit(name, c, {msg.partition(): msg.offset() + 1})
        return True

    def close(self, name):
        c = self.members.pop(name)
        if self.threaded:
            thread, stop = self.threads.pop(name)
            stop.set()
            thread.join(timeout=60)
            assert not thread.is_alive(), f"{name} did not close"
        else:
            c.close()

    def close_all(self):
        for name in list(self.members):
            self.close(name)

    def poll_round(self):
        if self.threaded:
            time.sleep(0.02)
            return
        got = False
        for name, c in list(self.members.items()):
            got = self._poll_one(name, c, 0) or got
        if not got:
            time.sleep(0.005)

    def read(self):
        with self.lock:
            return len(set(self.seen))

    def assignments(self):
        if self.threaded:
            return {name: self.current.get(name, []) for name in list(self.members)}
        return {name: partitions_of(c.assignment()) for name, c in list(self.members.items())}

    def settled(self, partitions):
        """Every member has partitions, and together they hold each exactly once."""
        a = self.assignments()
        return all(a.values()) and sorted(p for ps in a.values() for p in ps) == list(range(partitions))

    def poll_until(self, what, cond, timeout):
        deadline = time.time() + timeout
        while not cond():
            assert time.time() < deadline, (
                f"{what}: not reached within {timeout} s; assignments {self.assignments()}, "
                f"read {self.read()}, events {dict(self.events)}, errors {self.errors[:5]}, "
                f"commit errors {self.commit_errors[:5]}")
            self.poll_round()

    def drain(self, seconds):
        until = time.time() + seconds
        while time.time() < until:
            self.poll_round()

    def check_commits(self, tolerated=()):
        """No commit failed, except with a `tolerated` error code; and every
        failed one was made good later (nothing left pending once closed)."""
        assert not self.errors, self.errors[:5]
        unexpected = [e for e in self.commit_errors if e[3].code() not in tolerated]
        assert not unexpected, f"synchronous commits failed: {unexpected[:10]}"
        left = {n: p for n, p in self.pending.items() if p}
        assert not left, f"failed commits never made good: {left}; failures {self.commit_errors[:10]}"


# A confluent-kafka group member in its own process, so that SIGKILL stops its
# heartbeats too. Prints one JSON line per rebalance callback.
MEMBER_SCRIPT = r"""
import json, sys, time
from confluent_kafka import Consumer
addr, topic, group, instance, session_ms = sys.argv[1:6]
conf = {"bootstrap.servers": addr, "group.id": group, "session.timeout.ms": int(session_ms),
        "heartbeat.interval.ms": 500, "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "client.id": "member-" + (instance or "dynamic")}
if instance:
    conf["group.instance.id"] = instance
c = Consumer(conf)
def report(kind):
    def cb(consumer, tps):
        print(json.dumps({"event": kind, "partitions": sorted(tp.partition for tp in tps),
                          "member_id": consumer.memberid(), "t": time.time()}), flush=True)
    return cb
c.subscribe([topic], on_assign=report("assign"), on_revoke=report("revoke"), on_lost=report("lost"))
deadline = time.time() + 120  # bounded even if nobody kills it
while time.time() < deadline:
    c.poll(0.1)
"""


class Member:
    """A MEMBER_SCRIPT process and the rebalance events it printed."""

    def __init__(self, addr, topic, group, instance="", session_ms=SESSION_MS, log_dir=None):
        self.stderr = open(Path(log_dir or tempfile.gettempdir()) / f"member-{instance or 'dynamic'}-{time.time():.3f}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", MEMBER_SCRIPT, addr, topic, group, instance, str(session_ms)],
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.events = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def assignment(self):
        current = set()
        for e in list(self.events):
            if e["event"] == "assign":
                current |= set(e["partitions"])
            else:
                current -= set(e["partitions"])
        return sorted(current)

    def member_id(self):
        assigns = [e for e in self.events if e["event"] == "assign"]
        return assigns[-1]["member_id"] if assigns else None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


# ---------------------------------------------------------------- [1] confluent-kafka

def test_confluent_group_splits_commits_and_takes_over(default_broker):
    """[1] Three confluent-kafka consumers started together (default 3 s
    initial rebalance delay) join in ONE generation: each gets exactly one
    assignment, disjoint, covering the 6 partitions. Every message is committed
    synchronously; one member closes mid-way and the two others take its
    partitions. Each of the 3000 messages is read exactly once and each
    partition in offset order; a fresh member then finds nothing to read, and
    the committed offsets are the log ends."""
    b = default_broker
    topic, group, parts, total = "cf-groups", "cf-group", 6, 3000
    create_topic(b.addr, topic, parts)
    delivered = produce_keyed(b.addr, topic, total)
    assert {p for p, _ in delivered} == set(range(parts)), "keys spread over every partition"

    fleet = Fleet(b.addr, topic, group)
    for name in "ABC":
        fleet.add(name)
    fleet.poll_until("three members share the partitions", lambda: fleet.settled(parts), 30)
    first = fleet.assignments()
    for name in "ABC":
        assigns = [ps for kind, ps in fleet.events[name] if kind == "assign"]
        nonempty_revokes = [ps for kind, ps in fleet.events[name] if kind != "assign" and ps]
        assert assigns == [first[name]] and not nonempty_revokes, (
            f"{name} went through more than one generation before the group settled: {dict(fleet.events)}")
    assert sorted(len(ps) for ps in first.values()) == [2, 2, 2], first

    fleet.poll_until("a third of the messages read", lambda: len(fleet.seen) >= total // 3, 60)
    assert fleet.by_member["C"], "C read messages before it closes"
    fleet.close("C")
    fleet.poll_until("A and B take C's partitions", lambda: fleet.settled(parts), 30)
    after = fleet.assignments()
    assert set(first["C"]) <= set(after["A"]) | set(after["B"])
    fleet.poll_until("every message read", lambda: len(set(fleet.seen)) >= total, 60)
    fleet.drain(1.0)  # a message read twice would show up here
    fleet.close_all()

    fleet.check_commits()
    assert_exactly_once(fleet.seen, delivered)
    took_over = [po for po in fleet.by_member["A"] + fleet.by_member["B"] if po[0] in first["C"]]
    assert took_over, "A and B read the rest of C's partitions"
    for p in range(parts):
        order = [o for q, o in fleet.seen if q == p]
        assert order == list(range(len(order))), f"partition {p} is read in offset order across the hand-over"
    assert_nothing_left(b.addr, group, topic, parts)


# ---------------------------------------------------------------- [2] other clients

class Sink:
    """What several consumers read, shared between threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []
        self.by_member = defaultdict(list)
        self.commit_errors = []

    def record(self, name, partition, offset):
        with self.lock:
            self.seen.append((partition, offset))
            self.by_member[name].append((partition, offset))

    def count(self):
        with self.lock:
            return len(set(self.seen))


def wait_for(what, cond, timeout, detail=lambda: ""):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"{what}: not reached within {timeout} s; {detail()}"
        time.sleep(0.05)


def settled(assignments, partitions):
    return (all(assignments) and
            sorted(p for ps in assignments for p in ps) == list(range(partitions)))


def test_kafka_python_group(gb):
    """[2a] kafka-python: three KafkaConsumer(group_id=...) threads split 6
    partitions; per-message commit(); one closes mid-way (LeaveGroup), the two
    others take its partitions; every message read exactly once; a fresh member
    reads nothing and the committed offsets are the log ends."""
    from kafka import KafkaConsumer, OffsetAndMetadata
    from kafka import TopicPartition as KTopicPartition

    topic, group, parts, half = "kp-groups", "kp-group", 6, 300
    create_topic(gb.addr, topic, parts)
    delivered = produce_keyed(gb.addr, topic, half, "a")
    sink = Sink()

    class Worker(threading.Thread):
        def __init__(self, name):
            super().__init__(daemon=True)
            self.name_ = name
            self.stop = threading.Event()
            self.assigned = []
            self.error = None

        def run(self):
            try:
                c = KafkaConsumer(bootstrap_servers=gb.addr, group_id=group, client_id=f"kp-{self.name_}",
                                  enable_auto_commit=False, auto_offset_reset="earliest",
                                  session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS,
                                  max_poll_records=50)
                c.subscribe([topic])
                while not self.stop.is_set():
                    batch = c.poll(timeout_ms=100)
                    self.assigned = sorted(tp.partition for tp in c.assignment())
                    for tp, records in batch.items():
                        for r in records:
                            sink.record(self.name_, r.partition, r.offset)
                            try:
                                c.commit({KTopicPartition(topic, r.partition): OffsetAndMetadata(r.offset + 1, "", -1)})
                            except Exception as e:  # noqa: BLE001 - recorded and asserted on
                                sink.commit_errors.append((self.name_, r.partition, r.offset, repr(e)))
                c.close(autocommit=False)
            except BaseException as e:  # noqa: BLE001
                self.error = e

    workers = {n: Worker(n) for n in "ABC"}
    for w in workers.values():
        w.start()
    try:
        detail = lambda: f"assignments { {n: w.assigned for n, w in workers.items()} }, read {sink.count()}, " \
                         f"errors { {n: w.error for n, w in workers.items()} }, commit errors {sink.commit_errors[:5]}"
        wait_for("three members share the partitions, first half read",
                 lambda: settled([w.assigned for w in workers.values()], parts) and sink.count() >= half, 40, detail)
        first = {n: w.assigned for n, w in workers.items()}
        workers["C"].stop.set()
        workers["C"].join(timeout=30)
        assert not workers["C"].is_alive() and workers["C"].error is None, workers["C"].error
        wait_for("A and B take C's partitions", lambda: settled([workers[n].assigned for n in "AB"], parts), 30, detail)
        delivered.update(produce_keyed(gb.addr, topic, half, "b"))
        wait_for("every message read", lambda: sink.count() >= 2 * half, 40, detail)
        time.sleep(1.0)
    finally:
        for w in workers.values():
            w.stop.set()
        for w in workers.values():
            w.join(timeout=30)
    for n, w in workers.items():
        assert w.error is None, f"{n}: {w.error!r}"
    assert first["C"] and sink.by_member["C"], "C held partitions and read before it closed"
    assert not sink.commit_errors, sink.commit_errors[:10]
    assert_exactly_once(sink.seen, delivered)
    second_half_of_c = [po for po in sink.by_member["A"] + sink.by_member["B"]
                        if po[0] in first["C"] and delivered[po].startswith("b-")]
    assert second_half_of_c, "A and B read C's partitions after it left"
    assert_nothing_left(gb.addr, group, topic, parts)


def test_aiokafka_group(gb):
    """[2b] aiokafka: three AIOKafkaConsumer(group_id=...) tasks split 6
    partitions; per-message commit() under a rebalance listener; one stops
    mid-way, the two others take its partitions; every message read exactly
    once; a fresh member reads nothing; committed offsets are the log ends."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as ATopicPartition
    from aiokafka.abc import ConsumerRebalanceListener

    topic, group, parts, half = "aio-groups", "aio-group", 6, 300
    create_topic(gb.addr, topic, parts)
    delivered = produce_keyed(gb.addr, topic, half, "a")
    sink = Sink()

    class Member:
        def __init__(self, name):
            self.name = name
            self.lock = asyncio.Lock()  # held while a batch is processed and committed
            self.stop = asyncio.Event()
            self.consumer = None
            self.error = None

        def assigned(self):
            return sorted(tp.partition for tp in self.consumer.assignment()) if self.consumer else []

        async def run(self):
            member = self

            class Listener(ConsumerRebalanceListener):
                async def on_partitions_revoked(self, revoked):
                    async with member.lock:  # let the batch in progress commit first
                        pass

                async def on_partitions_assigned(self, assigned):
                    pass

            try:
                c = self.consumer = AIOKafkaConsumer(
                    bootstrap_servers=gb.addr, group_id=group, client_id=f"aio-{self.name}",
                    enable_auto_commit=False, auto_offset_reset="earliest",
                    session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS)
                await c.start()
                c.subscribe([topic], listener=Listener())
                while not self.stop.is_set():
                    batch = await c.getmany(timeout_ms=100, max_records=50)
                    async with self.lock:
                        assigned = c.assignment()
                        for tp, records in batch.items():
                            if tp not in assigned:
                                continue  # revoked meanwhile: its new owner reads from the committed offset
                            for r in records:
                                sink.record(self.name, r.partition, r.offset)
                                try:
                                    await c.commit({ATopicPartition(topic, r.partition): r.offset + 1})
                                except Exception as e:  # noqa: BLE001 - recorded and asserted on
                                    sink.commit_errors.append((self.name, r.partition, r.offset, repr(e)))
                await c.stop()
            except BaseException as e:  # noqa: BLE001
                self.error = e

    async def until(what, cond, timeout, members):
        deadline = time.time() + timeout
        while not cond():
            assert time.time() < deadline, (
                f"{what}: not reached within {timeout} s; assignments { {m.name: m.assigned() for m in members} }, "
                f"read {sink.count()}, errors { {m.name: m.error for m in members} }, commit errors {sink.commit_errors[:5]}")
            await asyncio.sleep(0.05)

    async def scenario():
        members = {n: Member(n) for n in "ABC"}
        tasks = {n: asyncio.create_task(m.run()) for n, m in members.items()}
        all_ = list(members.values())
        try:
            await until("three members share the partitions, first half read",
                        lambda: settled([m.assigned() for m in all_], parts) and sink.count() >= half, 40, all_)
            first = {n: m.assigned() for n, m in members.items()}
            members["C"].stop.set()
            await asyncio.wait_for(tasks["C"], 30)
            await until("A and B take C's partitions",
                        lambda: settled([members[n].assigned() for n in "AB"], parts), 30, all_)
            delivered.update(await asyncio.to_thread(produce_keyed, gb.addr, topic, half, "b"))
            await until("every message read", lambda: sink.count() >= 2 * half, 40, all_)
            await asyncio.sleep(1.0)
        finally:
            for m in members.values():
                m.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), 30)
        for n, m in members.items():
            assert m.error is None, f"{n}: {m.error!r}"
        return first

    first = asyncio.run(scenario())
    assert first["C"] and sink.by_member["C"], "C held partitions and read before it stopped"
    assert not sink.commit_errors, sink.commit_errors[:10]
    assert_exactly_once(sink.seen, delivered)
    assert [po for po in sink.by_member["A"] + sink.by_member["B"]
            if po[0] in first["C"] and delivered[po].startswith("b-")], "A and B read C's partitions after it left"
    assert_nothing_left(gb.addr, group, topic, parts)


def test_kcat_balanced_consumers(gb, tmp_path):
    """[2c] kcat -G (librdkafka 2.0, auto commit): a first kcat reads the
    first half alone; a second joins and the partitions split between them
    (the first commits what it read when its partitions are revoked, while
    the group prepares the rebalance); the second half is read by both; each
    message is printed exactly once, and after SIGTERM (close: final commit,
    LeaveGroup) a confluent member of the group finds nothing left.

    No -o: in -G mode kcat applies it to every assignment, overriding the
    committed offsets. No -X enable.auto.commit / auto.commit.interval.ms:
    kcat sets a name that is also a (legacy) topic property on the topic
    config, so those would not reach the consumer (see `kcat -X dump`); the
    defaults (auto commit on, every 5 s) apply, plus commits on revoke and
    close."""
    topic, group, parts, half = "kcat-groups", "kcat-group", 6, 300
    create_topic(gb.addr, topic, parts)
    delivered = produce_keyed(gb.addr, topic, half, "a")
    cmd = ["kcat", "-b", gb.addr, "-G", group, "-u", "-f", "%p %o %s\n",
           "-X", "auto.offset.reset=earliest", "-X", f"session.timeout.ms={SESSION_MS}",
           "-X", f"heartbeat.interval.ms={HEARTBEAT_MS}", topic]
    procs = {}

    def start(name):
        procs[name] = subprocess.Popen(cmd, stdout=open(tmp_path / f"{name}.out", "w"),
                                       stderr=open(tmp_path / f"{name}.err", "w"))

    def lines(name):
        text = (tmp_path / f"{name}.out").read_text()
        return text[:text.rfind("\n") + 1].splitlines()

    def assigned(name):
        """The partitions of each 'assigned:' line kcat printed, in order."""
        return [sorted(int(p) for p in re.findall(r"\[(\d+)\]", line.split("assigned:", 1)[1]))
                for line in (tmp_path / f"{name}.err").read_text().splitlines() if "assigned:" in line]

    def detail():
        return (f"out {[len(lines(n)) for n in procs]}, assigned { {n: assigned(n) for n in procs} }, "
                f"stderr { {n: (tmp_path / f'{n}.err').read_text()[-2000:] for n in procs} }")

    try:
        start("A")
        wait_for("the first kcat reads the first half", lambda: len(lines("A")) >= half, 30, detail)
        time.sleep(0.5)
        start("B")
        wait_for("the partitions split between the two kcat",
                 lambda: len(assigned("A")) >= 2 and assigned("B")
                 and settled([assigned("A")[-1], assigned("B")[-1]], parts), 30, detail)
        split = {"A": assigned("A")[-1], "B": assigned("B")[-1]}
        delivered.update(produce_keyed(gb.addr, topic, half, "b"))
        wait_for("every message printed", lambda: len(lines("A")) + len(lines("B")) >= 2 * half, 30, detail)
        time.sleep(1.0)
    finally:
        for p in procs.values():
            p.terminate()
        rcs = {n: p.wait(timeout=20) for n, p in procs.items()}
    assert rcs == {"A": 0, "B": 0}, detail()
    seen, values = [], {}
    per = defaultdict(list)
    for name in "AB":
        for line in lines(name):
            p, o, v = line.split(" ", 2)
            seen.append((int(p), int(o)))
            values[(int(p), int(o))] = v
            per[name].append(int(p))
    assert_exactly_once(seen, delivered)
    assert all(values[k] == v for k, v in delivered.items()), "kcat printed the produced values"
    # A printed exactly the first half before B started; the second half was produced after the split.
    assert per["B"] and set(per["B"]) <= set(split["B"]), f"B reads its own partitions: {split}, {Counter(per['B'])}"
    assert per["A"][half:] and set(per["A"][half:]) <= set(split["A"]), (
        f"after the split A reads only its partitions: {split}, {Counter(per['A'][half:])}")
    assert_nothing_left(gb.addr, group, topic, parts)


# ---------------------------------------------------------------- [3] session timeout

def test_dead_member_removed_after_session_timeout(gb):
    """[3] A confluent member in its own process (session.timeout.ms=6000) is
    killed with SIGKILL: no LeaveGroup, no more heartbeats. The coordinator
    keeps it until its session times out (not before: the survivor's
    assignment does not change for ~5.5 s), then removes it; the survivor gets
    all 6 partitions within session timeout + margin."""
    topic, group, parts = "hb-topic", "hb-group", 6
    create_topic(gb.addr, topic, parts)
    victim = Member(gb.addr, topic, group, session_ms=SESSION_MS, log_dir=gb.dir)
    fleet = Fleet(gb.addr, topic, group)
    try:
        wait_for("the victim is assigned", lambda: victim.assignment(), 30, lambda: str(victim.events))
        fleet.add("survivor")
        fleet.poll_until("victim and survivor share the partitions",
                         lambda: settled([victim.assignment(), fleet.assignments()["survivor"]], parts), 30)
        fleet.drain(1.0)  # stable: nothing moves while both heartbeat
        assert settled([victim.assignment(), fleet.assignments()["survivor"]], parts), (victim.events, fleet.events)
        events_before = len(fleet.events["survivor"])
        victim.kill()
        killed = time.time()
        fleet.poll_until("the survivor gets every partition",
                         lambda: fleet.assignments()["survivor"] == list(range(parts)), SESSION_MS / 1000 + 10)
        took = time.time() - killed
        moved = fleet.events["survivor"][events_before:]
    finally:
        victim.kill()
        fleet.close_all()
    # The last heartbeat came at most one interval before the kill.
    assert took >= (SESSION_MS - HEARTBEAT_MS) / 1000 - 0.3, (
        f"the killed member was removed after {took:.1f} s, before its {SESSION_MS} ms session timeout; "
        f"survivor events {moved}")
    assert took <= SESSION_MS / 1000 + 6, f"the killed member was removed only after {took:.1f} s"
    assert moved and moved[-1] == ("assign", list(range(parts))), moved


# ---------------------------------------------------------------- [4] static membership

def test_static_member_restart_without_rebalance(gb):
    """[4] A static member (group.instance.id, session.timeout.ms=10000) in its
    own process and a dynamic member share 6 partitions. The static member is
    killed with SIGKILL and restarted with the same group.instance.id within
    its session timeout: it gets the same partitions back, and the dynamic
    member sees no rebalance (no revoke or assign callback, same assignment)."""
    topic, group, parts, static_session = "static-topic", "static-group", 6, 10_000
    create_topic(gb.addr, topic, parts)
    fleet = Fleet(gb.addr, topic, group)
    first = Member(gb.addr, topic, group, instance="static-1", session_ms=static_session, log_dir=gb.dir)
    second = None
    try:
        wait_for("the static member is assigned", lambda: first.assignment(), 30, lambda: str(first.events))
        fleet.add("dynamic")
        fleet.poll_until("static and dynamic members share the partitions",
                         lambda: settled([first.assignment(), fleet.assignments()["dynamic"]], parts), 30)
        fleet.drain(1.5)
        static_parts = first.assignment()
        dynamic_parts = fleet.assignments()["dynamic"]
        assert settled([static_parts, dynamic_parts], parts), (first.events, fleet.events)
        events_before = list(fleet.events["dynamic"])
        first.kill()
        killed = time.time()
        second = Member(gb.addr, topic, group, instance="static-1", session_ms=static_session, log_dir=gb.dir)
        fleet.poll_until("the restarted static member is assigned", lambda: second.assignment(), 8)
        back = time.time() - killed
        assert back < static_session / 1000, f"restart took {back:.1f} s"
        fleet.drain(3.0)  # a rebalance would reach the dynamic member's next heartbeat (500 ms)
        assert second.assignment() == static_parts, (
            f"restarted static member got {second.assignment()}, had {static_parts}; events {second.events}")
        assert [e["event"] for e in second.events] == ["assign"], second.events
        assert fleet.events["dynamic"] == events_before, (
            f"the dynamic member went through a rebalance: {fleet.events['dynamic'][len(events_before):]}")
        assert fleet.assignments()["dynamic"] == dynamic_parts

        # DescribeGroups: still two members, the static one with its new member id.
        admin = AdminClient({"bootstrap.servers": gb.addr})  # kept alive until its answer arrives
        desc = admin.describe_consumer_groups([group], request_timeout=15)[group].result()
        assert desc.state == ConsumerGroupState.STABLE
        by_instance = {m.group_instance_id: m for m in desc.members}
        assert len(desc.members) == 2 and "static-1" in by_instance, [(m.member_id, m.group_instance_id) for m in desc.members]
        assert by_instance["static-1"].member_id == second.member_id()
        assert partitions_of(by_instance["static-1"].assignment.topic_partitions) == static_parts
    finally:
        first.kill()
        if second:
            second.kill()
        fleet.close_all()


# ---------------------------------------------------------------- [5] durability of commits

COMMIT_SCRIPT = r"""
import sys, time
from confluent_kafka import Consumer, TopicPartition
addr, topic, group, parts, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
c = Consumer({"bootstrap.servers": addr, "group.id": group, "enable.auto.commit": False})
for seq in range(1, limit + 1):
    print(f"try {seq}", flush=True)
    try:
        result = c.commit(offsets=[TopicPartition(topic, p, seq) for p in range(parts)], asynchronous=False)
    except Exception as e:
        print(f"fail {seq} {e}", flush=True)
        break
    errors = [tp.error for tp in result or [] if tp.error is not None]
    if errors:
        print(f"fail {seq} {errors}", flush=True)
        break
    print(f"ok {seq}", flush=True)
time.sleep(60)
"""


def test_committed_offsets_survive_restart_and_kill9(own_broker, tmp_path):
    """[5] Offsets committed by a group member survive a clean restart (SIGTERM)
    of the broker on the same data directory. Then, twice: a process commits
    offsets seq=1,2,3... for 3 partitions synchronously, logging each attempt
    and each acknowledgement; the broker is killed with SIGKILL mid-stream and
    restarted: every partition's committed offset is at least the last
    acknowledged seq and at most the last attempted one. The first group's
    offsets survive the kills as well."""
    b = own_broker
    topic, parts, limit = "durable", 3, 5_000
    create_topic(b.addr, topic, parts)
    producer = Producer({"bootstrap.servers": b.addr, "acks": "all", "linger.ms": 5})
    for i in range(limit * parts):
        producer.produce(topic, value=b"d%d" % i, partition=i % parts)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0

    # A subscribed member reads and commits 300 messages, then leaves.
    fleet = Fleet(b.addr, topic, "durable-member")
    fleet.add("A")
    fleet.poll_until("300 messages read", lambda: len(fleet.seen) >= 300, 30)
    fleet.close_all()
    fleet.check_commits()
    member_offsets = {p: -1001 for p in range(parts)}  # -1001: nothing committed
    for p, o in fleet.seen:
        member_offsets[p] = max(member_offsets[p], o + 1)
    assert committed(b.addr, "durable-member", topic, parts) == member_offsets

    b.terminate()
    b.start()
    assert committed(b.addr, "durable-member", topic, parts) == member_offsets, "offsets survive a clean restart"
    resumed = Fleet(b.addr, topic, "durable-member")
    resumed.add("B")
    resumed.poll_until("the group resumes", lambda: len(resumed.seen) >= 1, 30)
    resumed.close_all()
    resumed.check_commits()
    p, o = resumed.seen[0]
    assert o == max(member_offsets[p], 0), "a member resumes at the committed offset after the restart"
    for p, o in resumed.seen:  # those were committed too
        member_offsets[p] = max(member_offsets[p], o + 1)

    for round_no in range(2):
        group = f"durable-stream-{round_no}"
        out_path = tmp_path / f"commits-{round_no}.log"
        proc = subprocess.Popen([sys.executable, "-c", COMMIT_SCRIPT, b.addr, topic, group, str(parts), str(limit)],
                                stdout=open(out_path, "w"), stderr=open(tmp_path / f"commits-{round_no}.err", "w"))
        try:
            threshold = 200 + random.randrange(400)  # kill at a random point of the stream
            wait_for("commits acknowledged", lambda: out_path.read_text().count("\nok ") >= threshold,
                     30, lambda: out_path.read_text()[-500:])
            b.kill()
            time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        log = out_path.read_text().splitlines()
        acked = [int(l.split()[1]) for l in log if l.startswith("ok ")]
        tried = [int(l.split()[1]) for l in log if l.startswith("try ")]
        assert acked and acked == list(range(1, len(acked) + 1))
        b.start()
        after = committed(b.addr, group, topic, parts)
        for p in range(parts):
            assert acked[-1] <= after[p] <= tried[-1], (
                f"round {round_no}, partition {p}: committed {after[p]} after kill -9, but the last acknowledged "
                f"commit was {acked[-1]} and the last attempted {tried[-1]}\n{b.logs(20)}")
        assert committed(b.addr, "durable-member", topic, parts) == member_offsets, "older offsets survive kill -9"


# ---------------------------------------------------------------- [6] group administration

def test_admin_list_describe_delete_groups(gb):
    """[6] AdminClient: list_consumer_groups() shows an active group as Stable,
    a group whose members left as Empty, and a group only committed to (no
    members ever) as a simple group; describe_consumer_groups() shows the
    members (ids, client ids), their assignments and the assignor;
    list_consumer_group_offsets() returns the commits; deleting the empty
    groups works (offsets gone, no longer listed); deleting the active group
    fails with NON_EMPTY_GROUP and leaves it intact. A group whose last member
    has just left (LeaveGroup answered) is Empty and deletable at once."""
    topic, parts = "adm-topic", 4
    create_topic(gb.addr, topic, parts)
    delivered = produce_keyed(gb.addr, topic, 80)
    ends = end_offsets(gb.addr, topic, parts)
    admin = AdminClient({"bootstrap.servers": gb.addr})

    # Empty: a member read and committed everything, then left.
    gone = Fleet(gb.addr, topic, "adm-empty")
    gone.add("adm-gone")
    gone.poll_until("adm-empty reads everything", lambda: len(set(gone.seen)) >= len(delivered), 30)
    gone.close_all()
    # Simple: offsets committed without joining.
    simple = Consumer({"bootstrap.servers": gb.addr, "group.id": "adm-simple", "enable.auto.commit": False})
    simple.commit(offsets=[TopicPartition(topic, p, 1) for p in range(parts)], asynchronous=False)
    simple.close()

    active = Fleet(gb.addr, topic, "adm-active")
    active.add("adm-1")
    active.add("adm-2")
    try:
        active.poll_until("adm-active settles and reads everything",
                          lambda: active.settled(parts) and len(set(active.seen)) >= len(delivered), 30)
        active.drain(0.5)
        assert active.settled(parts)

        listing = admin.list_consumer_groups(request_timeout=15).result()
        assert not listing.errors, listing.errors
        groups = {g.group_id: g for g in listing.valid}
        assert {"adm-active", "adm-empty", "adm-simple"} <= set(groups), sorted(groups)
        assert groups["adm-active"].state == ConsumerGroupState.STABLE
        assert not groups["adm-active"].is_simple_consumer_group
        assert groups["adm-empty"].state == ConsumerGroupState.EMPTY
        assert not groups["adm-empty"].is_simple_consumer_group
        assert groups["adm-simple"].is_simple_consumer_group
        assert groups["adm-simple"].state == ConsumerGroupState.EMPTY

        desc = admin.describe_consumer_groups(["adm-active", "adm-empty"], request_timeout=15)
        d = desc["adm-active"].result()
        assert d.group_id == "adm-active" and d.state == ConsumerGroupState.STABLE
        assert not d.is_simple_consumer_group
        assert d.partition_assignor == "range", d.partition_assignor  # librdkafka's first preference
        assert d.coordinator.id == 0 and d.coordinator.port == gb.port, d.coordinator
        members = {m.client_id: m for m in d.members}
        assert set(members) == {"adm-1", "adm-2"}, [(m.member_id, m.client_id) for m in d.members]
        for name, c in active.members.items():
            assert members[name].member_id == c.memberid()
            assert partitions_of(members[name].assignment.topic_partitions) == partitions_of(c.assignment())
            assert {tp.topic for tp in members[name].assignment.topic_partitions} == {topic}
        e = desc["adm-empty"].result()
        assert e.state == ConsumerGroupState.EMPTY and e.members == []

        offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("adm-active")],
                                                    request_timeout=15)["adm-active"].result()
        assert {tp.partition: tp.offset for tp in offsets.topic_partitions if tp.topic == topic} == ends

        results = admin.delete_consumer_groups(["adm-empty", "adm-simple"], request_timeout=15)
        for group, future in results.items():
            future.result()  # raises on failure
        assert committed(gb.addr, "adm-empty", topic, parts) == {p: -1001 for p in range(parts)}
        assert committed(gb.addr, "adm-simple", topic, parts) == {p: -1001 for p in range(parts)}
        listed = {g.group_id for g in admin.list_consumer_groups(request_timeout=15).result().valid}
        assert "adm-empty" not in listed and "adm-simple" not in listed and "adm-active" in listed

        with pytest.raises(KafkaException) as refused:
            admin.delete_consumer_groups(["adm-active"], request_timeout=15)["adm-active"].result()
        assert refused.value.args[0].code() == KafkaError.NON_EMPTY_GROUP, refused.value
        active.drain(1.0)
        assert active.settled(parts), "the refused delete left the group alone"
        assert committed(gb.addr, "adm-active", topic, parts) == ends
        active.check_commits()
    finally:
        active.close_all()

    # The last member leaves: once its LeaveGroup is answered (kafka-python's
    # close() waits for that), the group is Empty and can be deleted at once.
    from kafka import KafkaConsumer
    last = KafkaConsumer(topic, bootstrap_servers=gb.addr, group_id="adm-left", enable_auto_commit=False,
                         session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS)
    deadline = time.time() + 20
    while not last.assignment():
        assert time.time() < deadline, "the kafka-python member was not assigned"
        last.poll(timeout_ms=100)
    last.close(autocommit=False)
    left = admin.describe_consumer_groups(["adm-left"], request_timeout=15)["adm-left"].result()
    assert (left.state, left.members) == (ConsumerGroupState.EMPTY, []), (
        f"just after its last member's LeaveGroup was answered the group is {left.state} with "
        f"{[m.member_id for m in left.members]}")
    admin.delete_consumer_groups(["adm-left"], request_timeout=15)["adm-left"].result()


# ---------------------------------------------------------------- [7] cooperative-sticky

def test_cooperative_sticky_two_then_three(gb):
    """[7] partition.assignment.strategy=cooperative-sticky: two members split 6
    partitions; a third joins while they read and gets partitions through
    incremental rebalances: the first two only lose partitions (never revoke
    one they keep, never gain), the three end disjoint and covering all 6;
    more messages follow; every message is read exactly once and the group's
    committed offsets are the log ends."""
    topic, group, parts, first_batch = "coop-topic", "coop-group", 6, 1200
    create_topic(gb.addr, topic, parts)
    delivered = produce_keyed(gb.addr, topic, first_batch, "a")
    fleet = Fleet(gb.addr, topic, group, threaded=True, **{"partition.assignment.strategy": "cooperative-sticky"})
    try:
        fleet.add("A")
        fleet.add("B")
        fleet.poll_until("two members share the partitions", lambda: fleet.settled(parts), 30)
        fleet.poll_until("a third of the messages read", lambda: fleet.read() >= first_batch // 3, 60)
        before = fleet.assignments()
        marks = {n: len(fleet.events[n]) for n in "AB"}
        fleet.add("C")
        fleet.poll_until("three members share the partitions", lambda: fleet.settled(parts), 30)
        after = fleet.assignments()
        assert sorted(len(ps) for ps in after.values()) == [2, 2, 2], after
        for n in "AB":
            assert set(after[n]) <= set(before[n]), f"{n} gained partitions: {before[n]} -> {after[n]}"
            revoked = [p for kind, ps in fleet.events[n][marks[n]:] if kind != "assign" for p in ps]
            assert sorted(revoked) == sorted(set(before[n]) - set(after[n])), (
                f"{n} revoked {revoked}, kept {after[n]} of {before[n]}: incremental revokes only")
            assert not [ps for kind, ps in fleet.events[n][marks[n]:] if kind == "assign" and ps], fleet.events[n]
        delivered.update(produce_keyed(gb.addr, topic, 600, "b"))
        fleet.poll_until("every message read", lambda: fleet.read() >= len(delivered), 60)
        fleet.drain(1.0)
    finally:
        fleet.close_all()
    # A commit sent while the member's own JoinGroup is pending is answered
    # after it (Kafka serves a connection's requests in order), by then for a
    # newer generation: ILLEGAL_GENERATION, or REBALANCE_IN_PROGRESS until the
    # SyncGroup. Kafka answers so too; the member keeps the partition or
    # commits from its revoke callback, so such a commit must be made good.
    fleet.check_commits(tolerated=(KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS))
    assert_exactly_once(fleet.seen, delivered)
    assert fleet.by_member["C"], "C read the partitions it was given"
    assert committed(gb.addr, group, topic, parts) == end_offsets(gb.addr, topic, parts)
