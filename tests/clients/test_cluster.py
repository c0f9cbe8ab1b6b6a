"""A spate cluster: three real `spate serve` processes on loopback ports, one
controller quorum (raft), driven by confluent-kafka (librdkafka) and kcat.

What is tested here is the cluster's metadata: one quorum, brokers that
register and are fenced when silent, partitions spread over the nodes,
clients that follow leaders and coordinators to whichever node has them,
controller failover under `kill -9`, and a restarted node catching up from
the quorum's log or its snapshot. These topics have one replica per
partition; replication itself is tested in test_replication.py.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import SPATE, answers, free_port, node_metadata

SESSION_TIMEOUT_MS = 3000


class Node:
    def __init__(self, root, node_id, port, controller_port, voters, extra):
        self.node_id = node_id
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.data = root / f"node-{node_id}"
        self.log_path = root / f"node-{node_id}.log"
        self.cmd = [str(SPATE), "serve", "--listen", self.addr, "--data-dir", str(self.data),
                    "--shards", "2", "--set", "pin_shards=false", "--set", "admin_listen=127.0.0.1:0",
                    "--set", f"node_id={node_id}",
                    "--set", f"controller_listen=127.0.0.1:{controller_port}",
                    "--set", f"controller_quorum_voters={voters}",
                    "--set", f"broker_session_timeout_ms={SESSION_TIMEOUT_MS}"]
        for item in extra:
            self.cmd += ["--set", item]
        self.proc = None

    def start(self, env=None):
        """Starts the node; `env` adds environment variables (e.g. SPATE_FAULTS)."""
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "a"),
                                     env={**os.environ, **(env or {})})

    def wait_serving(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"node {self.node_id} died:\n{self.log()}"
            if answers(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"node {self.node_id} did not start:\n{self.log()}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            assert self.proc.wait(timeout=30) == 0, self.log()

    def log(self):
        return self.log_path.read_text()[-6000:] if self.log_path.exists() else ""


class Cluster:
    def __init__(self, count=3, extra=()):
        self.root = Path(tempfile.mkdtemp(prefix="spate-cluster-"))
        ports = [(free_port(), free_port()) for _ in range(count)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        self.nodes = {i + 1: Node(self.root, i + 1, p, c, voters, extra) for i, (p, c) in enumerate(ports)}
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_serving()

    def bootstrap(self, *ids):
        return ",".join(self.nodes[i].addr for i in (ids or self.nodes))

    def metadata(self, via):
        """(controller id, {broker id: port}, {topic: {partition: leader}}) as node `via` itself sees it."""
        return node_metadata(self.nodes[via].port)

    def stop(self):
        for node in self.nodes.values():
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.stop()


def wait_for(what, check, timeout=20):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def create_topic(bootstrap, name, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(timeout=20)


def produce(bootstrap, topic, count, tag):
    """Produces `count` keyed records (acks=all); {(partition, offset): value} as acknowledged."""
    acked = {}
    errors = []

    def on_delivery(err, msg):
        if err:
            errors.append(err)
        else:
            acked[(msg.partition(), msg.offset())] = msg.value().decode()

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(count):
        producer.produce(topic, key=f"k{i}", value=f"{tag}-{i}", on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0, "records left unacknowledged"
    assert not errors, errors
    return acked


def read_all(bootstrap, topic, partitions, expected, group=None):
    """{(partition, offset): value} of every record, through a group if
    named: reads until `expected` records came, or 30 s, then 1 s more."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group or f"reader-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    if group:
        consumer.subscribe([topic])
    else:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        seen[(msg.partition(), msg.offset())] = msg.value().decode()
        if len(seen) >= expected:
            deadline = min(deadline, time.time() + 1)
    if group:
        consumer.commit(asynchronous=False)
    consumer.close()
    return seen


