"""Topic and broker configs as Kafka tools use them, through confluent-kafka's
and kafka-python's admin clients (and kafkajs, kcat): every standard topic
config accepted, stored, described back with its source and honoured; broker
settings under their Kafka names; dynamic broker configs (per broker and the
cluster default "") that topics follow and a restart keeps; APPEND/SUBTRACT;
and bad input refused whole with Kafka's errors."""

import json
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewTopic, ResourceType)
from kafka import KafkaAdminClient
from kafka.admin import NewTopic as KNewTopic
from kafka.admin import AlterConfigOp
from kafka.protocol.admin import IncrementalAlterConfigsRequest
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType as KConfigResourceType
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from test_groups import GroupBroker

NODE_DIR = Path(__file__).parent / "node"

# Kafka 4.0's topic configs, each set to a valid non-default value.
EVERY_TOPIC_CONFIG = {
    "cleanup.policy": "compact,delete",
    "compression.gzip.level": "5",
    "compression.lz4.level": "10",
    "compression.type": "zstd",
    "compression.zstd.level": "7",
    "delete.retention.ms": "3600000",
    "file.delete.delay.ms": "1000",
    "flush.messages": "100000",
    "flush.ms": "60000",
    "follower.replication.throttled.replicas": "0:0",
    "index.interval.bytes": "8192",
    "leader.replication.throttled.replicas": "*",
    "local.retention.bytes": "-2",
    "local.retention.ms": "-2",
    "max.compaction.lag.ms": "86400000",
    "max.message.bytes": "2000000",
    "message.timestamp.after.max.ms": "7200000",
    "message.timestamp.before.max.ms": "86400000",
    "message.timestamp.type": "LogAppendTime",
    "min.cleanable.dirty.ratio": "0.3",
    "min.compaction.lag.ms": "1000",
    "min.insync.replicas": "1",
    "preallocate": "true",
    "remote.log.copy.disable": "false",
    "remote.log.delete.on.disable": "false",
    "remote.storage.enable": "false",
    "retention.bytes": "100000000",
    "retention.ms": "86400000",
    "segment.bytes": "16777216",
    "segment.index.bytes": "1048576",
    "segment.jitter.ms": "1000",
    "segment.ms": "3600000",
    "unclean.leader.election.enable": "true",
}


@pytest.fixture(scope="module")
def broker():
    admin_port = free_port()
    # flush_interval_ms=0: no periodic sync unless a topic asks (flush tests).
    b = GroupBroker(extra=["default_partitions=1", "flush_interval_ms=0", f"admin_listen=127.0.0.1:{admin_port}"])
    b.admin_port = admin_port
    yield b
    assert b.alive(), "broker died during the tests:\n" + b.logs()
    b.terminate()


def admin_of(b):
    return AdminClient({"bootstrap.servers": b.addr})


def create(admin, name, config=None, partitions=1):
    for f in admin.create_topics([NewTopic(name, partitions, 1, config=config or {})]).values():
        f.result(timeout=30)


def describe(admin, rtype, name):
    resource = ConfigResource(rtype, name)
    return admin.describe_configs([resource])[resource].result(timeout=30)


def incremental(admin, rtype, name, entries, validate_only=False):
    resource = ConfigResource(rtype, name, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=op) for k, op, v in entries])
    return admin.incremental_alter_configs([resource], validate_only=validate_only)[resource].result(timeout=30)


