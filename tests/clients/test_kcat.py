"""kcat (librdkafka 2.0, Debian's build) produces and consumes every codec."""

import subprocess

import pytest

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
COUNT = 20_000


def kcat(*args, stdin=None):
    out = subprocess.run(["kcat", *args], input=stdin, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


@pytest.mark.parametrize("codec", CODECS)
def test_codec_round_trip_is_byte_identical(broker, codec):
    topic = f"kcat-{codec}"
    lines = [f"{codec}-{i}-" + "x" * (i % 97) for i in range(COUNT)]
    kcat("-b", broker.addr, "-t", topic, "-P", "-z", codec, "-K", "|",
         stdin="\n".join(f"key{i % 13}|{v}" for i, v in enumerate(lines)).encode() + b"\n")
    out = kcat("-b", broker.addr, "-t", topic, "-C", "-o", "beginning", "-e", "-q",
               "-f", "%o %k %s\n").decode().splitlines()
    assert len(out) == COUNT
    offsets = [int(l.split(" ", 2)[0]) for l in out]
    assert offsets == list(range(COUNT)), "offsets are contiguous from 0"
    assert [l.split(" ", 2)[2] for l in out] == lines, "payloads are byte-identical"
    assert [l.split(" ", 2)[1] for l in out] == [f"key{i % 13}" for i in range(COUNT)]


def test_metadata_lists_broker_and_topics(broker):
    kcat("-b", broker.addr, "-t", "kcat-meta", "-P", stdin=b"one\n")
    meta = kcat("-b", broker.addr, "-L").decode()
    assert f"broker 0 at {broker.addr} (controller)" in meta
    assert 'topic "kcat-meta" with 1 partitions' in meta


def test_consume_from_offset_and_end(broker):
    kcat("-b", broker.addr, "-t", "kcat-offsets", "-P", stdin=b"".join(b"m%d\n" % i for i in range(100)))
    tail = kcat("-b", broker.addr, "-t", "kcat-offsets", "-C", "-o", "90", "-e", "-q", "-f", "%o:%s\n").decode().split()
    assert tail == [f"{i}:m{i}" for i in range(90, 100)]
    last = kcat("-b", broker.addr, "-t", "kcat-offsets", "-C", "-o", "-3", "-e", "-q", "-f", "%s\n").decode().split()
    assert last == ["m97", "m98", "m99"]


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_every_acks_setting_stores_everything(broker, acks):
    topic = f"kcat-acks-{acks}"
    kcat("-b", broker.addr, "-t", topic, "-P", "-X", f"acks={acks}", "-X", "linger.ms=2",
         stdin=b"".join(b"a%d\n" % i for i in range(5000)))
    out = kcat("-b", broker.addr, "-t", topic, "-C", "-o", "beginning", "-e", "-q", "-f", "%s\n").decode().split()
    assert out == [f"a{i}" for i in range(5000)]
