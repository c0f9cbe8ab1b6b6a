"""The operator's endpoint: /metrics read by the Prometheus text parser while
confluent-kafka produces and consumes, /v1/health, /v1/ready (not ready until
recovery is done), /v1/status and PUT /v1/log-level."""

import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from conftest import SHARDS, SPATE, Broker, free_port


def http(method, url, body=None, timeout=10):
    """(status, body text) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class AdminBroker(Broker):
    def __init__(self, extra=()):
        self.admin_port = free_port()
        super().__init__(extra=[f"admin_listen=127.0.0.1:{self.admin_port}", *extra])
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    def get(self, path):
        return http("GET", self.admin + path)

    def scrape(self):
        """{(name, labels as a sorted tuple): value} of every sample."""
        status, text = self.get("/metrics")
        assert status == 200, text
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def total(samples, name, **labels):
    """Sum over every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture(scope="module")
def admin_broker():
    b = AdminBroker(extra=["default_partitions=1", "group_initial_rebalance_delay_ms=0"])
    yield b
    assert b.proc.poll() is None, "broker died during the tests:\n" + b.log()
    b.stop()


def test_metrics_move_with_real_traffic(admin_broker):
    b = admin_broker
    topic = "metrics-traffic"
    admin = AdminClient({"bootstrap.servers": b.addr})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
    before = b.scrape()
    assert value(before, "spate_topic_records_in_total", topic=topic) == 0

    producer = Producer({"bootstrap.servers": b.addr, "linger.ms": 5, "compression.type": "lz4", "acks": "all"})
    for i in range(3000):
        producer.produce(topic, key=str(i).encode(), value=b"x" * 100)
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": b.addr, "group.id": "metrics-group", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0
    deadline = time.time() + 60
    while seen < 3000 and time.time() < deadline:
        for m in consumer.consume(500, timeout=1):
            assert m.error() is None, m.error()
            seen += 1
    assert seen == 3000
    consumer.commit(asynchronous=False)

    after = b.scrape()
    assert value(after, "spate_topic_records_in_total", topic=topic) == 3000
    assert value(after, "spate_topic_bytes_in_total", topic=topic) > 0
    assert value(after, "spate_topic_records_out_total", topic=topic) >= 3000
    assert value(after, "spate_topic_bytes_out_total", topic=topic) > 0
    produced = total(after, "spate_requests_total", api="Produce") - total(before, "spate_requests_total", api="Produce")
    assert produced > 0
    assert total(after, "spate_requests_total", api="Fetch") > total(before, "spate_requests_total", api="Fetch")
    assert total(after, "spate_requests_total", api="JoinGroup") >= 1
    # The partitions' figures add up to what was produced.
    assert sum(value(after, "spate_partition_high_watermark", topic=topic, partition=str(p)) for p in range(3)) == 3000
    assert all(value(after, "spate_partition_segments", topic=topic, partition=str(p)) >= 1 for p in range(3))
    size = sum(value(after, "spate_partition_size_bytes", topic=topic, partition=str(p)) for p in range(3))
    assert size == value(after, "spate_topic_bytes_in_total", topic=topic) > 0, "the log holds what came in"
    # Histograms have buckets, cumulative up to +Inf = count.
    for stage in ("queue", "storage", "network"):
        labels = dict(api="Produce", stage=stage)
        inf = value(after, "spate_request_latency_seconds_bucket", le="+Inf", **labels)
        assert inf == value(after, "spate_request_latency_seconds_count", **labels) > 0
        buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in after.items()
                          if n == "spate_request_latency_seconds_bucket" and set(labels.items()) <= set(ls)))
        assert len(buckets) > 10
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "cumulative buckets"
    assert value(after, "spate_storage_fdatasync_latency_seconds_count") > 0, "acks=all syncs"
    assert value(after, "spate_storage_write_latency_seconds_count") > 0
    assert total(after, "spate_connections") >= 1
    assert total(after, "spate_cross_shard_messages_total") > 0, "two shards talk"
    assert total(after, "spate_cache_hits_total") + total(after, "spate_cache_misses_total") > 0
    assert len([1 for (n, _) in after if n == "spate_shard_busy_seconds_total"]) == SHARDS
    # Consumer lag: nothing left after the commit, then what is produced after it.
    for p in range(3):
        assert value(after, "spate_consumer_group_lag", group="metrics-group", topic=topic, partition=str(p)) == 0
    for i in range(7):
        producer.produce(topic, value=b"late", partition=1)
    assert producer.flush(30) == 0
    later = b.scrape()
    assert value(later, "spate_consumer_group_lag", group="metrics-group", topic=topic, partition="1") == 7
    consumer.close()


