"""Starts the real spate binary on a free loopback port for each test module."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPATE = Path(os.environ.get("SPATE_BIN", ROOT / "target" / "release" / "spate"))


# Shards of every test broker: more than one, so cross-shard paths are tested.
SHARDS = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port):
    """Whether a broker accepts connections on `port`. A socket connected to
    itself (Linux allows it when the source port it picks is ours) is not one."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.getsockname() != s.getpeername()
    except OSError:
        return False


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
