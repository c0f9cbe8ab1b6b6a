"""kafkajs (Node): runs tests/clients/node/kafkajs_test.js against the broker."""

import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).parent / "node"


def test_kafkajs_admin_and_idempotent_producer(broker):
    out = subprocess.run(["node", "kafkajs_test.js", broker.addr], cwd=NODE_DIR, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert b"kafkajs ok" in out.stdout