def api_versions_answered(sock, correlation_id):
    """Sends ApiVersions v0 on a raw socket and reads its answer whole."""
    body = struct.pack(">hhih", 18, 0, correlation_id, 4) + b"test"
    sock.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
    answer = sock.recv(size, socket.MSG_WAITALL)
    return len(answer) == size and struct.unpack(">ih", answer[:6]) == (correlation_id, 0)


def test_connections_are_spread_over_the_shards():
    """Connections all accepted by one shard's listener are handed to the
    shard serving fewer (the kernel's SO_REUSEPORT hash spreads a few
    connections unevenly): 8 connections from one client end up 4 and 4,
    each answered by the shard now serving it, and a real producer works."""
    b = AdminBroker(extra=["default_partitions=4"])
    try:
        deadline = time.time() + 10
        while total(b.scrape(), "spate_connections") != 0:  # the start-up probe's connection
            assert time.time() < deadline
            time.sleep(0.05)
        before = b.scrape()
        sockets = [socket.create_connection(("127.0.0.1", b.port), timeout=10) for _ in range(4 * SHARDS)]
        for i, sock in enumerate(sockets):
            assert api_versions_answered(sock, 100 + i), f"connection {i} was not served"
        samples = b.scrape()
        per_shard = [value(samples, "spate_connections", shard=str(shard)) for shard in range(SHARDS)]
        assert per_shard == [4] * SHARDS, per_shard
        handed = total(samples, "spate_connections_handed_over_total") - total(before, "spate_connections_handed_over_total")
        accepted = total(samples, "spate_connections_accepted_total") - total(before, "spate_connections_accepted_total")
        assert accepted == 4 * SHARDS and 0 <= handed <= accepted, (accepted, handed)
        for i, sock in enumerate(sockets):  # still served after the others arrived
            assert api_versions_answered(sock, 200 + i)
        for sock in sockets[:4]:  # rudely: a reset, not a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        deadline = time.time() + 10
        while sum(value(b.scrape(), "spate_connections", shard=str(s)) for s in range(SHARDS)) != 4:
            assert time.time() < deadline, "closed connections are released"
            time.sleep(0.05)
        producer = Producer({"bootstrap.servers": b.addr, "acks": "all"})
        delivered = []
        for i in range(100):
            producer.produce("spread", value=b"v%d" % i, on_delivery=lambda err, msg: delivered.append(err))
        assert producer.flush(30) == 0 and delivered == [None] * 100
    finally:
        b.stop()


def test_errors_are_counted_per_api(admin_broker):
    b = admin_broker
    before = total(b.scrape(), "spate_request_errors_total", api="Produce")
    producer = Producer({"bootstrap.servers": b.addr, "message.max.bytes": 2_000_000, "acks": 1,
                         "allow.auto.create.topics": False})
    admin = AdminClient({"bootstrap.servers": b.addr})
    admin.create_topics([NewTopic("metrics-small", 1, 1, config={"max.message.bytes": "1000"})])["metrics-small"].result()
    failures = []
    producer.produce("metrics-small", value=b"y" * 5000, on_delivery=lambda err, msg: failures.append(err))
    producer.flush(30)
    assert failures and failures[0] is not None, "the oversized record is refused"
    after = b.scrape()
    assert total(after, "spate_request_errors_total", api="Produce") > before
    assert value(after, "spate_request_errors_total", api="Produce", error="MessageTooLarge") >= 1