def spate_cli(bootstrap, *args):
    out = subprocess.run([str(SPATE), "--brokers", bootstrap, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_three_nodes_serve_one_cluster(cluster):
    # Every node sees the same three brokers, one controller, one placement.
    views = [cluster.metadata(via) for via in (1, 2, 3)]
    controllers = {v[0] for v in views}
    assert len(controllers) == 1 and controllers.pop() in (1, 2, 3), views
    for _, brokers, _ in views:
        assert brokers == {i: n.port for i, n in cluster.nodes.items()}

    create_topic(cluster.bootstrap(2), "spread", 6)
    leaders = wait_for("every node to know the topic",
                       lambda: all("spread" in cluster.metadata(v)[2] for v in (1, 2, 3))
                       and cluster.metadata(1)[2]["spread"])
    assert set(leaders.values()) == {1, 2, 3}, f"six partitions spread over three nodes: {leaders}"
    for via in (2, 3):
        assert cluster.metadata(via)[2]["spread"] == leaders

    # A producer that knows one node, and a group consumer that knows
    # another: both find every leader and the group's coordinator.
    acked = produce(cluster.bootstrap(3), "spread", 600, "a")
    assert len(acked) == 600
    assert {p for p, _ in acked} == set(range(6))
    seen = read_all(cluster.bootstrap(1), "spread", 6, len(acked), group="g-spread")
    assert seen == acked

    # The group's committed offsets live on its coordinator and are found
    # again through any node.
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap(2), "group.id": "g-spread"})
    committed = consumer.committed([TopicPartition("spread", p) for p in range(6)], timeout=10)
    consumer.close()
    ends = {p: max(o for q, o in acked if q == p) + 1 for p in range(6)}
    assert {tp.partition: tp.offset for tp in committed} == ends

    # kcat reads a partition led by another node than the one it knows.
    partition = next(p for p, leader in leaders.items() if leader != 1)
    out = subprocess.run(["kcat", "-C", "-b", cluster.bootstrap(1), "-t", "spread", "-p", str(partition),
                          "-e", "-q", "-f", "%o %s\\n"], capture_output=True, text=True, timeout=30, check=True)
    lines = [line.split(" ", 1) for line in out.stdout.splitlines()]
    assert {(partition, int(o)): v for o, v in lines} == {k: v for k, v in acked.items() if k[0] == partition}

    # The CLI shows the cluster, and each partition's replicas, ISR and
    # offsets (read from its leader, whichever node that is).
    status = spate_cli(cluster.bootstrap(2), "cluster", "status")
    controller = cluster.metadata(1)[0]
    assert f"controller: {controller}" in status, status
    for i, node in cluster.nodes.items():
        assert f"{i}  127.0.0.1:{node.port}" in status, status
    assert "offline partitions: 0" in status and "under-replicated partitions: 0" in status, status
    described = spate_cli(cluster.bootstrap(1), "topic", "describe", "spread")
    rows = {int(r.split()[0]): r.split() for r in described.splitlines() if r.strip()[:1].isdigit()}
    assert sorted(rows) == list(range(6)), described
    for p, row in rows.items():
        leader, _epoch, replicas, isr, _start, end = row[1:]
        assert int(leader) == leaders[p] and replicas == isr == str(leaders[p]), described
        assert int(end) == ends[p], described


def test_controller_failover_and_catch_up(cluster):
    create_topic(cluster.bootstrap(1), "before", 6)
    acked = produce(cluster.bootstrap(1), "before", 300, "b")
    controller = cluster.metadata(1)[0]
    survivors = [i for i in cluster.nodes if i != controller]

    cluster.nodes[controller].kill9()
    killed_at = time.time()
    # A new controller is elected among the survivors, and changes go on.
    new_controller = wait_for("a new controller",
                              lambda: (c := cluster.metadata(survivors[0])[0]) in survivors and c)
    create_topic(cluster.bootstrap(*survivors), "during", 4)

    # The dead node is fenced after its session: it leaves Metadata, and
    # its partitions have no leader (they have no other replica).
    def fenced():
        _, brokers, topics = cluster.metadata(survivors[0])
        return controller not in brokers and all(
            leader != controller for t in topics.values() for leader in t.values())
    wait_for("the dead node to be fenced", fenced)
    assert time.time() - killed_at >= SESSION_TIMEOUT_MS / 1000 * 0.9, "fenced before its session ended"
    assert -1 in cluster.metadata(survivors[0])[2]["before"].values(), "its partitions are offline"
    status = spate_cli(cluster.bootstrap(*survivors), "cluster", "status")
    assert f"controller: {new_controller}" in status and "offline partitions: 0" not in status, status

    # Restarted, it catches up (it learns of "during") and leads its partitions again.
    cluster.nodes[controller].start()
    cluster.nodes[controller].wait_serving()
    wait_for("the restarted node to lead again",
             lambda: -1 not in cluster.metadata(controller)[2].get("before", {-1: -1}).values()
             and "during" in cluster.metadata(controller)[2])
    assert cluster.metadata(controller)[0] == new_controller
    assert read_all(cluster.bootstrap(*survivors), "before", 6, len(acked)) == acked


def test_a_node_catches_up_from_a_snapshot():
    cluster = Cluster(extra=["metadata_snapshot_interval_entries=10"])
    try:
        controller = cluster.metadata(1)[0]
        behind = next(i for i in cluster.nodes if i != controller)
        others = [i for i in cluster.nodes if i != behind]
        cluster.nodes[behind].kill9()
        for i in range(40):
            create_topic(cluster.bootstrap(*others), f"snap-{i}", 1)
        log = cluster.nodes[controller].data / "__cluster_metadata" / "log"
        wait_for("the leader to truncate its log", lambda: log.stat().st_size < 8000)
        assert "metadata snapshot taken" in cluster.nodes[controller].log()

        cluster.nodes[behind].start()
        cluster.nodes[behind].wait_serving()
        topics = wait_for("the node to see every topic",
                          lambda: (t := cluster.metadata(behind)[2]) and all(f"snap-{i}" in t for i in range(40)) and t)
        assert len([t for t in topics if t.startswith("snap-")]) == 40
        assert "installing a metadata snapshot" in cluster.nodes[behind].log()
    finally:
        cluster.stop()
