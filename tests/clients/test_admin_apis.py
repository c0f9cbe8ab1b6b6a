"""The admin APIs tools call, through the clients' own admin APIs: authorized
operations (everything allowed, as Kafka with no authorizer), ElectLeaders on
one node, DescribeLogDirs, DescribeProducers, DescribeTopicPartitions (paged),
the ACL APIs (SECURITY_DISABLED), and ListOffsets' MAX_TIMESTAMP (KIP-734)."""

import time

import pytest
from confluent_kafka import (ElectionType, KafkaException, Producer, TopicCollection,
                             TopicPartition)
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, NewTopic, OffsetSpec, ResourcePatternType,
                                   ResourceType)
from kafka import KafkaAdminClient
from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePatternFilter
from kafka.admin import ResourceType as ACLResourceType
from kafka.errors import SecurityDisabledError
from kafka import TopicPartition as KTopicPartition

TOPIC_OPERATIONS = {AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DELETE,
                    AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
                    AclOperation.ALTER_CONFIGS}
CLUSTER_OPERATIONS = {AclOperation.CREATE, AclOperation.ALTER, AclOperation.DESCRIBE,
                      AclOperation.CLUSTER_ACTION, AclOperation.DESCRIBE_CONFIGS,
                      AclOperation.ALTER_CONFIGS, AclOperation.IDEMPOTENT_WRITE}


def create(admin, topic, partitions=1, config=None):
    for f in admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})]).values():
        f.result(timeout=30)


def produce(addr, topic, records, **conf):
    """Produces (partition, value, timestamp_ms) records; returns the delivery offsets."""
    offsets = []

    def delivered(err, msg):
        assert err is None, err
        offsets.append((msg.partition(), msg.offset()))

    p = Producer({"bootstrap.servers": addr, "linger.ms": 20, **conf})
    for partition, value, timestamp in records:
        stamp = {} if timestamp is None else {"timestamp": timestamp}
        p.produce(topic, value=value, partition=partition, on_delivery=delivered, **stamp)
    assert p.flush(30) == 0
    return offsets


def test_authorized_operations_when_asked(broker):
    admin = AdminClient({"bootstrap.servers": broker.addr})
    create(admin, "ops-topic", 2)
    described = admin.describe_topics(TopicCollection(["ops-topic"]),
                                      include_authorized_operations=True)["ops-topic"].result(timeout=30)
    assert set(described.authorized_operations) == TOPIC_OPERATIONS
    assert len(described.partitions) == 2
    plain = admin.describe_topics(TopicCollection(["ops-topic"]))["ops-topic"].result(timeout=30)
    assert not plain.authorized_operations, "operations only when asked"
    cluster = admin.describe_cluster(include_authorized_operations=True).result(timeout=30)
    assert set(cluster.authorized_operations) == CLUSTER_OPERATIONS
    assert cluster.nodes and cluster.cluster_id


def test_elect_leaders_on_one_node_is_not_needed(broker):
    admin = AdminClient({"bootstrap.servers": broker.addr})
    create(admin, "elect-topic", 2)
    partitions = [TopicPartition("elect-topic", 0), TopicPartition("elect-topic", 1)]
    result = admin.elect_leaders(ElectionType.PREFERRED, partitions).result(timeout=30)
    assert set(result) == {("elect-topic", 0), ("elect-topic", 1)} or len(result) == 2
    for tp, error in result.items():
        assert error is not None and error.name() == "ELECTION_NOT_NEEDED", (tp, error)


def test_describe_log_dirs_lists_replicas_with_their_sizes(broker):
    admin = AdminClient({"bootstrap.servers": broker.addr})
    create(admin, "dirs-a", 3)
    create(admin, "dirs-b", 1)
    produce(broker.addr, "dirs-a", [(p, b"x" * 1000, None) for p in (0, 1) for _ in range(50)])
    kadmin = KafkaAdminClient(bootstrap_servers=broker.addr)
    try:
        every = kadmin.describe_log_dirs()
        only_a = kadmin.describe_log_dirs(topic_partitions={"dirs-a": [0, 2]})
    finally:
        kadmin.close()
    assert len(every) == 1, every  # one broker
    dirs = every[0]["log_dirs"]
    assert len(dirs) == 1, "one data directory"
    d = dirs[0]
    assert d["error_code"] == 0 and str(broker.dir) in d["log_dir"], d
    assert d["total_bytes"] > 0 and 0 < d["usable_bytes"] <= d["total_bytes"]
    sizes = {(t["name"], p["partition_index"]): p for t in d["topics"] for p in t["partitions"]}
    assert {("dirs-a", 0), ("dirs-a", 1), ("dirs-a", 2), ("dirs-b", 0)} <= set(sizes)
    assert sizes[("dirs-a", 0)]["partition_size"] > 50 * 1000
    assert sizes[("dirs-a", 2)]["partition_size"] == 0
    assert all(p["offset_lag"] == 0 for p in sizes.values())
    named = {(t["name"], p["partition_index"]) for t in only_a[0]["log_dirs"][0]["topics"] for p in t["partitions"]}
    assert named == {("dirs-a", 0), ("dirs-a", 2)}


