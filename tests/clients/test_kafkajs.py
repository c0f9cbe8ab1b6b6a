"""kafkajs (Node): runs tests/clients/node/kafkajs_test.js against the broker."""

import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).parent / "node"


def test_kafkajs_admin_and_idempotent_producer(broker):
    out = subprocess.run(["node", "kafkajs_test.js", broker.addr], cwd=NODE_DIR, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert b"kafkajs ok" in out.stdout


def test_kafkajs_consumer_group(broker):
    """Consumer groups through kafkajs consumer.run(): three members split a
    6-partition topic and commit every message; one leaves and the others take
    its partitions; every message read once, committed offsets at the log ends,
    a fresh member reads nothing; describeGroups/listGroups/deleteGroups."""
    out = subprocess.run(["node", "kafkajs_groups.js", broker.addr], cwd=NODE_DIR, capture_output=True, timeout=150)
    assert out.returncode == 0, out.stderr.decode()[-20000:] + out.stdout.decode()[-5000:]
    assert b"kafkajs groups ok" in out.stdout