class ClusterDefault:
    """The cluster-wide default broker resource (name ""), which Java's admin
    client names `new ConfigResource(BROKER, "")`. confluent-kafka and
    kafka-python refuse an empty broker name, so these requests are built by
    kafka-python's own request encoder and sent through its client."""

    def __init__(self, b, name=""):
        self.admin = KafkaAdminClient(bootstrap_servers=b.addr)
        self.name = name

    def _send(self, request):
        async def send():
            return await self.admin._manager.send(request)
        return self.admin._manager.run(send)

    def alter(self, entries, validate_only=False):
        """entries: [(key, AlterConfigOp name, value)]; raises on an error."""
        configs = {k: (op, v) for k, op, v in entries}
        resource = KConfigResource(KConfigResourceType.BROKER, self.name, configs=configs)
        request = self.admin._alter_configs_request([resource], validate_only, incremental=True)
        [result] = self._send(request).responses
        if result.error_code != 0:
            raise KafkaErrorCode(result.error_code, result.error_message)

    def alter_entries(self, resource_type, name, entries):
        """An IncrementalAlterConfigs of raw (key, op code, value) entries,
        duplicates allowed (the admin APIs refuse them before sending)."""
        request = IncrementalAlterConfigsRequest(resources=[(resource_type, name, entries)], validate_only=False)
        [result] = self._send(request).responses
        return result.error_code, result.error_message

    def describe(self):
        """{key: (value, source)} of what is set cluster-wide."""
        request = self.admin._describe_configs_request([KConfigResource(KConfigResourceType.BROKER, "")])
        [result] = self._send(request).results
        assert result.error_code == 0, result
        return {c.name: (c.value, c.config_source) for c in result.configs}

    def close(self):
        self.admin.close()


