"""Starts the real spate binary on a free loopback port for each test module."""

import itertools
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPATE = Path(os.environ.get("SPATE_BIN", ROOT / "target" / "release" / "spate"))


# Shards of every test broker: more than one, so cross-shard paths are tested.
SHARDS = 2


def _port_candidates():
    """Up to 12,000 ports just below the kernel's ephemeral range, or just
    above it when there is more room there, cycled from a per-process start."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999
    below, above = max(low - 1024, 0), max(65535 - high, 0)
    if below >= above:
        count = max(min(below, 12000), 1)
        first = low - count
    else:
        count = min(above, 12000)
        first = high + 1
    start = os.getpid() * 7919 % count
    return (first + (start + i) % count for i in itertools.count())


_PORTS = _port_candidates()


def free_port():
    """A loopback port free now, picked outside the ephemeral range and never
    twice in this process: a port picked by binding port 0 could be handed by
    the kernel to a broker's port-0 admin listener before the broker meant to
    have it binds it; outside the range no port-0 bind can take it."""
    for port in itertools.islice(_PORTS, 12000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port outside the ephemeral range")


def answers(port):
    """Whether a broker accepts connections on `port`. A socket connected to
    itself (Linux allows it when the source port it picks is ours) is not one."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.getsockname() != s.getpeername()
    except OSError:
        return False


def node_metadata(port, topics=None):
    """(controller id, {broker id: port}, {topic: {partition: leader}}) as the
    broker listening on `port` itself reports it (topics it answers with an
    error left out), from a Metadata request
    on a raw socket; `topics` None asks for every topic. Kafka clients send a
    metadata query to any broker they have learned of, not necessarily the
    one they were given, so they cannot ask one node for its own view.
    Version 4, so that asking for a topic never creates it."""
    names = b"".join(struct.pack(">h", len(t)) + t.encode() for t in topics or ())
    wanted = struct.pack(">i", -1) if topics is None else struct.pack(">i", len(topics)) + names
    body = struct.pack(">hhih", 3, 4, 1, 4) + b"test" + wanted + struct.pack(">?", False)  # no auto-creation
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))
        answer = sock.recv(size, socket.MSG_WAITALL)
    assert len(answer) == size, f"the broker on port {port} closed the connection mid-answer"
    return MetadataV4Answer(answer).read()


class MetadataV4Answer:
    """Reads a Metadata v4 answer whole; leftover bytes fail it."""

    def __init__(self, answer):
        self.answer, self.at = answer, 4  # past the correlation id

    def take(self, fmt):
        values = struct.unpack_from(fmt, self.answer, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def string(self):
        (n,) = self.take(">h")
        self.at += max(n, 0)  # -1: null
        return self.answer[self.at - n:self.at].decode() if n >= 0 else None

    def read(self):
        brokers, topics = {}, {}
        self.take(">i")  # throttle_time_ms
        for _ in range(self.take(">i")[0]):
            (node_id,) = self.take(">i")
            self.string()  # host
            (brokers[node_id],) = self.take(">i")
            self.string()  # rack
        self.string()  # cluster_id
        (controller,) = self.take(">i")
        for _ in range(self.take(">i")[0]):
            (error,) = self.take(">h")
            name = self.string()
            self.take(">?")  # is_internal
            leaders = topics.setdefault(name, {}) if error == 0 else {}
            for _ in range(self.take(">i")[0]):
                _error, partition, leader = self.take(">hii")
                for _ in range(2):  # replicas, then ISR
                    (count,) = self.take(">i")
                    self.at += 4 * count
                leaders[partition] = leader
        assert self.at == len(self.answer), f"{len(self.answer) - self.at} bytes left over in a Metadata answer"
        return controller, brokers, topics


class Broker:
    def __init__(self, extra=()):
        self.dir = Path(tempfile.mkdtemp(prefix="spate-py-"))
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log_path = self.dir / "broker.log"
        cmd = [str(SPATE), "serve", "--listen", self.addr, "--data-dir", str(self.dir / "data"),
               "--shards", str(SHARDS), "--set", "pin_shards=false", "--set", "admin_listen=127.0.0.1:0"]
        for item in extra:
            cmd += ["--set", item]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))
        deadline = time.time() + 30
        while time.time() < deadline:
            # Every shard binds its own listener: ready once all of them have.
            if self.log().count("listening") < SHARDS:
                time.sleep(0.05)
                continue
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    # A socket connected to itself (Linux allows it when the
                    # source port it picks is ours) is not the broker.
                    if s.getsockname() != s.getpeername():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"spate did not start:\n{self.log()}")

    def log(self):
        return self.log_path.read_text()

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=30) == 0, self.log()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def broker():
    b = Broker(extra=["default_partitions=1"])
    yield b
    assert b.proc.poll() is None, "broker died during the tests:\n" + b.log()
    b.stop()