def test_health_ready_status_and_log_level(admin_broker):
    b = admin_broker
    assert b.get("/v1/health") == (200, '{"status":"up"}\n')
    status, body = b.get("/v1/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, body = b.get("/v1/status")
    assert status == 200
    info = json.loads(body)
    assert info["shards"] == SHARDS and info["ready"] is True
    assert info["partitions"] >= 3 and info["data_dir_used_bytes"] > 0 and info["disk_free_bytes"] > 0
    assert info["version"] and info["commit"] and info["uptime_seconds"] >= 0
    assert b.get("/nope")[0] == 404
    assert http("POST", b.admin + "/v1/health", body=b"")[0] == 405

    status, body = http("PUT", b.admin + "/v1/log-level", body=b"debug")
    assert status == 200 and json.loads(body)["filter"] == "debug"
    # A DEBUG line appears now: a new connection is logged at debug level.
    mark = len(b.log())
    Producer({"bootstrap.servers": b.addr}).list_topics(timeout=10)
    deadline = time.time() + 10
    while "DEBUG" not in b.log()[mark:] and time.time() < deadline:
        time.sleep(0.1)
    assert "DEBUG" in b.log()[mark:]
    assert http("PUT", b.admin + "/v1/log-level", body=b"info")[0] == 200
    status, body = http("PUT", b.admin + "/v1/log-level", body=b"spate=notalevel")
    assert status == 400 and "invalid log filter" in body
    assert json.loads(http("GET", b.admin + "/v1/log-level")[1])["filter"] == "info"


def test_bad_admin_requests_are_refused_and_harmless(admin_broker):
    import socket
    b = admin_broker
    for garbage in (b"\x00\x01\x02 nonsense\r\n\r\n", b"GET /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
                    # The largest usize: the bound check must not wrap around.
                    b"PUT /v1/log-level HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", b.admin_port), timeout=10) as s:
            s.sendall(garbage)
            assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert b.get("/v1/health")[0] == 200


def test_metrics_answer_fast_with_10000_partitions():
    b = AdminBroker(extra=["default_partitions=1", "segment_bytes=1048576", "write_buffer_bytes=4096",
                           "preallocate_step_bytes=0"])
    try:
        admin = AdminClient({"bootstrap.servers": b.addr})
        admin.create_topics([NewTopic("wide", 10_000, 1)], request_timeout=300)["wide"].result(timeout=300)
        samples = b.scrape()
        assert value(samples, "spate_partitions") >= 10_000
        took = []
        for _ in range(7):
            started = time.perf_counter()
            status, _ = b.get("/metrics")
            took.append(time.perf_counter() - started)
            assert status == 200
        assert statistics.median(took) < 0.010, f"/metrics took {took}"
    finally:
        b.stop()


def test_not_ready_until_recovery_is_done():
    """A broker with many partitions recovers them after kill -9; /v1/ready
    answers 503 meanwhile (and /v1/health 200), then 200."""
    b = AdminBroker(extra=["default_partitions=1", "segment_bytes=1048576", "write_buffer_bytes=4096",
                           "preallocate_step_bytes=0"])
    admin = AdminClient({"bootstrap.servers": b.addr})
    admin.create_topics([NewTopic("big", 4000, 1)], request_timeout=300)["big"].result(timeout=300)
    producer = Producer({"bootstrap.servers": b.addr, "linger.ms": 20})
    for i in range(40_000):
        producer.produce("big", value=b"z" * 200, partition=i % 4000)
    assert producer.flush(60) == 0
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()

    cmd = [str(SPATE), "serve", "--listen", b.addr, "--data-dir", str(b.dir / "data"), "--shards", str(SHARDS),
           "--set", "pin_shards=false", "--set", f"admin_listen=127.0.0.1:{b.admin_port}",
           "--set", "write_buffer_bytes=4096", "--set", "preallocate_step_bytes=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(b.dir / "restart.log", "w"))
    try:
        answers = []
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                health = b.get("/v1/health")[0]
                ready = b.get("/v1/ready")[0]
            except OSError:
                time.sleep(0.01)
                continue
            answers.append((health, ready))
            if ready == 200:
                break
            time.sleep(0.01)
        assert answers and answers[-1] == (200, 200), (answers[-5:], (b.dir / "restart.log").read_text())
        assert (200, 503) in answers, f"never seen not-ready during recovery: {answers[:5]}"
        # Ready means ready: a client is served at once.
        md = admin.list_topics(timeout=10)
        assert len(md.topics["big"].partitions) == 4000
        consumer = Consumer({"bootstrap.servers": b.addr, "group.id": "r"})
        low, high = consumer.get_watermark_offsets(TopicPartition("big", 7), timeout=10)
        assert (low, high) == (0, 10)
        consumer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        import shutil
        shutil.rmtree(b.dir, ignore_errors=True)