class KafkaErrorCode(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def error_of(call):
    with pytest.raises(KafkaException) as e:
        call()
    return e.value.args[0]


def test_every_standard_topic_config_is_accepted_and_described(broker):
    admin = admin_of(broker)
    create(admin, "all-configs", EVERY_TOPIC_CONFIG)
    create(admin, "no-configs")
    described = describe(admin, ResourceType.TOPIC, "all-configs")
    assert set(described) == set(EVERY_TOPIC_CONFIG), "every Kafka topic config, no others"
    for key, value in EVERY_TOPIC_CONFIG.items():
        entry = described[key]
        assert (entry.value, entry.source) == (value, ConfigSource.DYNAMIC_TOPIC_CONFIG.value), key
        assert not entry.is_read_only and not entry.is_sensitive
    defaults = describe(admin, ResourceType.TOPIC, "no-configs")
    expected_defaults = {"cleanup.policy": "delete", "compression.type": "producer", "retention.ms": "604800000",
                         "max.message.bytes": "1048588", "message.timestamp.type": "CreateTime",
                         "message.timestamp.after.max.ms": "3600000", "min.insync.replicas": "1",
                         "unclean.leader.election.enable": "false", "segment.jitter.ms": "0",
                         "flush.messages": "9223372036854775807"}
    for key, value in expected_defaults.items():
        assert (defaults[key].value, defaults[key].source) == (value, ConfigSource.DEFAULT_CONFIG.value), key
    # flush_interval_ms=0 on the command line: never, from the static setting.
    assert (defaults["flush.ms"].value, defaults["flush.ms"].source) == (
        "9223372036854775807", ConfigSource.STATIC_BROKER_CONFIG.value)

    # kafka-python creates the same topic and reads every config back.
    kadmin = KafkaAdminClient(bootstrap_servers=broker.addr)
    try:
        kadmin.create_topics([KNewTopic("all-configs-kp", 1, 1, topic_configs=EVERY_TOPIC_CONFIG)])
        for name in ("all-configs", "all-configs-kp"):
            response = kadmin.describe_configs([KConfigResource(KConfigResourceType.TOPIC, name)],
                                               config_filter="all")
            configs = response["topic"][name]
            for key, value in EVERY_TOPIC_CONFIG.items():
                assert configs[key]["value"] == value, (name, key, configs[key])
                assert configs[key]["config_source"] == "DYNAMIC_TOPIC_CONFIG", (name, key)
    finally:
        kadmin.close()


def test_broker_settings_are_described_under_kafka_names(broker):
    admin = admin_of(broker)
    described = describe(admin, ResourceType.BROKER, "0")
    for key in ["listeners", "advertised.listeners", "log.dirs", "node.id", "num.partitions",
                "default.replication.factor", "message.max.bytes", "log.retention.ms", "log.segment.bytes",
                "log.roll.ms", "min.insync.replicas", "compression.type", "log.flush.interval.ms",
                "socket.request.max.bytes", "auto.create.topics.enable", "delete.topic.enable",
                "offsets.topic.replication.factor", "group.initial.rebalance.delay.ms", "log.cleanup.policy"]:
        assert key in described, key
    assert described["listeners"].value == f"PLAINTEXT://{broker.addr}"
    assert described["log.dirs"].value == str(broker.dir / "data")
    assert described["node.id"].value == "0" and described["node.id"].is_read_only
    # Set on the command line (flush_interval_ms=0): static; others default.
    assert (described["log.flush.interval.ms"].value, described["log.flush.interval.ms"].source) == (
        "9223372036854775807", ConfigSource.STATIC_BROKER_CONFIG.value)
    assert described["num.partitions"].source == ConfigSource.DEFAULT_CONFIG.value
    assert described["log.retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert not described["log.retention.ms"].is_read_only, "dynamic"
    assert described["log.dirs"].is_read_only, "static"
    assert not any(e.is_sensitive for e in described.values())


def test_topics_follow_dynamic_broker_defaults_and_a_restart_keeps_them(broker):
    admin = admin_of(broker)
    cluster = ClusterDefault(broker)
    create(admin, "follows-default")
    create(admin, "own-retention", {"retention.ms": "1000000"})
    cluster.alter([("log.retention.ms", "SET", "3600000"), ("log.segment.bytes", "SET", "2097152")])
    topic = describe(admin, ResourceType.TOPIC, "follows-default")
    assert (topic["retention.ms"].value, topic["retention.ms"].source) == (
        "3600000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
    assert topic["segment.bytes"].value == "2097152"
    own = describe(admin, ResourceType.TOPIC, "own-retention")
    assert (own["retention.ms"].value, own["retention.ms"].source) == ("1000000",
                                                                      ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    # This broker's own value beats the cluster default.
    incremental(admin, ResourceType.BROKER, "0", [("log.retention.ms", AlterConfigOpType.SET, "7200000")])
    topic = describe(admin, ResourceType.TOPIC, "follows-default")
    assert (topic["retention.ms"].value, topic["retention.ms"].source) == (
        "7200000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    node = describe(admin, ResourceType.BROKER, "0")["log.retention.ms"]
    assert (node.value, node.source) == ("7200000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    assert cluster.describe() == {"log.retention.ms": ("3600000", 3), "log.segment.bytes": ("2097152", 3)}
    cluster.close()

    # The segment size applies at once: records of 100 KB roll 2 MiB segments.
    produce(broker.addr, "follows-default", [b"x" * 100_000] * 60)
    assert segment_count(broker, "follows-default") >= 3

    broker.terminate()
    broker.start()
    admin = admin_of(broker)
    cluster = ClusterDefault(broker)
    topic = describe(admin, ResourceType.TOPIC, "follows-default")
    assert (topic["retention.ms"].value, topic["retention.ms"].source) == (
        "7200000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    assert describe(admin, ResourceType.TOPIC, "all-configs")["compression.type"].value == "zstd"
    assert cluster.describe() == {"log.retention.ms": ("3600000", 3), "log.segment.bytes": ("2097152", 3)}
    # Deleting the broker's own value falls back to the cluster default.
    incremental(admin, ResourceType.BROKER, "0", [("log.retention.ms", AlterConfigOpType.DELETE, None)])
    assert describe(admin, ResourceType.TOPIC, "follows-default")["retention.ms"].value == "3600000"
    cluster.alter([("log.retention.ms", "DELETE", None), ("log.segment.bytes", "DELETE", None)])
    assert describe(admin, ResourceType.TOPIC, "follows-default")["retention.ms"].source == \
        ConfigSource.DEFAULT_CONFIG.value
    assert cluster.describe() == {}
    cluster.close()


def test_legacy_alter_configs_on_a_broker(broker):
    """AlterConfigs (the whole-set replace) on broker 0, through kafka-python."""
    admin = admin_of(broker)
    kadmin = KafkaAdminClient(bootstrap_servers=broker.addr)
    try:
        result = kadmin.alter_configs([KConfigResource(KConfigResourceType.BROKER, "0",
                                                       configs={"log.retention.bytes": "123456789"})],
                                      incremental=False)
        assert result == {"broker": {"0": "OK"}}, result
        entry = describe(admin, ResourceType.BROKER, "0")["log.retention.bytes"]
        assert (entry.value, entry.source) == ("123456789", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
        result = kadmin.alter_configs([KConfigResource(KConfigResourceType.BROKER, "0",
                                                       configs={"log.dirs": "/elsewhere"})],
                                      incremental=False, raise_on_unknown=False)
        assert "InvalidRequest" in str(result["broker"]["0"]), result
        kadmin.reset_configs([KConfigResource(KConfigResourceType.BROKER, "0", configs={"log.retention.bytes": None})])
    finally:
        kadmin.close()
    entry = describe(admin, ResourceType.BROKER, "0")["log.retention.bytes"]
    assert entry.source == ConfigSource.DEFAULT_CONFIG.value


def test_append_and_subtract_on_list_configs(broker):
    admin = admin_of(broker)
    create(admin, "lists")
    incremental(admin, ResourceType.TOPIC, "lists", [("cleanup.policy", AlterConfigOpType.APPEND, "compact")])
    assert describe(admin, ResourceType.TOPIC, "lists")["cleanup.policy"].value == "delete,compact"
    incremental(admin, ResourceType.TOPIC, "lists", [("cleanup.policy", AlterConfigOpType.SUBTRACT, "delete")])
    assert describe(admin, ResourceType.TOPIC, "lists")["cleanup.policy"].value == "compact"
    error = error_of(lambda: incremental(admin, ResourceType.TOPIC, "lists",
                                         [("retention.ms", AlterConfigOpType.APPEND, "5")]))
    assert error.name() == "INVALID_CONFIG" and "not LIST" in error.str()
    cluster = ClusterDefault(broker)
    try:
        cluster.alter([("log.cleanup.policy", "APPEND", "compact")])
        assert cluster.describe() == {"log.cleanup.policy": ("delete,compact", 3)}
        assert describe(admin, ResourceType.TOPIC, "lists")["cleanup.policy"].value == "compact", "its own"
        cluster.alter([("log.cleanup.policy", "SUBTRACT", "delete")])
        assert cluster.describe() == {"log.cleanup.policy": ("compact", 3)}
        with pytest.raises(KafkaErrorCode) as e:
            cluster.alter([("log.retention.ms", "APPEND", "5")])
        assert e.value.code == 40 and "append is not allowed" in e.value.message
        cluster.alter([("log.cleanup.policy", "DELETE", None)])
    finally:
        cluster.close()


def test_bad_config_input_is_refused_whole(broker):
    admin = admin_of(broker)
    create(admin, "bystander", {"retention.ms": "5000000"})
    before = describe(admin, ResourceType.TOPIC, "bystander")

    def create_error(config):
        futures = admin.create_topics([NewTopic("never-made", 1, 1, config=config)])
        return error_of(lambda: futures["never-made"].result(timeout=30))

    error = create_error({"no.such.config": "1"})
    assert error.name() == "INVALID_CONFIG" and "Unknown topic config name: no.such.config" in error.str()
    error = create_error({"retention.ms": "soon"})
    assert error.name() == "INVALID_CONFIG" and "retention.ms" in error.str()
    error = create_error({"min.cleanable.dirty.ratio": "1.5"})
    assert error.name() == "INVALID_CONFIG" and "no more than 1" in error.str()
    error = create_error({"compression.type": "brotli"})
    assert error.name() == "INVALID_CONFIG"
    error = create_error({"min.compaction.lag.ms": "10", "max.compaction.lag.ms": "5"})
    assert error.name() == "INVALID_CONFIG" and "conflict" in error.str()
    assert "never-made" not in admin.list_topics(timeout=10).topics

    # One bad key: nothing of the request is applied.
    error = error_of(lambda: incremental(admin, ResourceType.TOPIC, "bystander", [
        ("retention.ms", AlterConfigOpType.SET, "1"), ("segment.ms", AlterConfigOpType.SET, "-5")]))
    assert error.name() == "INVALID_CONFIG" and "segment.ms" in error.str()
    # A static broker key, an unknown one, a bad value, another broker's id.
    error = error_of(lambda: incremental(admin, ResourceType.BROKER, "0", [("log.dirs", AlterConfigOpType.SET, "/x")]))
    assert error.name() == "INVALID_REQUEST" and "dynamically" in error.str()
    error = error_of(lambda: incremental(admin, ResourceType.BROKER, "0", [("no.such", AlterConfigOpType.SET, "1")]))
    assert error.name() == "INVALID_CONFIG"
    error = error_of(lambda: incremental(admin, ResourceType.BROKER, "0",
                                         [("log.retention.ms", AlterConfigOpType.SET, "-7")]))
    assert error.name() == "INVALID_REQUEST" and "at least -1" in error.str()
    other = ClusterDefault(broker, name="9")  # sent to this broker, naming another
    try:
        with pytest.raises(KafkaErrorCode) as e:
            other.alter([("log.retention.ms", "SET", "1")])
        assert e.value.code == 42 and "Unexpected broker id" in e.value.message
    finally:
        other.close()
    cluster = ClusterDefault(broker)
    try:
        with pytest.raises(KafkaErrorCode) as e:
            cluster.alter([("log.retention.ms", "SET", "100"), ("listeners", "SET", "PLAINTEXT://:1")])
        assert e.value.code == 42, "static: INVALID_REQUEST"
        assert cluster.describe() == {}, "nothing applied half-way"
    finally:
        cluster.close()
    # 10,000 configs in one request.
    many = [(f"key.{i}", AlterConfigOpType.SET, "1") for i in range(10_000)]
    error = error_of(lambda: incremental(admin, ResourceType.TOPIC, "bystander", many))
    assert error.name() == "INVALID_CONFIG"
    raw = ClusterDefault(broker)
    try:
        many = [("retention.ms", 0, str(i)) for i in range(10_000)]
        code, message = raw.alter_entries(2, "bystander", many)
        assert code == 42 and "duplicate" in message  # INVALID_REQUEST
    finally:
        raw.close()
    # validate_only changes nothing.
    incremental(admin, ResourceType.TOPIC, "bystander", [("retention.ms", AlterConfigOpType.SET, "1")],
                validate_only=True)
    after = describe(admin, ResourceType.TOPIC, "bystander")
    assert {k: e.value for k, e in after.items()} == {k: e.value for k, e in before.items()}
    assert describe(admin, ResourceType.BROKER, "0")["log.retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value


def test_kafkajs_and_kcat_agree(broker):
    admin = admin_of(broker)
    create(admin, "agree", {"retention.ms": "123456", "cleanup.policy": "compact"}, partitions=3)
    out = subprocess.run(["node", "kafkajs_configs.js", broker.addr, "agree"], cwd=NODE_DIR,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    js = json.loads(out.stdout)
    ours = describe(admin, ResourceType.TOPIC, "agree")
    assert {k: v[0] for k, v in js["topic"].items()} == {k: e.value for k, e in ours.items()}
    assert js["topic"]["retention.ms"][:2] == ["123456", ConfigSource.DYNAMIC_TOPIC_CONFIG.value]
    broker_ours = describe(admin, ResourceType.BROKER, "0")
    assert {k: v[0] for k, v in js["broker"].items()} == {k: e.value for k, e in broker_ours.items()}
    kcat = subprocess.run(["kcat", "-b", broker.addr, "-L", "-J", "-t", "agree"], capture_output=True, timeout=60)
    listed = json.loads(kcat.stdout)
    assert [b["id"] for b in listed["brokers"]] == [0]
    assert len(listed["topics"][0]["partitions"]) == 3


# ------------------------------------------------------------ honoured configs

def produce(addr, topic, values, timestamp=None, **conf):
    """Produces `values`; returns [(offset, error name or None)]."""
    results = []

    def delivered(err, msg):
        results.append((msg.offset(), err.name() if err else None))

    p = Producer({"bootstrap.servers": addr, "linger.ms": 5, "message.max.bytes": 2_000_000, **conf})
    for v in values:
        extra = {} if timestamp is None else {"timestamp": timestamp}
        p.produce(topic, value=v, on_delivery=delivered, **extra)
        p.poll(0)
    assert p.flush(30) == 0
    return results


def consume(addr, topic, count):
    c = Consumer({"bootstrap.servers": addr, "group.id": f"g-{topic}-{time.time()}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.time() + 30
    while len(out) < count and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            out.append(m)
    c.close()
    return out


def partition_dir(b, topic):
    return b.dir / "data" / f"{topic}-0"


def segment_count(b, topic):
    return len(list(partition_dir(b, topic).glob("*.log")))


def stored_codecs(b, topic):
    """The codec id of every batch stored in the partition's segments."""
    codecs = []
    for segment in sorted(partition_dir(b, topic).glob("*.log")):
        data = segment.read_bytes()
        at = 0
        while at + 61 <= len(data):
            length = int.from_bytes(data[at + 8:at + 12], "big")
            if length == 0:
                break  # preallocated tail
            codecs.append(int.from_bytes(data[at + 21:at + 23], "big") & 7)
            at += 12 + length
    return codecs


def test_compression_type_recompresses_on_the_way_in(broker):
    admin = admin_of(broker)
    create(admin, "to-zstd", {"compression.type": "zstd"})
    create(admin, "as-produced")
    values = [b"value-%d " % i * 20 for i in range(500)]
    for topic in ("to-zstd", "as-produced"):
        results = produce(broker.addr, topic, values, **{"compression.type": "lz4", "linger.ms": 50})
        assert all(e is None for _, e in results)
    assert set(stored_codecs(broker, "to-zstd")) == {4}, "stored as zstd"
    assert set(stored_codecs(broker, "as-produced")) == {3}, "stored as the producer sent it"
    got = consume(broker.addr, "to-zstd", len(values))
    assert [m.value() for m in got] == values
    assert [m.offset() for m in got] == list(range(len(values)))


def test_log_append_time_and_timestamp_bounds(broker):
    admin = admin_of(broker)
    create(admin, "append-time", {"message.timestamp.type": "LogAppendTime"})
    long_ago = 1_000_000_000_000
    before = int(time.time() * 1000)
    produce(broker.addr, "append-time", [b"a", b"b"], timestamp=long_ago)
    after = int(time.time() * 1000)
    for m in consume(broker.addr, "append-time", 2):
        kind, ts = m.timestamp()
        assert kind == 2 and before <= ts <= after + 1000, (kind, ts)  # TIMESTAMP_LOG_APPEND_TIME

    create(admin, "bounded-time", {"message.timestamp.after.max.ms": "60000",
                                   "message.timestamp.before.max.ms": "60000"})
    now = int(time.time() * 1000)
    assert produce(broker.addr, "bounded-time", [b"future"], timestamp=now + 3_600_000,
                   retries=0)[0][1] == "INVALID_TIMESTAMP"
    assert produce(broker.addr, "bounded-time", [b"past"], timestamp=now - 3_600_000,
                   retries=0)[0][1] == "INVALID_TIMESTAMP"
    assert produce(broker.addr, "bounded-time", [b"now"], timestamp=now)[0] == (0, None)
    # The default (Kafka 4.0's): at most an hour ahead.
    create(admin, "default-time")
    assert produce(broker.addr, "default-time", [b"far"], timestamp=now + 7_200_000,
                   retries=0)[0][1] == "INVALID_TIMESTAMP"


def fdatasyncs(b):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{b.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "spate_storage_fdatasync_latency_seconds_count":
                return s.value
    raise AssertionError("no fdatasync count")


def test_flush_messages_and_flush_ms_force_syncs(broker):
    admin = admin_of(broker)
    create(admin, "no-flush")
    create(admin, "flush-each", {"flush.messages": "1"})
    create(admin, "flush-soon", {"flush.ms": "100"})
    time.sleep(0.5)
    start = fdatasyncs(broker)
    for _ in range(10):
        produce(broker.addr, "no-flush", [b"x"], acks=1)
    time.sleep(0.5)
    assert fdatasyncs(broker) - start <= 1, "flush_interval_ms=0: acks=1 data is not synced"
    start = fdatasyncs(broker)
    for _ in range(10):
        produce(broker.addr, "flush-each", [b"x"], acks=1)
    assert fdatasyncs(broker) - start >= 10, "flush.messages=1: every append is synced"
    start = fdatasyncs(broker)
    produce(broker.addr, "flush-soon", [b"x"], acks=1)
    time.sleep(1.0)
    assert fdatasyncs(broker) - start >= 1, "flush.ms=100: synced within a second"


def test_min_insync_replicas_above_the_replicas_refuses_acks_all(broker):
    admin = admin_of(broker)
    create(admin, "two-in-sync", {"min.insync.replicas": "2"})
    assert produce(broker.addr, "two-in-sync", [b"x"], acks="all", retries=0)[0][1] == "NOT_ENOUGH_REPLICAS"
    assert produce(broker.addr, "two-in-sync", [b"y"], acks=1)[0] == (0, None)


def test_recompressed_records_and_configs_survive_kill_9(broker):
    """Recompressed batches (zstd from lz4), a flush.messages topic and a
    cluster-wide dynamic default, then kill -9: after the restart every
    acknowledged record is at its offset, stored in the topic's codec, and
    every config is still in force."""
    admin = admin_of(broker)
    create(admin, "crash-zstd", {"compression.type": "zstd"})
    create(admin, "crash-flush", {"flush.messages": "1"})
    cluster = ClusterDefault(broker)
    cluster.alter([("log.retention.ms", "SET", "5400000")])
    cluster.close()
    values = [b"crash-%d " % i * 8 for i in range(3000)]
    acked = {}
    for topic in ("crash-zstd", "crash-flush"):
        results = produce(broker.addr, topic, values, **{"compression.type": "lz4", "acks": "all"})
        assert all(e is None for _, e in results)
        acked[topic] = sorted(o for o, _ in results)
        assert acked[topic] == list(range(len(values)))
    broker.kill()
    broker.start()
    for topic in ("crash-zstd", "crash-flush"):
        got = consume(broker.addr, topic, len(values))
        assert [(m.offset(), m.value()) for m in got] == list(enumerate(values)), topic
    assert set(stored_codecs(broker, "crash-zstd")) == {4}
    admin = admin_of(broker)
    assert describe(admin, ResourceType.TOPIC, "crash-zstd")["compression.type"].value == "zstd"
    retention = describe(admin, ResourceType.TOPIC, "crash-flush")["retention.ms"]
    assert (retention.value, retention.source) == ("5400000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
    cluster = ClusterDefault(broker)
    cluster.alter([("log.retention.ms", "DELETE", None)])
    cluster.close()