def test_describe_producers_shows_idempotent_producers(broker):
    admin = AdminClient({"bootstrap.servers": broker.addr})
    create(admin, "producers-topic", 2)
    stamp = int(time.time() * 1000) - 5000
    produce(broker.addr, "producers-topic", [(0, b"v%d" % i, stamp + i) for i in range(30)],
            **{"enable.idempotence": True, "acks": "all"})
    produce(broker.addr, "producers-topic", [(1, b"plain", None)], **{"enable.idempotence": False})
    kadmin = KafkaAdminClient(bootstrap_servers=broker.addr)
    try:
        states = kadmin.describe_producers([KTopicPartition("producers-topic", 0),
                                            KTopicPartition("producers-topic", 1)])
    finally:
        kadmin.close()
    active = states[KTopicPartition("producers-topic", 0)].active_producers
    assert len(active) == 1, active
    producer = active[0]
    assert producer.producer_id >= 0 and producer.producer_epoch >= 0
    assert producer.last_sequence == 29, "30 records, sequences 0..29"
    assert producer.last_timestamp == stamp + 29
    assert producer.coordinator_epoch == -1 and producer.current_transaction_start_offset == -1
    assert states[KTopicPartition("producers-topic", 1)].active_producers == [], "not idempotent"


def test_describe_topic_partitions_pages_with_a_cursor(broker):
    admin = AdminClient({"bootstrap.servers": broker.addr})
    create(admin, "paged-a", 5)
    create(admin, "paged-b", 3)
    kadmin = KafkaAdminClient(bootstrap_servers=broker.addr)
    try:
        seen, cursor, pages = [], None, 0
        while True:
            page = kadmin.describe_topic_partitions(["paged-b", "paged-a", "paged-missing"],
                                                    response_partition_limit=3, cursor=cursor)
            pages += 1
            for topic in page["topics"]:
                if topic["name"] == "paged-missing":
                    assert topic["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION
                    continue
                assert topic["error_code"] == 0
                assert topic["topic_authorized_operations"] > 0
                for p in topic["partitions"]:
                    assert p["leader_id"] == 0 and p["replica_nodes"] == [0] and p["isr_nodes"] == [0]
                    seen.append((topic["name"], p["partition_index"]))
            cursor = page.get("next_cursor")
            if not cursor:
                break
            assert pages < 10
        # A cursor naming a topic not asked for: INVALID_REQUEST, as Kafka.
        bad = kadmin.describe_topic_partitions(["paged-a"], cursor={"topic_name": "paged-b", "partition_index": 0})
        assert [(t["name"], t["error_code"]) for t in bad["topics"]] == [("paged-a", 42)]
    finally:
        kadmin.close()
    expected = [("paged-a", p) for p in range(5)] + [("paged-b", p) for p in range(3)]
    assert seen == expected, "every partition once, in name order"
    assert pages == 3, "8 partitions at 3 per page"


def test_acl_apis_say_security_is_disabled(broker):
    admin = AdminClient({"bootstrap.servers": broker.addr})
    acl_filter = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    # librdkafka reads a DescribeAcls error as "no ACLs"; kafka-python raises it.
    assert admin.describe_acls(acl_filter).result(timeout=30) == []
    kadmin = KafkaAdminClient(bootstrap_servers=broker.addr)
    try:
        with pytest.raises(SecurityDisabledError):
            kadmin.describe_acls(ACLFilter(principal=None, host="*", operation=ACLOperation.ANY,
                                           permission_type=ACLPermissionType.ANY,
                                           resource_pattern=ResourcePatternFilter(
                                               ACLResourceType.ANY, None, ACLResourcePatternType.ANY)))
    finally:
        kadmin.close()
    binding = AclBinding(ResourceType.TOPIC, "t", ResourcePatternType.LITERAL, "User:alice", "*",
                         AclOperation.READ, AclPermissionType.ALLOW)
    for f in admin.create_acls([binding]).values():
        with pytest.raises(KafkaException) as created:
            f.result(timeout=30)
        assert created.value.args[0].name() == "SECURITY_DISABLED"
    for f in admin.delete_acls([acl_filter]).values():
        with pytest.raises(KafkaException) as deleted:
            f.result(timeout=30)
        assert deleted.value.args[0].name() == "SECURITY_DISABLED"


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_list_offsets_max_timestamp_names_the_record(broker, codec):
    """KIP-734: the offset of the first record carrying the largest timestamp,
    inside a compressed batch of several records, not the batch's last."""
    admin = AdminClient({"bootstrap.servers": broker.addr})
    topic = f"maxts-{codec}"
    create(admin, topic)
    base = int(time.time() * 1000) - 60_000
    # One batch of 10 records; the largest timestamp is on record 3 (and 7).
    stamps = [base + i for i in range(10)]
    stamps[3] = stamps[7] = base + 1000
    offsets = produce(broker.addr, topic, [(0, b"r%d" % i, t) for i, t in enumerate(stamps)],
                      **{"compression.type": codec, "linger.ms": 200})
    assert [o for _, o in offsets] == list(range(10))
    tp = TopicPartition(topic, 0)
    answer = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(timeout=30)
    assert (answer.offset, answer.timestamp) == (3, base + 1000)
    # A later batch with a smaller timestamp changes nothing.
    produce(broker.addr, topic, [(0, b"late", base + 500)])
    answer = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(timeout=30)
    assert (answer.offset, answer.timestamp) == (3, base + 1000)
    empty = TopicPartition("elect-topic", 1)
    none = admin.list_offsets({empty: OffsetSpec.max_timestamp()})[empty].result(timeout=30)
    assert none.offset == -1
