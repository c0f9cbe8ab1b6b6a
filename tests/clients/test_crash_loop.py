"""A short crash loop (issue 6) for CI: three rounds of `kill -9` under
acks=all confluent-kafka producer processes with small segments,
DeleteRecords, topic churn and a SIGKILLed producer, every acknowledged
record verified after each restart. `scripts/crash-loop.sh N` runs the long
version; see crash_loop.py for what each round does and checks."""

import socket
import struct

import crash_loop
from conftest import SPATE, free_port


def test_short_crash_loop(tmp_path):
    verified = crash_loop.run(rounds=3, seconds_per_round=2.0, spate_bin=SPATE,
                              workdir=tmp_path / "crash-loop")
    assert verified > 0, "the producers got acknowledgements to verify"


def test_restart_on_same_port_after_kill9(tmp_path):
    """After `kill -9` with clients connected, the broker starts again at once
    on the same port: the killed broker's connections linger in TIME_WAIT,
    which must not count as "another process serves this port"."""
    broker = crash_loop.Broker(SPATE, tmp_path / "data", free_port(), tmp_path / "broker.log")
    try:
        broker.start(0)
        crash_loop.create_topic(broker.addr, "restart", 1)
        assert len(crash_loop.produce_few(broker.addr, "restart", 5, "v")) == 5
        client = socket.create_connection(("127.0.0.1", broker.port))  # open as a client's would be
        client.sendall(struct.pack(">ihhih", 10, 18, 0, 1, -1))  # ApiVersions v0...
        client.makefile("rb").read(struct.unpack(">i", client.recv(4, socket.MSG_WAITALL))[0])  # ...answered:
        # the broker has accepted it
        broker.kill()  # the broker's side of the connection closes first...
        client.settimeout(10)
        assert client.recv(1) == b""  # (its FIN arrives once the kernel has closed it)
        client.close()  # ...so it waits in TIME_WAIT, as after any kill under load
        broker.start(1)  # raises Violation if refused
        assert crash_loop.watermarks(broker.addr, "restart", 0) == (0, 5)
    finally:
        broker.kill()
